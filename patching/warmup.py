"""``python -m patching.warmup``: convert and load the embedded model once, so
the app's first page view does not wait ~30 s for the GGUF dequantization."""

import time

from patching.core.config import EMBEDDED
from patching.core.models import load_model

if __name__ == "__main__":
    t = time.time()
    lm = load_model(EMBEDDED)
    print(f"embedded model {EMBEDDED} ready ({lm.n_layers} layers, fingerprint {lm.fingerprint}) in {time.time() - t:.1f}s")
