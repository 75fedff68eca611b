"""Parity with TransformerLens 4.3 on the embedded SmolLM2 model: our whole
head sweep and resid_pre sweep against ``transformer_lens.patching`` on a few
layers (first, middle and last; the reference: tests/helpers/transformer_lens.py).
"""

from __future__ import annotations

import pandas as pd
import pytest

from patching.core.data import build_dataset
from tests.helpers.transformer_lens import PAIRS, subset_of, assert_parity, ours, tl_reference


@pytest.fixture(scope="module")
def emb_ds(embedded):
    return build_dataset(list(PAIRS[:2]), embedded.tokenizer)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_embedded_head_sweep_matches_transformer_lens(embedded, emb_ds, direction):
    """Our whole head sweep; TransformerLens on a few layers (one forward pass
    per patch is slow on CPU), first, middle and last included."""
    layers = [0, 9, 20, embedded.n_layers - 1]
    index_df = pd.DataFrame([(l, h) for l in layers for h in range(embedded.n_heads)], columns=["layer", "head"])
    ref, gap = tl_reference(embedded, emb_ds, "head", direction, index_df)
    assert gap > 5
    table = ours(embedded, emb_ds, "head", direction)
    assert len(table) == embedded.n_layers * embedded.n_heads
    sub = subset_of(table, index_df, ["layer", "head"], ["layer", "head"])
    assert_parity(sub, ref, f"embedded head {direction}")


def test_embedded_resid_pre_matches_transformer_lens(embedded, emb_ds):
    layers = [0, 14, embedded.n_layers - 1]
    index_df = pd.DataFrame([(l, p) for l in layers for p in range(emb_ds.seq_len)], columns=["layer", "pos"])
    ref, _ = tl_reference(embedded, emb_ds, "resid_pre", "denoise", index_df)
    table = ours(embedded, emb_ds, "resid_pre", "denoise")
    sub = subset_of(table, index_df, ["layer", "pos"], ["layer", "pos"])
    assert_parity(sub, ref, "embedded resid_pre denoise")
    # Patching the S2 position at layer 0 restores most of the behaviour.
    s2 = int((emb_ds.clean_tokens != emb_ds.corrupt_tokens).any(0).nonzero()[0])
    assert float(sub[(sub["layer"] == 0) & (sub["pos"] == s2)]["logit_diff"].iloc[0]) > 0.9
