"""Where Patchboard keeps its files and which models a server allows.

No torch here: the store, the CLI's store hits and the pages' first paint
read these without loading a model.
"""

from __future__ import annotations

import os
import re
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


#: A Hugging Face hub id: ``name`` or ``owner/name`` (letters, digits, ``.``, ``_``, ``-``).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def check_model_name(name: str) -> str:
    """The command line's ``--model``, checked before anything loads: the
    embedded model, an existing local folder holding a ``config.json``, or a
    name shaped like a hub id (``gpt2``, ``EleutherAI/pythia-70m``). A path
    that does not exist (``../etc``, ``/models/x``) or a folder that is not a
    model is refused here, in one line, instead of after the loader starts."""
    n = name.strip() if isinstance(name, str) else ""
    if not n:
        raise PatchboardError("model", f"empty; use {EMBEDDED}, a hub id such as gpt2 or a model folder")
    if n == EMBEDDED:
        return n
    from patching.core.registry import REGISTRY

    if REGISTRY.peek(n) is not None:  # loaded in this process (a script or test that registered it)
        return n
    path_like = n.startswith(("/", ".", "~")) or "\\" in n or ".." in n.split("/") or n.count("/") > 1
    if os.path.exists(n):
        if not os.path.isdir(n):
            raise PatchboardError("model", f"{shown(n)} is a file; give a model folder (with config.json and model.safetensors)")
        if not os.path.isfile(os.path.join(n, "config.json")):
            raise PatchboardError("model", f"{shown(n)} is a folder without config.json, not a Hugging Face model folder; "
                                  "give a folder with config.json and model.safetensors")
        return n
    if path_like:
        raise PatchboardError("model", f"no folder {shown(n)}; give an existing model folder, a hub id such as gpt2, or {EMBEDDED}")
    if not _HUB_ID.match(n) or "--" in n or ".." in n:
        raise PatchboardError("model", f"{shown(n)} is neither {EMBEDDED}, a hub id (owner/name) nor an existing model folder")
    if not _hub_cached(n) and not hub_reachable():
        raise PatchboardError("model", f"{shown(n)} is not in this machine's Hugging Face cache and the hub is unreachable from here; "
                              f"use {EMBEDDED}, a model folder, or download it where the hub is reachable")
    return n


def _hub_cached(name: str) -> bool:
    """Whether a hub id's config is in the local Hugging Face cache (True when unsure)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an unusual id or cache: the loader decides
        return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP probe, so an offline machine fails in seconds instead of
    sitting through huggingface_hub's retry back-off."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


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


