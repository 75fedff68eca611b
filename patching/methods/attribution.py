"""Attribution patching: every component's effect estimated from gradients.

Exact patching runs the model once per component. Attribution patching
(Nanda 2023) replaces each patched run by its first-order Taylor estimate
around the run being patched (the *base*: corrupted under ``denoise``, clean
under ``noise``)::

    stat(base with c := source) - stat(base)  ~  (a_source(c) - a_base(c)) . d stat / d a(c)  at the base run

so one forward and one (batched) backward pass score every component at
once (:mod:`patching.methods.gradients`). The per-row estimates are averaged
over rows (pairs x noise samples) and turned into the four metrics by the same
formulas as the exact sweep (:func:`patching.engine.metrics.effects`), so the
table has the exact sweep's shape, signs and normalisation and the two can be
compared cell by cell.

Methods (``spec.method``):

* ``atp``: the estimate above.
* ``atp_star``: AtP* (Kramar et al. 2024), both of its fixes, the QK fix and
  GradDrop (:mod:`patching.methods.atp_star`).
* ``ig``: integrated gradients along the straight line from the corrupted
  run's input embeddings to the clean run's (EAP-IG, Hanna et al. 2024,
  "inputs" form, applied to each component's activation): the gradient is
  averaged over ``ig_steps`` = m points, ``spec.ig_rule`` ``left`` alpha = k/m,
  k = 0..m-1 (hannamw/EAP-IG's left Riemann sum, the default) or
  ``midpoint`` alpha = (k + 1/2)/m, and multiplied by the same activation
  difference. Refused under mean and zero ablation (no second input).
  As the steps grow this tends to the exact effect wherever the patched
  activation and the input move together along the path; it is exact for a
  metric linear in the activation at any step count.

Known weak spots (shown next to exact on the Patch page): first-order
estimates of components far upstream (early ``resid_pre``) are poor where
later layers saturate (worst under GN). The KL metric is fine in both
directions: under ``noise`` it reads KL(corrupt || patched), whose gradient at
the clean run is not zero.

Besides the gradients' own economies: positions before the first one where
the two runs differ are identical in both (the model is causal), so their
activation difference and score are 0: the passes run the remaining positions
only, on the prefix's cached keys and values (the exact engine's suffix path,
checked against the base run once); the forward pass starts at the lowest
layer scored, from the base run's cached residual stream there; only the
final position is unembedded.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from patching.core.data import Dataset
from patching.core.models import LoadedModel
from patching.core.progress import ProgressFn
from patching.core.spec import IG_RULE, Spec, ig_alphas
from patching.engine.blocks import PrefixCache, SuffixPath
from patching.engine.metrics import baselines, effects
from patching.engine.readout import STATS, RowStats
from patching.engine.reference import prepare
from patching.engine.resources import memory_budget_bytes, model_lock, no_graph
from patching.engine.runner import PATTERN_HOOKS, POSITIONAL_HOOKS, Edit, EngineInputs
from patching.methods import atp_star, gradients
from patching.methods.activation import Cell, cells_for, noop_cells, sweep_table
from patching.results import Result, run_meta


@no_graph()  # gradients only inside the backward passes (patching/engine/resources.py owns the mode)
def compute(spec: Spec, lm: LoadedModel, ds: Dataset, progress: ProgressFn | None = None) -> Result:
    """One attribution sweep (``spec.method`` in atp, atp_star, ig): the same
    table as the exact sweep, every metric from the same gradients."""
    spec = spec.validated()
    if spec.method == "exact":
        raise ValueError("attribution.compute needs an approximate method; exact sweeps run in methods.activation")
    t0 = time.time()
    n_layers, n_heads, seq = lm.n_layers, lm.n_heads, ds.seq_len
    n_kv = int(getattr(lm.cfg, "n_key_value_heads", None) or n_heads)
    cells = cells_for(spec.component, n_layers, n_heads, seq, spec.window, n_kv)
    singles = cells_for(spec.component, n_layers, n_heads, seq, 1, n_kv) if spec.window > 1 else []
    all_cells = cells + singles
    hooks = sorted({e.hook for c in all_cells for e in c.patch})

    # The clean and corrupted reference runs (and the source activations) come
    # from the exact engine's own preparation, noise included.
    r0 = "blocks.0.hook_resid_pre"
    with model_lock(lm.bridge), _last_position_logits(lm):
        prep = prepare(lm, ds, spec.corruption, spec.direction, set(hooks) | ({r0} if spec.method == "ig" else set()),
                       spec.noise_scale, spec.noise_samples, spec.seed, spec.mean_set)
    base_lp = prep.inputs.clean_logprobs if spec.direction == "noise" else prep.corrupt_logprobs
    est = estimate_inputs(lm, spec.method, prep.inputs, all_cells, ig_steps=spec.ig_steps, progress=progress, base_logprobs=base_lp,
                          ig_rule=spec.ig_rule)

    # Estimated patched means = base means + the estimated change; the exact
    # sweep's formulas then give every metric with its signs and normalisation.
    base = prep.inputs.base_stats
    patched = RowStats(*(getattr(base, f).double().mean()[None, None] + est[f][:, None] for f in STATS))
    dbl = lambda st: RowStats(*((getattr(st, f) if getattr(st, f) is not None else st.kl).double() for f in STATS))  # noqa: E731
    eff = effects(patched, dbl(prep.clean), dbl(prep.corrupt), spec.direction)
    table = sweep_table(spec, ds, cells, eff, n_layers, bool(singles))
    meta = run_meta(lm, ds, prep.rows, prep.sigma, t0, key_positions=ds.key_positions[0], method=spec.method,
                    noop_cells=noop_cells(cells, prep.inputs.same_prefix, seq),
                    **({"ig_steps": spec.ig_steps, "ig_rule": spec.ig_rule} if spec.method == "ig" else {}))
    return Result(spec=spec, table=table, baselines=baselines(prep.clean, prep.corrupt, ds.n), meta=meta, kind="activation")


@contextmanager
def _last_position_logits(lm: LoadedModel):
    """The reference runs read the final position's logits only: unembed
    that position alone (the vocabulary projection of every position is a
    large share of a forward pass on a small model)."""
    unembed = getattr(lm.bridge, "unembed", None)
    if not isinstance(unembed, torch.nn.Module):
        yield
        return

    def last(_mod, args, kwargs):
        if args and torch.is_tensor(args[0]) and args[0].dim() == 3:
            return (args[0][:, -1:, :],) + tuple(args[1:]), kwargs
        return None

    handle = unembed.register_forward_pre_hook(last, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------- estimates


@no_graph()  # a public entry of its own (the passes turn gradients on)
def estimate_inputs(lm: LoadedModel, method: str, inp: EngineInputs, cells: Sequence[Cell], *, ig_steps: int = 5,
                    progress: ProgressFn | None = None, base_logprobs: torch.Tensor | None = None,
                    ig_rule: str = IG_RULE) -> dict[str, torch.Tensor]:
    """Each cell's estimated change of each read-out statistic, averaged over
    rows: ``{stat: [n_cells] float64}``, from a prepared input (the exact
    engine's): its base run's residual stream, the source activations
    (``inp.source`` must hold every hooked activation and, for ``ig``,
    ``blocks.0.hook_resid_pre``) and, where the two runs share a prefix, its
    cached keys and values. ``base_logprobs`` (the base run's [R, vocab] at
    the final position) spares atp and atp_star the unembedding's forward pass."""
    if method not in ("atp", "atp_star", "ig"):
        raise ValueError(f"unknown attribution method {method!r}")
    hooks = sorted({e.hook for c in cells for e in c.patch})
    for e in (e for c in cells for e in c.patch):
        if e.setter is not None:
            raise ValueError("attribution scores plain activation patches only (no custom setters)")
        if not e.hook.endswith(POSITIONAL_HOOKS + PATTERN_HOOKS):
            raise ValueError(f"attribution cannot score {e.hook}")
    # Positions before same_prefix are identical in both runs: their
    # activation difference, and so their score, is exactly 0; run the rest.
    path = _suffix_path(lm, inp)
    if path is not None:
        try:
            return _estimate(lm, method, inp, hooks, cells, path, ig_steps, progress, base_logprobs, ig_rule)
        except _SuffixMismatch:
            inp._suffix = False  # never trust this path on these inputs
    return _estimate(lm, method, inp, hooks, cells, None, ig_steps, progress, base_logprobs, ig_rule)


def _suffix_path(lm: LoadedModel, inp: EngineInputs) -> SuffixPath | None:
    """The exact engine's suffix path for these inputs. The blocks' arguments
    for positions ``same_prefix:`` depend on the two lengths only (they are
    captured from a dummy prompt), so they are captured once per model and
    reused with each input's own prefix keys and values."""
    if inp.same_prefix <= 0 or not inp.use_suffix or inp.prefix_kv is None or inp._suffix is False:
        return None
    if inp.prefix_kv.length != inp.same_prefix:
        return None
    calls = lm.__dict__.setdefault("_attribution_suffix_calls", {})
    key = (inp.seq_len, inp.same_prefix)
    if key in calls:
        return SuffixPath(offset=inp.same_prefix, calls=calls[key], kv=inp.prefix_kv)
    path = inp.suffix_path()
    if path is not None:
        calls[key] = path.calls
    return path


class _SuffixMismatch(Exception):
    """The suffix path did not reproduce the base run."""


def _stat_names(inp: EngineInputs) -> tuple[str, ...]:
    """The statistics whose gradients are taken: each direction's metrics
    read one KL only (denoise: from the clean run, noise: from the
    corrupted one), P(answer)'s gradient is P times log P's, and
    P(answer) - P(counter-answer) has its own."""
    return ("ld", "logprob", "kl_corrupt" if inp.corrupt_logprobs is not None else "kl", "pd")


def _estimate(lm, method, inp: EngineInputs, hooks, cells, path, ig_steps, progress, base_lp, ig_rule=IG_RULE) -> dict[str, torch.Tensor]:
    L = lm.n_layers
    R = int(inp.answer.shape[0])
    seq = inp.seq_len if inp.base_resid[0] is not None else int(inp.source["blocks.0.hook_resid_pre"].shape[1])
    off = path.offset if path is not None else 0
    width = seq - off
    fstats = _stat_names(inp)
    F = len(fstats)
    qk = method == "atp_star"
    layer_of = {h: gradients.hook_layer(h) for h in hooks}
    # atp and atp_star start at the lowest layer scored, from the base run's
    # cached residual stream; ig interpolates the input embeddings (layer 0).
    first = min(layer_of.values()) if method != "ig" else 0
    if inp.base_resid[first] is None:
        first = 0
    drops = list(range(first, L)) if method == "atp_star" else []
    slots = 1 + len(drops)
    steps = ig_steps if method == "ig" else 1

    # Which hooks get a gradient: the scored ones, except that atp_star reads
    # query and key components through the pattern (QK fix).
    qk_hooks = [h for h in hooks if qk and h.endswith(("attn.hook_q", "attn.hook_k"))]
    grad_hooks = sorted((set(hooks) - set(qk_hooks)) | {gradients.pattern_hook(layer_of[h]) for h in qk_hooks})

    cfg = lm.cfg
    d, d_mlp = int(cfg.d_model), int(getattr(cfg, "d_mlp", 0) or 4 * cfg.d_model)
    per_pos = 4 * (10 * d + 5 * d_mlp + 3 * int(cfg.n_heads) * seq)  # bytes of graph per position and layer
    budget = memory_budget_bytes()
    rows_step = max(1, budget // max(1, per_pos * width * (L - first) * steps))
    chunks = [slice(r, min(R, r + rows_step)) for r in range(0, R, rows_step)]
    total = torch.zeros(slots, len(STATS), len(cells), dtype=torch.float64)
    cell_edits = _edits_by_hook(cells)
    qk_at: dict[str, list[str]] = {}
    for h in qk_hooks:
        qk_at.setdefault(gradients.pattern_hook(layer_of[h]), []).append(h)
    done = 0
    for rows in chunks:
        Rc = rows.stop - rows.start
        kv = [(k[rows], v[rows]) for k, v in zip(path.kv.keys, path.kv.values)] if path is not None else None

        def calls():
            if path is None:
                return inp.runner.calls
            cache = PrefixCache([k for k, _ in kv], [v for _, v in kv])
            return [c.bind(cache) for c in path.calls]

        src = {h: gradients.run_positions(h, inp.source[h][rows], off) for h in hooks}
        ref = (inp.answer[rows].repeat(steps, *([1] * (inp.answer.dim() - 1))),
               inp.counter[rows].repeat(steps, *([1] * (inp.counter.dim() - 1))),
               inp.clean_logprobs[rows].repeat(steps, 1),
               inp.corrupt_logprobs[rows].repeat(steps, 1) if inp.corrupt_logprobs is not None else None)
        if method == "ig":
            e_base = inp.base_resid[0][rows, off:]
            e_src = gradients.run_positions("blocks.0.hook_resid_pre", inp.source["blocks.0.hook_resid_pre"][rows], off)
            base_acts, base_ld = gradients.capture(lm, calls(), e_base, hooks, ref[0][:Rc], ref[1][:Rc])
            # The points run from the corrupted input (alpha = 0) to the clean one; under
            # noising (corrupt_logprobs given) the base run is the clean one.
            e_corrupt, e_clean = (e_src, e_base) if inp.corrupt_logprobs is not None else (e_base, e_src)
            x0 = torch.cat([e_corrupt + a * (e_clean - e_corrupt) for a in ig_alphas(steps, ig_rule)])  # step-major rows
        else:
            x0 = inp.base_resid[first][rows, off:]
            base_acts, base_ld = None, None
        mixed = atp_star.mixed_scores(lm, calls, inp, rows, off, qk_hooks, layer_of) if qk_hooks else {}

        def on_grad(hook: str, g: torch.Tensor, acts: dict[str, torch.Tensor], prob: torch.Tensor) -> None:
            # g: [slots * F, B, ...]; prob: [B] P(answer) of each row's pass.
            g = g.view(slots, F, steps, Rc, *g.shape[2:])
            pr = prob.view(steps, Rc)
            for name in qk_at.get(hook, ()):
                _score(total, cell_edits[name], _qk_reduced(name, g, mixed[layer_of[name]], lm, off), pr, fstats)
            if hook in cell_edits and hook not in qk_hooks:
                base = (base_acts if base_acts is not None else acts)[hook]
                dlt = src[hook] - base
                _score(total, cell_edits[hook], _linear_reduced(hook, g, dlt, off), pr, fstats)

        lp = base_lp[rows] if base_lp is not None and method != "ig" else None
        if drops:
            ld0 = atp_star.graddrop_passes(lm, calls(), first, x0, grad_hooks, ref, fstats, drops, on_grad, base_lp=lp)
        else:
            ld0 = gradients.passes(lm, calls(), first, x0, grad_hooks, ref, fstats, on_grad, base_lp=lp)
        # The suffix path must reproduce the base run (once per input).
        check = base_ld if base_ld is not None else ld0[:Rc]
        if inp.base_stats is not None and not torch.allclose(check.double(), inp.base_stats.ld[rows].double(), atol=1e-3, rtol=1e-4):
            if path is not None:
                raise _SuffixMismatch()
        done += 1
        if progress:
            progress(done, len(chunks))
    out_slots = total / (R * steps)
    out = {f: out_slots[0, i] for i, f in enumerate(STATS)}
    if method == "atp_star":
        out = {f: atp_star.graddrop_estimate(out_slots[:, i], first, L) for i, f in enumerate(STATS)}
    # The KL the direction's metrics do not read mirrors the one they do.
    if inp.corrupt_logprobs is None:
        out["kl_corrupt"] = out["kl"]
    else:
        out["kl"] = out["kl_corrupt"]
    return out


# ---------------------------------------------------------------- scoring


@dataclass
class _Reduced:
    """Per-row scores of one hook summed over everything but its address
    axes: ``by_addr`` [slots, F, steps, R, *addr] (addr: (seq, head) /
    (seq,) / (head, query)), and optionally ``whole`` [slots, F, steps, R, head] for edits
    patching every position at once where that is not the sum over positions."""

    by_addr: torch.Tensor | None
    whole: torch.Tensor | None = None


def _edits_by_hook(cells: Sequence[Cell]) -> dict[str, list[tuple[int, Edit]]]:
    out: dict[str, list[tuple[int, Edit]]] = {}
    for i, c in enumerate(cells):
        for e in c.patch:
            out.setdefault(e.hook, []).append((i, e))
    return out


def _pad(t: torch.Tensor, axis: int, off: int) -> torch.Tensor:
    """Zeros for the ``off`` positions not run, before ``axis``."""
    if off == 0:
        return t
    shape = list(t.shape)
    shape[axis] = off
    return torch.cat([t.new_zeros(shape), t], dim=axis)


def _linear_reduced(hook: str, g: torch.Tensor, dlt: torch.Tensor, off: int) -> _Reduced:
    """(source - base) . gradient, summed within each address: over the last
    axis (d_model, d_head, or a pattern's key axis)."""
    red = (g * dlt.to(g.dtype)).sum(-1)  # dlt [R, ...] broadcasts over (slots, F, steps)
    # The position axis (a pattern's: the query) gets the positions not run.
    return _Reduced(_pad(red, 5 if hook.endswith(PATTERN_HOOKS) else 4, off))


def _score(total: torch.Tensor, edits: Sequence[tuple[int, Edit]], red: _Reduced, prob: torch.Tensor,
           fstats: Sequence[str]) -> None:
    """Add each edit's row- and step-summed score to its cell in ``total``
    [slots, STATS, cells]; P(answer)'s row scores are P times log P's."""
    groups: dict[tuple, list[tuple[int, Edit]]] = {}
    for ci, e in edits:
        idx = e.index()[1:]  # without the rows axis
        whole = red.whole is not None and e.pos is None
        groups.setdefault((whole, tuple(isinstance(a, slice) for a in idx)), []).append((ci, e))
    for (whole, sliced), items in groups.items():
        t = red.whole if whole else red.by_addr
        n_lead = 4
        if whole:
            flat_idx = [[e.head] for _, e in items]
            kept = 1
        else:
            dims = [n_lead + j for j, s in enumerate(sliced) if s]
            if dims:
                t = t.sum(dims)
            flat_idx = [[a for a in e.index()[1:] if not isinstance(a, slice)] for _, e in items]
            kept = len(flat_idx[0])
        shape = t.shape[n_lead:]
        t = t.reshape(*t.shape[:n_lead], -1)
        flat = torch.zeros(len(items), dtype=torch.long)
        if kept:
            idx = torch.tensor(flat_idx, dtype=torch.long)
            stride = 1
            for j in reversed(range(kept)):
                flat += idx[:, j] * stride
                stride *= int(shape[j])
        v = t[..., flat.to(t.device)].double()  # [slots, F, steps, R, n_items]
        by_stat = {f: v[:, j].sum((1, 2)).cpu() for j, f in enumerate(fstats)}  # [slots, n_items]
        lp = v[:, fstats.index("logprob")]
        by_stat["prob"] = (lp * prob.double()[None, :, :, None]).sum((1, 2)).cpu()
        cells = torch.tensor([ci for ci, _ in items], dtype=torch.long)
        for j, f in enumerate(STATS):
            if f in by_stat:
                total[:, j].index_add_(1, cells, by_stat[f])


def _qk_reduced(hook: str, g: torch.Tensor, sc: dict[str, torch.Tensor], lm: LoadedModel, off: int) -> _Reduced:
    """AtP*'s QK-fix scores (:func:`patching.methods.atp_star.qk_fix_scores`),
    the positions not run padded with zeros."""
    by, whole = atp_star.qk_fix_scores(hook, g, sc, lm, off)
    return _Reduced(_pad(by, 4, off), whole)
