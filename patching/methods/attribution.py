"""Attribution patching: every component's effect estimated from gradients.

Exact patching runs the model once per component. Attribution patching
(Nanda 2023) replaces each patched run by its first-order Taylor estimate
around the run being patched (the *base*: corrupted under ``denoise``, clean
under ``noise``)::

    stat(base with c := source) - stat(base)  ~  (a_source(c) - a_base(c)) . d stat / d a(c)  at the base run

so one forward and one backward pass per read-out statistic (logit
difference, P(answer), log P(answer), KL from the clean run) score every
component at once. The per-row estimates are averaged over rows (pairs x
noise samples) and turned into the four metrics by the same formulas as the
exact sweep (:func:`patching.engine.metrics.effects`), so the table has the
exact sweep's shape, signs and normalisation and the two can be compared cell
by cell.

Methods (``spec.method``):

* ``atp``: the estimate above.
* ``atp_star``: AtP* (Kramar et al. 2024) with **GradDrop**: L more backward
  passes per statistic, the l-th with the gradient through layer l's
  attention and MLP outputs zeroed; the magnitude is
  ``1/(L-1) * sum_l |AtP_{-l}|`` (the paper's estimator of |effect|, robust
  to cancellation between paths), the sign is plain AtP's. The paper's other
  fix (exact attention-pattern change for *query and key* components) applies
  to q/k components only; none of the components here reaches a softmax
  directly, so it changes nothing for them (a q/k component would add its
  own scorer in ``_SCORERS``).
* ``ig``: integrated gradients along the straight path from the base run's
  input embeddings to the source run's (EAP-IG, Hanna et al. 2024, "inputs"
  form): the gradient is averaged over ``ig_steps`` points (midpoint rule,
  alpha = (k + 1/2) / steps) and multiplied by the same activation difference.
  As the steps grow this tends to the exact effect wherever the patched
  activation and the input move together along the path; it is exact for a
  metric linear in the activation at any step count.

Known weak spots (shown next to exact on the Patch page): the KL metric under
``noise`` is estimated at the clean run, where KL(clean || .) has its minimum
and zero gradient, so ``atp`` scores every component 0 there (``ig`` does
not); first-order estimates of components far upstream (early ``resid_pre``)
are poor where later layers saturate.

The gradient is taken with respect to a zero tensor added to each hooked
activation (the bridge hands some hooks a reshaped view, whose own ``.grad``
never fills), generic over the hook; any activation whose ``Edit.index``
addresses it can be scored. Every pass holds the model lock and turns
gradients on only inside it.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from patching.core.data import Dataset
from patching.core.models import LoadedModel
from patching.core.progress import ProgressFn
from patching.core.spec import Spec
from patching.engine.metrics import baselines, effects
from patching.engine.readout import RowStats, row_stats
from patching.engine.reference import prepare
from patching.engine.resources import model_lock, reference_rows
from patching.engine.runner import Edit
from patching.methods.activation import Cell, cells_for, sweep_table
from patching.results import Result, run_meta

STATS = ("ld", "prob", "logprob", "kl", "kl_corrupt")  # kl_corrupt: the signed noising KL's reference

#: hook suffix -> scorer(diff, grad, edit) for activations that need more than
#: the linear estimate (e.g. AtP*'s exact attention change for q/k components).
_SCORERS: dict[str, Callable] = {}


@torch.no_grad()  # gradients only inside the backward passes (_grad_pass)
def compute(spec: Spec, lm: LoadedModel, ds: Dataset, progress: ProgressFn | None = None) -> Result:
    """One attribution sweep (``spec.method`` in atp, atp_star, ig): the same
    table as the exact sweep, every metric from the same gradients."""
    spec = spec.validated()
    if spec.method == "exact":
        raise ValueError("attribution.compute needs an approximate method; exact sweeps run in methods.activation")
    t0 = time.time()
    n_layers, n_heads, seq = lm.n_layers, lm.n_heads, ds.seq_len
    cells = cells_for(spec.component, n_layers, n_heads, seq, spec.window)
    singles = cells_for(spec.component, n_layers, n_heads, seq, 1) if spec.window > 1 else []
    all_cells = cells + singles
    hooks = sorted({e.hook for c in all_cells for e in c.patch})

    # The clean and corrupted reference runs (and the source activations) come
    # from the exact engine's own preparation, noise included.
    r0 = "blocks.0.hook_resid_pre"
    prep = prepare(lm, ds, spec.corruption, spec.direction, set(hooks) | {r0}, spec.noise_scale, spec.noise_samples, spec.seed)
    inp = prep.inputs
    R = prep.rows
    # resid_pre 0 of both runs (noise included): where the gradient passes
    # start, and the ends of the integrated-gradient path.
    est = estimate(lm, spec.method, inp.base_resid[0], inp.source[r0], inp.source, hooks, all_cells, inp.answer, inp.counter,
                   inp.clean_logprobs, ig_steps=spec.ig_steps, progress=progress, corrupt_logprobs=inp.corrupt_logprobs)

    # Estimated patched means = base means + the estimated change; the exact
    # sweep's formulas then give every metric with its signs and normalisation.
    base = inp.base_stats
    patched = RowStats(*(getattr(base, f).double().mean()[None, None] + est[f][:, None] for f in STATS))
    dbl = lambda st: RowStats(*((getattr(st, f) if getattr(st, f) is not None else st.kl).double() for f in STATS))  # noqa: E731
    eff = effects(patched, dbl(prep.clean), dbl(prep.corrupt), spec.direction)
    table = sweep_table(spec, ds, cells, eff, n_layers, bool(singles))
    meta = run_meta(lm, ds, R, prep.sigma, t0, key_positions=ds.key_positions[0], method=spec.method,
                    **({"ig_steps": spec.ig_steps} if spec.method == "ig" else {}))
    return Result(spec=spec, table=table, baselines=baselines(prep.clean, prep.corrupt, ds.n), meta=meta, kind="activation")


def estimate(lm: LoadedModel, method: str, base_resid0: torch.Tensor, src_resid0: torch.Tensor,
             source: dict[str, torch.Tensor], hooks: Sequence[str], cells: Sequence[Cell], answer: torch.Tensor,
             counter: torch.Tensor, clean_logprobs: torch.Tensor, *, ig_steps: int = 5,
             progress: ProgressFn | None = None, corrupt_logprobs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each cell's estimated change of each read-out statistic, averaged over
    rows: ``{stat: [n_cells] float64}``. ``source[h]`` is the source run's
    activation at hook ``h`` ([R, ...]); the base run starts from
    ``base_resid0`` (its resid_pre at layer 0), ``ig`` interpolates from it to
    ``src_resid0`` (for the same positions both differ only by the embeddings,
    so this is EAP-IG's path on the input embeddings)."""
    R, seq = base_resid0.shape[:2]
    step = max(1, reference_rows(lm.cfg, seq) // 4)  # activations + graph + gradients
    n_layers = lm.n_layers
    zeros = lambda: {f: torch.zeros(len(cells), dtype=torch.float64) for f in STATS}  # noqa: E731
    total = zeros()
    dropped_total = [zeros() for _ in range(n_layers)] if method == "atp_star" else []
    chunks = [slice(r, min(R, r + step)) for r in range(0, R, step)]
    passes = len(chunks) * (ig_steps if method == "ig" else 1)
    done = 0
    for rows in chunks:
        # Without a corrupted reference (denoising) kl_corrupt mirrors kl; effects() never reads it there.
        ref = (answer[rows], counter[rows], clean_logprobs[rows], (corrupt_logprobs if corrupt_logprobs is not None else clean_logprobs)[rows])
        src = {h: source[h][rows] for h in hooks}
        e_base = base_resid0[rows]
        if method == "ig":
            e_src = src_resid0[rows]
            base_act = _capture(lm, e_base, hooks)
            grads = {f: {h: torch.zeros_like(src[h]) for h in hooks} for f in STATS}
            for k in range(ig_steps):
                alpha = (k + 0.5) / ig_steps
                _, g, _ = _grad_pass(lm, e_base + alpha * (e_src - e_base), hooks, ref)
                for f in STATS:
                    for h in hooks:
                        grads[f][h] += g[f][h] / ig_steps
                done += 1
                if progress:
                    progress(done, passes)
            diff = {h: src[h] - base_act[h] for h in hooks}
        elif method in ("atp", "atp_star"):
            drops = range(n_layers) if method == "atp_star" else ()
            acts, grads, dropped = _grad_pass(lm, e_base, hooks, ref, drops=drops)
            diff = {h: src[h] - acts[h] for h in hooks}
            for acc, gd in zip(dropped_total, dropped):
                for f, v in _scores(cells, diff, gd).items():
                    acc[f] += v
            done += 1
            if progress:
                progress(done, passes)
        else:
            raise ValueError(f"unknown attribution method {method!r}")
        for f, v in _scores(cells, diff, grads).items():
            total[f] += v
    out = {f: total[f] / R for f in STATS}
    if method == "atp_star":
        # GradDrop (Kramar et al. 2024): magnitude 1/(L-1) sum_l |AtP_{-l}|
        # of the row-mean estimates, sign from plain AtP.
        for f in STATS:
            mag = sum((d[f] / R).abs() for d in dropped_total) / max(1, n_layers - 1)
            out[f] = torch.sign(out[f]) * mag
    return out


# ---------------------------------------------------------------- passes


def _capture(lm: LoadedModel, resid0: torch.Tensor, hooks: Sequence[str]) -> dict[str, torch.Tensor]:
    """The hooked activations of the blocks run from ``resid0`` (no gradients)."""
    got: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(act, hook=None):
            got[name] = act.detach().clone()

        return hook

    runner = _runner(lm, resid0.shape[1])
    with model_lock(lm.bridge), torch.no_grad(), lm.bridge.hooks(fwd_hooks=[(h, grab(h)) for h in hooks]):
        runner.run_from(0, resid0)
    return got


def _runner(lm: LoadedModel, seq: int):
    from patching.engine.blocks import BlockRunner

    cache = lm.__dict__.setdefault("_attribution_runners", {})
    if seq not in cache:
        cache[seq] = BlockRunner(lm, seq)
    return cache[seq]


def _grad_pass(lm: LoadedModel, embed: torch.Tensor, hooks: Sequence[str], ref, drops: Sequence[int] = ()):
    """One forward pass of the blocks from resid_pre 0 = ``embed`` and one backward pass per read-out
    statistic: (base activations, {stat: {hook: gradient}}); with ``drops``
    also, per layer l in ``drops``, the gradients with layer l's attention
    and MLP outputs' gradient zeroed (GradDrop)."""
    bridge = lm.bridge
    answer, counter, clean_lp, corrupt_lp = ref
    acts: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    state = {"drop": None}
    drop_hooks = {}
    for l in drops:
        for name in (f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_mlp_out"):
            drop_hooks[name] = l

    def make(name: str):
        def hook(act, hook=None):
            y = act
            if name in hooks:
                d = torch.zeros_like(act, requires_grad=True)
                deltas[name] = d
                acts[name] = act.detach().clone()
                y = act + d
            if name in drop_hooks:
                y = y.clone() if y is act else y
                layer = drop_hooks[name]
                y.register_hook(lambda g, layer=layer: torch.zeros_like(g) if state["drop"] == layer else g)
            return y

        return hook

    names = list(dict.fromkeys(list(hooks) + list(drop_hooks)))
    fwd = [(n, make(n)) for n in names]
    runner = _runner(lm, embed.shape[1])
    with model_lock(bridge), torch.inference_mode(False), torch.enable_grad():
        with bridge.hooks(fwd_hooks=fwd):
            # The blocks from resid_pre 0 (= the embeddings, plus position
            # embeddings where the model has them), final position unembedded.
            logits = runner.final_logits(runner.run_from(0, embed)[:, -1, :])
        st = row_stats(logits, answer, counter, clean_lp, corrupt_lp)
        outs = {f: getattr(st, f).sum() for f in STATS}
        inputs = [deltas[h] for h in hooks]

        def backward() -> dict[str, dict[str, torch.Tensor]]:
            res = {}
            for f in STATS:
                gs = torch.autograd.grad(outs[f], inputs, retain_graph=True, allow_unused=True)
                res[f] = {h: (g if g is not None else torch.zeros_like(deltas[h])).detach() for h, g in zip(hooks, gs)}
            return res

        grads = backward()
        dropped = []
        for l in drops:
            state["drop"] = l
            dropped.append(backward())
        state["drop"] = None
    return acts, grads, dropped


def _scores(cells: Sequence[Cell], diff: dict[str, torch.Tensor], grads: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Row sums of each cell's estimate, per statistic: {stat: [n_cells]}.
    A cell's estimate is the sum over its edits of (diff . grad) over the
    activation slice the edit would overwrite."""
    hooks = list(diff)
    prods = {h: torch.stack([diff[h].double() * grads[f][h].double() for f in STATS]) for h in hooks}  # [stats, R, ...]
    out = torch.zeros(len(STATS), len(cells), dtype=torch.float64)
    for i, c in enumerate(cells):
        for e in c.patch:
            out[:, i] += _edit_score(e, prods[e.hook], diff[e.hook], grads, e.hook)
    return {f: out[j] for j, f in enumerate(STATS)}


def _edit_score(e: Edit, prod: torch.Tensor, diff: torch.Tensor, grads, hook: str) -> torch.Tensor:
    for suffix, scorer in _SCORERS.items():
        if hook.endswith(suffix):
            return scorer(e, diff, {f: grads[f][hook] for f in STATS})
    if e.setter is not None:
        raise ValueError("attribution scores plain activation patches only (no custom setters)")
    sel = prod[(slice(None),) + e.index()]
    return sel.reshape(len(STATS), -1).sum(-1)
