"""Timestamps of a page's script run, for ``benchmarks/first_paint.py``.

Off unless ``PATCHBOARD_TIMING`` names a file: then :func:`mark` appends one
JSON line ``{"t": unix time, "run": script-run id, "mark": name}``. No
streamlit import here (the first mark is taken before it is imported).
"""

from __future__ import annotations

import json
import os
import threading
import time

_PATH = os.environ.get("PATCHBOARD_TIMING")
_local = threading.local()  # one script run per thread


def enabled() -> bool:
    return bool(_PATH)


def start(page: str) -> None:
    """The first mark of a script run (``page``: app or a page's name)."""
    if _PATH:
        _local.run = f"{threading.get_ident()}-{time.time():.6f}"
        mark(f"start:{page}")


def mark(name: str) -> None:
    if not _PATH:
        return
    line = json.dumps({"t": time.time(), "run": getattr(_local, "run", "?"), "mark": name})
    with open(_PATH, "a", encoding="utf-8") as f:
        f.write(line + "\n")
