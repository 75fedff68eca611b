"""Attribution patching: every component's effect estimated from gradients.

Exact patching runs the model once per component. Attribution patching
(Nanda 2023) replaces each patched run by its first-order Taylor estimate
around the run being patched (the *base*: corrupted under ``denoise``, clean
under ``noise``)::

    stat(base with c := source) - stat(base)  ~  (a_source(c) - a_base(c)) . d stat / d a(c)  at the base run

so one forward and one (batched) backward pass score every component at
once. The per-row estimates are averaged over rows (pairs x noise samples)
and turned into the four metrics by the same formulas as the exact sweep
(:func:`patching.engine.metrics.effects`), so the table has the exact sweep's
shape, signs and normalisation and the two can be compared cell by cell.

Methods (``spec.method``):

* ``atp``: the estimate above.
* ``atp_star``: AtP* (Kramar et al. 2024), both of its fixes.
  **QK fix** (attention saturation): for query and key components
  (``head_q``, ``head_k`` and their ``_by_pos`` forms) the attention
  pattern is not linearised: each patch's new attention scores are computed
  exactly (one extra forward pass of the blocks with the source run's
  queries / keys, read out before the softmax), the softmax is recomputed
  exactly (per key position for ``head_k_by_pos``: one column of the scores
  replaced), and the exact pattern change is multiplied by the gradient at
  the pattern. **GradDrop**: L more backward passes, the l-th with the
  gradient through layer l's attention and MLP outputs zeroed; the magnitude
  is ``1/(L-1) * sum_l |AtP_{-l}|`` (the paper's estimator of |effect|,
  robust to cancellation between paths), the sign is the undropped estimate's.
* ``ig``: integrated gradients along the straight path from the base run's
  input embeddings to the source run's (EAP-IG, Hanna et al. 2024, "inputs"
  form): the gradient is averaged over ``ig_steps`` points (midpoint rule,
  alpha = (k + 1/2) / steps) and multiplied by the same activation difference.
  As the steps grow this tends to the exact effect wherever the patched
  activation and the input move together along the path; it is exact for a
  metric linear in the activation at any step count.

Known weak spots (shown next to exact on the Patch page): first-order
estimates of components far upstream (early ``resid_pre``) are poor where
later layers saturate (worst under GN). The KL metric is fine in both
directions: under ``noise`` it reads KL(corrupt || patched), whose gradient at
the clean run is not zero.

How it is fast (``benchmarks/attribution.py``):

* one backward pass for every statistic: the read-out statistics are
  functions of the final position's residual stream only, so their gradients
  there are stacked into one batch of cotangents and carried down the blocks
  together (``is_grads_batched``); P(answer)'s gradient is P(answer) times
  log P(answer)'s, and each direction's metrics read one KL only, so three
  cotangents serve four metrics. GradDrop's L variants join the same batch;
* positions before the first one where the two runs differ are identical in
  both (the model is causal), so their activation difference and score are
  0: the passes run the remaining positions only, on the prefix's cached
  keys and values (the exact engine's suffix path, checked against the base
  run once);
* the forward pass starts at the lowest layer scored, from the base run's
  cached residual stream there; only the final position is unembedded; only
  activations, never weights, get gradients.

The gradient is taken with respect to a zero tensor added to each hooked
activation (the bridge hands some hooks a reshaped view, whose own ``.grad``
never fills), block by block. Every pass holds the model lock and turns
gradients on only inside it.
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
from patching.core.spec import Spec
from patching.engine.blocks import SuffixPath, _final_logits, _PrefixCache, _softcap
from patching.engine.metrics import baselines, effects
from patching.engine.readout import RowStats, answer_scores, row_stats
from patching.engine.reference import prepare
from patching.engine.resources import memory_budget_bytes, model_lock
from patching.engine.runner import _PATTERN_HOOKS, _POSITIONAL_HOOKS, Edit, EngineInputs
from patching.methods.activation import Cell, cells_for, sweep_table
from patching.results import Result, run_meta

STATS = ("ld", "prob", "logprob", "kl", "kl_corrupt")  # kl_corrupt: the signed noising KL's reference


@torch.no_grad()  # gradients only inside the backward passes
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
                       spec.noise_scale, spec.noise_samples, spec.seed)
    base_lp = prep.inputs.clean_logprobs if spec.direction == "noise" else prep.corrupt_logprobs
    est = estimate_inputs(lm, spec.method, prep.inputs, all_cells, ig_steps=spec.ig_steps, progress=progress, base_logprobs=base_lp)

    # Estimated patched means = base means + the estimated change; the exact
    # sweep's formulas then give every metric with its signs and normalisation.
    base = prep.inputs.base_stats
    patched = RowStats(*(getattr(base, f).double().mean()[None, None] + est[f][:, None] for f in STATS))
    dbl = lambda st: RowStats(*((getattr(st, f) if getattr(st, f) is not None else st.kl).double() for f in STATS))  # noqa: E731
    eff = effects(patched, dbl(prep.clean), dbl(prep.corrupt), spec.direction)
    table = sweep_table(spec, ds, cells, eff, n_layers, bool(singles))
    meta = run_meta(lm, ds, prep.rows, prep.sigma, t0, key_positions=ds.key_positions[0], method=spec.method,
                    **({"ig_steps": spec.ig_steps} if spec.method == "ig" else {}))
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


def estimate_inputs(lm: LoadedModel, method: str, inp: EngineInputs, cells: Sequence[Cell], *, ig_steps: int = 5,
                    progress: ProgressFn | None = None, base_logprobs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
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
        if not e.hook.endswith(_POSITIONAL_HOOKS + _PATTERN_HOOKS):
            raise ValueError(f"attribution cannot score {e.hook}")
    # Positions before same_prefix are identical in both runs: their
    # activation difference, and so their score, is exactly 0; run the rest.
    path = _suffix_path(lm, inp)
    if path is not None:
        try:
            return _estimate(lm, method, inp, hooks, cells, path, ig_steps, progress, base_logprobs)
        except _SuffixMismatch:
            inp._suffix = False  # never trust this path on these inputs
    return _estimate(lm, method, inp, hooks, cells, None, ig_steps, progress, base_logprobs)


def estimate(lm: LoadedModel, method: str, base_resid0: torch.Tensor, src_resid0: torch.Tensor,
             source: dict[str, torch.Tensor], hooks: Sequence[str], cells: Sequence[Cell], answer: torch.Tensor,
             counter: torch.Tensor, clean_logprobs: torch.Tensor, *, ig_steps: int = 5,
             progress: ProgressFn | None = None, corrupt_logprobs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """:func:`estimate_inputs` on whole sequences from the base run's
    resid_pre 0 (``base_resid0``; ``ig`` interpolates to ``src_resid0``).
    ``source[h]`` is the source run's activation at hook ``h`` ([R, ...])."""
    L = lm.n_layers
    inp = EngineInputs(base_resid=[base_resid0] + [None] * (L - 1), source={**source, "blocks.0.hook_resid_pre": src_resid0},
                       answer=answer, counter=counter, clean_logprobs=clean_logprobs, base_stats=None,  # type: ignore[arg-type]
                       corrupt_logprobs=corrupt_logprobs, lm=lm, use_suffix=False)
    return estimate_inputs(lm, method, inp, cells, ig_steps=ig_steps, progress=progress)


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
    corrupted one), and P(answer)'s gradient is P times log P's."""
    return ("ld", "logprob", "kl_corrupt" if inp.corrupt_logprobs is not None else "kl")


def _estimate(lm, method, inp: EngineInputs, hooks, cells, path, ig_steps, progress, base_lp) -> dict[str, torch.Tensor]:
    L = lm.n_layers
    R = int(inp.answer.shape[0])
    seq = inp.seq_len if inp.base_resid[0] is not None else int(inp.source["blocks.0.hook_resid_pre"].shape[1])
    off = path.offset if path is not None else 0
    width = seq - off
    fstats = _stat_names(inp)
    F = len(fstats)
    qk = method == "atp_star"
    layer_of = {h: _layer(h) for h in hooks}
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
    grad_hooks = sorted((set(hooks) - set(qk_hooks)) | {_pattern_hook(layer_of[h]) for h in qk_hooks})

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
        qk_at.setdefault(_pattern_hook(layer_of[h]), []).append(h)
    done = 0
    for rows in chunks:
        Rc = rows.stop - rows.start
        kv = [(k[rows], v[rows]) for k, v in zip(path.kv.keys, path.kv.values)] if path is not None else None

        def calls():
            if path is None:
                return inp.runner.calls
            cache = _PrefixCache([k for k, _ in kv], [v for _, v in kv])
            return [c.bind(cache) for c in path.calls]

        src = {h: _positions(h, inp.source[h][rows], off) for h in hooks}
        ref = (inp.answer[rows].repeat(steps, *([1] * (inp.answer.dim() - 1))),
               inp.counter[rows].repeat(steps, *([1] * (inp.counter.dim() - 1))),
               inp.clean_logprobs[rows].repeat(steps, 1),
               inp.corrupt_logprobs[rows].repeat(steps, 1) if inp.corrupt_logprobs is not None else None)
        if method == "ig":
            e_base = inp.base_resid[0][rows, off:]
            e_src = _positions("blocks.0.hook_resid_pre", inp.source["blocks.0.hook_resid_pre"][rows], off)
            base_acts, base_ld = _capture(lm, calls(), e_base, hooks, ref[0][:Rc], ref[1][:Rc])
            alphas = [(k + 0.5) / steps for k in range(steps)]
            x0 = torch.cat([e_base + a * (e_src - e_base) for a in alphas])  # step-major rows
        else:
            x0 = inp.base_resid[first][rows, off:]
            base_acts, base_ld = None, None
        mixed = _mixed_scores(lm, calls, inp, rows, off, qk_hooks, layer_of) if qk_hooks else {}

        def on_grad(hook: str, g: torch.Tensor, acts: dict[str, torch.Tensor], prob: torch.Tensor) -> None:
            # g: [slots * F, B, ...]; prob: [B] P(answer) of each row's pass.
            g = g.view(slots, F, steps, Rc, *g.shape[2:])
            pr = prob.view(steps, Rc)
            for name in qk_at.get(hook, ()):
                _score(total, cell_edits[name], _qk_reduced(name, g, mixed[layer_of[name]], off, lm), pr, fstats)
            if hook in cell_edits and hook not in qk_hooks:
                base = (base_acts if base_acts is not None else acts)[hook]
                dlt = src[hook] - base
                _score(total, cell_edits[hook], _linear_reduced(hook, g, dlt, off), pr, fstats)

        ld0 = _passes(lm, calls(), first, x0, grad_hooks, ref, fstats, drops, on_grad,
                      base_lp=base_lp[rows] if base_lp is not None and method != "ig" else None)
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
        # GradDrop (Kramar et al. 2024): magnitude 1/(L-1) sum_l |AtP_{-l}|
        # of the row-mean estimates, sign from the undropped one. Layers below
        # the lowest one scored drop nothing: AtP_{-l} = AtP there.
        for i, f in enumerate(STATS):
            mag = out_slots[1:, i].abs().sum(0) + first * out_slots[0, i].abs()
            out[f] = torch.sign(out_slots[0, i]) * mag / max(1, L - 1)
    # The KL the direction's metrics do not read mirrors the one they do.
    if inp.corrupt_logprobs is None:
        out["kl_corrupt"] = out["kl"]
    else:
        out["kl"] = out["kl_corrupt"]
    return out


# ---------------------------------------------------------------- passes


def _layer(hook: str) -> int:
    parts = hook.split(".")
    if parts[0] != "blocks":
        raise ValueError(f"attribution scores block activations only, not {hook}")
    return int(parts[1])


def _pattern_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def _positions(hook: str, act: torch.Tensor, off: int) -> torch.Tensor:
    """The run positions (``off:``) of a full-sequence activation: the
    query axis of a pattern, the position axis otherwise."""
    if off == 0:
        return act
    return act[:, :, off:] if hook.endswith(_PATTERN_HOOKS) else act[:, off:]


def _capture(lm: LoadedModel, calls, resid0: torch.Tensor, hooks: Sequence[str], answer, counter):
    """The hooked activations of the blocks run from ``resid0`` (no
    gradients) and the run's logit difference per row."""
    got: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(act, hook=None):
            got[name] = act.detach().clone()

        return hook

    blocks = list(lm.bridge.blocks)
    with model_lock(lm.bridge), torch.no_grad(), lm.bridge.hooks(fwd_hooks=[(h, grab(h)) for h in hooks]):
        x = resid0
        for i, b in enumerate(blocks):
            args, kwargs = calls[i]
            o = b(x, *args, **kwargs)
            x = o if torch.is_tensor(o) else o[0]
        logits = _final_logits(lm.bridge, _softcap(lm.bridge), x[:, -1, :]).float()
    ld, _ = answer_scores(logits, torch.log_softmax(logits, -1), answer, counter)
    return got, ld


