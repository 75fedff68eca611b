"""Circuits as results: one circuit's faithfulness, and circuits grown by score.

:func:`evaluate_circuit` evaluates one edge set (:mod:`patching.methods.circuit`)
into a result: its faithfulness and every other metric, with the per-prompt
values behind them. :func:`grow` is the loop of EAP-IG and MIB's circuit
track: score every edge on one set of prompts (:func:`edge_scores`: EAP or
EAP-IG from :mod:`patching.methods.edges`, or the exact direct path of each
edge where the graph is small), keep the top n edges for a grid of n
(:func:`size_grid`: log-spaced from 1 to every edge, or MIB's percentages),
evaluate each circuit exactly on *other* prompts (held out by default: the
task drawn with another seed, overlapping prompts removed), and beside each
size draw random circuits of the same size (the baseline band). The curve's
summaries (MIB's CPR and CMD, intervals, the knee) are read from the stored
per-circuit and per-prompt values by :mod:`patching.analysis.circuit_curve`.

Every circuit is evaluated in the ``denoise`` form of
:mod:`patching.engine.metrics`: the clean run is N (every edge), the ablated
run ∅ (no edge), so ``logit_diff`` is MIB's faithfulness
(m(C) − m(∅)) / (m(N) − m(∅)), a ratio of means over the prompts.
"""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import pandas as pd

from patching.core.data import Dataset
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.core.progress import ProgressFn
from patching.core.spec import METRICS, Spec
from patching.engine.metrics import baseline_warnings, baselines, effects, per_prompt
from patching.engine.readout import RowStats
from patching.methods.circuit import CircuitRuns, evaluate, prepare
from patching.methods.circuit_graph import MIB_PERCENTAGES, SCORINGS, EdgeIndex, canonical_text
from patching.methods.graph import Geometry
from patching.results import Result, run_meta

#: Edges the exact scoring runs one patched pass for (tiny models only).
MAX_EXACT_EDGES = 5_000


# ---------------------------------------------------------------- one circuit


def evaluate_circuit(spec: Spec, lm: LoadedModel, ds: Dataset, ids: Sequence[int], progress: ProgressFn | None = None,
                     cr: CircuitRuns | None = None) -> Result:
    """One circuit's result: a one-row table (edges asked, kept after
    pruning, nodes, every metric) and its per-prompt values."""
    t0 = time.time()
    cr = cr or prepare(lm, ds, spec)
    mask = np.zeros((1, cr.ix.n_edges), dtype=bool)
    mask[0, np.asarray(list(ids), dtype=np.int64)] = True
    st, pruned = evaluate(cr, mask, progress)
    table, pp = _tables(cr, st, pruned, ds.n, [{"circuit": "given", "n": int(mask.sum()), "draw": 0}])
    geo = cr.runs.geo
    meta = _meta(lm, ds, cr, t0, geo, kind="circuit", edges=canonical_text(ids, geo))
    return Result(spec=spec, table=table, baselines=_baselines(cr, ds), meta=meta, kind="circuit", per_prompt=pp)


def _baselines(cr: CircuitRuns, ds: Dataset) -> dict[str, float]:
    return baselines(cr.clean, cr.empty, ds.n)


def _meta(lm, ds, cr: CircuitRuns, t0: float, geo: Geometry, **extra: Any) -> dict:
    n = ds.n
    K = cr.rows // n
    meta = run_meta(lm, ds, cr.rows, cr.runs.sigma, t0, n_kv_heads=geo.n_kv, n_graph_edges=cr.ix.n_edges, shared_prefix=cr.offset, **extra)
    meta["per_prompt_ref"] = {"ld_clean": cr.clean.ld.view(n, K).mean(1).double().tolist(),
                              "ld_corrupt": cr.empty.ld.view(n, K).mean(1).double().tolist()}
    meta["warnings"] += baseline_warnings(cr.clean, cr.empty, n)
    return meta


