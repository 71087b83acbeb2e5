"""`kubectl dtj completion bash|zsh`: the scripts, loaded into a real bash (and zsh where it is
installed), complete the `kubectl-dtj` command through the installed `kubectl_complete-dtj`:
subcommands, flags, choices, and job names read from the API server that the --kubeconfig and -n
typed so far name (a stub server here; tests/cluster/test_kubectl_plugin.py asks a real one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from diffusion_operator.kubectl_plugin.complete import candidates, read_words

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
JOBS_PATH = "/apis/diffusion.dev/v1alpha1/namespaces/team-a/diffusiontrainingjobs"


def bash_complete(*comp_words: str, env: dict[str, str] | None = None) -> list[str]:
    """COMPREPLY after <TAB> on the last of comp_words, split as bash splits them."""
    script = (
        'source <(kubectl-dtj completion bash) || exit 3; COMP_WORDS=("$@"); '
        'COMP_CWORD=$(($# - 1)); _kubectl_dtj; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "-c", script, "bash", *comp_words],
        capture_output=True, text=True, timeout=60, check=True, env=env or ENV,
    )  # fmt: skip
    return [line for line in done.stdout.splitlines() if line]


def test_the_parser_drives_the_candidates():
    assert candidates(["de"], []) == ["describe"]
    assert candidates(["-n", "team-a", "logs", "s"], ["sd2", "tiny"]) == ["sd2"]
    watch_flags = ["--all-namespaces", "--help", "--interval", "--until-done"]
    assert candidates(["watch", "--"], []) == watch_flags
    assert candidates(["submit", "--preset", "sd"], []) == ["sd2-base-256", "sd2-base-512"]
    assert candidates(["submit", "--preset=t"], []) == ["--preset=tiny-cpu"]
    assert candidates(["completion", ""], []) == ["bash", "zsh"]
    assert candidates(["describe", "sd2", ""], ["sd2"]) == []  # describe takes one name
    assert candidates(["watch", ""], ["sd2"]) == []  # watch takes no name
    assert candidates(["no-such", ""], ["sd2"]) == []
    typed = read_words(["--kubeconfig=/k", "--context", "arn:x", "-nteam-a", "describe", ""])
    assert typed.connection == {"kubeconfig": "/k", "context": "arn:x", "namespace": "team-a"}
    assert typed.command == "describe"


def test_bash_completes_commands_flags_and_choices():
    assert bash_complete("kubectl-dtj", "des") == ["describe"]
    assert "completion" in bash_complete("kubectl-dtj", "")
    assert bash_complete("kubectl-dtj", "--kube") == ["--kubeconfig"]
    assert bash_complete("kubectl-dtj", "completion", "z") == ["zsh"]
    # bash splits `--preset=ti` at the `=`: the answer replaces the last piece only
    assert bash_complete("kubectl-dtj", "submit", "--preset", "=", "ti") == ["tiny-cpu"]


@pytest.fixture
def api_server() -> Iterator[str]:
    """An API server stand-in that knows two jobs in namespace team-a."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.split("?")[0] == JOBS_PATH
            names = ["sd2-base", "tiny"] if found else []
            body = json.dumps({"items": [{"metadata": {"name": n}} for n in names]}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bash_completes_job_names_of_the_typed_kubeconfig_and_namespace(api_server, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": api_server}}],
            "users": [{"name": "stub", "user": {"token": "t"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
        })
    )  # fmt: skip
    no_default = {**ENV, "KUBECONFIG": str(tmp_path / "absent")}
    typed = ["kubectl-dtj", "--kubeconfig", "=", str(kubeconfig), "-n", "team-a"]
    assert bash_complete(*typed, "describe", "", env=no_default) == ["sd2-base", "tiny"]
    assert bash_complete(*typed, "logs", "--rank", "1", "t", env=no_default) == ["tiny"]
    # the context's namespace (default) has none; nor has a cluster that cannot be read
    assert bash_complete(*typed[:4], "suspend", "", env=no_default) == []
    assert bash_complete("kubectl-dtj", "resume", "", env=no_default) == []


def test_zsh_script_calls_the_same_completer():
    script = subprocess.run(
        [str(BIN / "kubectl-dtj"), "completion", "zsh"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert script.startswith("#compdef kubectl-dtj\n")
    assert 'kubectl_complete-dtj "${(@)words[2,CURRENT]}"' in script
    assert script.rstrip().endswith("compdef _kubectl_dtj kubectl-dtj")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed on this machine")
def test_zsh_completes_commands_and_choices():
    """The function as zsh's completion system calls it (words, CURRENT), compadd recorded."""

    def zsh_complete(*words: str) -> list[str]:
        script = (
            'compdef() { :; }; compadd() { [[ $1 == -- ]] && shift; print -rl -- "$@"; }; '
            'source <(kubectl-dtj completion zsh) || exit 3; words=("$@"); CURRENT=$#; '
            "_kubectl_dtj"
        )
        done = subprocess.run(
            ["zsh", "-fc", script, "zsh", *words],
            capture_output=True, text=True, timeout=60, check=True, env=ENV,
        )  # fmt: skip
        return [line for line in done.stdout.splitlines() if line]

    assert zsh_complete("kubectl-dtj", "des") == ["describe"]
    typed = ["kubectl-dtj", "--context=arn:aws:x", "submit", "--preset"]
    assert zsh_complete(*typed, "sd2-base-2") == ["sd2-base-256"]
    assert zsh_complete("kubectl-dtj", "completion", "") == ["bash", "zsh"]
