#!/usr/bin/env bash
# Install the Prometheus server (Debian's package) for the LoadSource tests.
# Idempotent: does nothing when `prometheus` is already on PATH. Needs root (or sudo)
# for apt-get; runs `apt-get update` once per machine (stamp in /var/lib/apt/periodic).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-prometheus: need root or sudo to apt-get install prometheus" >&2; exit 1
  fi
fi

STAMP=/var/lib/apt/periodic/tessera-apt-updated
if [ ! -e "$STAMP" ]; then
  $SUDO apt-get update -qq
  $SUDO mkdir -p "$(dirname "$STAMP")" && $SUDO touch "$STAMP"
fi
# the package's postinst would start a system-wide server (port 9090); tests start their
# own on a private port, so refuse service starts during the install (policy-rc.d 101)
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=""
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  ADDED_POLICY=1
fi
trap 'if [ -n "$ADDED_POLICY" ]; then $SUDO rm -f "$POLICY"; fi' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null && prometheus --version 2>&1 | head -1
