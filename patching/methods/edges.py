"""Edge attribution patching: every sender → every receiver from gradients.

The exact path sweep (:func:`patching.methods.paths.sweep`, direct form) runs
the model once per sender with the sender's write difference
``delta_s = write_source(s) - write_base(s)`` added to every chosen receiver's
own input. Edge attribution patching (EAP, Syed et al. 2023) estimates each
edge s → r to first order at the base run::

    score(s -> r) = sum over positions of  delta_s . d stat / d input_r

and one forward and one backward pass per read-out statistic give every edge
at once. A sender's row of the table is the sum of its edges into the chosen
receivers that read it (the exact sweep patches them all together), masked
to the sender positions, averaged over rows and turned into the four metrics
by the exact sweep's formulas, so the two tables compare cell by cell.

Which run the gradient is taken at is named by the direction. Under
``noise`` the base run is the clean one and ``source − base`` = corrupted −
clean: the gradient at the clean run, **Syed et al.'s EAP** (and hannamw/EAP-IG's
``get_scores_eap``), which estimates what corrupting each edge of the clean
run does (mean and zero ablation: what ablating it does, their ``mean`` and
``zero`` interventions). Under ``denoise`` (the default) it is **EAP at the
corrupted run**: clean − corrupted dotted with the corrupted run's gradient,
TransformerLens 4.3's ``attribution_patch`` convention (tested equal to its
``granularity="edge"`` scores), which estimates what restoring each edge does.

``eap_ig`` is EAP-IG (Hanna et al. 2024, hannamw/EAP-IG's
``get_scores_eap_ig``, "EAP-IG-inputs"): the receivers' gradients averaged
over ``ig_steps`` = m points on the straight line from the corrupted run's
input embeddings to the clean run's, ``x_k = e_corrupt + alpha_k (e_clean -
e_corrupt)``, dotted with the same write differences. ``ig_rule`` ``left``
(the default) takes alpha_k = k/m, k = 0..m-1, the reference's left Riemann
sum; ``midpoint`` alpha_k = (k + 1/2)/m. The reference scores
(corrupted − clean) . mean gradient, the noising estimate; the direction only
flips that sign (denoise: clean − corrupted), the points are the same. Mean
and zero ablation have no second input to interpolate: EAP-IG refuses them,
as the reference's ``EAP-IG-inputs`` does.

Receiver inputs are those the exact sweep writes to: each head's own copy of
the residual stream for q/k/v (``use_split_qkv_input``; on grouped-query
models keys and values exist once per KV group, so ``L.H:k`` is the group's
input, which TransformerLens's EAP refuses), the MLP's own input (the
residual skip untouched) and the final residual stream at the last position.
Where the metric is linear in the receivers' inputs (e.g. ``logits`` read by
the logit difference with no final norm) EAP equals the exact sweep.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import pandas as pd
import torch

from patching.core.data import Dataset
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.core.progress import ProgressFn
from patching.core.spec import IG_RULE, IG_STEPS, Spec, ig_alphas
from patching.engine.metrics import METRICS, baseline_warnings, baselines, effects
from patching.engine.readout import STATS, RowStats, row_stats
from patching.engine.resources import gradient_pass, no_graph, path_rows
from patching.methods.graph import Node, Receiver, canonical_receivers, canonical_senders, position_text, senders_for
from patching.methods.path_request import check_method
from patching.methods.path_runs import PathRuns, gqa_notes, mlp_in_hook, qkv_hook, split_qkv, sweep_inputs
from patching.results import Result, run_meta


# ---------------------------------------------------------------- gradients


def receiver_grads(runs: PathRuns, receivers: Sequence[Receiver], direction: str, rows: slice, method: str = "eap",
                   ig_steps: int = IG_STEPS, progress: ProgressFn | None = None, ig_rule: str = IG_RULE,
                   stats: Sequence[str] = STATS) -> dict[str, dict[Receiver, torch.Tensor]]:
    """``{stat: {receiver: [rows, seq, d_model] gradient}}`` of each row's
    statistic with respect to each receiver's input, at the base run
    (``eap``) or averaged over the ``ig_rule`` points of the line from the
    corrupted run's input embeddings to the clean run's (``eap_ig``). Row sums
    of the statistics are differentiated, so each row's gradient is its own.
    ``stats``: the statistics wanted (a circuit's ranking reads one: one
    backward pass instead of one per statistic)."""
    if method == "eap":
        base = runs.corrupt if direction == "denoise" else runs.clean
        points = [base["blocks.0.hook_resid_pre"][rows]]
    else:
        if runs.ablated:
            raise PatchboardError("method", "eap_ig interpolates between two inputs' embeddings; mean and zero ablation have no second "
                                  "input (the reference's EAP-IG-inputs refuses them too): use eap")
        e_corrupt = runs.corrupt["blocks.0.hook_resid_pre"][rows]
        e_clean = runs.clean["blocks.0.hook_resid_pre"][rows]
        points = [e_corrupt + a * (e_clean - e_corrupt) for a in ig_alphas(ig_steps, ig_rule)]
    ref = (runs.answer[rows], runs.counter[rows], runs.clean_logprobs[rows], runs.corrupt_logprobs[rows])
    total: dict[str, dict[Receiver, torch.Tensor]] = {}
    for i, x0 in enumerate(points):
        g = _grad_pass(runs, receivers, x0, ref, stats)
        for f in stats:
            acc = total.setdefault(f, {})
            for r, v in g[f].items():
                acc[r] = acc[r] + v / len(points) if r in acc else v / len(points)
        if progress:
            progress(i + 1, len(points))
    return total


def _grad_pass(runs: PathRuns, receivers: Sequence[Receiver], embed: torch.Tensor, ref,
               stats: Sequence[str] = STATS) -> dict[str, dict[Receiver, torch.Tensor]]:
    """One forward pass from resid_pre 0 = ``embed`` with a zero tensor added
    to every receiver's input, one backward pass per statistic."""
    bridge = runs.lm.bridge
    split = any(r.port in ("q", "k", "v") for r in receivers)
    by_hook: dict[str, list[Receiver]] = {}
    for r in receivers:
        if r.port in ("q", "k", "v"):
            by_hook.setdefault(qkv_hook(r.layer, r.port), []).append(r)
        elif r.port == "mlp":
            by_hook.setdefault(mlp_in_hook(r.layer), []).append(r)
    zeros: dict[str, torch.Tensor] = {}
    fired: set[str] = set()

    def make(name):
        def hook(act, hook=None):
            fired.add(name)
            d = torch.zeros_like(act, requires_grad=True)
            zeros[name] = d
            return act + d  # a new tensor: for resid_mid, the MLP's own input only (as the exact sweep)

        return hook

    with gradient_pass(bridge), split_qkv(bridge, split):
        # Ordinary copies: a caller under inference_mode made tensors autograd cannot save.
        embed, ref = embed.clone(), tuple(t.clone() for t in ref)
        with bridge.hooks(fwd_hooks=[(n, make(n)) for n in by_hook]):
            x = runs.runner.run_from(0, embed)
        missing = sorted(set(by_hook) - fired)
        if missing:
            raise PatchboardError("model", f"the hook {missing[0]} never fired; this model's blocks do not expose the per-head inputs edges need")
        last = torch.zeros_like(x[:, -1, :], requires_grad=True)
        logits = runs.runner.final_logits(x[:, -1, :] + last)
        st = row_stats(logits, *ref)
        names = list(by_hook)
        inputs = [zeros[n] for n in names] + [last]
        out: dict[str, dict[Receiver, torch.Tensor]] = {}
        grads: dict[str, list[torch.Tensor]] = {}
        passes = set(stats) | ({"logprob"} if "prob" in stats else set())
        for f in STATS:
            if f == "prob" or f not in passes:  # each row's P(answer) gradient is P(answer) times its log P(answer) gradient: no pass of its own
                continue
            gs = torch.autograd.grad(getattr(st, f).sum(), inputs, retain_graph=True, allow_unused=True)
            grads[f] = [torch.zeros_like(t) if g is None else g.detach() for g, t in zip(gs, inputs)]
        if "prob" in stats:
            p = st.prob.detach()
            grads["prob"] = [g * p.reshape(-1, *([1] * (g.dim() - 1))) for g in grads["logprob"]]
        for f in stats:
            gs = grads[f]
            per: dict[Receiver, torch.Tensor] = {}
            for n, g in zip(names, gs[:-1]):
                for r in by_hook[n]:
                    per[r] = g if r.port == "mlp" else g[:, :, r.index]
            if any(r.port == "logits" for r in receivers):
                gl = torch.zeros_like(x.detach())
                gl[:, -1] = gs[-1]
                per[next(r for r in receivers if r.port == "logits")] = gl
            out[f] = per
    return out


