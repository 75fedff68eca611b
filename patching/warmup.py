"""``python -m patching.warmup`` (``make run`` runs it before the app):

1. convert the embedded model once (its GGUF is dequantized into a cached
   safetensors copy, ~30 s) and write its fingerprint, so the app's first
   page view neither waits for it nor needs the model to find stored results;
2. import the shipped demo (:mod:`patching.demo`) into the store when any of
   its results is missing: every page's default link then draws at once.
   Idempotent and never overwriting; when everything is there it only reads
   the demo's manifest and the store's keys.
"""

import time

from patching.core.config import EMBEDDED, sidecar_fingerprint

if __name__ == "__main__":
    t = time.time()
    if sidecar_fingerprint(EMBEDDED) is None:
        from patching.core.models import load_model

        lm = load_model(EMBEDDED)
        print(f"embedded model {EMBEDDED} converted ({lm.n_layers} layers, fingerprint {lm.fingerprint}) in {time.time() - t:.1f}s")
    from patching import demo

    print(f"{demo.ensure_imported()} ({time.time() - t:.1f}s)")
