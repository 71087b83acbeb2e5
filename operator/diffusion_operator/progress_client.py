"""Read rank 0's JSON progress endpoint over HTTP (short timeout, bounded size, never raises)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from diffusion_operator import constants as c

TIMEOUT_S = 1.5
MAX_BYTES = 65536
UNREACHABLE = object()  # no answer at all, as opposed to an answer of the wrong shape


def fetch_progress(host: str, port: int = c.METRICS_PORT, timeout_s: float = TIMEOUT_S) -> Any:
    """The decoded JSON; `UNREACHABLE` when there was no usable answer."""
    url = f"http://{host}:{port}/progress"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read(MAX_BYTES))
    except (OSError, urllib.error.URLError, ValueError):
        return UNREACHABLE