def _passes(lm: LoadedModel, calls, first: int, x0: torch.Tensor, hooks: Sequence[str], ref, fstats: Sequence[str],
            drops: Sequence[int], on_grad, base_lp: torch.Tensor | None = None) -> torch.Tensor:
    """One forward pass of blocks ``first..`` from ``x0`` with a zero tensor
    added at each of ``hooks``, then one backward pass, block by block, of a
    batch of cotangents: ``len(fstats)`` statistics x (the plain gradient,
    then one per layer in ``drops`` with that layer's attention and MLP
    outputs cut out: GradDrop). ``on_grad(hook, grad [N, B, ...], acts, prob)``
    receives each hook's gradients as soon as they are known. With
    ``base_lp`` (the run's own log-probs, known beforehand) the statistics'
    gradients at the final residual are formed without unembedding. Returns
    the run's logit difference per row (to check the path taken)."""
    bridge = lm.bridge
    answer, counter, clean_lp, corrupt_lp = ref
    blocks = list(bridge.blocks)
    L = len(blocks)
    F = len(fstats)
    slots = 1 + len(drops)
    acts: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}

    def make(name: str):
        def hook(act, hook=None):
            dl = torch.zeros_like(act, requires_grad=True)
            deltas[name] = dl
            acts[name] = act.detach()
            return act + dl

        return hook

    by_layer: dict[int, list[str]] = {}
    for h in hooks:
        by_layer.setdefault(_layer(h), []).append(h)
    ins: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    with model_lock(bridge), torch.inference_mode(False), torch.enable_grad():
        with bridge.hooks(fwd_hooks=[(h, make(h)) for h in hooks]):
            x = x0
            for i in range(first, L):
                # GradDrop goes block by block (a graph per block); otherwise
                # one graph and one backward call.
                xi = x.detach().requires_grad_(True) if drops or i == first else x
                args, kwargs = calls[i]
                o = blocks[i](xi, *args, **kwargs)
                x = o if torch.is_tensor(o) else o[0]
                ins.append(xi)
                outs.append(x)
        # The read-out statistics' gradients at the final position's residual
        # stream, all in one batched backward through the unembedding.
        last = x[:, -1, :].detach().requires_grad_(True)
        head = _known_head(bridge, last, ref, fstats, base_lp) if base_lp is not None else None
        if head is not None:
            g_last, prob, ld = head
        else:
            st = row_stats(_final_logits(bridge, _softcap(bridge), last), answer, counter, clean_lp, corrupt_lp)
            vals = torch.stack([getattr(st, f).sum() for f in fstats])
            (g_last,) = torch.autograd.grad(vals, last, grad_outputs=torch.eye(F, dtype=vals.dtype, device=vals.device),
                                         is_grads_batched=True)
            prob, ld = st.prob.detach(), st.ld.detach()
            del st, vals
        B, S, d = x.shape
        cot = x.new_zeros(slots * F, B, S, d)
        cot[:, :, -1, :] = g_last.repeat(slots, 1, 1)
        del last
        if not drops:
            names = [h for i in range(first, L) for h in by_layer.get(i, [])]
            got = _block_vjp(x, [deltas[h] for h in names], cot, _cotangent_chunk(lm, B, S, x.shape[1], F))
            del ins, outs, x
            for h, g in zip(names, got):
                on_grad(h, g, acts, prob)
            return ld
        drop_slot = {l: s for s, l in enumerate(drops, 1)}
        for i in reversed(range(first, L)):
            names = by_layer.get(i, [])
            dl = [deltas[h] for h in names]
            # Going down, a slot dropping layer l equals the plain slot until
            # it reaches l: carry only the plain slot and the slots already
            # dropped (l > i) through block i; l = i passes the skip only.
            live = [0] + [drop_slot[l] for l in drops if l > i]
            rows_live = torch.tensor([s * F + f for s in live for f in range(F)], device=cot.device)
            got = _block_vjp(outs[i - first], [ins[i - first]] + dl, cot[rows_live], _cotangent_chunk(lm, B, S, x.shape[1], len(rows_live)))
            full = []
            for j, gj in enumerate(got):
                # Slots not carried (l < i) are the plain slot's.
                out_j = gj[:F].repeat(slots, *([1] * (gj.dim() - 1)))
                out_j[rows_live] = gj
                full.append(out_j)
            if i in drop_slot:
                # GradDrop: in the slot dropping layer i, only the residual
                # skip passes the gradient on; layer i's own activations get
                # none, except resid_pre (the skip's input).
                sl = slice(drop_slot[i] * F, (drop_slot[i] + 1) * F)
                full[0][sl] = cot[sl]
                for j, h in enumerate(names, 1):
                    full[j][sl] = cot[sl] if h.endswith("hook_resid_pre") else 0.0
            cot = full[0]
            outs[i - first] = None  # free the block's graph
            for h, g in zip(names, full[1:]):
                on_grad(h, g, acts, prob)
    return ld


