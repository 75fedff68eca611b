"""A Disagreement grid made of synthetic sweeps with per-prompt values (no
model): positional cells of which a share are no-ops (zero by construction,
``measured`` False), prompts with identities, and the truth planted per
component, so statistics can be checked against hand and independent
recomputations."""

from __future__ import annotations

import numpy as np
import pandas as pd

from patching.core.spec import Spec
from patching.results import Result, prompt_id
from patching.studies.disagreement import grid as disagreement_grid

BASE = Spec(task="ioi", component="resid_pre", n_pairs=8)


def prompts(n: int) -> list[tuple[str, str]]:
    return [(f"When A{i} and B{i} went to the shop, B{i} gave a ring to", f" A{i}") for i in range(n)]


def sweep(spec: Spec, truth: dict[str, np.ndarray], n: int, rng: np.random.Generator, noop: np.ndarray, n_layers: int, seq: int,
          order: np.ndarray | None = None, noise: float = 0.3) -> Result:
    """One sweep of ``n_layers`` x ``seq`` positional cells: per metric, per
    prompt effects truth + t3 noise (exactly 0 at the ``noop`` cells);
    the logit difference through LD_patched around the truth times the gap."""
    cells = n_layers * seq
    order = np.arange(n) if order is None else order
    per = {}
    for m in ("prob", "logprob", "kl"):
        v = truth[m][:, None] + noise * np.abs(truth[m]).mean() * rng.standard_t(3, size=(cells, n))
        v[noop] = 0.0
        per[m] = v
    lc, lo = 4 + rng.normal(0, 0.5, n), rng.normal(0, 0.5, n)
    gap = lc - lo
    ld_eff = truth["logit_diff"][:, None] + noise * np.abs(truth["logit_diff"]).mean() * rng.standard_t(3, size=(cells, n))
    lp = lo[None] + ld_eff * gap[None] if spec.direction == "denoise" else lc[None] - ld_eff * gap[None]
    base_lp = lo if spec.direction == "denoise" else lc
    lp[noop] = base_lp
    ld = np.where(noop, 0.0, ((lp.mean(1) - lo.mean()) if spec.direction == "denoise" else (lc.mean() - lp.mean(1))) / gap.mean())
    table = pd.DataFrame({"component": spec.component, "layer": np.repeat(np.arange(n_layers), seq),
                          "head": pd.array([None] * cells, dtype="Int64"), "pos": pd.array(np.tile(np.arange(seq), n_layers), dtype="Int64"),
                          "pos_label": [f"{p}:t" for p in np.tile(np.arange(seq), n_layers)]})
    table["logit_diff"] = ld
    for m in ("prob", "logprob", "kl"):
        table[m] = per[m].mean(1)
    per_prompt = pd.DataFrame({"cell": np.repeat(np.arange(cells), n), "prompt": np.tile(np.arange(n), cells),
                               **{m: per[m][:, order].reshape(-1) for m in ("prob", "logprob", "kl")},
                               "ld_patched": lp[:, order].reshape(-1)})
    ps = prompts(n)
    meta = {"per_prompt_ref": {"ld_clean": list(lc[order]), "ld_corrupt": list(lo[order])}, "noop_cells": [int(i) for i in np.flatnonzero(noop)],
            "prompt_ids": [prompt_id(*ps[i]) for i in order], "prompt_texts": [ps[i][0] for i in order], "n_pairs": n}
    return Result(spec=spec, table=table, baselines={}, meta=meta, per_prompt=per_prompt)


def grid(settings: str = "str/*/denoise/s2,str/*/noise/s2", n: int = 8, n_layers: int = 4, seq: int = 10, prefix: int = 6,
         seed: int = 0, orders: dict | None = None, noise: float = 0.3) -> disagreement_grid.Grid:
    """A grid of ``settings`` on ``n`` prompts: positions < ``prefix`` are
    no-ops; each sweep's truth is a shared component pattern plus its own
    part. ``orders``: (corruption, direction, variant) -> the order in which
    that sweep stores its prompts (a permutation: pairing must undo it)."""
    rng = np.random.default_rng(seed)
    specs = disagreement_grid.grid_specs(BASE, settings)
    cells = n_layers * seq
    noop = np.tile(np.arange(seq), n_layers) < prefix
    shared = rng.standard_t(3, size=cells)
    results, sweeps = {}, {}
    for s, sp in specs.items():
        key = (sp.corruption, sp.direction, sp.ioi_corrupt)
        if key not in sweeps:
            truth = {m: 0.05 * (shared + 0.7 * rng.standard_t(3, size=cells)) for m in ("logit_diff", "prob", "logprob", "kl")}
            sweeps[key] = sweep(sp, truth, n, rng, noop, n_layers, seq, (orders or {}).get(key), noise)
        results[s] = disagreement_grid._with_spec(sweeps[key], sp)
    return disagreement_grid.Grid(base=disagreement_grid.grid_base(BASE), settings=list(specs), specs=specs, results=results)


def dropped(g: disagreement_grid.Grid) -> disagreement_grid.Grid:
    """The same grid with the no-op rows removed from every table and their
    per-prompt values (cells renumbered), as if they had never been swept."""
    out, done = {}, {}
    for s, r in g.results.items():
        if id(r.per_prompt) not in done:
            live = r.table["measured"].to_numpy()
            keep = np.flatnonzero(live)
            remap = -np.ones(len(live), dtype=int)
            remap[keep] = np.arange(len(keep))
            pp = r.per_prompt[live[r.per_prompt["cell"].to_numpy()]].copy()
            pp["cell"] = remap[pp["cell"].to_numpy()]
            meta = dict(r.meta, noop_cells=[])
            done[id(r.per_prompt)] = Result(spec=r.spec, table=r.table[live].drop(columns="measured").reset_index(drop=True), baselines={}, meta=meta,
                                 per_prompt=pp.reset_index(drop=True))
        out[s] = disagreement_grid._with_spec(done[id(r.per_prompt)], g.specs[s])
    return disagreement_grid.Grid(base=g.base, settings=g.settings, specs=g.specs, results=out)


def null_samples(n: int, cells: int, seed: int, noise: float = 0.05, scales=(1.0, 0.3, 2.0)):
    """GridSamples of settings that measure the same thing: each is a scaled
    copy of one truth plus its own t3 noise per prompt, so every
    disagreement between them is noise (their z-scores agree in expectation)."""
    from patching.studies.disagreement.robust import GridSamples

    rng = np.random.default_rng(seed)
    mu = rng.standard_t(3, size=cells) * 0.1
    names = ["str/logit_diff/denoise", "str/prob/denoise", "gn/kl/noise"][:len(scales)]
    per = {s: c * (mu[:, None] + noise * rng.standard_t(3, size=(cells, n))) for s, c in zip(names, scales)}
    live = np.ones(cells, dtype=bool)
    return GridSamples(names, [f"L{i}H0" for i in range(cells)], {s: live for s in names}, {s: v.mean(axis=1) for s, v in per.items()}, per,
                       {s: np.ones(n) for s in names}, {s: np.zeros((cells, 1), np.float32) for s in names}, {s: False for s in names}, n, 0,
                       np.ones((1, n)) / n)
