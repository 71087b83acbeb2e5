"""Read rank 0's JSON progress endpoint over HTTP (short timeout, never raises)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from diffusion_operator import constants as c

TIMEOUT_S = 1.5


def fetch_progress(host: str, port: int = c.METRICS_PORT) -> dict[str, Any] | None:
    url = f"http://{host}:{port}/progress"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            payload = json.loads(response.read(65536))
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None
