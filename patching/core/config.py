"""Where Patchboard keeps its files and which models a server allows.

No torch here: the store, the CLI's store hits and the pages' first paint
read these without loading a model.
"""

from __future__ import annotations

import os
from pathlib import Path

from patching.core.errors import PatchboardError, shown

EMBEDDED = "smollm2-135m"


def cache_dir() -> Path:
    """Root of everything Patchboard writes (store, converted models)."""
    root = os.environ.get("PATCHBOARD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "patchboard")
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _is_local(name: str) -> bool:
    return os.path.isdir(name)


def check_allowed(name: str, allowed: str | None) -> None:
    """Server policy for names that come from a URL or a widget.

    ``allowed`` is a comma list (PATCHBOARD_ALLOWED_MODELS); ``*`` admits any hub
    id (never a local path). Local folders must be listed by exact path. The
    embedded model is always allowed.
    """
    if name == EMBEDDED:
        return
    items = [s.strip() for s in (allowed or "").split(",") if s.strip()]
    if name in items:
        return
    looks_local = _is_local(name) or name.startswith((".", "/", "~")) or ".." in name
    if "*" in items and not looks_local:
        return
    raise PatchboardError("model", f"{shown(name)} is not allowed on this server; use {EMBEDDED} or ask the admin to add it to PATCHBOARD_ALLOWED_MODELS")


def known_fingerprint(name: str) -> str | None:
    """The embedded model's fingerprint without loading it (written at its
    first load), so stored results can be shown before the model is ready."""
    if name != EMBEDDED:
        return None
    p = cache_dir() / "models" / EMBEDDED / "fingerprint.txt"
    try:
        return p.read_text().strip() or None
    except OSError:
        return None


def _write_sidecar(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        pass


