#!/usr/bin/env bash
# podman with the project's settings: its own image store (overlay, or vfs where overlay does
# not work), runc (crun refuses this host's hybrid cgroups), and explicit ulimits (podman's
# defaults exceed what an unprivileged-resource host grants). Usage: podman.sh <podman args...>
set -euo pipefail
root="${DTJ_IMAGES_ROOT:-$HOME/.local/share/dtj-images}"
driver_file="$root/driver"
mkdir -p "$root"
if [ ! -f "$driver_file" ]; then
  # Overlay where the kernel allows it (far less disk than vfs' full copy per layer).
  if podman --root "$root/probe" --runroot "$root/probe-run" --storage-driver overlay \
    info >/dev/null 2>&1; then
    echo overlay >"$driver_file"
  else
    echo vfs >"$driver_file"
  fi
  rm -rf "$root/probe" "$root/probe-run"
fi
command="$1"
shift
run_flags=()
case "$command" in
  run|create|build)
    run_flags=(--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=1000:1000) ;;
esac
exec podman --root "$root/storage" --runroot "$root/run" --storage-driver "$(cat "$driver_file")" \
  "$command" "${run_flags[@]}" "$@"
