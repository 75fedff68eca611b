"""Parity with TransformerLens 4.3 on a tiny random Gemma 3 (engine tier):
norms before and after attention and the MLP (so the attention output is
normalised after the head sum), q/k norms, scaled embeddings, grouped-query
attention, sliding-window and global layers. Every component TransformerLens
shares with ``patching.methods.activation`` -- head (all positions and by
position), q, k, v, pattern, resid_pre, attn_out, mlp_out -- must match its
``get_act_patch_*`` to 1e-4 on every metric, in both directions. The real
Gemma 3 270M, where installed: tests/integration/test_gemma.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from patching.core.data import build_dataset
from tests.helpers.transformer_lens import PAIRS, assert_parity, ours, subset_of, tl_reference


@pytest.fixture(scope="module")
def tiny_ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer)


def test_the_tiny_gemma3_is_what_it_claims(tiny_gemma3):
    """The fixture exercises what sets Gemma 3 apart: post-attention and
    post-MLP norms with non-trivial weights, q/k norms, both layer types."""
    b = tiny_gemma3.bridge
    assert all(hasattr(blk, "ln1_post") and hasattr(blk, "ln2_post") for blk in b.blocks)
    hf_cfg = b.original_model.config
    assert set(hf_cfg.layer_types) == {"sliding_attention", "full_attention"}
    assert float(b.blocks[0].ln1_post._original_component.weight.abs().max()) > 0.1


_COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "head", "head_q", "head_k", "head_v", "head_pattern")


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", _COMPONENTS)
def test_tiny_gemma3_matches_transformer_lens(tiny_gemma3, component, direction, tiny_ds):
    table = ours(tiny_gemma3, tiny_ds, component, direction)
    ref, gap = tl_reference(tiny_gemma3, tiny_ds, component, direction)
    assert abs(gap) > 0.1, "pairs should separate clean from corrupt on this model"
    assert_parity(table, ref, f"gemma3 {component} {direction}")
    assert float(table["kl"].abs().max()) > 1e-3


@pytest.mark.parametrize("component,direction", [("head_by_pos", "denoise"), ("head_v_by_pos", "noise")])
def test_tiny_gemma3_by_position_matches_transformer_lens(tiny_gemma3, component, direction, tiny_ds):
    """By position, at BOS, just before the first difference and from there
    on (TransformerLens's loop is one forward per cell)."""
    lm = tiny_gemma3
    table = ours(lm, tiny_ds, component, direction)
    heads = lm.cfg.n_key_value_heads if component.startswith(("head_k", "head_v")) else lm.n_heads
    first = int((tiny_ds.clean_tokens != tiny_ds.corrupt_tokens).any(0).nonzero()[0])
    positions = [0, first - 1] + list(range(first, tiny_ds.seq_len))
    cols = ["layer", "head_index", "dest_pos"] if component == "head_pattern_by_pos" else ["layer", "pos", "head_index"]
    index_df = pd.DataFrame([(l, h, p) if "dest_pos" in cols else (l, p, h) for l in range(lm.n_layers) for p in positions
                             for h in range(heads)], columns=cols)
    ref, _ = tl_reference(lm, tiny_ds, component, direction, index_df)
    table = subset_of(table, index_df, cols, ["layer", "head", "pos"] if "dest_pos" in cols else ["layer", "pos", "head"])
    assert_parity(table, ref, f"gemma3 {component} {direction}")
