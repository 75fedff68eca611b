"""Running a model's own blocks from any layer, on a batch the engine builds.

TransformerBridge computes, once per forward pass and before its blocks, the
arguments each block receives besides the hidden states (causal mask, rotary
cos/sin, position ids, the KV cache). :func:`_capture_block_calls` records
them from one ordinary forward pass; :class:`BlockRunner` replays them over
any batch, from any layer, with the bridge's hooks live. :class:`PrefixKV` and
:class:`SuffixPath` let a batch run only the positions after the prefix both
prompts share, reading that prefix's keys and values from a cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from patching.core.models import LoadedModel
from patching.engine.resources import model_lock, no_graph


class _CacheSlot:
    """Marks where a block received the model's KV cache."""

    def __repr__(self) -> str:
        return "<cache>"


_CACHE = _CacheSlot()


@dataclass
class BlockCall:
    """The arguments one block received besides the hidden states
    (masks, rotary cos/sin, position ids; some models pass them positionally),
    with the KV cache replaced by ``_CACHE``."""

    args: tuple
    kwargs: dict

    @property
    def has_cache(self) -> bool:
        return any(v is _CACHE for v in self.args) or any(v is _CACHE for v in self.kwargs.values())

    def bind(self, cache: Any) -> tuple[tuple, dict]:
        """The arguments with ``cache`` in the cache's place; with no cache,
        caching is switched off."""
        args = tuple(cache if v is _CACHE else v for v in self.args)
        kwargs = {k: (cache if v is _CACHE else v) for k, v in self.kwargs.items()}
        if cache is None:
            kwargs.pop("cache_position", None)
        kwargs["use_cache"] = cache is not None
        return args, kwargs


def _is_cache(v: Any) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, Cache)


