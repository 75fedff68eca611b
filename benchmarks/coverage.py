"""The coverage table of docs/statistics.md: how often a nominal 95 % interval
holds the truth, for the expanded percentile interval the pages use and the
plain percentile interval, on synthetic per-prompt effects shaped like the
shipped demo's (patching/analysis/coverage.py), at 8, 16, 32 and 64 prompts.
The cell is the lowest coverage over the demo sweeps simulated.

    .venv/bin/python benchmarks/coverage.py [--reps 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402

from patching.analysis import coverage  # noqa: E402
from tests.helpers.demo import demo_result, demo_store  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=60, help="replicates of every cell (effects) / of the grid (Spearman: x3)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        store, fp = demo_store(Path(tmp))
        res = {"head str/denoise/s2": demo_result(store, fp), "head gn/noise/s2": demo_result(store, fp, corruption="gn", direction="noise"),
               "head str/noise/abc": demo_result(store, fp, direction="noise", ioi_corrupt="abc"),
               "head gn/denoise/abc": demo_result(store, fp, corruption="gn", ioi_corrupt="abc"),
               "resid_pre str/denoise/s2": demo_result(store, fp, component="resid_pre")}
        src = coverage.sources_from(res)
        h, g, r = res["head str/denoise/s2"], res["head gn/noise/s2"], res["resid_pre str/denoise/s2"]
        src["spearman"] = [coverage.spearman_source("head s2 logit_diff vs prob", h, "logit_diff", h, "prob"),
                           coverage.spearman_source("head str logit_diff vs gn kl", h, "logit_diff", g, "kl"),
                           coverage.spearman_source("head s2 vs abc logit_diff", h, "logit_diff", res["head str/noise/abc"], "logit_diff"),
                           coverage.spearman_source("resid_pre logit_diff vs kl", r, "logit_diff", r, "kl")]
        spear = {"spearman": src.pop("spearman")}
        table = coverage.coverage_table(src, seed=a.seed, reps=a.reps, n_boot=400)
        table = pd.concat([table, coverage.coverage_table(spear, seed=a.seed, reps=3 * a.reps, n_boot=200)], ignore_index=True)
    print(table.to_string(index=False))
    for method in coverage.METHODS:
        print(f"\nlowest coverage over the sources, {method} interval:")
        print(coverage.worst(table, method).round(3).to_string())
    print(f"\n{time.time() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
