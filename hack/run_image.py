"""Run a container of an OCI image layout without a container engine (root only).

    python hack/run_image.py --image build/image/tessera-operator:0.1.0 --bundle /tmp/b \\
        [--mount SRC:DST[:ro]]... [--env K=V]... [-- ARGS...]

The image is unpacked with umoci (``umoci unpack``, which checks every blob's digest) into
BUNDLE/rootfs unless that exists.  The process then runs the way a Kubernetes pod with
``readOnlyRootFilesystem`` runs it: in a private mount namespace, the root filesystem
mounted read-only, a small tmpfs at /tmp (the chart's emptyDir), /proc, a minimal /dev, the
given bind mounts, as the image's user (chroot --userspec) with only the image's environment
plus ``--env``.  ARGS replace the image's Cmd and keep its Entrypoint, like a container's
``args``.  The process replaces this one (exec), so its pid is the caller's child's pid and
signals reach it directly.  It shares the host's network (no network namespace).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# everything below runs inside `unshare --mount`; $1 = rootfs, $2 = userspec, then
# SRC TARGET MODE triples (TARGET: the host path under the rootfs) up to "--", then the
# environment up to "--", then argv
SETUP = r"""
set -euo pipefail
r="$1" user="$2"; shift 2
mount --bind "$r" "$r"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$r/tmp"
mount -t proc proc "$r/proc"
mount -t tmpfs -o size=1m,mode=755 tmpfs "$r/dev"
for n in null zero full random urandom tty; do touch "$r/dev/$n"; mount --bind "/dev/$n" "$r/dev/$n"; done
ln -s /proc/self/fd "$r/dev/fd"
while [[ "$1" != "--" ]]; do
  src="$1" dst="$2" mode="$3"; shift 3
  mount --bind "$src" "$dst"
  [[ "$mode" == ro ]] && mount -o remount,bind,ro "$dst"
done
shift
env=()
while [[ "$1" != "--" ]]; do env+=("$1"); shift; done
shift
mount -o remount,bind,ro "$r"
exec chroot --userspec="$user" "$r" /usr/bin/env -i "${env[@]}" "$@"
"""


def image_config(layout: Path, tag: str) -> dict[str, Any]:
    """The image config of ``tag`` in the OCI layout (index -> manifest -> config)."""
    index = json.loads((layout / "index.json").read_text())
    manifest_desc = next(m for m in index["manifests"]
                         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)

    def blob(digest: str) -> Any:
        return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())

    config: dict[str, Any] = blob(blob(manifest_desc["digest"])["config"]["digest"])["config"]
    return config


def in_root(rootfs: Path, path: str) -> Path:
    """``path`` inside the container, as a host path under ``rootfs``: symlinks resolved
    relative to the container's root (Debian's /var/run -> /run must not lead to the host's /run)."""
    parts = [p for p in path.split("/") if p]
    current, links = rootfs, 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != rootfs else rootfs
        elif (current / part).is_symlink():
            links += 1
            if links > 40:
                raise SystemExit(f"run_image: too many symlinks in {path}")
            target = os.readlink(current / part)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = rootfs
        else:
            current = current / part
    return current


def unpack(layout: Path, tag: str, bundle: Path) -> Path:
    """BUNDLE/rootfs, unpacked by umoci unless it is there already."""
    rootfs = bundle / "rootfs"
    if not rootfs.is_dir():
        if bundle.exists():
            shutil.rmtree(bundle)
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True,
                       stdout=subprocess.DEVNULL)
    return rootfs


def command(layout: Path, tag: str, bundle: Path, mounts: list[str], env: list[str], args: list[str]) -> list[str]:
    """The argv that runs the container (``unshare ... chroot ...``)."""
    config = image_config(layout, tag)
    rootfs = unpack(layout, tag, bundle)
    user = config.get("User") or "0:0"
    if ":" not in user:
        user = f"{user}:{user}"
    mount_args: list[str] = []
    for spec in mounts:
        src, dst, *mode = spec.split(":")
        # the mount point, as a runtime would create it (on the bundle's copy, not the image)
        target = in_root(rootfs, dst)
        if Path(src).is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        mount_args += [src, str(target), mode[0] if mode else "rw"]
    merged: dict[str, str] = dict(e.split("=", 1) for e in config.get("Env") or [])
    merged.update(dict(e.split("=", 1) for e in env))
    argv = [*(config.get("Entrypoint") or []), *(args or config.get("Cmd") or [])]
    if not argv:
        raise SystemExit("run_image: the image has no Entrypoint or Cmd and no ARGS were given")
    return ["unshare", "--mount", "--propagation", "private", "bash", "-c", SETUP, "run-image",
            str(rootfs), user, *mount_args, "--", *(f"{k}={v}" for k, v in merged.items()), "--", *argv]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="LAYOUT:TAG")
    parser.add_argument("--bundle", required=True, type=Path, help="where the image is unpacked (reused)")
    parser.add_argument("--mount", action="append", default=[], help="SRC:DST[:ro] bind mount")
    parser.add_argument("--env", action="append", default=[], help="K=V added to the image's environment")
    parser.add_argument("args", nargs="*", help="replace the image's Cmd")
    ns = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run_image: needs root (mount namespace, chroot)")
    layout, _, tag = ns.image.rpartition(":")
    cmd = command(Path(layout), tag, ns.bundle, ns.mount, ns.env, ns.args)
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