def _known_head(bridge, last: torch.Tensor, ref, fstats: Sequence[str], base_lp: torch.Tensor):
    """The statistics' gradients at the final residual ``last`` [B, d] when
    the run's log-probs are known: d stat / d logits in closed form (logit
    difference: the answer's minus the counter-answer's indicator; log P(answer):
    the answer's share of P minus P; KL(ref || .): P - P_ref), then through the
    unembedding matrix and the final norm. (gradients [F, B, d], P(answer) [B],
    logit difference [B]); None for an unembedding this does not cover."""
    answer, counter, clean_lp, corrupt_lp = ref
    W = getattr(bridge.unembed, "W_U", None)
    B, d = last.shape
    if _softcap(bridge) is not None or not torch.is_tensor(W) or W.dim() != 2 or W.shape[0] != d or W.shape[1] != base_lp.shape[-1]:
        return None
    p = base_lp.float().exp()
    a = answer if answer.dim() == 2 else answer[:, None]
    c = counter if counter.dim() == 2 else counter[:, None]
    am = torch.zeros_like(p).scatter_(1, a.clamp(min=0), (a >= 0).to(p.dtype))  # answer-set indicator
    cm = torch.zeros_like(p).scatter_(1, c.clamp(min=0), (c >= 0).to(p.dtype))
    pa = (p * am).sum(-1, keepdim=True)
    cot = {"ld": am - cm, "logprob": p * am / pa - p, "kl": p - clean_lp.float().exp()}
    if corrupt_lp is not None:
        cot["kl_corrupt"] = p - corrupt_lp.float().exp()
    G = torch.stack([cot[f] for f in fstats]).to(W.dtype)  # [F, B, vocab]
    u = G @ W.T  # [F, B, d] at the final norm's output (the bias adds nothing to a gradient)
    with torch.enable_grad():
        z = bridge.ln_final(last[:, None, :])[:, 0, :]
        (g_last,) = torch.autograd.grad(z, last, grad_outputs=u, is_grads_batched=True)
    ld = (z.detach() * u[list(fstats).index("ld")]).sum(-1)
    bias = getattr(bridge.unembed, "b_U", None)
    if torch.is_tensor(bias) and bias.shape == p.shape[-1:]:
        ld = ld + ((am - cm) * bias.float()).sum(-1)
    return g_last, pa[:, 0], ld


