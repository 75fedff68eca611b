"""Parity with TransformerLens 4.3's ``transformer_lens.patching`` on the tiny
random models (the reference: tests/helpers/transformer_lens.py).

Every sweep of ``patching.methods.activation.compute`` must match the
corresponding ``get_act_patch_*`` (one forward pass per patch) to 1e-4 on
every metric. The embedded model's parity: tests/integration/test_activation.py.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from patching.core.data import build_dataset
from tests.helpers.transformer_lens import PAIRS, subset_of, TOL, assert_parity, ours, tl_reference


@pytest.fixture(scope="module")
def tiny_ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out", "head", "head_by_pos"])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_tiny_models_match_transformer_lens(request, arch, component, direction, tiny_ds):
    lm = request.getfixturevalue(arch)
    table = ours(lm, tiny_ds, component, direction)
    if component == "head_by_pos":
        # Every head and layer, at BOS, just before the first difference and
        # from there on (TransformerLens's loop is slow: one forward per cell).
        first = int((tiny_ds.clean_tokens != tiny_ds.corrupt_tokens).any(0).nonzero()[0])
        positions = [0, first - 1] + list(range(first, tiny_ds.seq_len))
        index_df = pd.DataFrame([(l, p, h) for l in range(lm.n_layers) for p in positions for h in range(lm.n_heads)],
                                columns=["layer", "pos", "head_index"])
        ref, gap = tl_reference(lm, tiny_ds, component, direction, index_df)
        table = subset_of(table, index_df, ["layer", "pos", "head_index"], ["layer", "pos", "head"])
    else:
        ref, gap = tl_reference(lm, tiny_ds, component, direction)
    assert abs(gap) > 0.1, "pairs should separate clean from corrupt on this model"
    assert_parity(table, ref, f"{arch} {component} {direction}")
    # Something is actually being compared: effects vary across cells.
    assert float(table["kl"].abs().max()) > 1e-3


_ALL_POS = [(a, c, d) for a in ("tiny_llama", "tiny_gpt2") for c in ("head_q", "head_k", "head_v", "head_pattern") for d in ("denoise", "noise")]
# By position (TransformerLens's loop is one forward per cell): each direction on one architecture.
_BY_POS = [(a, f"head_{x}_by_pos", d) for a, d in (("tiny_llama", "noise"), ("tiny_gpt2", "denoise")) for x in ("q", "k", "v", "pattern")]


@pytest.mark.parametrize("arch,component,direction", _ALL_POS + _BY_POS)
def test_qkv_and_pattern_match_transformer_lens(request, arch, component, direction, tiny_ds):
    """get_act_patch_attn_head_{q,k,v,pattern}_{all_pos,by_pos}. Keys and
    values are per key/value group on the grouped-query tiny Llama (2 groups
    of 2 heads), as in TransformerLens; patterns go through the full-sequence
    path, q/k/v through the suffix path. By position: every layer and head at
    BOS, just before the first difference and from there on."""
    lm = request.getfixturevalue(arch)
    table = ours(lm, tiny_ds, component, direction)
    n_kv = int(getattr(lm.cfg, "n_key_value_heads", None) or lm.n_heads)
    heads = n_kv if component.startswith(("head_k", "head_v")) else lm.n_heads
    per_pos = tiny_ds.seq_len if component.endswith("_by_pos") else 1
    assert len(table) == lm.n_layers * heads * per_pos
    if arch == "tiny_llama" and component.startswith(("head_k", "head_v")):
        assert heads == 2 < lm.n_heads
    if component.endswith("_by_pos"):
        first = int((tiny_ds.clean_tokens != tiny_ds.corrupt_tokens).any(0).nonzero()[0])
        positions = [0, first - 1] + list(range(first, tiny_ds.seq_len))
        cols = ["layer", "head_index", "dest_pos"] if component == "head_pattern_by_pos" else ["layer", "pos", "head"]
        index_df = pd.DataFrame([(l, h, p) if "dest_pos" in cols else (l, p, h) for l in range(lm.n_layers) for p in positions
                                 for h in range(heads)], columns=cols)
        ref, gap = tl_reference(lm, tiny_ds, component, direction, index_df)
        table = subset_of(table, index_df, cols, ["layer", "head", "pos"] if "dest_pos" in cols else ["layer", "pos", "head"])
    else:
        ref, gap = tl_reference(lm, tiny_ds, component, direction)
    assert abs(gap) > 0.1
    assert_parity(table, ref, f"{arch} {component} {direction}")
    assert float(table["kl"].abs().max()) > 1e-3 and float(table["logit_diff"].abs().max()) > 1e-3


def test_parity_covers_patches_before_the_first_difference(tiny_llama, tiny_ds):
    """Positions before the first clean/corrupt difference are skipped by the
    engine (exact no-ops); TransformerLens runs them. Both must say ~0."""
    table = ours(tiny_llama, tiny_ds, "resid_pre", "denoise")
    first = int((tiny_ds.clean_tokens != tiny_ds.corrupt_tokens).any(0).nonzero()[0])
    early = table[table["pos"] < first]
    assert len(early) > 0
    ref, _ = tl_reference(tiny_llama, tiny_ds, "resid_pre", "denoise")
    idx = torch.tensor((table["pos"] < first).to_numpy(bool))
    assert float(ref["logit_diff"][idx].abs().max()) < TOL
    assert float(early["logit_diff"].abs().max()) < TOL
