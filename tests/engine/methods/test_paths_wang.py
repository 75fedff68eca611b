"""Wang et al.'s form of path patching: equal to the direct form on a model
whose MLPs write nothing, different where MLPs carry the sender, and equal to
their three-step recipe done by hand with hooks."""

from __future__ import annotations

import pytest
import torch

from patching.core.data import build_dataset
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.methods import paths

pytestmark = pytest.mark.engine

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
)
TINY = dict(max_position_embeddings=64, initializer_range=0.02, scale=4.0)


def _spec(lm, **kw):
    return Spec(model=lm.name, task=None, pairs=PAIRS, **kw).validated()


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama", name="tiny-wang", **TINY)


@pytest.fixture(scope="module")
def no_mlp(tiny_model):
    lm = tiny_model("llama", name="tiny-no-mlp", **TINY)
    with torch.no_grad():
        for layer in lm.bridge.original_model.model.layers:
            layer.mlp.down_proj.weight.zero_()  # every MLP writes exactly 0
    return lm


def _vals(lm, form, receivers, senders="*", direction="denoise"):
    ds = build_dataset(list(PAIRS), lm.tokenizer)
    t = paths.sweep(_spec(lm, direction=direction), lm, ds, receivers, senders=senders, form=form).table
    return torch.tensor(t["logit_diff"].to_numpy(float)), t


@pytest.mark.parametrize("receivers", ["logits", "2.1:q,2.0:k,mlp2"])
def test_wang_equals_direct_without_mlps(no_mlp, receivers):
    a, _ = _vals(no_mlp, "direct", receivers)
    b, _ = _vals(no_mlp, "wang", receivers)
    ok = ~torch.isnan(a)
    assert torch.equal(ok, ~torch.isnan(b)) and ok.any()
    assert torch.allclose(a[ok], b[ok], atol=1e-5)


def test_wang_counts_paths_through_the_mlps(llama):
    a, t = _vals(llama, "direct", "logits", senders="embed,0.*")
    b, _ = _vals(llama, "wang", "logits", senders="embed,0.*")
    assert (a - b).abs().max() > 1e-3  # the MLPs carry part of the embedding's and layer 0's effect


def test_wang_matches_the_three_step_recipe_by_hand(llama):
    """Sender head 0.1, receiver logits, denoising: run the corrupted prompts
    with every head's z frozen at its corrupted value except head 0.1 (set to
    its clean value), MLPs recomputed, and read the output."""
    ds = build_dataset(list(PAIRS), llama.tokenizer)
    _, t = _vals(llama, "wang", "logits", senders="0.1")
    got = float(t[(t["component"] == "head")]["logit_diff"].iloc[0])
    bridge = llama.bridge
    L = llama.n_layers
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    with torch.no_grad():
        _, clean = bridge.run_with_cache(ds.clean_tokens, names_filter=lambda n: n in names)
        corrupt_logits, corrupt = bridge.run_with_cache(ds.corrupt_tokens, names_filter=lambda n: n in names)
        clean_logits = bridge(ds.clean_tokens)

        def freeze(l):
            def hook(act, hook=None):
                z = corrupt[f"blocks.{l}.attn.hook_z"].clone()
                if l == 0:
                    z[:, :, 1] = clean["blocks.0.attn.hook_z"][:, :, 1]
                return z
            return hook

        patched = bridge.run_with_hooks(ds.corrupt_tokens, fwd_hooks=[(n, freeze(l)) for l, n in enumerate(names)])

    def ld(logits):
        last = logits[:, -1, :]
        return (last.gather(1, ds.answer_ids[:, None]) - last.gather(1, ds.counter_ids[:, None])).mean()

    want = float((ld(patched) - ld(corrupt_logits)) / (ld(clean_logits) - ld(corrupt_logits)))
    assert got == pytest.approx(want, abs=1e-4)