def _passthrough(*args, **kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _capture_block_calls(blocks: Sequence[torch.nn.Module], forward: Callable[[], Any], skip_blocks: bool = False) -> list[BlockCall]:
    """Run ``forward`` once and record what each block is called with.

    The model computes these arguments once, before its blocks; with
    ``skip_blocks`` the blocks pass their input through unchanged meanwhile
    (the forward pass costs next to nothing). Callers must check the result."""
    captured: dict[int, BlockCall] = {}

    def grab(i):
        def pre(_mod, args, kwargs):
            a = tuple(_CACHE if _is_cache(v) else v for v in args[1:])
            kw = {k: (_CACHE if _is_cache(v) else v) for k, v in kwargs.items() if k not in ("hidden_states", "use_cache")}
            captured.setdefault(i, BlockCall(a, kw))

        return pre

    handles = [b.register_forward_pre_hook(grab(i), with_kwargs=True) for i, b in enumerate(blocks)]
    saved = [b.__dict__.get("forward") for b in blocks]
    try:
        if skip_blocks:
            for b in blocks:
                # On the instance itself: the bridge's __setattr__ would pass
                # ``forward`` through to the wrapped HF module.
                object.__setattr__(b, "forward", _passthrough)
        # Ordinary tensors even when called under inference_mode: callers
        # outside the engine replay these arguments too.
        with torch.inference_mode(False), no_graph():
            forward()
    finally:
        for h in handles:
            h.remove()
        if skip_blocks:
            for b, f in zip(blocks, saved):
                if f is None:
                    b.__dict__.pop("forward", None)
                else:
                    object.__setattr__(b, "forward", f)
    return [captured[i] for i in range(len(blocks))]


class BlockRunner:
    """Runs the model's blocks from any layer, with the bridge's hooks live.

    The per-block arguments HF computes once per forward (causal mask, rotary
    cos/sin, position ids) depend only on the sequence length; they are
    captured from one batch-1 forward pass and broadcast over any batch."""

    def __init__(self, lm: LoadedModel, seq_len: int):
        self.lm = lm
        self.bridge = lm.bridge
        self.blocks = list(self.bridge.blocks)
        self.seq_len = seq_len
        dummy = torch.full((1, seq_len), int(self.lm.tokenizer.bos_token_id or 0), dtype=torch.long, device=lm.device)
        with model_lock(self.bridge):
            self.calls = [c.bind(None) for c in _capture_block_calls(self.blocks, lambda: self.bridge(dummy))]
        self.softcap = logit_softcap(self.bridge)

    @property
    def kwargs(self) -> list[dict]:
        return [kw for _, kw in self.calls]

    def run_from(self, layer: int, resid: torch.Tensor, stop: int | None = None) -> torch.Tensor:
        stop = len(self.blocks) if stop is None else stop
        x = resid
        for i in range(layer, stop):
            args, kwargs = self.calls[i]
            out = self.blocks[i](x, *args, **kwargs)
            x = out if torch.is_tensor(out) else out[0]
        return x

    def final_logits(self, resid_last: torch.Tensor) -> torch.Tensor:
        """[B, d_model] residual at the final position -> [B, vocab] logits."""
        return final_logits(self.bridge, self.softcap, resid_last)


def logit_softcap(bridge) -> float | None:
    """The model's final-logit soft cap (Gemma 2), None where it has none."""
    cap = float(getattr(bridge.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    return cap if cap > 0 else None


def final_logits(bridge, softcap: float | None, resid_last: torch.Tensor) -> torch.Tensor:
    """[B, d_model] residual at the final position -> [B, vocab] logits:
    final norm, unembedding, soft cap (``softcap`` from :func:`logit_softcap`)."""
    x = bridge.ln_final(resid_last[:, None, :])
    logits = bridge.unembed(x)[:, 0, :]
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


class PrefixCache:
    """A stand-in for HF's cache objects, fresh for each batch: every layer's
    keys/values are the shared prefix's (tiled over the patches in the batch)
    followed by the positions being run. Nothing is stored, so one object
    serves a whole run and cannot leak state into the next."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values  # per layer [rows, kv_heads, prefix, d_head]
        self.prefix = int(keys[0].shape[-2]) if keys else 0

    @staticmethod
    def _join(pre: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        B, rows = new.shape[0], pre.shape[0]
        p = pre.shape[-2]
        out = new.new_empty(B, *new.shape[1:-2], p + new.shape[-2], new.shape[-1])
        # Rows are patch-major: row b reads prefix row b % rows.
        out.view(B // rows, rows, *out.shape[1:])[..., :p, :] = pre
        out[..., p:, :] = new
        return out

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return self._join(self.keys[layer_idx], key_states), self._join(self.values[layer_idx], value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class PrefixKV:
    """Keys and values of the positions before ``same_prefix``, per layer
    ``[R, kv_heads, prefix, d_head]`` (as the model's attention caches them)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[-2])

    @staticmethod
    def from_hf_cache(cache: Any, prefix: int, rows: slice = slice(None)) -> "PrefixKV | None":
        """Slice a filled HF cache (e.g. a ``DynamicCache``) to the prefix;
        None if it does not hold plain per-layer 4-d keys/values."""
        layers = getattr(cache, "layers", None)
        if not layers:
            return None
        keys, values = [], []
        for layer in layers:
            k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
            if not (torch.is_tensor(k) and torch.is_tensor(v) and k.ndim == 4 and v.ndim == 4 and k.shape[-2] >= prefix and v.shape[-2] >= prefix):
                return None
            keys.append(k[rows, :, :prefix].detach().clone())
            values.append(v[rows, :, :prefix].detach().clone())
        return PrefixKV(keys, values)

    @staticmethod
    def cat(parts: Sequence["PrefixKV"]) -> "PrefixKV":
        return PrefixKV([torch.cat(k) for k in zip(*(p.keys for p in parts))], [torch.cat(v) for v in zip(*(p.values for p in parts))])


@dataclass
class SuffixPath:
    """What the engine needs to run positions ``offset:`` only."""

    offset: int
    calls: list[BlockCall]  # per block, captured from a batch-1 suffix forward on a prefix cache
    kv: PrefixKV
    checked: bool = False  # reproduced the unpatched run once


def build_suffix_path(lm: LoadedModel, kv: PrefixKV, seq_len: int) -> SuffixPath | None:
    """Capture the blocks' arguments for a run of positions ``kv.length:`` on
    top of a cache of the prefix (one batch-1 forward of the suffix). None
    where the blocks do not receive the cache."""
    bridge = lm.bridge
    blocks = list(bridge.blocks)
    p = kv.length
    if len(kv.keys) != len(blocks) or not 0 < p < seq_len:
        return None
    dummy = torch.full((1, seq_len - p), int(lm.tokenizer.bos_token_id or 0), dtype=torch.long, device=kv.keys[0].device)
    calls = None
    with model_lock(bridge):
        try:
            # Blocks skipped: only the arguments are needed (the first use checks the path).
            calls = _capture_block_calls(blocks, lambda: bridge(dummy, past_key_values=_one_row_cache(kv)), skip_blocks=True)
        except Exception:
            calls = None
        if calls is None or not all(c.has_cache for c in calls):
            calls = _capture_block_calls(blocks, lambda: bridge(dummy, past_key_values=_one_row_cache(kv)))
    if not all(c.has_cache for c in calls):
        return None
    return SuffixPath(offset=p, calls=calls, kv=kv)


def _one_row_cache(kv: PrefixKV):
    """A fresh HF DynamicCache holding row 0 of the prefix."""
    from transformers import DynamicCache

    one = DynamicCache()
    for i, (k, v) in enumerate(zip(kv.keys, kv.values)):
        one.update(k[:1].clone(), v[:1].clone(), i)
    return one


