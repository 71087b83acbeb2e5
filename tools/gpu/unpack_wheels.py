"""Unpack wheels into one directory for PYTHONPATH: an install that needs no registry, no pip
and no venv module (the GPU machine's Python may lack both). The staged wheels hold only
importable files and their .dist-info (no .data scripts), so unpacking is installing.

    python tools/gpu/unpack_wheels.py .wheels/gpu /tmp/dtj-bench-site
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path


def unpack_wheels(wheels: Path, site: Path) -> list[str]:
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    names = []
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        names.append(wheel.name.split("-")[0])
    return names


def main() -> int:
    wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
    names = unpack_wheels(wheels, site)
    if not names:
        print(f"no wheels in {wheels}: run tools/gpu/stage_wheels.sh first", file=sys.stderr)
        return 2
    print(f"unpacked {len(names)} wheels into {site}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
