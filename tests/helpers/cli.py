"""The CLI as a user runs it: ``python -m patching`` in a subprocess, on a
cache folder of its own (the converted embedded model linked in, a fresh
store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def make_cache(tmp: Path) -> Path:
    """A cache folder with the converted embedded model linked in."""
    from patching.core.models import embedded_folder

    tmp.mkdir(parents=True, exist_ok=True)
    src = embedded_folder().parent.resolve()  # converts the embedded model once if needed
    (tmp / "models").symlink_to(src, target_is_directory=True)
    return tmp


def env_for(cache: Path) -> dict:
    """The environment of a CLI subprocess on ``cache`` (this checkout
    importable, no debug tracebacks)."""
    e = dict(os.environ, PATCHBOARD_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    e.pop("PATCHBOARD_DEBUG", None)
    return e


def run_cli(env: dict, *args: str, cwd=None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m patching *args`` under ``env``; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "patching", *args], env=env, capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)
