"""How many prompts? Interval widths of the IOI head sweep on the embedded
model as the number of pairs grows (n = 8, 16, 32, 64; STR, S2 corruption,
logit difference, denoising): the median width of the 95 % bootstrap interval
over all heads and over the 10 strongest, and how many heads the 2-SD rule
detects in at least 95 % of resamples. Sweeps go through the store (a second
run reads them).

    .venv/bin/python benchmarks/prompts_needed.py [--n 8 16 32 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if "PATCHBOARD_CACHE_DIR" not in os.environ:
    # A store of its own (results stored by older versions lack per-prompt values); the converted model is shared.
    from pathlib import Path

    own = Path.home() / ".cache" / "patchboard-bench"
    own.mkdir(parents=True, exist_ok=True)
    if not (own / "models").exists():
        (own / "models").symlink_to(Path.home() / ".cache" / "patchboard" / "models", target_is_directory=True)
    os.environ["PATCHBOARD_CACHE_DIR"] = str(own)

from patching import service  # noqa: E402
from patching.analysis.uncertainty import result_intervals  # noqa: E402
from patching.core.spec import Spec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print("n_pairs | median width (all heads) | median width (top 10) | heads detected in >= 95% | seconds")
    for n in a.n:
        t = time.time()
        res = service.run(Spec(task="ioi", n_pairs=n, seed=a.seed, component="head"))
        iv = result_intervals(res)
        if iv is None:
            raise SystemExit("this store's result has no per-prompt values; point PATCHBOARD_CACHE_DIR at a fresh folder")
        width = iv["value_hi"] - iv["value_lo"]
        top = res.table["logit_diff"].abs().nlargest(10).index
        print(f"{n:7d} | {width.median():.4f} | {width.loc[top].median():.4f} | {int((iv['detect_stability'] >= 0.95).sum())} | "
              f"{time.time() - t:.0f}", flush=True)


if __name__ == "__main__":
    main()
