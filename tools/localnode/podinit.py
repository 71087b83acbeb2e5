"""Runs first inside a pod's namespaces (`ip netns exec NS unshare -m -u ...`): mounts the
volumes at their mount paths, sets the hostname, then execs the container command.

Bind sources are opened before any mount, then mounted from /proc/<pid>/fd/<n>, so a mount over
/tmp cannot hide a source that lives under /tmp (as the agent's state dir may).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def run_mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"localnode: mount {' '.join(args)} failed: {result.stderr.strip()}")


def mount_all(mounts: list[dict]) -> None:
    run_mount("--make-rprivate", "/")  # nothing we mount may leak to the host
    source_fds = {
        index: os.open(m["source"], os.O_PATH) for index, m in enumerate(mounts) if m["source"]
    }
    for index, mount in enumerate(mounts):
        target = mount["target"]
        Path(target).mkdir(parents=True, exist_ok=True)
        if index in source_fds:
            # --no-canonicalize: mount(8) would otherwise turn the fd link back into a path,
            # which a volume mounted over /tmp may already hide.
            fd_path = f"/proc/{os.getpid()}/fd/{source_fds[index]}"
            run_mount("--no-canonicalize", "--bind", fd_path, target)
        else:
            run_mount(
                "-t", "tmpfs", "-o", f"size={mount['tmpfs_bytes']},mode=1777", "tmpfs", target
            )
        if mount["read_only"]:
            run_mount("-o", "remount,bind,ro", target)
    for fd in source_fds.values():
        os.close(fd)


def main() -> None:
    launch = json.loads(Path(sys.argv[1]).read_text())
    mount_all(launch["mounts"])
    if launch.get("hostname"):
        socket.sethostname(launch["hostname"])
    os.chdir(launch.get("workingDir") or "/")
    argv = launch["argv"]
    try:
        os.execvpe(argv[0], argv, launch["env"])
    except OSError as error:
        raise SystemExit(f"localnode: cannot run {argv[0]!r}: {error}") from error


if __name__ == "__main__":
    main()
