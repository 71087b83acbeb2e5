"""`kubectl_complete-dtj`: what kubectl (1.26+) runs to complete `kubectl dtj <TAB>`, and what the
scripts of `kubectl dtj completion bash|zsh` run to complete the `kubectl-dtj` command. It gets
the words after `dtj` (the last one is being completed, maybe empty) and prints one candidate per
line, then cobra's directive line (:4, no file completion). Candidates come from the argparse
parser: subcommands, flags, flag and argument choices, and the job names of the namespace (the
--kubeconfig, --context and -n typed so far) where a job name goes."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

NO_FILE_COMPLETION = ":4"
CONNECTION_FLAGS = ("kubeconfig", "context", "namespace")  # the root parser's dests


@dataclass
class Typed:
    """What the words before the one being completed say."""

    parser: argparse.ArgumentParser | None  # the root's, or the subcommand's; None: unknown
    command: str | None = None
    positionals: list[str] = field(default_factory=list)
    connection: dict[str, str] = field(default_factory=dict)  # kubeconfig, context, namespace
    value_of: argparse.Action | None = None  # the flag whose value is being completed


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option(parser: argparse.ArgumentParser, word: str) -> tuple[argparse.Action | None, str | None]:
    """The flag `word` names and the value it carries (`--name=value`, `-nvalue`), if any."""
    name, equals, value = word.partition("=")
    action = parser._option_string_actions.get(name)
    if action is not None:
        return action, value if equals else None
    short = parser._option_string_actions.get(word[:2])
    if short is not None and not word.startswith("--") and short.nargs != 0:
        return short, word[2:]
    return None, None


def read_words(words: list[str]) -> Typed:
    from diffusion_operator.kubectl_plugin.cli import build_parser

    root = build_parser()
    typed = Typed(parser=root)
    for word in words[:-1]:
        if typed.parser is None:
            break
        if typed.value_of is not None:
            remember(typed, typed.value_of, word)
            typed.value_of = None
        elif word.startswith("-") and word != "-":
            action, value = option(typed.parser, word)
            if action is not None and action.nargs != 0:
                if value is None:
                    typed.value_of = action
                else:
                    remember(typed, action, value)
        elif typed.command is None:
            typed.command = word
            typed.parser = subparsers(root).get(word)
        else:
            typed.positionals.append(word)
    return typed


def remember(typed: Typed, action: argparse.Action, value: str) -> None:
    if typed.command is None and action.dest in CONNECTION_FLAGS:
        typed.connection[action.dest] = value


def next_positional(typed: Typed) -> argparse.Action | None:
    if typed.parser is None or typed.command is None:
        return None
    positional = [a for a in typed.parser._actions if not a.option_strings]
    return positional[len(typed.positionals)] if len(typed.positionals) < len(positional) else None


def completes_a_job_name(typed: Typed) -> bool:
    action = next_positional(typed)
    return action is not None and action.dest == "name"


def candidates(words: list[str], job_names: list[str]) -> list[str]:
    """words: the arguments after `dtj`, the last one being completed (maybe empty)."""
    return candidates_after(read_words(words or [""]), words[-1] if words else "", job_names)


def candidates_after(typed: Typed, current: str, job_names: list[str]) -> list[str]:
    """What may replace `current`, the word being completed, after what `typed` read."""
    options: list[str] = []
    if typed.parser is None:
        return []
    if typed.value_of is not None:
        options = [str(choice) for choice in typed.value_of.choices or []]
    elif current.startswith("-"):
        action, value = option(typed.parser, current)
        if action is not None and value is not None and "=" in current:
            flag = current.partition("=")[0]
            options = [f"{flag}={choice}" for choice in action.choices or []]
        else:
            options = [o for o in typed.parser._option_string_actions if o.startswith("--")]
            options.sort()
    elif typed.command is None:
        options = list(subparsers(typed.parser))
    elif completes_a_job_name(typed):
        options = job_names
    elif (positional := next_positional(typed)) is not None:
        options = [str(choice) for choice in positional.choices or []]
    return [option for option in options if option.startswith(current)]


def job_names_of(connection: dict[str, str]) -> list[str]:
    from diffusion_operator import constants as c
    from diffusion_operator.kubectl_plugin.connection import connect

    try:
        conn = connect(
            connection.get("kubeconfig"), connection.get("context"), connection.get("namespace")
        )
        found = conn.custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, conn.namespace, c.PLURAL, _request_timeout=3
        )
    except Exception:  # completion must never fail loudly
        return []
    return sorted(item["metadata"]["name"] for item in found["items"])


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    typed = read_words(words or [""])
    names = job_names_of(typed.connection) if completes_a_job_name(typed) else []
    for candidate in candidates_after(typed, words[-1] if words else "", names):
        print(candidate)
    print(NO_FILE_COMPLETION)
    return 0


# `kubectl dtj completion bash`: bash splits COMP_WORDS at `=` and `:` too (`--kubeconfig`, `=`,
# `/path`), so the function joins those pieces back before asking, and strips what precedes the
# piece being completed from the answers. The last line of the answer is cobra's directive.
BASH = r"""# bash completion for kubectl-dtj; load it with: source <(kubectl-dtj completion bash)
_kubectl_dtj() {
    local cur=${COMP_WORDS[COMP_CWORD]} word line i n=0
    local -a words=()
    for ((i = 1; i <= COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if ((n > 0)) && [[ $word == [=:]* || ${words[n - 1]} == *[=:] ]]; then
            words[n - 1]+=$word
        else
            words[n]=$word
            n=$((n + 1))
        fi
    done
    local skip=$((${#words[n - 1]} - ${#cur}))
    COMPREPLY=()
    while IFS= read -r line; do
        [[ -z $line || $line == :* ]] || COMPREPLY+=("${line:skip}")
    done < <(kubectl_complete-dtj "${words[@]}" 2>/dev/null)
}
complete -F _kubectl_dtj kubectl-dtj
"""

ZSH = r"""#compdef kubectl-dtj
# zsh completion for kubectl-dtj; load it (after compinit) with:
#   source <(kubectl-dtj completion zsh)
_kubectl_dtj() {
    local -a found
    found=(${(f)"$(kubectl_complete-dtj "${(@)words[2,CURRENT]}" 2>/dev/null)"})
    found=(${found:#:*})
    compadd -- "${(@)found}"
}
compdef _kubectl_dtj kubectl-dtj
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH}


if __name__ == "__main__":
    sys.exit(main())
