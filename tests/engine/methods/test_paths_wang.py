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


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_step_three_sets_receivers_across_layers_to_their_step_two_inputs(llama, direction):
    """Wang et al.'s three steps by hand, with receivers in two layers and an
    MLP (1.0:q, 2.0:q, 2.1:k, mlp2; sender 0.1): (1) the base and source runs;
    (2) the base run with every head's z frozen at its base value except the
    sender's (its source value), MLPs recomputed, caching each receiver's own
    input; (3) the base run with each receiver's input set to that step-2
    value and everything else recomputed (a later receiver does not also see
    what the earlier ones changed). Every metric within 1e-5."""
    from patching.engine.metrics import effects
    from patching.engine.readout import row_stats

    ds = build_dataset(list(PAIRS), llama.tokenizer)
    _, t = _vals(llama, "wang", "1.0:q,2.0:q,2.1:k,mlp2", senders="0.1", direction=direction)
    bridge = llama.bridge
    L = llama.n_layers
    base_tok, src_tok = (ds.corrupt_tokens, ds.clean_tokens) if direction == "denoise" else (ds.clean_tokens, ds.corrupt_tokens)
    z = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    ports = [("blocks.1.attn.hook_q_input", 0), ("blocks.2.attn.hook_q_input", 0), ("blocks.2.attn.hook_k_input", 0)]
    mlp_in = "blocks.2.hook_resid_mid"
    saved = bool(bridge.cfg.use_split_qkv_input)
    bridge.set_use_split_qkv_input(True)
    try:
        with torch.no_grad():
            # Step 1.
            clean_logits, clean = bridge.run_with_cache(ds.clean_tokens, names_filter=lambda n: n in z)
            corrupt_logits, corrupt = bridge.run_with_cache(ds.corrupt_tokens, names_filter=lambda n: n in z)
            base, src = (corrupt, clean) if direction == "denoise" else (clean, corrupt)

            # Step 2: heads frozen at their base z, the sender at its source z; MLPs recomputed.
            def freeze(l):
                def hook(act, hook=None):
                    out = base[z[l]].clone()
                    if l == 0:
                        out[:, :, 1] = src[z[0]][:, :, 1]
                    return out
                return hook

            got = {}

            def grab(name, idx=None):
                def hook(act, hook=None):
                    got[name] = (act[:, :, idx] if idx is not None else act).clone()
                return hook

            bridge.run_with_hooks(base_tok, fwd_hooks=[(z[l], freeze(l)) for l in range(L)] + [(n, grab(n, i)) for n, i in ports]
                                  + [(mlp_in, grab(mlp_in))])

            # Step 3: each receiver's own input set to its step-2 value; the MLP's own input only.
            def put(name, idx):
                def hook(act, hook=None):
                    act = act.clone()
                    act[:, :, idx] = got[name]
                    return act
                return hook

            def put_mlp(act, hook=None):
                return got[mlp_in].clone()

            patched = bridge.run_with_hooks(base_tok, fwd_hooks=[(n, put(n, i)) for n, i in ports] + [(mlp_in, put_mlp)])
    finally:
        bridge.set_use_split_qkv_input(saved)

    def stats(logits):
        return row_stats(logits[:, -1].float(), ds.answer_ids, ds.counter_ids, torch.log_softmax(clean_logits[:, -1].float(), -1),
                         torch.log_softmax(corrupt_logits[:, -1].float(), -1))

    want = effects(stats(patched).view(1, -1), stats(clean_logits), stats(corrupt_logits), direction)
    row = t[(t["component"] == "head") & (t["layer"] == 0) & (t["head"] == 1)].iloc[0]
    for m, v in want.items():
        assert float(row[m]) == pytest.approx(float(v[0]), abs=1e-5), m
    assert abs(float(row["logit_diff"])) > 1e-3  # a real effect
    # The direct form differs here (receivers in three layers and an MLP).
    _, d = _vals(llama, "direct", "1.0:q,2.0:q,2.1:k,mlp2", senders="0.1", direction=direction)
    assert abs(float(d[(d["component"] == "head") & (d["head"] == 1)]["logit_diff"].iloc[0]) - float(row["logit_diff"])) > 1e-4
