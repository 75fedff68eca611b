"""Scaling: a disagreement grid on the local executor vs 1 and 2 local Ray workers.

The same grid (4 sweeps: str/gn x denoise/noise, head component, 2 noise
samples for gn) is computed, into a fresh store each time, with 1, 2 and 4
prompts per task (each farmed task carries every prompt of its sweep, so this
is also the rows each patched batch holds per patch) by

* ``local``: this process (torch's threads as set, e.g. OMP_NUM_THREADS);
* ``ray x1``, ``ray x2``: ``RayExecutor(workers=1|2, threads=1)`` on a local
  cluster started here, each actor with its own model copy and one torch
  thread (run the benchmark with OMP_NUM_THREADS=1, so all three compare at
  one thread per process).

Printed per row: seconds, patched runs (cells x rows, summed over the grid),
throughput (patched runs per second), the ratio to the local executor measured
in the same run, and for Ray the scaling from 1 to 2 workers. The cluster's
start-up (Ray and the actors importing torch and loading the model) is timed
once, apart. Every Ray result is checked against the local one (max |diff|).

    .venv/bin/python benchmarks/scaling.py                  # a small random Llama (fast)
    .venv/bin/python benchmarks/scaling.py --model smollm2-135m
    .venv/bin/python benchmarks/scaling.py --prompts 1,2,4 --workers 1,2

On a CUDA machine it prints the device; each Ray worker then takes one GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

SETTINGS = "str/logit_diff/denoise,str/logit_diff/noise,gn/logit_diff/denoise,gn/logit_diff/noise"


def small_model(folder: str) -> str:
    """A random Llama of 4 layers x 8 heads (hidden 256) on the embedded tokenizer, saved as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from patching.core.models import embedded_tokenizer

    tok = embedded_tokenizer()
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                                      num_key_value_heads=4, vocab_size=len(tok), max_position_embeddings=256, initializer_range=0.1,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def patched_runs(grid) -> int:
    seen, total = set(), 0
    for s, r in grid.results.items():
        if r.key in seen:
            continue
        seen.add(r.key)
        total += len(r.table) * int(r.meta["rows"])
    return total


def run_grid(base, executor=None):
    from patching.store import Store
    from patching.studies.disagreement import grid as disagreement_grid

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        grid = disagreement_grid.load_or_compute_grid(base, Store(os.path.join(d, "r.sqlite")), settings=SETTINGS, executor=executor)
        return time.perf_counter() - t0, grid


def max_diff(a, b) -> float:
    return max(float((a.results[s].table[m] - b.results[s].table[m]).abs().max()) for s in a.settings for m in ("logit_diff", "kl"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model name or folder (default: a small random Llama)")
    p.add_argument("--prompts", default="1,2,4")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeats", type=int, default=2, help="runs of each (interleaved); the best is reported")
    a = p.parse_args()

    import ray
    import torch

    from patching.core.spec import Spec
    from patching.executors.rayexec import RayExecutor

    tmp = tempfile.mkdtemp(prefix="pb-scaling-")
    os.environ.setdefault("PATCHBOARD_CACHE_DIR", tmp)
    model = a.model or small_model(os.path.join(tmp, "small-llama"))
    dev = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU)" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    prompts = [int(x) for x in a.prompts.split(",")]
    workers = [int(x) for x in a.workers.split(",")]
    print(f"device: {dev}; torch threads here: {torch.get_num_threads()}; model: {a.model or 'small random Llama (4 layers x 8 heads, d=256)'}")
    print(f"grid: {SETTINGS} (head; gn with 2 samples per prompt)")

    # Both pools stay up (idle actors cost no CPU), so the runs interleave and
    # share the machine's load alike; the cluster declares CPUs for both.
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=None if torch.cuda.is_available() else sum(workers), include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    print(f"start-up: ray.init {time.perf_counter() - t0:.1f} s")
    pools = {}
    for w in workers:
        t0 = time.perf_counter()
        pools[w] = RayExecutor(workers=w, threads=1)
        ray.get([actor.describe.remote(model, "float32") for actor in pools[w].actors()])  # every actor up, model loaded
        print(f"start-up: {w} worker(s) importing torch and loading the model: {time.perf_counter() - t0:.1f} s (not in the times below)")
    bases = {n: Spec(model=model, task="ioi", n_pairs=n, component="head", noise_samples=2) for n in prompts}
    run_grid(bases[prompts[0]])  # load the model here too (not timed)

    print(f"\n{'prompts':>7} {'executor':>8} {'seconds':>8} {'patched runs':>12} {'runs/s':>8} {'vs local':>8} {'x2/x1':>6} {'max|diff|':>9}")
    for n in prompts:
        best: dict[str, float] = {}
        grids = {}
        for _ in range(a.repeats):  # interleaved; best of the repeats
            for name, ex in [("local", None)] + [(f"ray x{w}", pools[w]) for w in workers]:
                sec, g = run_grid(bases[n], ex)
                best[name] = min(best.get(name, sec), sec)
                grids[name] = g
        ref = grids["local"]
        runs = patched_runs(ref)
        print(f"{n:>7} {'local':>8} {best['local']:>8.2f} {runs:>12} {runs / best['local']:>8.1f} {1.0:>8.2f} {'':>6} {'':>9}")
        for w in workers:
            s = best[f"ray x{w}"]
            scale = f"{best[f'ray x{workers[0]}'] / s:>6.2f}" if w != workers[0] else f"{'':>6}"
            print(f"{n:>7} {'ray x' + str(w):>8} {s:>8.2f} {runs:>12} {runs / s:>8.1f} {best['local'] / s:>8.2f} {scale} "
                  f"{max_diff(ref, grids[f'ray x{w}']):>9.1e}")
    ray.shutdown()


if __name__ == "__main__":
    main()
