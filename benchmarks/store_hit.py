"""Store hit: how long a fresh process takes to read one stored result.

Stores one realistic result (a head sweep's tidy table: 270 rows, component /
layer / head / pos / pos_label and 4 float64 metrics, head and pos nullable
Int64) with ``Store.put`` in a temporary ``PATCHBOARD_CACHE_DIR``, then times,
as whole processes (interpreter start included), ``--runs`` times each,
interleaved:

* read: ``python -c "from patching.store import Store; Store(path).get(key)"``
* peer: ``python -c "import torch"`` (what a store hit must not pay for)

and prints min / median of each and their ratio (read / peer). One untimed
warm-up of each comes first (file cache). The machine may be shared: compare
the ratio from one run, not times across runs. Usage::

    .venv/bin/python benchmarks/store_hit.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def table(rng):
    import numpy as np
    import pandas as pd

    layers, heads = 30, 9  # SmolLM2-135M: 270 (layer, head) cells
    n = layers * heads
    return pd.DataFrame({
        "component": ["head"] * n,
        "layer": np.repeat(np.arange(layers), heads),
        "head": pd.array(np.tile(np.arange(heads), layers), dtype="Int64"),
        "pos": pd.array([None] * n, dtype="Int64"),
        "pos_label": [""] * n,
        **{m: rng.standard_normal(n) for m in ("logit_diff", "prob", "logprob", "kl")},
    })


def wall(cmd, env) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import numpy as np
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="patchboard-bench-") as cache:
        os.environ["PATCHBOARD_CACHE_DIR"] = cache
        from patching.store import Store, default_path

        path, key = str(default_path()), "bench-key"
        t = table(np.random.default_rng(0))
        assert Store(path).put(key, "activation", "{}", "bench", "m", "fp", "1", 1.0, {"clean_logit_diff": 1.0}, {}, t)
        got = Store(path).get(key)["table"]
        pd.testing.assert_frame_equal(got, t, check_exact=True)  # the read path returns the stored table exactly
        con = sqlite3.connect(path)
        blob = con.execute("SELECT length(table_parquet) FROM results").fetchone()[0]
        con.close()
        env = dict(os.environ)
        read = [sys.executable, "-c", f"from patching.store import Store; Store({path!r}).get({key!r})"]
        peer = [sys.executable, "-c", "import torch"]
        wall(read, env), wall(peer, env)  # warm-up, untimed
        load0 = os.getloadavg()[0]
        rt, pt = [], []
        for _ in range(args.runs):
            rt.append(wall(read, env))
            pt.append(wall(peer, env))
        load1 = os.getloadavg()[0]

    print(f"table: {len(t)} rows x {t.shape[1]} columns, {blob} bytes of Parquet; {args.runs} runs each, interleaved")
    print(f"load average: {load0:.2f} before, {load1:.2f} after; {os.cpu_count()} CPUs")
    print(f"read  Store(path).get(key), whole process: min {min(rt):.3f} s  median {statistics.median(rt):.3f} s")
    print(f"peer  import torch,         whole process: min {min(pt):.3f} s  median {statistics.median(pt):.3f} s")
    print(f"ratio read/peer: {min(rt) / min(pt):.2f} (min)  {statistics.median(rt) / statistics.median(pt):.2f} (median)")


if __name__ == "__main__":
    main()