# ---------------------------------------------------------------- scores


def _after(grads: dict[Receiver, torch.Tensor], receivers: Sequence[Receiver], L: int) -> dict[tuple[int, int], torch.Tensor]:
    """For each node order key, the sum of the gradients of the receivers
    that read a node of that order (every receiver after it)."""
    keys = sorted({(-1, 0)} | {(l, k) for l in range(L) for k in (0, 1)})
    out: dict[tuple[int, int], torch.Tensor] = {}
    acc = None
    ordered = sorted(receivers, key=lambda r: r.order(L), reverse=True)
    i = 0
    for key in reversed(keys):
        while i < len(ordered) and ordered[i].order(L) > key:
            g = grads[ordered[i]]
            acc = g.clone() if acc is None else acc + g
            i += 1
        out[key] = acc
    return out


def sender_scores(runs: PathRuns, grads: dict[str, dict[Receiver, torch.Tensor]], receivers: Sequence[Receiver], nodes: Sequence[Node],
                  direction: str, rows: slice, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``{stat: [n_nodes, rows, seq]}``: each node's write difference dotted
    with the summed gradient of the receivers that read it, per row and
    position (zero outside ``mask``); NaN rows for nodes no receiver reads."""
    L = runs.geo.n_layers
    source = "clean" if direction == "denoise" else "corrupt"
    base = "corrupt" if direction == "denoise" else "clean"
    out = {}
    dz_layers: dict[int, torch.Tensor] = {}  # per layer: every head's z difference [rows, seq, heads, d_head]
    for f in STATS:
        after = _after(grads[f], receivers, L)
        proj: dict[int, torch.Tensor] = {}  # per layer: (z_src - z_base) . (G @ W_O^T), every head at once
        per = []
        for n in nodes:
            G = after[n.order()]
            if G is None:
                ref = runs.clean["blocks.0.hook_resid_pre"][rows]
                per.append(torch.full(ref.shape[:2], float("nan"), dtype=torch.float64))
                continue
            if n.kind == "head":
                # The head's write difference dotted with G, without forming it.
                if n.layer not in proj and runs.normalised:
                    # Through the post-attention norm: every head's exact write difference, dotted with G.
                    z = f"blocks.{n.layer}.attn.hook_z"
                    d = runs.heads.deltas(n.layer, runs.side(source)[z][rows], runs.side(base)[z][rows]).double()
                    proj[n.layer] = torch.einsum("rshm,rsm->rsh", d, G.double()).cpu()
                if n.layer not in proj:
                    if n.layer not in dz_layers:
                        z = f"blocks.{n.layer}.attn.hook_z"
                        dz_layers[n.layer] = (runs.side(source)[z][rows] - runs.side(base)[z][rows]).double()
                    gw = torch.einsum("rsd,hed->rshe", G.float(), runs.W_O[n.layer].float()).double()
                    proj[n.layer] = (dz_layers[n.layer] * gw).sum(-1).cpu()  # [rows, seq, heads]
                per.append(proj[n.layer][:, :, n.head])
            else:
                per.append((runs.delta(n, source, rows).double() * G.double()).sum(-1).cpu())
        t = torch.stack(per)  # [nodes, rows, seq]
        if mask is not None:
            t = t * mask[rows].double().cpu()[None]
        out[f] = t
    return out


def variant(method: str, direction: str, ig_steps: int = IG_STEPS, ig_rule: str = IG_RULE) -> str:
    """The estimate's name, for what it computes (module doc)."""
    if method == "eap":
        return ("EAP (Syed et al.: the gradient at the clean run)" if direction == "noise"
                else "EAP at the corrupted run (denoising; TransformerLens's attribution_patch)")
    return f"EAP-IG (Hanna et al.; {ig_steps} steps, {ig_rule} rule)"


@no_graph()  # gradients only inside the passes (_grad_pass)
def sweep(spec: Spec, lm: LoadedModel, ds: Dataset, receivers: str | Sequence[str], sender_positions: Any = None, by_pos: bool = False,
          progress: ProgressFn | None = None, runs: PathRuns | None = None, senders: Any = None, method: str = "eap",
          ig_steps: int = IG_STEPS, ig_rule: str = IG_RULE) -> Result:
    """The exact path sweep's table (direct form), every cell estimated by
    EAP or EAP-IG from one forward and backward pass (per IG step)."""
    method, ig_steps = check_method(method, "direct", ig_steps, spec.corruption)
    if method == "exact":
        raise ValueError("edges.sweep estimates; the exact sweep is patching.methods.paths.sweep")
    t0 = time.time()
    spec, geo, recv, nodes, runs, pos_spec, mask = sweep_inputs(spec, lm, ds, receivers, senders, sender_positions, runs)
    R, seq = runs.rows, ds.seq_len
    split = any(r.port in ("q", "k", "v") for r in recv)
    step = max(1, path_rows(lm.cfg, seq, split) // 4)  # activations + graph + gradients
    chunks = [slice(r, min(R, r + step)) for r in range(0, R, step)]
    sums = {f: torch.zeros(len(nodes), seq, dtype=torch.float64) for f in STATS}
    passes = len(chunks) * (ig_steps if method == "eap_ig" else 1)
    for ci, rows in enumerate(chunks):
        prog = (lambda d, t, ci=ci: progress(ci * t + d, passes)) if progress else None
        g = receiver_grads(runs, recv, spec.direction, rows, method, ig_steps or IG_STEPS, prog, ig_rule)
        sc = sender_scores(runs, g, recv, nodes, spec.direction, rows, mask)
        for f in STATS:
            sums[f] += sc[f].sum(1)
    est = {f: sums[f] / R for f in STATS}  # [nodes, seq]: row-mean estimated change per position
    senders_ = senders_for(geo, seq, by_pos, nodes)
    index = {n: i for i, n in enumerate(nodes)}
    vals = {f: torch.stack([est[f][index[s.node]].sum() if s.pos is None else est[f][index[s.node], s.pos] for s in senders_]) for f in STATS}
    eff = _metrics(runs, spec.direction, vals)
    table = pd.DataFrame([{
        "component": s.node.kind,
        "layer": s.node.layer if s.node.kind != "embed" else None,
        "head": s.node.head if s.node.kind == "head" else None,
        "pos": s.pos,
        "pos_label": ds.position_labels[s.pos] if s.pos is not None else "",
        **{m: float(eff[m][i]) for m in METRICS},
    } for i, s in enumerate(senders_)])
    for col in ("layer", "head", "pos"):
        table[col] = table[col].astype("Int64")
    label = canonical_receivers(recv, geo)
    meta = run_meta(lm, ds, R, runs.sigma, t0, kind="paths", receivers=label, receivers_described=[r.describe(geo) for r in recv],
                    senders=canonical_senders(nodes, geo), sender_positions=position_text(pos_spec), by_pos=bool(by_pos), n_kv_heads=geo.n_kv,
                    form="direct", method=method, estimate=variant(method, spec.direction, ig_steps, ig_rule),
                    **({"ig_steps": ig_steps, "ig_rule": ig_rule} if method == "eap_ig" else {}))
    meta["warnings"] += gqa_notes(recv, geo) + baseline_warnings(runs.clean_stats, runs.corrupt_stats, ds.n)
    params = {"receivers": label, "senders": meta["senders"], "sender_positions": meta["sender_positions"], "by_pos": bool(by_pos),
              "form": "direct", "method": method, **({"ig_steps": ig_steps, "ig_rule": ig_rule} if method == "eap_ig" else {})}
    return Result(spec=spec, table=table, baselines=baselines(runs.clean_stats, runs.corrupt_stats, ds.n), meta=meta, kind="paths", params=params)


def _metrics(runs: PathRuns, direction: str, change: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every metric from estimated changes of the row-mean statistics
    ([n] per statistic), by the exact sweep's formulas. The base run is one
    of the references, so each metric is linear in the change: edges add up."""
    base_stats = runs.corrupt_stats if direction == "denoise" else runs.clean_stats
    dbl = lambda st: RowStats(*((getattr(st, f) if getattr(st, f) is not None else st.kl).double() for f in STATS))  # noqa: E731
    b = dbl(base_stats)
    patched = RowStats(*(getattr(b, f).mean()[None, None] + change[f][:, None] for f in STATS))
    return effects(patched, dbl(runs.clean_stats), dbl(runs.corrupt_stats), direction)


@no_graph()
def edge_table(spec: Spec, lm: LoadedModel, ds: Dataset, receivers: str | Sequence[str], senders: Any = None, sender_positions: Any = None,
               method: str = "eap", ig_steps: int = IG_STEPS, runs: PathRuns | None = None, ig_rule: str = IG_RULE) -> pd.DataFrame:
    """Every edge on its own: one row per sender → receiver that reads it
    (``sender``, ``receiver``, then every metric), the edge's estimated
    effect when only it is patched. A sender's edges add up to its row of
    :func:`sweep` (every metric is linear in the estimated change). Not
    stored: ``python -m patching paths --method eap --edges FILE`` writes it."""
    method, ig_steps = check_method(method, "direct", ig_steps, spec.corruption)
    if method == "exact":
        raise PatchboardError("method", "edges are scored by eap or eap_ig; exact per-edge runs are form tl_direct")
    spec, geo, recv, nodes, runs, pos_spec, mask = sweep_inputs(spec, lm, ds, receivers, senders, sender_positions, runs)
    R = runs.rows
    source = "clean" if spec.direction == "denoise" else "corrupt"
    L = geo.n_layers
    sums = {f: torch.zeros(len(nodes), len(recv), dtype=torch.float64) for f in STATS}
    step = 8  # rows per block: every sender's write difference is held at once
    for r0 in range(0, R, step):
        rows = slice(r0, min(R, r0 + step))
        g = receiver_grads(runs, recv, spec.direction, rows, method, ig_steps or IG_STEPS, ig_rule=ig_rule)
        m = mask[rows].to(runs.W_O[0].device)[..., None] if mask is not None else None
        deltas = []
        for n in nodes:
            d = runs.delta(n, source, rows).float()
            deltas.append((d * m if m is not None else d).reshape(-1))
        D = torch.stack(deltas)  # [nodes, rows * seq * d_model]
        for f in STATS:
            G = torch.stack([g[f][r].float().reshape(-1) for r in recv])  # [receivers, rows * seq * d_model]
            sums[f] += (D @ G.T).double().cpu()
    reads = torch.tensor([[r.reads(n, L) for r in recv] for n in nodes])
    pairs = reads.nonzero().tolist()
    eff = _metrics(runs, spec.direction, {f: torch.stack([sums[f][i, j] for i, j in pairs]) / R if pairs else torch.zeros(0, dtype=torch.float64)
                                          for f in STATS})
    return pd.DataFrame({"sender": [str(nodes[i]) for i, _ in pairs], "receiver": [recv[j].label(geo) for _, j in pairs],
                         **{k: eff[k].numpy() for k in METRICS}})

