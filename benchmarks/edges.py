"""Edge attribution patching (EAP, EAP-IG) against the exact path sweep, in one run.

On the embedded model (30 layers x 9 query heads, 3 KV groups: grouped-query,
which TransformerLens's edge attribution refuses, so the peer is our own exact
direct-path sweep), IOI (s2, seed 0), STR, denoising, model loading and the two cached runs every
method shares not timed in the ratios (printed once).
For each receiver set: the exact sweep (one patched run per sender, batched),
EAP (one forward and backward pass) and EAP-IG (``--ig-steps`` passes), their
times, the speed-up over exact measured here, and their agreement with exact on
the normalised logit difference (Pearson, Spearman, top-10 overlap, largest
absolute error) over every sender (embed, 270 heads, 30 MLPs) that reaches a
receiver.

Usage::

    .venv/bin/python benchmarks/edges.py [--n-pairs 8] [--receivers 'logits;9-11.*:*,logits;*'] [--ig-steps 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from patching.analysis.estimate_error import agreement  # noqa: E402
from patching.core.spec import Spec  # noqa: E402
from patching.methods import edges as E  # noqa: E402
from patching.methods import path_request, path_runs  # noqa: E402
from patching.methods import paths as P  # noqa: E402
from patching.service import dataset_for, get_model  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-pairs", type=int, default=8)
    ap.add_argument("--receivers", default="logits;9-11.*:*,logits;*", help="receiver sets, separated by ';'")
    ap.add_argument("--ig-steps", type=int, default=5)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    lm = get_model("smollm2-135m")
    spec = Spec(task="ioi", n_pairs=a.n_pairs, seed=0)
    ds = dataset_for(spec, lm)
    print(f"embedded model, IOI n={a.n_pairs}, STR, denoise; threads {torch.get_num_threads()}")
    # The clean and corrupted runs' caches, shared by every method (timed once, not in the ratios).
    runs, t_prep = timed(lambda: path_runs.prepare_runs(lm, ds, path_request.paths_spec(spec)))
    print(f"the two cached runs (shared): {t_prep:.2f} s")
    for recv in a.receivers.split(";"):
        ex, t_ex = timed(lambda: P.sweep(spec, lm, ds, recv, runs=runs))
        print(f"\nreceivers {recv}: exact sweep {t_ex:.2f} s ({int(ex.table.logit_diff.notna().sum())} senders reach them)")
        for method in ("eap", "eap_ig"):
            res, t = timed(lambda: E.sweep(spec, lm, ds, recv, runs=runs, method=method, ig_steps=a.ig_steps))
            g = agreement(res.table, ex.table, "logit_diff")
            name = method + (f" ({a.ig_steps} steps)" if method == "eap_ig" else "")
            print(f"  {name:18s} {t:6.2f} s  {t_ex / t:5.1f}x faster than exact  pearson {g['pearson']:.3f}  spearman {g['spearman']:.3f}  "
                  f"top-10 {g['top_k_overlap']:.0%}  max |error| {g['max_abs_error']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
