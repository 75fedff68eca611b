"""Looking inside one component: a head's attention pattern on the clean and
the corrupted (or noised) prompt of a dataset's first pair.

Zhang & Nanda use the name movers' attention to show that Gaussian noise goes
off-distribution; the same picture tells a user what a head the sweep flags is
doing. The corrupted pattern comes from the engine's own reference run
(:func:`patching.engine.reference.prepare`), so under ``gn`` it is exactly the
noised run the sweep patched from (first noise sample).
"""

from __future__ import annotations

import torch

from patching.core.data import Dataset
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.core.spec import Spec
from patching.engine.reference import prepare
from patching.engine.resources import model_lock


def attention_patterns(lm: LoadedModel, ds: Dataset, spec: Spec, layer: int, head: int, pair: int = 0) -> dict:
    """``{"clean": [[...]], "corrupt": [[...]], "clean_tokens", "corrupt_tokens",
    "layer", "head", "corruption"}``: query x key attention weights of
    ``layer.head`` on pair ``pair`` (lists, JSON-ready)."""
    if not (isinstance(layer, int) and 0 <= layer < lm.n_layers and isinstance(head, int) and 0 <= head < lm.n_heads):
        raise PatchboardError("cell", f"L{layer}H{head} is not a head of this model ({lm.n_layers} layers x {lm.n_heads} heads)")
    if not 0 <= pair < ds.n:
        raise PatchboardError("pair", f"{pair} is not a pair index; use 0-{ds.n - 1}")
    name = f"blocks.{layer}.attn.hook_pattern"
    with model_lock(lm.bridge), torch.no_grad():
        prep = prepare(lm, ds, spec.corruption, "noise", {name}, spec.noise_scale, spec.noise_samples, spec.seed)
        K = spec.noise_samples if spec.corruption == "gn" else 1
        corrupt = prep.inputs.source[name][pair * K, head]
        _, cache = lm.bridge.run_with_cache(ds.clean_tokens[pair:pair + 1].to(lm.device), names_filter=lambda n: n == name)
        clean = cache[name][0, head]
    tok = lm.tokenizer
    return {
        "layer": layer, "head": head, "corruption": spec.corruption,
        "clean": clean.float().cpu().tolist(), "corrupt": corrupt.float().cpu().tolist(),
        "clean_tokens": [tok.decode([int(t)]) for t in ds.clean_tokens[pair]],
        "corrupt_tokens": [tok.decode([int(t)]) for t in ds.corrupt_tokens[pair]],
    }
