"""One head's attention pattern on the clean, corrupted and noised prompts.

Zhang & Nanda (§3) look at the name movers' attention to show that Gaussian
noise takes the model off-distribution: on the clean prompt a name mover at
END attends to the IO name, on the STR-corrupted prompt to the other name,
and on the noised prompt often to neither. This reads the pattern
(``blocks.L.attn.hook_pattern``, [query, key], rows sum to 1) of one pair:

* ``clean``   the pair's clean prompt;
* ``corrupt`` the pair's corrupted prompt (STR);
* ``noised``  the clean prompt with the engine's Gaussian noise at its key
  positions (the pair's first noise sample, exactly the row a ``gn`` sweep
  with this seed and scale reads).
"""

from __future__ import annotations

from typing import Any

import torch

from patching.core.data import Dataset, token_strs
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.engine.reference import gaussian_noise
from patching.engine.resources import model_lock, no_graph


@no_graph()
def attention_patterns(lm: LoadedModel, ds: Dataset, layer: int, head: int, pair: int = 0,
                       noise_scale: float = 3.0, noise_samples: int = 10, seed: int = 0) -> dict[str, Any]:
    """{"clean", "corrupt", "noised": [seq, seq] lists (query x key),
    "clean_tokens", "corrupt_tokens": token strings, "sigma", "layer", "head", "pair"}."""
    if not 0 <= layer < lm.n_layers:
        raise PatchboardError("layer", f"{layer} is not a layer of {lm.name} (0 to {lm.n_layers - 1})")
    if not 0 <= head < lm.n_heads:
        raise PatchboardError("head", f"{head} is not a head of {lm.name} (0 to {lm.n_heads - 1})")
    if not 0 <= pair < ds.n:
        raise PatchboardError("pair", f"{pair} is not a pair of this dataset (0 to {ds.n - 1})")
    noise, sigma = gaussian_noise(lm, ds, noise_samples, noise_scale, seed)
    name = f"blocks.{layer}.attn.hook_pattern"
    clean = ds.clean_tokens[pair:pair + 1].to(lm.device)
    tokens = torch.cat([clean, ds.corrupt_tokens[pair:pair + 1].to(lm.device), clean])
    nz = torch.cat([torch.zeros_like(noise[:2]), noise[pair * noise_samples:pair * noise_samples + 1]])
    with model_lock(lm.bridge), lm.bridge.hooks(fwd_hooks=[("hook_embed", lambda act, hook=None: act + nz.to(act.dtype))]):
        _, cache = lm.bridge.run_with_cache(tokens, names_filter=lambda h: h == name)
    pat = cache[name][:, head].float().cpu()
    tok = lm.tokenizer
    return {
        "clean": pat[0].tolist(), "corrupt": pat[1].tolist(), "noised": pat[2].tolist(),
        "clean_tokens": token_strs(tok, ds.clean_tokens[pair].tolist()),
        "corrupt_tokens": token_strs(tok, ds.corrupt_tokens[pair].tolist()),
        "key_positions": list(ds.key_positions[pair]), "sigma": sigma, "layer": layer, "head": head, "pair": pair,
    }