def _block_vjp(out: torch.Tensor, inputs: list[torch.Tensor], cot: torch.Tensor, n_chunk: int) -> list[torch.Tensor]:
    """Vector-Jacobian products of one block for a batch of cotangents
    ``cot`` [N, ...] (``n_chunk`` at a time): one [N, ...] tensor per input
    (zeros where an input does not reach ``out``)."""
    N = cot.shape[0]
    parts: list[list[torch.Tensor | None]] = [[] for _ in inputs]
    for c in range(0, N, n_chunk):
        got = torch.autograd.grad(out, inputs, grad_outputs=cot[c:c + n_chunk], is_grads_batched=True,
                                  retain_graph=c + n_chunk < N, allow_unused=True)
        for j, g in enumerate(got):
            parts[j].append(g)
    res = []
    for j, ps in enumerate(parts):
        if any(p is None for p in ps):
            res.append(cot.new_zeros((N,) + tuple(inputs[j].shape)))
        else:
            res.append(ps[0] if len(ps) == 1 else torch.cat(ps))
    return res


def _cotangent_chunk(lm: LoadedModel, B: int, S: int, seq: int, N: int) -> int:
    """Cotangents carried through one block at once within the memory budget."""
    cfg = lm.cfg
    d, d_mlp = int(cfg.d_model), int(getattr(cfg, "d_mlp", 0) or 4 * cfg.d_model)
    per = 4 * B * S * (10 * d + 5 * d_mlp + 4 * int(cfg.n_heads) * seq)
    return max(1, min(N, memory_budget_bytes() // max(1, per)))


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
    return _Reduced(_pad(red, 5 if hook.endswith(_PATTERN_HOOKS) else 4, off))


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


# ---------------------------------------------------------------- AtP*'s QK fix


def _mixed_scores(lm: LoadedModel, calls, inp: EngineInputs, rows: slice, off: int, qk_hooks: Sequence[str],
                  layer_of: dict[str, int]) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer with a query/key component: the attention scores (before the
    softmax, masked) of the base run, and of the base run with every query /
    every key replaced by the source run's (float64, [R, head, query, key]).
    Score (q, t) depends on query q and key t only, so column t of the
    key-replaced scores is exactly the scores after patching key t alone, and
    row q of the query-replaced ones those after patching query q alone."""
    bridge = lm.bridge
    blocks = list(bridge.blocks)
    Rc = rows.stop - rows.start
    out: dict[int, dict[str, torch.Tensor]] = {}
    layers = sorted({layer_of[h] for h in qk_hooks})
    cl = calls()
    kinds = ["q", "k"]
    for l in layers:
        got: dict[str, torch.Tensor] = {}
        fwd = []
        for j, kind in enumerate(kinds, 1):
            name = f"blocks.{l}.attn.hook_{kind}"
            src = _positions(name, inp.source[name][rows], off) if name in inp.source else None
            if src is None:
                continue

            def put(act, hook=None, src=src, j=j):
                act = act.clone()
                act[j * Rc:(j + 1) * Rc] = src.to(act.dtype)
                return act

            fwd.append((name, put))

        def grab(act, hook=None):
            got["s"] = act.detach().double()
            raise _StopBlock

        fwd.append((f"blocks.{l}.attn.hook_attn_scores", grab))
        if inp.base_resid[l] is None:
            raise ValueError("AtP*'s QK fix needs the base run's residual stream at every layer (a prepared input)")
        x = inp.base_resid[l][rows, off:].repeat(3, 1, 1)
        args, kwargs = cl[l]  # the prefix cache tiles itself over the three row blocks
        with model_lock(bridge), torch.no_grad(), bridge.hooks(fwd_hooks=fwd):
            try:
                blocks[l](x, *args, **kwargs)
            except _StopBlock:
                pass
        s = got["s"]
        out[l] = {"base": s[:Rc], "q": s[Rc:2 * Rc], "k": s[2 * Rc:]}  # row blocks 0, 1 (q replaced), 2 (k replaced)
    return out


class _StopBlock(Exception):
    pass


def _qk_reduced(hook: str, g: torch.Tensor, sc: dict[str, torch.Tensor], off: int, lm: LoadedModel) -> _Reduced:
    """AtP*'s score of query/key patches: the exact pattern change times the
    gradient at the pattern ``g`` [slots, F, steps, R, head, query, key]."""
    g = g.double()
    base = sc["base"]
    A = torch.softmax(base, -1)
    H = base.shape[1]
    if hook.endswith("hook_q"):
        dA = torch.softmax(sc["q"], -1) - A  # every query row on its own
        by = (g * dA).sum(-1)  # [.., head, query]
        return _Reduced(_pad(by.transpose(-1, -2), 4, off))  # [.., pos, head]
    kv = int(getattr(lm.cfg, "n_key_value_heads", None) or H)
    group = lambda t: t.reshape(*t.shape[:-1], kv, H // kv).sum(-1)  # noqa: E731  heads -> their key/value group
    new = sc["k"]
    whole = group((g * (torch.softmax(new, -1) - A)).sum((-1, -2)))  # every key at once: [.., head] -> [.., group]
    keys = base.shape[-1]
    cols = []
    for t in range(off, keys):
        s_t = base.clone()
        s_t[..., t] = new[..., t]
        cols.append(group((g * (torch.softmax(s_t, -1) - A)).sum((-1, -2))))
    by = torch.stack(cols, -2)  # [.., pos (run), group]
    return _Reduced(_pad(by, 4, off), whole)


# ---------------------------------------------------------------- for tests


def _grad_pass(lm: LoadedModel, embed: torch.Tensor, hooks: Sequence[str], ref, drops: Sequence[int] = ()):
    """The gradient pass on whole sequences from resid_pre 0 = ``embed``:
    (base activations, {stat: {hook: gradient}}, [per dropped layer: the same
    with that layer dropped]), every statistic of :data:`STATS`."""
    answer, counter, clean_lp, corrupt_lp = ref
    from patching.engine.blocks import BlockRunner

    runner = BlockRunner(lm, embed.shape[1])
    got: dict[str, torch.Tensor] = {}
    fstats = ("ld", "prob", "logprob", "kl", "kl_corrupt")
    F = len(fstats)
    acts_out: dict[str, torch.Tensor] = {}

    def on_grad(h, g, acts, prob):
        got[h] = g
        acts_out[h] = acts[h].clone()

    _passes(lm, runner.calls, 0, embed, hooks, ref, fstats, list(drops), on_grad)
    n = 1 + len(drops)
    res = [{f: {h: got[h][s * F + j] for h in hooks} for j, f in enumerate(fstats)} for s in range(n)]
    return acts_out, res[0], res[1:]
