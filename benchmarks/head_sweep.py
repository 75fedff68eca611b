"""Head sweep: Patchboard's engine vs TransformerLens's one-forward-per-patch loop.

Times, in the same process, on the same loaded embedded model and the same
inputs,

* ours: ``runs.prepare`` (the clean and corrupted runs and their caches) +
  ``engine.run_patches`` over every (layer, head) with all positions patched
  (the ``head`` sweep of ``patching.methods.activation``);
* TransformerLens: ``run_with_cache`` of the source run +
  ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (or
  ``get_act_patch_resid_pre`` with ``--component resid_pre``),

and prints both times, their ratio and the largest absolute difference between
the two sets of patched logit differences (every cell, every row). Model loading
is not timed. Default: one IOI pair ("When Mary and John went to the store, John
gave a drink to" / "... Mary gave a drink to", answer " Mary", counter " John"),
denoising. Usage::

    .venv/bin/python benchmarks/head_sweep.py [--repeats 3] [--tl-repeats 1]
        [--direction denoise|noise] [--component head|resid_pre] [--pairs N] [--gn K]

``--pairs N`` uses N IOI pairs (both sides batch them); ``--gn K`` corrupts by
Gaussian noise with K samples per pair instead (TransformerLens runs the same
noised rows: the noise is added at ``hook_embed`` around its loop).

The machine may be shared: ours is timed ``--repeats`` times (best and median
reported); TransformerLens's loop (~30-60 s a run on 2 CPU cores) runs
``--tl-repeats`` times, interleaved with ours, and the ratio is best vs best.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from patching.engine import reference as runs  # noqa: E402
from patching.service import get_model  # noqa: E402
from patching.core.data import Pair, build_dataset  # noqa: E402
from patching.engine.runner import run_patches  # noqa: E402
from patching.methods.activation import cells_for  # noqa: E402

PAIRS = [
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
    Pair("When Kate and David went to the school, David gave a ring to", "When Kate and David went to the school, Kate gave a ring to", " Kate", " David"),
    Pair("When Sarah and Paul went to the office, Paul gave a letter to", "When Sarah and Paul went to the office, Sarah gave a letter to", " Sarah", " Paul"),
]


def ours(lm, ds, args):
    """Patched logit differences [cells, rows], the prepared runs and the GN noise."""
    cells = cells_for(args.component, lm.n_layers, lm.n_heads, ds.seq_len)
    hooks = {e.hook for c in cells for e in c.patch}
    corruption = "gn" if args.gn else "str"
    prep = runs.prepare(lm, ds, corruption, args.direction, hooks, noise_samples=max(args.gn, 1))
    stats = run_patches(prep.inputs, [c.patch for c in cells])
    return stats.ld, prep


def _capture_noise():
    """Record the noise prepare() adds at hook_embed (the corrupted rows')."""
    seen = {}
    orig = runs._run

    def spy(lm, tokens, names, noise, kv_prefix=0):
        if noise is not None:
            seen["noise"] = noise
        return orig(lm, tokens, names, noise, kv_prefix)

    return seen, spy, orig


def theirs(lm, ds, args, noise):
    import transformer_lens.patching as tlp

    bridge = lm.bridge
    K = max(args.gn, 1)
    clean = ds.clean_tokens.repeat_interleave(K, 0)
    corrupt = clean if args.gn else ds.corrupt_tokens
    a, c = ds.answer_ids.repeat_interleave(K, 0), ds.counter_ids.repeat_interleave(K, 0)
    if args.gn:  # prepare() ran clean rows (no noise) and then the noised rows, in one batch
        noise = noise[-clean.shape[0]:]
    corrupt_hooks = [("hook_embed", lambda act, hook=None: act + noise.to(act.dtype))] if args.gn else []

    def metric(logits):  # per row
        last = logits[:, -1, :]
        return last.gather(1, a[:, None])[:, 0] - last.gather(1, c[:, None])[:, 0]

    fn = {"head": tlp.get_act_patch_attn_head_out_all_pos, "resid_pre": tlp.get_act_patch_resid_pre}[args.component]
    if args.direction == "denoise":  # clean activations into the corrupted run
        _, src_cache = bridge.run_with_cache(clean)
        with bridge.hooks(fwd_hooks=corrupt_hooks):
            out = fn(bridge, corrupt, src_cache, metric, reduce="none")
    else:  # corrupted activations into the clean run
        with bridge.hooks(fwd_hooks=corrupt_hooks):
            _, src_cache = bridge.run_with_cache(corrupt)
        out = fn(bridge, clean, src_cache, metric, reduce="none")
    return out.values.reshape(-1, clean.shape[0])  # [cells, rows], cells in cells_for order


def timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best and median reported)")
    ap.add_argument("--tl-repeats", type=int, default=1, help="timed runs of TransformerLens's loop")
    ap.add_argument("--direction", choices=("denoise", "noise"), default="denoise")
    ap.add_argument("--component", choices=("head", "resid_pre"), default="head")
    ap.add_argument("--pairs", type=int, default=1, choices=range(1, len(PAIRS) + 1), help="IOI pairs")
    ap.add_argument("--gn", type=int, default=0, help="Gaussian noise with this many samples per pair (0: token replacement)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t_load, lm = timed(get_model, "smollm2-135m")
    ds = build_dataset(PAIRS[: args.pairs], lm.tokenizer, "gn" if args.gn else "str")
    print(f"model loaded in {t_load:.1f}s; {lm.n_layers} layers x {lm.n_heads} heads; {ds.n} pair(s) of {ds.seq_len} tokens"
          f"{f', GN x{args.gn} samples' if args.gn else ''}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}; device {lm.device}"
          f"{f' ({torch.cuda.get_device_name(0)})' if lm.device.startswith('cuda') else ''}", flush=True)

    seen, spy, orig = _capture_noise()
    runs._run = spy
    try:
        with torch.inference_mode():
            ours(lm, ds, args)  # warm-up (allocator, first-call overheads)
    finally:
        runs._run = orig
    noise = seen.get("noise")

    ours_times, tl_times = [], []
    with torch.inference_mode():
        # Interleaved, so both see similar load on a shared machine.
        for i in range(max(args.repeats, args.tl_repeats)):
            if i < args.repeats:
                t, (ld_ours, prep) = timed(ours, lm, ds, args)
                ours_times.append(t)
            if i < args.tl_repeats:
                t, ld_tl = timed(theirs, lm, ds, args, noise)
                tl_times.append(t)
            print(f"  run {i + 1}: ours {ours_times[-1]:.2f}s" + (f", TransformerLens {tl_times[-1]:.2f}s" if i < args.tl_repeats else "")
                  + f"  (load {os.getloadavg()[0]:.2f})", flush=True)

    diff = float((ld_ours.double() - ld_tl.double()).abs().max())
    best_ours, best_tl = min(ours_times), min(tl_times)
    n_cells = ld_ours.shape[0]
    print(f"{args.component} sweep ({args.direction}), {n_cells} patches x {ld_ours.shape[1]} row(s); "
          f"mean logit diff clean {float(prep.clean.ld.mean()):+.3f}, corrupt {float(prep.corrupt.ld.mean()):+.3f}")
    print(f"ours:            best {best_ours:7.2f}s  median {statistics.median(ours_times):7.2f}s  "
          f"({len(ours_times)} runs: {', '.join(f'{t:.2f}' for t in ours_times)})")
    print(f"TransformerLens: best {best_tl:7.2f}s  ({len(tl_times)} run(s): {', '.join(f'{t:.2f}' for t in tl_times)})")
    print(f"speedup:         {best_tl / best_ours:.1f}x (best vs best)")
    print(f"max abs diff of patched logit differences: {diff:.2e}")
    print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
