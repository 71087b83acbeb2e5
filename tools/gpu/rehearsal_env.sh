#!/usr/bin/env bash
# A Python 3.12 environment shaped like the GPU machine's (machine-requirements.txt: torch
# 2.11, numpy 2.5, transformers 5, ...), for rehearsing `make bench-gpu` on CPU. Built once
# per requirements file under ~/.cache/dtj (uv's cache keeps the downloads); prints its python.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REQUIREMENTS="$ROOT/tools/gpu/machine-requirements.txt"
digest=$(sha256sum "$REQUIREMENTS" | cut -c1-12)
ENV_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/dtj/gpu-shape-$digest"

find_python312() {
  local candidate
  for candidate in "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 \
    "$(command -v python3.12 || true)"; do
    [ -x "$candidate" ] && "$candidate" -c 'import sys' 2>/dev/null && echo "$candidate" && return
  done
  # Else uv's own build (downloaded where GitHub is reachable).
  uv python find 3.12 2>/dev/null && return
  uv python install --quiet 3.12 >&2 && uv python find 3.12 && return
  echo "no Python 3.12: install one (pyenv install 3.12, or uv python install 3.12)" >&2
  exit 2
}

if [ ! -x "$ENV_DIR/bin/python" ] || [ ! -f "$ENV_DIR/.complete" ]; then
  rm -rf "$ENV_DIR"
  uv venv --quiet --python "$(find_python312)" "$ENV_DIR" >&2
  uv pip install --quiet --python "$ENV_DIR/bin/python" -r "$REQUIREMENTS" >&2
  touch "$ENV_DIR/.complete"
fi
echo "$ENV_DIR/bin/python"
