# Sourced by the hack/ scripts that start and stop local processes through pid files.

# running PIDFILE: whether the process recorded in PIDFILE is alive
pid_running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid PIDFILE: SIGTERM, up to 5 s to go, then SIGKILL; the pid file is removed
stop_pid() {
  local pid
  if pid_running "$1"; then
    pid="$(cat "$1")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}
