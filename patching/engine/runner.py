"""The generic batched patching engine.

Like TransformerLens's ``generic_activation_patch``, one function runs any list
of patches; the components in ``patching/methods/activation.py`` only say *which* activations to patch.
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

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from patching.core.models import LoadedModel
from patching.core.progress import ProgressFn
from patching.engine.blocks import BlockRunner, PrefixCache, PrefixKV, SuffixPath, build_suffix_path, final_logits, logit_softcap
from patching.engine.readout import Reference, RowStats
from patching.engine.resources import model_lock, sweep_rows, unembed_rows



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
        """Index into ``[rows, pos, (head), ...]``; ``offset`` = positions not run.
        An attention pattern is ``[rows, head, query, key]``: ``pos`` is the
        query (destination) position, as TransformerLens's pattern setters."""
        if self.hook.endswith(PATTERN_HOOKS):
            assert offset == 0, "patterns are patched on the full sequence only"
            return (slice(None), self.head if self.head is not None else slice(None), self.pos if self.pos is not None else slice(None))
        idx: tuple = (slice(None), self.pos - offset if self.pos is not None else slice(None))
        if self.head is not None:
            idx = idx + (self.head,)
        return idx


Patch = tuple[Edit, ...]

# Activations whose second axis is the position (batch, pos, ...): only these
# can be patched on the suffix alone. Anything else (attention patterns,
# [batch, head, query, key]) runs the full sequence.
PATTERN_HOOKS = ("attn.hook_pattern", "attn.hook_attn_scores")
POSITIONAL_HOOKS = (
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
    "attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_result",
)


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
    # [R, vocab] the corrupted run's log-probs at the final position; given
    # under noising, where the signed KL effect reads KL(corrupt || patched).
    corrupt_logprobs: torch.Tensor | None = None
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
    # Stronger than no_graph (patching/engine/resources.py owns the mode):
    # inference_mode skips autograd's bookkeeping (~15% here); the results are
    # cloned out of it so callers get ordinary tensors.
    with model_lock(inp.bridge), torch.inference_mode():
        st = _run_patches(inp, patches, progress, max_rows)
    return st.map(torch.Tensor.clone)


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
    suffix_items = [pi for pi in live if all(e.setter is None and e.hook.endswith(POSITIONAL_HOOKS) for e in pi[1])]
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
        mr = max_rows or sweep_rows(inp.bridge.cfg, width, seq)
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
            st = st[1:]
        for slot, (i, _) in enumerate(group):
            results[i].append(st[slot])
        if progress:
            progress(done, len(work))
    if path is not None and suffix_items:
        path.checked = True
    for i, _ in live:
        out[i] = RowStats.cat(results[i])
    return RowStats.combine(out, torch.stack)  # type: ignore[arg-type]


def _same_stats(st: RowStats, slot: int, base: RowStats, rows: slice) -> bool:
    for f in ("ld", "logprob", "kl"):
        if not torch.allclose(getattr(st, f)[slot].double(), getattr(base, f)[rows].double(), atol=1e-3, rtol=1e-4):
            return False
    return True


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
        cache = PrefixCache([k[rows] for k in path.kv.keys], [v[rows] for v in path.kv.values])
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
                if x is not None and x.device != add.device:
                    # A model spread over devices (device_map): the batch joins
                    # the residual stream on the device of this layer.
                    x = x.to(layer_device(blocks[layer], add.device))
                    add = add.to(x.device)
                x = add if x is None else torch.cat([x, add])
                joined += n_new
            args, kwargs = calls[layer]
            out = blocks[layer](x, *args, **kwargs)
            x = out if torch.is_tensor(out) else out[0]
    assert x is not None and joined == P
    last = x[:, -1, :]
    del x
    softcap = logit_softcap(bridge)
    ref = Reference(inp.answer[rows], inp.counter[rows], inp.clean_logprobs[rows],
                    inp.corrupt_logprobs[rows] if inp.corrupt_logprobs is not None else None)
    stats = []
    step = max(1, unembed_rows(bridge.cfg) // Rb)  # whole patches per unembedding chunk
    for s in range(0, P, step):
        n = min(step, P - s)
        logits = final_logits(bridge, softcap, last[s * Rb:(s + n) * Rb])
        stats.append(ref.stats(logits.float().view(n, Rb, -1)))
    return RowStats.cat(stats).view(P, Rb)


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
                # The source was cached on its layer's device; under a device_map
                # with offloading the layer may run elsewhere.
                view[slot][idx] = val if val.device == act.device else val.to(act.device)
        return view.reshape(act.shape)

    return hook


def layer_device(block: torch.nn.Module, default: torch.device) -> torch.device:
    """Where a block runs: accelerate's execution device (a model loaded with a
    device_map, possibly offloaded), else its parameters' device."""
    for m in (block, getattr(block, "original_component", None)):
        dev = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if dev is not None:
            return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    p = next(block.parameters(), None)
    return p.device if p is not None and p.device.type != "meta" else default