def _tables(cr: CircuitRuns, st: RowStats, pruned: np.ndarray, n_prompts: int, rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy table (one row per circuit: ``rows``' fields, edges kept
    after pruning, nodes, every metric) and the per-prompt values (cell,
    prompt, every metric, ld_patched) the intervals are computed from."""
    C = len(rows)
    eff = effects(st, cr.clean, cr.empty, "denoise")
    pp = per_prompt(st, cr.clean, cr.empty, "denoise", n_prompts)
    ix = cr.ix
    nodes = [int(np.unique(ix.sender[pruned[c]]).size) for c in range(C)]
    table = pd.DataFrame([{**r, "n_kept": int(pruned[c].sum()), "n_nodes": nodes[c], **{m: float(eff[m][c]) for m in METRICS}}
                          for c, r in enumerate(rows)])
    table = table.rename(columns={"n": "n_edges"})
    cells = np.repeat(np.arange(C, dtype=np.int32), n_prompts)
    prompts = np.tile(np.arange(n_prompts, dtype=np.int32), C)
    # The per-prompt values' stored form, every kind's (patching/kinds.py: PER_PROMPT).
    per = pd.DataFrame({"cell": cells, "prompt": prompts,
                        **{m: pp[m].float().reshape(-1).numpy() for m in METRICS},
                        "ld_patched": pp["ld_patched"].float().reshape(-1).numpy()})
    return table, per


# ---------------------------------------------------------------- sizes and masks


def size_grid(n_edges: int, points: int = 20, grid: str = "log") -> list[int]:
    """Circuit sizes: ``points`` log-spaced sizes from 1 edge to all of them
    (rounded, repeats dropped), or MIB's percentages of every edge."""
    if grid == "mib":
        sizes = [max(1, int(p * n_edges)) for p in MIB_PERCENTAGES]
    else:
        sizes = np.unique(np.round(np.logspace(0, np.log10(n_edges), points)).astype(np.int64)).tolist()
    return sorted(set(int(min(max(1, s), n_edges)) for s in sizes))


def ranking(scores: np.ndarray, rank: str = "abs") -> np.ndarray:
    """Edge indices best first: by |score| (``abs``, EAP-IG's default) or by
    score (``signed``: the edges that carry the behaviour first); ties by
    index, so the order is reproducible."""
    key = np.abs(scores) if rank == "abs" else scores
    return np.lexsort((np.arange(len(scores)), -key))


def top_masks(order: np.ndarray, sizes: Sequence[int], n_edges: int) -> np.ndarray:
    out = np.zeros((len(sizes), n_edges), dtype=bool)
    for i, n in enumerate(sizes):
        out[i, order[:n]] = True
    return out


def random_masks(n_edges: int, sizes: Sequence[int], draws: int, seed: int) -> np.ndarray:
    """``draws`` uniform random circuits of each size (size-major), seeded."""
    rng = np.random.default_rng([int(seed), 23])
    out = np.zeros((len(sizes) * draws, n_edges), dtype=bool)
    for i, n in enumerate(sizes):
        for k in range(draws):
            out[i * draws + k, rng.choice(n_edges, size=n, replace=False)] = True
    return out


# ---------------------------------------------------------------- scoring


def scoring_dataset(spec: Spec, lm: LoadedModel, ds: Dataset, score_seed: int) -> tuple[Spec, Dataset, list[str]]:
    """The prompts the edges are scored on: the task drawn with
    ``score_seed`` without the evaluation prompts (held out), or the
    evaluation prompts themselves when ``score_seed`` is the evaluation
    seed or the spec holds custom pairs (with a warning)."""
    from patching.core.tasks import dataset_for, pairs_for
    from patching.engine.reference import check_clean_behaviour

    notes: list[str] = []
    if spec.pairs is not None or score_seed == spec.seed:
        notes.append("the edges were scored on the evaluation prompts themselves (custom pairs, or the score seed equals the seed); "
                     "the curve is then in-sample")
        return spec, ds, notes
    s_spec = replace(spec, seed=score_seed).validated()
    pairs = pairs_for(s_spec, lm.tokenizer)
    seen = {p.clean for p in ds.pairs}
    kept = [p for p in pairs if p.clean not in seen]
    if not kept:
        raise PatchboardError("score-seed", "every scoring prompt is also an evaluation prompt; choose another score seed or more pairs")
    if len(kept) < len(pairs):
        notes.append(f"{len(pairs) - len(kept)} of the {len(pairs)} scoring prompts were also evaluation prompts and were left out")
        s_spec = replace(s_spec, task=None, pairs=tuple(kept)).validated()
    return s_spec, check_clean_behaviour(dataset_for(s_spec, lm.tokenizer), lm), notes


def edge_scores(spec: Spec, lm: LoadedModel, ds: Dataset, scoring: str, direction: str, metric: str = "logit_diff",
                ig_steps: int = 5, progress: ProgressFn | None = None, ig_rule: str = "left") -> np.ndarray:
    """Every edge's score ([E] float64, edge-index order): its estimated (EAP,
    EAP-IG) or exact (direct path: the edge's write difference into its
    receiver alone) effect on ``metric``, in ``direction``'s sign convention
    (positive: the edge carries the behaviour)."""
    from patching.methods.path_runs import prepare_runs

    if scoring not in SCORINGS:
        raise PatchboardError("scoring", f"{str(scoring)[:20]!r} is not one of {', '.join(SCORINGS)}")
    geo = Geometry.of(lm)
    ix = EdgeIndex.of(geo)
    s_spec = replace(spec, direction=direction).validated()
    runs = prepare_runs(lm, ds, s_spec)
    out = np.full(ix.n_edges, np.nan)
    if scoring == "exact":
        if ix.n_edges > MAX_EXACT_EDGES:
            raise PatchboardError("scoring", f"exact scoring runs one patched pass per edge; this model has {ix.n_edges} edges "
                                  f"(the limit is {MAX_EXACT_EDGES}): use eap or eap_ig")
        from patching.methods.paths import sweep

        for ri, r in enumerate(ix.receivers):
            k = ix.n_readable(ri)
            res = sweep(s_spec, lm, ds, r.label(geo), runs=runs, senders=",".join(str(n) for n in ix.senders[:k]))
            t = res.table
            vals = {(c, -1 if pd.isna(l) else int(l), -1 if pd.isna(h) else int(h)): float(v)
                    for c, l, h, v in zip(t["component"], t["layer"], t["head"], t[metric])}
            for si, n in enumerate(ix.senders[:k]):
                out[int(ix.starts[ri]) + si] = vals.get((n.kind, n.layer, n.head), float("nan"))
            if progress:
                progress(ri + 1, len(ix.receivers))
    else:
        out = _estimated(runs, ix, scoring, direction, metric, ig_steps, progress, ig_rule)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise PatchboardError("scoring", f"{bad} edge scores are not finite (the {metric} baseline gap may be zero); score by another metric")
    return out


#: The read-out statistic whose gradient estimates each metric (the noising KL reads KL from the corrupted run).
_STAT = {"logit_diff": "ld", "prob": "prob", "logprob": "logprob", "kl": "kl", "prob_diff": "pd"}


def _estimated(runs, ix: EdgeIndex, method: str, direction: str, metric: str, ig_steps: int, progress: ProgressFn | None,
               ig_rule: str = "left") -> np.ndarray:
    """Every edge's EAP / EAP-IG estimate of ``metric`` (edge-index order):
    the receivers' gradients from :func:`patching.methods.edges.receiver_grads`
    (one statistic: one backward pass per row block and IG step) dotted with
    every sender's write difference, as :func:`patching.methods.edges.edge_table`
    scores them (tested equal), over the positions where the two runs differ
    only (before them every write difference is zero)."""
    import torch

    from patching.engine.resources import path_rows
    from patching.methods.edges import _metrics, receiver_grads
    from patching.engine.readout import STATS

    stat = "kl_corrupt" if metric == "kl" and direction == "noise" else _STAT[metric]
    source = "clean" if direction == "denoise" else "corrupt"
    R = runs.rows
    seq = runs.clean["ln_final.hook_in"].shape[1]
    diff = (runs.clean["blocks.0.hook_resid_pre"] != runs.corrupt["blocks.0.hook_resid_pre"]).any(-1).any(0).nonzero()
    off = int(diff[0]) if len(diff) else seq
    step = max(1, path_rows(runs.lm.cfg, seq, True) // 4)
    blocks = [slice(r, min(R, r + step)) for r in range(0, R, step)]
    sums = torch.zeros(len(ix.senders), len(ix.receivers), dtype=torch.float64)
    for bi, rows in enumerate(blocks):
        g = receiver_grads(runs, list(ix.receivers), direction, rows, method, ig_steps, ig_rule=ig_rule, stats=(stat,))[stat]
        with torch.no_grad():
            D = torch.stack([runs.delta(n, source, rows)[:, off:].float().reshape(-1) for n in ix.senders])
            G = torch.stack([g[r][:, off:].float().reshape(-1) for r in ix.receivers])
            sums += (D @ G.T).double().cpu()
        if progress:
            progress(bi + 1, len(blocks))
    change = sums[torch.from_numpy(ix.sender).long(), torch.from_numpy(ix.receiver).long()] / R
    zero = torch.zeros_like(change)
    eff = _metrics(runs, direction, {f: (change if f == stat else zero) for f in STATS})
    return eff[metric].numpy().astype(np.float64)


def encode_scores(scores: np.ndarray) -> str:
    """Scores as stored in a result's meta: float64 little-endian, base64 (no pickle)."""
    return base64.b64encode(np.asarray(scores, dtype="<f8").tobytes()).decode("ascii")


def decode_scores(text: Any, n_edges: int) -> np.ndarray:
    """The stored scores, checked: exactly ``n_edges`` finite float64 values."""
    if not isinstance(text, str) or len(text) > 12 * n_edges + 16:
        raise PatchboardError("scores", "a curve's stored scores are missing or too long")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise PatchboardError("scores", "a curve's stored scores are not base64") from None
    if len(raw) != 8 * n_edges:
        raise PatchboardError("scores", f"a curve's stored scores hold {len(raw) // 8} values for {n_edges} edges")
    out = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    if not np.isfinite(out).all():
        raise PatchboardError("scores", "a curve's stored scores are not finite")
    return out


# ---------------------------------------------------------------- the curve


def grow(spec: Spec, lm: LoadedModel, ds: Dataset, *, scoring: str = "eap", direction: str = "noise", ig_steps: int = 5,
         score_seed: int = 1, points: int = 20, grid: str = "log", draws: int = 20, rank: str = "abs", metric: str = "logit_diff",
         progress: ProgressFn | None = None, ig_rule: str = "left") -> Result:
    """Score every edge on the scoring prompts, then evaluate the top-n
    circuit for every size of the grid and ``draws`` random circuits of each
    size on the evaluation prompts ``ds``. The table has one row per circuit
    (``circuit`` top | random, ``n_edges``, ``draw``, ``n_kept``,
    ``n_nodes``, every metric), the per-prompt values behind every row, and
    the scores in the meta (:func:`decode_scores`)."""
    t0 = time.time()
    geo = Geometry.of(lm)
    ix = EdgeIndex.of(geo)
    step = (lambda lo, hi: (lambda d, t: progress(lo + (hi - lo) * d // max(t, 1), 1000))) if progress else (lambda lo, hi: None)
    s_spec, s_ds, notes = scoring_dataset(spec, lm, ds, score_seed)
    t_score = time.time()
    scores = edge_scores(s_spec, lm, s_ds, scoring, direction, metric, ig_steps, step(0, 150), ig_rule)
    t_score = time.time() - t_score
    sizes = size_grid(ix.n_edges, points, grid)
    order = ranking(scores, rank)
    masks = np.concatenate([top_masks(order, sizes, ix.n_edges), random_masks(ix.n_edges, sizes, draws, spec.seed)])
    rows = [{"circuit": "top", "n": n, "draw": 0} for n in sizes]
    rows += [{"circuit": "random", "n": n, "draw": k} for n in sizes for k in range(draws)]
    t_eval = time.time()
    cr = prepare(lm, ds, spec)
    st, pruned = evaluate(cr, masks, step(150, 1000))
    t_eval = time.time() - t_eval
    table, pp = _tables(cr, st, pruned, ds.n, rows)
    meta = _meta(lm, ds, cr, t0, geo, kind="circuit_curve", scores=encode_scores(scores), sizes=sizes, score_prompts=s_ds.n,
                 score_seed=int(score_seed) if s_ds is not ds else int(spec.seed), scoring=scoring, score_direction=direction,
                 **({"ig_steps": ig_steps, "ig_rule": ig_rule} if scoring == "eap_ig" else {}),
                 score_metric=metric, rank=rank, score_seconds=round(t_score, 3), eval_seconds=round(t_eval, 3),
                 circuits_evaluated=int(len(masks)))
    meta["warnings"] += notes
    return Result(spec=spec, table=table, baselines=_baselines(cr, ds), meta=meta, kind="circuit_curve", per_prompt=pp)


def circuit_at(res: Result, n: int, geo: Geometry) -> np.ndarray:
    """The top-n circuit of a stored curve (edge indices), from its scores."""
    ix = EdgeIndex.of(geo)
    scores = decode_scores(res.meta.get("scores"), ix.n_edges)
    return np.sort(ranking(scores, res.meta.get("rank", "abs"))[:n])

