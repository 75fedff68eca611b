"""The generic batched patching engine.

Like TransformerLens's ``generic_activation_patch``, one function runs any list
of patches; the sweeps in ``sweeps.py`` only say *which* activations to patch.
Unlike it, the engine

* stacks many patched runs along the batch dimension (``patch x row``), chunked
  to a memory budget, instead of one forward pass per patch (auto-circuit's idea);
* starts each patched run at its lowest patched layer from the cached residual
  stream of the unpatched run (the layers below are identical). Runs starting at
  different layers share one batch that *grows* as it goes up: a patch joins
  the batch at its own layer, so no layer is ever computed needlessly;
* runs only the positions from ``same_prefix`` on (the first position where the
  two runs differ). Before it both runs -- and every patched run, the model
  being causal -- are identical, so the prefix's keys and values are computed
  once and handed to every block through a KV cache, and patches of prefix
  positions are exact no-ops that are not run at all;
* unembeds only the final position, the only one the metrics read.

It drives the bridge's own blocks (with their hooks), replaying the keyword
arguments (masks, rotary embeddings, positions) captured from one ordinary
forward pass, so it works for any architecture TransformerBridge supports. The
prefix-cache path is checked once per prepared input against the unpatched
run; where it does not reproduce it (or the patches need whole-sequence
activations, e.g. a custom ``setter``), the engine runs the full sequence.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .models import LoadedModel

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Edit:
    """Overwrite (part of) one activation with the source run's value.

    ``pos``/``head`` None means every position / no head axis. ``setter`` lets
    other patch kinds (e.g. path patching) write anything: it receives the
    patched run's activation slice ``[rows, ...]`` (the whole sequence) and the
    row slice, and edits it in place.
    """

    hook: str
    layer: int
    pos: int | None = None
    head: int | None = None
    setter: Callable[[torch.Tensor, slice], None] | None = field(default=None, compare=False)

    def index(self, offset: int = 0) -> tuple:
        """Index into ``[rows, pos, (head), ...]``; ``offset`` = positions not run."""
        idx: tuple = (slice(None), self.pos - offset if self.pos is not None else slice(None))
        if self.head is not None:
            idx = idx + (self.head,)
        return idx


Patch = tuple[Edit, ...]

# Activations whose second axis is the position (batch, pos, ...): only these
# can be patched on the suffix alone. Anything else runs the full sequence.
_POSITIONAL_HOOKS = (
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
    "attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_result",
)


def memory_budget_bytes() -> int:
    return int(float(os.environ.get("PATCHBOARD_MEM_BUDGET_MB", "1024")) * 2**20)


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(bridge) -> threading.RLock:
    """The lock to hold while running a model with temporary hooks (or, here,
    temporarily pass-through blocks): these live on the shared model, so two
    threads (two app sessions) running it at once would see each other's.
    Re-entrant; the engine and ``runs.prepare`` hold it."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(bridge)
        if lock is None:
            lock = _LOCKS[bridge] = threading.RLock()
        return lock


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
        with torch.inference_mode(False), torch.no_grad():
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
        self.softcap = _softcap(self.bridge)

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
        return _final_logits(self.bridge, self.softcap, resid_last)


