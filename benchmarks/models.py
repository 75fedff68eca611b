"""Model load and GGUF conversion time of every known model installed here,
in one run, as ratios against the embedded SmolLM2 measured in the same run.

1. load: ``patching.core.models.load_model`` from the converted safetensors
   copy (what every start after the first costs);
2. conversion (``--convert``; minutes): assembling, hash-checking and
   dequantizing the GGUF into a float32 copy in a temporary cache folder
   (what ``make run``'s first start or ``models add`` costs once).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/models.py [--convert] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from patching.core.config import EMBEDDED, MODELS, installed_models  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--convert", action="store_true", help="also time the GGUF conversion (minutes)")
    ap.add_argument("--repeats", type=int, default=2, help="timed loads per model (the minimum is reported)")
    a = ap.parse_args()
    from patching.core.errors import PatchboardError
    from patching.core.gguf import convert_gguf
    from patching.core.models import load_model

    names = installed_models()
    print(f"models {', '.join(names)}; load average {load()}", flush=True)
    loads, converts = {}, {}
    for name in names:
        ts = []
        for _ in range(a.repeats):
            t = time.time()
            lm = load_model(name, device="cpu")
            ts.append(time.time() - t)
            del lm
        loads[name] = min(ts)
        if a.convert:
            with tempfile.TemporaryDirectory() as tmp:
                old = os.environ.get("PATCHBOARD_CACHE_DIR")
                os.environ["PATCHBOARD_CACHE_DIR"] = tmp
                try:
                    t = time.time()
                    convert_gguf(MODELS[name])
                    converts[name] = time.time() - t
                except PatchboardError as e:
                    print(f"{name}: conversion not timed ({e})", flush=True)
                finally:
                    if old is None:
                        os.environ.pop("PATCHBOARD_CACHE_DIR", None)
                    else:
                        os.environ["PATCHBOARD_CACHE_DIR"] = old
    base = loads.get(EMBEDDED)
    for name in names:
        line = f"{name}: load {loads[name]:.1f} s" + (f" ({loads[name] / base:.1f}x {EMBEDDED})" if base and name != EMBEDDED else "")
        if name in converts:
            c0 = converts.get(EMBEDDED)
            line += f"; conversion {converts[name]:.0f} s" + (f" ({converts[name] / c0:.1f}x {EMBEDDED})" if c0 and name != EMBEDDED else "")
        print(line, flush=True)
    print(f"load average at the end {load()}", flush=True)


if __name__ == "__main__":
    main()
