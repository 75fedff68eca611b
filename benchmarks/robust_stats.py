"""How long the Disagreement page's statistics take: a 36-setting IOI grid
(12 sweeps of 270 heads, 8 prompts; synthetic per-prompt values, or the
shipped demo's with --demo), 1,000 resamples: the whole report the page and
``compare`` show (point statistics, expanded-percentile intervals of Spearman
and top-k Jaccard for all 630 pairs, noise floors over 50 half splits with
their jackknife test, every disagreement's sign-flip test and BH q-values).
Printed against the point statistics alone, measured in the same run (after
one warm-up, so that imports are not counted: the page has them loaded).

    .venv/bin/python benchmarks/robust_stats.py [--boot 1000] [--kendall] [--demo] [--n 8]
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
from patching.studies.disagreement import grid as C  # noqa: E402
from patching.studies.disagreement import report as report_module  # noqa: E402
from patching.studies.disagreement import tables as A  # noqa: E402


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


def demo_grid() -> C.Grid:
    import tempfile
    from pathlib import Path

    from patching.core.config import EMBEDDED
    from tests.helpers.demo import demo_store

    store, fp = demo_store(Path(tempfile.mkdtemp()))
    return C.lookup_grid(Spec(model=EMBEDDED), store, fp)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--kendall", action="store_true", help="also Kendall intervals (the CLI's default)")
    p.add_argument("--demo", action="store_true", help="the shipped demo's 36-setting head grid instead of synthetic values")
    p.add_argument("--n", type=int, default=8, help="prompts of the synthetic grid")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    grid = demo_grid() if a.demo else synthetic_grid(n=a.n)

    def point() -> None:
        eff = grid.effects()
        A.agreement(eff, 10)
        A.disagreements(eff)
        A.sign_flips(eff)
        A.detection_sets(eff)

    def full():
        return report_module.grid_report(grid, 10, n_boot=a.boot, kendall=a.kendall)

    point()
    full()  # warm-up: imports, first-call costs
    peer = min(_timed(point) for _ in range(a.repeat))
    ours = min(_timed(full) for _ in range(a.repeat))
    rep = full()
    rob = rep.robustness
    print(f"{len(rep.settings)} settings ({'demo' if a.demo else 'synthetic'}, {rob.n_prompts} prompts), {rob.n_boot} resamples, "
          f"{len(rep.agreement)} pairs, {len(rob.disagreements)} tests")
    print(f"point statistics alone: {peer:.2f} s (best of {a.repeat})")
    print(f"the whole report with intervals, floors and tests{' + Kendall' if a.kendall else ''}: {ours:.2f} s  (ratio {ours / peer:.1f}x)")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