def _softcap(bridge) -> float | None:
    cap = float(getattr(bridge.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    return cap if cap > 0 else None


def _final_logits(bridge, softcap: float | None, resid_last: torch.Tensor) -> torch.Tensor:
    x = bridge.ln_final(resid_last[:, None, :])
    logits = bridge.unembed(x)[:, 0, :]
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


class _PrefixCache:
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


@dataclass
class RowStats:
    """Per-row readouts at the final position; the metrics are built from these."""

    ld: torch.Tensor  # logit(answer) - logit(counter_answer)
    prob: torch.Tensor  # P(answer)
    logprob: torch.Tensor  # log P(answer)
    kl: torch.Tensor  # KL(clean || this run)

    @staticmethod
    def cat(items: Sequence["RowStats"]) -> "RowStats":
        return RowStats(*(torch.cat([getattr(s, f) for s in items]) for f in ("ld", "prob", "logprob", "kl")))

    def view(self, *shape) -> "RowStats":
        return RowStats(*(getattr(self, f).reshape(*shape) for f in ("ld", "prob", "logprob", "kl")))


def row_stats(logits: torch.Tensor, answer: torch.Tensor, counter: torch.Tensor, clean_logprobs: torch.Tensor) -> RowStats:
    logits = logits.float()
    lp = torch.log_softmax(logits, dim=-1)
    a = answer[:, None]
    ld = (logits.gather(1, a) - logits.gather(1, counter[:, None]))[:, 0]
    lpa = lp.gather(1, a)[:, 0]
    kl = (clean_logprobs.exp() * (clean_logprobs - lp)).sum(-1)
    return RowStats(ld=ld, prob=lpa.exp(), logprob=lpa, kl=kl)


@dataclass
class EngineInputs:
    """Everything a sweep needs, for R rows (pairs x noise samples)."""

    base_resid: list[torch.Tensor]  # resid_pre per layer of the run being patched, [R, seq, d]
    source: dict[str, torch.Tensor]  # hook name -> source run's activation [R, ...]
    answer: torch.Tensor  # [R]
    counter: torch.Tensor  # [R]
    clean_logprobs: torch.Tensor  # [R, vocab] at the final position
    base_stats: RowStats  # the unpatched run's stats
    same_prefix: int = 0  # positions < this are identical in both runs
    lm: LoadedModel | None = None
    # Keys/values of positions < same_prefix (shared by both runs); with lm
    # they enable the suffix path.
    prefix_kv: PrefixKV | None = None
    use_suffix: bool = True  # False forces the full-sequence path
    runner_: BlockRunner | None = field(default=None, repr=False)
    _suffix: Any = field(default=None, repr=False)  # SuffixPath, or False once ruled out

    @property
    def seq_len(self) -> int:
        return int(self.base_resid[0].shape[1])

    @property
    def runner(self) -> BlockRunner:
        """The full-sequence runner, captured on first use (only the
        full-sequence path and callers outside the engine need it). Touch it
        outside any ``bridge.hooks`` context: capturing runs a forward pass."""
        if self.runner_ is None:
            assert self.lm is not None, "EngineInputs needs lm or runner_"
            self.runner_ = BlockRunner(self.lm, self.seq_len)
        return self.runner_

    @property
    def bridge(self):
        return self.lm.bridge if self.lm is not None else self.runner.bridge

    def suffix_path(self) -> SuffixPath | None:
        """The suffix path, built on first use; None where unavailable."""
        if not self.use_suffix or self.lm is None or self.prefix_kv is None or self._suffix is False:
            return None
        if self._suffix is None:
            path = None
            if self.prefix_kv.length == self.same_prefix:
                try:
                    path = build_suffix_path(self.lm, self.prefix_kv, self.seq_len)
                except Exception:  # an architecture the cache path does not fit: run full sequences
                    path = None
            self._suffix = path if path is not None else False
        return self._suffix or None


def _touches(e: Edit, prefix: int, seq: int) -> bool:
    """Whether an edit can change anything. Positions < ``prefix`` are
    identical in the base and source runs, and in every patched run (the
    model is causal), so overwriting them is a no-op."""
    if e.setter is not None:
        return True
    return (e.pos if e.pos is not None else seq - 1) >= prefix


def _start(patch: Patch) -> int:
    return min(e.layer for e in patch) if patch else 0


def run_patches(inp: EngineInputs, patches: Sequence[Patch], progress: ProgressFn | None = None, max_rows: int | None = None) -> RowStats:
    """Run every patch; returns stats shaped [n_patches, R].

    ``max_rows`` caps the rows (patches x pairs) of one batch; by default it
    follows the memory budget (``PATCHBOARD_MEM_BUDGET_MB``)."""
    # inference_mode skips autograd's bookkeeping (~15% here); the results are
    # cloned out of it so callers get ordinary tensors.
    with model_lock(inp.bridge), torch.inference_mode():
        st = _run_patches(inp, patches, progress, max_rows)
    return RowStats(*(getattr(st, f).clone() for f in ("ld", "prob", "logprob", "kl")))


def _run_patches(inp: EngineInputs, patches: Sequence[Patch], progress: ProgressFn | None, max_rows: int | None) -> RowStats:
    R, seq, _ = inp.base_resid[0].shape
    out: list[RowStats | None] = [None] * len(patches)

    # Drop edits that cannot change anything; a patch left empty is the base run.
    live: list[tuple[int, Patch]] = []
    for i, patch in enumerate(patches):
        kept = tuple(e for e in patch if _touches(e, inp.same_prefix, seq))
        if kept:
            live.append((i, kept))
        else:
            out[i] = inp.base_stats

    # Patches of position-indexed activations run on the suffix alone.
    suffix_items = [pi for pi in live if all(e.setter is None and e.hook.endswith(_POSITIONAL_HOOKS) for e in pi[1])]
    path = inp.suffix_path() if suffix_items else None
    if path is None:
        suffix_items = []
    in_suffix = {i for i, _ in suffix_items}
    full_items = [pi for pi in live if pi[0] not in in_suffix]

    # Work items: (path, group of patches sorted by start layer, row block, check).
    work: list[tuple[SuffixPath | None, list[tuple[int, Patch]], slice, bool]] = []
    for pth, items in ((path, suffix_items), (None, full_items)):
        if not items:
            continue
        width = seq - (pth.offset if pth is not None else 0)
        mr = max_rows or _default_max_rows(inp.bridge.cfg, width, seq)
        row_blocks = [slice(r, min(R, r + mr)) for r in range(0, R, mr)]
        per_group = max(1, mr // R) if R <= mr else 1
        items = sorted(items, key=lambda pi: _start(pi[1]))
        n_groups = -(-len(items) // per_group)
        size = -(-len(items) // n_groups)  # balanced groups
        for g in range(n_groups):
            for rows in row_blocks:
                # The suffix path's first use re-runs the unpatched rows with
                # the first group: it must reproduce the base run.
                work.append((pth, items[g * size:(g + 1) * size], rows, pth is not None and not pth.checked and g == 0))

    results: dict[int, list[RowStats]] = {i: [] for i, _ in live}
    for done, (pth, group, rows, check) in enumerate(work, 1):
        pts = [p for _, p in group]
        starts = [_start(p) for p in pts]
        if check:
            pts, starts = [()] + pts, [0] + starts
        st = _run_group(inp, pth, pts, starts, rows)
        if check:
            if not _same_stats(st, 0, inp.base_stats, rows):
                inp._suffix = False  # never trust this path on these inputs; start over on full sequences
                return _run_patches(inp, patches, progress, max_rows)
            st = RowStats(st.ld[1:], st.prob[1:], st.logprob[1:], st.kl[1:])
        for slot, (i, _) in enumerate(group):
            results[i].append(RowStats(st.ld[slot], st.prob[slot], st.logprob[slot], st.kl[slot]))
        if progress:
            progress(done, len(work))
    if path is not None and suffix_items:
        path.checked = True
    for i, _ in live:
        out[i] = RowStats.cat(results[i])
    return RowStats(*(torch.stack([getattr(s, f) for s in out]) for f in ("ld", "prob", "logprob", "kl")))  # type: ignore[union-attr]


def _same_stats(st: RowStats, slot: int, base: RowStats, rows: slice) -> bool:
    for f in ("ld", "logprob", "kl"):
        if not torch.allclose(getattr(st, f)[slot].double(), getattr(base, f)[rows].double(), atol=1e-3, rtol=1e-4):
            return False
    return True


#: Upper bound on tokens (rows x positions run) per batch: past a few
#: thousand, bigger batches stop paying on CPU.
MAX_BATCH_TOKENS = 4096
#: Rows unembedded at once (the vocabulary row dominates memory there).
UNEMBED_ROWS = 256


def _default_max_rows(cfg, width: int, seq: int) -> int:
    """Rows per batch within the memory budget: one block's MLP activations
    and attention scores per row (the unembedding is chunked separately)."""
    d_model = int(cfg.d_model)
    d_mlp = int(getattr(cfg, "d_mlp", 0) or 4 * d_model)
    per_row = 4 * (width * (4 * d_model + 3 * d_mlp) + 2 * int(cfg.n_heads) * width * seq)
    unembed = 4 * 3 * int(cfg.d_vocab) * UNEMBED_ROWS
    budget = max(memory_budget_bytes() - unembed, per_row)
    return max(1, min(MAX_BATCH_TOKENS // max(width, 1), budget // max(per_row, 1)))


def _run_group(inp: EngineInputs, path: SuffixPath | None, patches: Sequence[Patch], starts: Sequence[int], rows: slice) -> RowStats:
    """Run ``patches`` (sorted by start layer) on rows ``rows`` as one batch
    that grows on the way up: patch ``s`` joins at layer ``starts[s]`` with
    the base run's residual stream there. Returns stats [len(patches), rows]."""
    bridge = inp.bridge
    blocks = list(bridge.blocks)
    n_layers = len(blocks)
    offset = path.offset if path is not None else 0
    Rb = rows.stop - rows.start
    P = len(patches)

    by_hook: dict[str, list[tuple[int, Edit]]] = {}
    for slot, patch in enumerate(patches):
        for e in patch:
            by_hook.setdefault(e.hook, []).append((slot, e))
    hooks = [(name, _make_hook(edits, inp.source.get(name), Rb, rows, offset)) for name, edits in by_hook.items()]

    if path is not None:
        cache = _PrefixCache([k[rows] for k in path.kv.keys], [v[rows] for v in path.kv.values])
        calls = [c.bind(cache) for c in path.calls]
    else:
        calls = inp.runner.calls  # captured before any hook is added

    x: torch.Tensor | None = None
    joined = 0
    with bridge.hooks(fwd_hooks=hooks):
        for layer in range(starts[0], n_layers):
            n_new = 0
            while joined + n_new < P and starts[joined + n_new] == layer:
                n_new += 1
            if n_new:
                # repeat() copies: hooks edit the batch in place, never the cache.
                add = inp.base_resid[layer][rows, offset:].repeat(n_new, 1, 1)
                x = add if x is None else torch.cat([x, add])
                joined += n_new
            args, kwargs = calls[layer]
            out = blocks[layer](x, *args, **kwargs)
            x = out if torch.is_tensor(out) else out[0]
    assert x is not None and joined == P
    last = x[:, -1, :]
    del x
    softcap = _softcap(bridge)
    ref = _Reference(inp.answer[rows], inp.counter[rows], inp.clean_logprobs[rows])
    stats = []
    step = max(1, UNEMBED_ROWS // Rb)  # whole patches per unembedding chunk
    for s in range(0, P, step):
        n = min(step, P - s)
        logits = _final_logits(bridge, softcap, last[s * Rb:(s + n) * Rb])
        stats.append(ref.stats(logits.float().view(n, Rb, -1)))
    return RowStats.cat(stats).view(P, Rb)


class _Reference:
    """``row_stats`` for [patches, rows, vocab] logits against the rows' clean
    distribution p, without tiling the clean rows over the patches:
    KL(clean || x) = sum p log p - sum p log_softmax(x), p and the first sum
    computed once. (Plain sums, not a matrix product: over 49k terms a
    float32 GEMV's accumulation is off by ~1e-4.)"""

    def __init__(self, answer: torch.Tensor, counter: torch.Tensor, clean_logprobs: torch.Tensor):
        self.answer, self.counter = answer, counter  # [rows]
        lp = clean_logprobs.float()
        self.p = lp.exp()  # [rows, vocab]
        self.neg_entropy = (self.p * lp).sum(-1)  # [rows]

    def stats(self, logits: torch.Tensor) -> RowStats:
        n, rows, _ = logits.shape
        lp = torch.log_softmax(logits, -1)
        ld = logits.gather(-1, self.answer.expand(n, rows)[..., None])[..., 0] - logits.gather(-1, self.counter.expand(n, rows)[..., None])[..., 0]
        logprob = lp.gather(-1, self.answer.expand(n, rows)[..., None])[..., 0]
        kl = self.neg_entropy - (lp * self.p).sum(-1)
        return RowStats(ld=ld.reshape(-1), prob=logprob.exp().reshape(-1), logprob=logprob.reshape(-1), kl=kl.reshape(-1))


def _make_hook(edits: list[tuple[int, Edit]], src: torch.Tensor | None, Rb: int, rows: slice, offset: int):
    """One hook per activation: writes each slot's edit into its rows."""
    writes = []
    for slot, e in edits:
        if e.setter is not None:
            writes.append((slot, e.setter, None))
        else:
            assert src is not None, f"no source activation cached for {e.hook}"
            idx = e.index(offset)
            writes.append((slot, idx, src[rows, offset:][idx]))

    def hook(act: torch.Tensor, hook=None):
        view = act.reshape(-1, Rb, *act.shape[1:])  # a view when contiguous, else a copy
        for slot, idx, val in writes:
            if val is None:
                idx(view[slot], rows)  # a setter
            else:
                view[slot][idx] = val
        return view.reshape(act.shape)

    return hook
