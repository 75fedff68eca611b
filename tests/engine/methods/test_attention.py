"""One head's attention pattern on the clean, corrupted and noised prompts."""

from __future__ import annotations

import pytest
import torch

from patching.core.data import build_dataset
from patching.core.errors import PatchboardError
from patching.core.pairs import Pair
from patching.engine.reference import gaussian_noise
from patching.methods.attention import attention_patterns

PAIRS = [
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
]


def test_patterns_are_the_runs_patterns(tiny_llama, embedded_tokenizer):
    lm = tiny_llama
    ds = build_dataset(PAIRS, embedded_tokenizer)
    got = attention_patterns(lm, ds, layer=1, head=3, pair=1, noise_scale=3.0, noise_samples=4, seed=5)
    name = "blocks.1.attn.hook_pattern"
    with torch.no_grad():
        _, c = lm.bridge.run_with_cache(ds.clean_tokens[1:2], names_filter=lambda h: h == name)
        _, k = lm.bridge.run_with_cache(ds.corrupt_tokens[1:2], names_filter=lambda h: h == name)
        noise, _ = gaussian_noise(lm, ds, 4, 3.0, 5)
        with lm.bridge.hooks(fwd_hooks=[("hook_embed", lambda act, hook=None: act + noise[4:5])]):  # pair 1's first sample
            _, nz = lm.bridge.run_with_cache(ds.clean_tokens[1:2], names_filter=lambda h: h == name)
    for key, ref in (("clean", c), ("corrupt", k), ("noised", nz)):
        m = torch.tensor(got[key])
        assert torch.allclose(m, ref[name][0, 3].float(), atol=1e-5), key
        assert torch.allclose(m.sum(-1), torch.ones(ds.seq_len), atol=1e-4)
    # Noise sits at the key positions (S2): queries before it read exactly the clean pattern.
    first = min(got["key_positions"])
    assert torch.allclose(torch.tensor(got["noised"])[:first], torch.tensor(got["clean"])[:first], atol=1e-6)
    assert not torch.allclose(torch.tensor(got["noised"]), torch.tensor(got["clean"]), atol=1e-3)
    assert got["clean_tokens"][got["key_positions"][0]] == " Peter" and got["corrupt_tokens"][got["key_positions"][0]] == " Anna"
    with pytest.raises(PatchboardError, match="head"):
        attention_patterns(lm, ds, layer=0, head=lm.n_heads)
