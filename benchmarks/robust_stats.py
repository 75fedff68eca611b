"""How long the Disagreement page's uncertainty takes: a 36-setting IOI grid
(12 sweeps of 270 heads, 8 prompts, synthetic per-prompt values), 1,000
resamples: intervals of Spearman and top-k Jaccard for all 630 pairs, split-half
floors, robust labels. Printed against the point statistics without
uncertainty (the page's tables before this work), measured in the same run.

    .venv/bin/python benchmarks/robust_stats.py [--boot 1000] [--kendall]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from patching.core.spec import Spec  # noqa: E402
from patching.results import Result  # noqa: E402
from patching.studies.disagreement import tables as A  # noqa: E402
from patching.studies.disagreement import grid as C  # noqa: E402
from patching.studies.disagreement import robust as R  # noqa: E402


def synthetic_grid(n_layers=30, n_heads=9, n=8, seed=0) -> C.Grid:
    rng = np.random.default_rng(seed)
    base = Spec(task="ioi", component="head")
    settings = C.default_settings(base, ("s2", "s1_io", "abc"))
    specs = C.grid_specs(base, settings)
    cells = n_layers * n_heads
    table0 = pd.DataFrame({"component": "head", "layer": pd.array(np.repeat(np.arange(n_layers), n_heads), dtype="Int64"),
                           "head": pd.array(np.tile(np.arange(n_heads), n_layers), dtype="Int64"),
                           "pos": pd.array([None] * cells, dtype="Int64"), "pos_label": ""})
    truth = rng.standard_t(3, size=cells) * 0.02
    results, sweeps = {}, {}
    for s, sp in specs.items():
        sweep = (sp.corruption, sp.direction, sp.ioi_corrupt)
        if sweep not in sweeps:
            pp = {m: (truth[:, None] + rng.normal(0, 0.02, size=(cells, n))).astype(np.float32) for m in ("logit_diff", "prob", "logprob", "kl")}
            lp = (2 + 3 * truth[:, None] + rng.normal(0, 0.1, size=(cells, n))).astype(np.float32)
            frame = pd.DataFrame({"cell": np.repeat(np.arange(cells, dtype=np.int32), n), "prompt": np.tile(np.arange(n, dtype=np.int32), cells),
                                  **{m: v.reshape(-1) for m, v in pp.items()}, "ld_patched": lp.reshape(-1)})
            table = table0.copy()
            for m, v in pp.items():
                table[m] = v.mean(1).astype(float)
            ref = {"ld_clean": list(4 + rng.normal(0, 0.5, n)), "ld_corrupt": list(rng.normal(0, 0.5, n))}
            sweeps[sweep] = Result(spec=sp, table=table, baselines={}, meta={"per_prompt_ref": ref, "noop_cells": []}, per_prompt=frame,
                                   key=f"k{len(sweeps)}")
        results[s] = sweeps[sweep]
    return C.Grid(base=base, settings=settings, specs=specs, results=results)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--kendall", action="store_true", help="also Kendall intervals (the CLI's default)")
    a = p.parse_args()
    grid = synthetic_grid()
    t = time.perf_counter()
    A.agreement(grid.effects(), 10)
    A.disagreements(grid.effects())
    peer = time.perf_counter() - t
    t = time.perf_counter()
    gs = R.grid_samples(grid, a.boot)
    ra = R.robust_agreement(gs, 10, kendall=a.kendall)
    dis = R.robust_disagreements(gs)
    R.robust_summary(dis, gs)
    ours = time.perf_counter() - t
    print(f"36 settings (12 sweeps x 270 heads x 8 prompts), {a.boot} resamples, {len(ra)} pairs, {len(dis)} disagreements")
    print(f"point statistics (no uncertainty): {peer:.2f} s")
    print(f"with intervals, floors and robust labels{' + Kendall' if a.kendall else ''}: {ours:.2f} s  (ratio {ours / peer:.1f}x)")
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
