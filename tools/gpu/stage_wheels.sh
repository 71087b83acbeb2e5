#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (staged-wheels.txt) into .wheels/gpu, for CPython
# 3.12 on manylinux x86_64, so `make bench-gpu` installs them there without a registry.
# Usage: tools/gpu/stage_wheels.sh   (then pass `.wheels/gpu` along with the repository)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="$ROOT/.wheels/gpu"
LIST="$ROOT/tools/gpu/staged-wheels.txt"
mkdir -p "$DEST"
# uv has no download command; pip (run by uv from the package index) does, for any platform.
uv tool run --quiet --from 'pip>=24' pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
  --dest "$DEST" -r "$LIST"
# Only what the list names: a wheel left from an older list must not travel.
python3 - "$DEST" "$LIST" <<'PY'
import re, sys
from pathlib import Path
dest, listed = Path(sys.argv[1]), Path(sys.argv[2])
def norm(name): return re.sub(r"[-_.]+", "_", name).lower()
wanted = {norm(l.split("==")[0]) + "-" + l.split("==")[1].strip()
          for l in listed.read_text().splitlines() if l.strip() and not l.startswith("#")}
for wheel in dest.glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    if f"{norm(name)}-{version}" not in wanted:
        wheel.unlink()
PY
du -sh "$DEST" | awk '{print "staged wheels: " $1 " in .wheels/gpu"}'
