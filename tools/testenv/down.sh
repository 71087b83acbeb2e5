#!/usr/bin/env bash
# Stop the local control plane: only the processes whose PIDs `up.sh` recorded.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

stop_component() {  # name
  local pid_file="$state_dir/pids/$1.pid" pid
  [ -f "$pid_file" ] || return 0
  pid="$(cat "$pid_file")"
  # Only signal the PID if it still runs the recorded binary (PIDs get reused).
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped $1 (pid $pid)"
  fi
  rm -f "$pid_file"
}

for c in "${components[@]}"; do stop_component "$c"; done
rm -rf "$etcd_data_dir"
