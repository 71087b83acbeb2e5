"""`kubectl_complete-dtj`: what kubectl (1.26+) runs to complete `kubectl dtj <TAB>`. It prints
one candidate per line, then cobra's directive line (:4, no file completion)."""

from __future__ import annotations

import sys

from diffusion_operator.kubectl_plugin.cli import SUBCOMMANDS

NEEDS_JOB_NAME = ("describe", "logs", "suspend", "resume")
NO_FILE_COMPLETION = ":4"


def completes_a_job_name(words: list[str]) -> bool:
    """words: the arguments after `dtj`, the last one being completed (maybe empty)."""
    positional = [w for w in words[:-1] if not w.startswith("-")]
    return len(positional) == 1 and positional[0] in NEEDS_JOB_NAME


def candidates(words: list[str], job_names: list[str]) -> list[str]:
    """words: the arguments after `dtj`, the last one being completed (maybe empty)."""
    current = words[-1] if words else ""
    if not [w for w in words[:-1] if not w.startswith("-")]:
        options = list(SUBCOMMANDS)
    elif completes_a_job_name(words):
        options = job_names
    else:
        options = []
    return [option for option in options if option.startswith(current)]


def job_names_in_current_namespace() -> list[str]:
    from diffusion_operator import constants as c
    from diffusion_operator.kubectl_plugin.connection import connect

    try:
        conn = connect(None, None, None)
        found = conn.custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, conn.namespace, c.PLURAL, _request_timeout=3
        )
    except Exception:  # completion must never fail loudly
        return []
    return [item["metadata"]["name"] for item in found["items"]]


def main() -> int:
    words = sys.argv[1:]
    names = job_names_in_current_namespace() if completes_a_job_name(words) else []
    for option in candidates(words, names):
        print(option)
    print(NO_FILE_COMPLETION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
