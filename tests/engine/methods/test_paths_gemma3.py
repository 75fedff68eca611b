"""Path patching on a tiny random Gemma 3 (attention output normalised after
the head sum, post-MLP norms), checked by hand with hooks: the direct form
to the logits, the Wang form (the sender's write carried through the MLPs
with every head frozen), hypotheses' invariants and EAP against exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patching.core.data import build_dataset
from patching.core.spec import Spec
from patching.engine.head_write import HeadWrites
from patching.methods import edges, hypothesis, hypothesis_format, path_runs, paths
from tests.helpers.transformer_lens import PAIRS


@pytest.fixture(scope="module")
def ds(tiny_gemma3):
    return build_dataset(list(PAIRS[:2]), tiny_gemma3.tokenizer)


@pytest.fixture(scope="module")
def runs(tiny_gemma3, ds):
    return path_runs.prepare_runs(tiny_gemma3, ds, _spec().validated())  # no refusal: the writes add up through the norm


def _spec(**kw):
    return Spec(model="tiny-gemma3", task=None, pairs=tuple(PAIRS[:2]), **kw)


def _ld(logits, ds):
    last = logits[:, -1, :]
    return last.gather(1, ds.answer_ids[:, None])[:, 0] - last.gather(1, ds.counter_ids[:, None])[:, 0]


def _by_hand(lm, ds, layer, head, form):
    """Denoising LD effect of head L.H reaching the logits only directly
    (``direct``: its write added to the final residual stream) or also
    through the MLPs (``wang``: its write added to the block's output, every
    head's z frozen at the corrupted run)."""
    b = lm.bridge
    _, clean = b.run_with_cache(ds.clean_tokens)
    _, corr = b.run_with_cache(ds.corrupt_tokens)
    z = f"blocks.{layer}.attn.hook_z"
    o = HeadWrites.of(b)
    W = o.W_O[layer]
    # The head's write by hooks: the block's normalised output with only its z from the clean run.
    patched = {}

    def swap(act, hook=None):
        act = act.clone()
        act[:, :, head] = clean[z][:, :, head]
        return act

    def grab(act, hook=None):
        patched["out"] = act.detach().clone()
        return act

    b.run_with_hooks(ds.corrupt_tokens, fwd_hooks=[(z, swap), (f"blocks.{layer}.hook_attn_out", grab)])
    delta = patched["out"] - corr[f"blocks.{layer}.hook_attn_out"]
    if form == "direct":
        def add_final(act, hook=None):
            return act + delta
        logits = b.run_with_hooks(ds.corrupt_tokens, fwd_hooks=[("ln_final.hook_in", add_final)])
    else:
        hooks = [(f"blocks.{l}.attn.hook_z", (lambda l: lambda act, hook=None: corr[f"blocks.{l}.attn.hook_z"])(l)) for l in range(lm.n_layers)]
        hooks.append((f"blocks.{layer}.hook_attn_out", lambda act, hook=None: act + delta))
        logits = b.run_with_hooks(ds.corrupt_tokens, fwd_hooks=hooks)
    ld_c, ld_k = _ld(b(ds.clean_tokens), ds).mean(), _ld(b(ds.corrupt_tokens), ds).mean()
    naive = (clean[z][:, :, head] - corr[z][:, :, head]) @ W[head]
    return float((_ld(logits, ds).mean() - ld_k) / (ld_c - ld_k)), float((naive - delta).abs().max())


@pytest.mark.parametrize("form", ["direct", "wang"])
def test_gemma3_path_sweep_to_the_logits_by_hand(tiny_gemma3, ds, runs, form):
    res = paths.sweep(_spec(), tiny_gemma3, ds, "logits", runs=runs, form=form)
    t = res.table
    checked = 0
    for layer, head in ((0, 1), (1, 2), (2, 3)):
        want, gap = _by_hand(tiny_gemma3, ds, layer, head, form)
        got = float(t[(t["component"] == "head") & (t["layer"] == layer) & (t["head"] == head)]["logit_diff"].iloc[0])
        assert got == pytest.approx(want, abs=1e-4), (layer, head)
        assert gap > 1e-3  # the additive write would have been another number
        checked += abs(want) > 1e-3
    assert checked >= 2


def test_gemma3_hypotheses_all_and_none(tiny_gemma3, ds, runs):
    full = hypothesis.evaluate(_spec(), tiny_gemma3, ds, {"paths": [{"sender": "*", "receiver": "*"}]}, runs=runs)
    none = hypothesis.evaluate(_spec(), tiny_gemma3, ds, {"paths": []}, runs=runs)
    for d in hypothesis_format.DELTAS:
        assert full.row(d)["ate"] > 1e-3
        assert full.row(d)["proportion_explained"] == pytest.approx(1.0, abs=1e-3), d
        assert none.row(d)["proportion_explained"] == pytest.approx(0.0, abs=1e-6), d


def test_gemma3_eap_matches_its_definition_and_tracks_exact(tiny_gemma3, ds, runs):
    """EAP's head scores use the same write difference as exact patching:
    for the logits receiver, Δ_h · ∂metric/∂(final residual)."""
    est = edges.sweep(_spec(), tiny_gemma3, ds, "logits", runs=runs, method="eap")
    ex = paths.sweep(_spec(), tiny_gemma3, ds, "logits", runs=runs)
    heads = (est.table["component"] == "head").to_numpy()
    a, b = est.table["logit_diff"].to_numpy()[heads], ex.table["logit_diff"].to_numpy()[heads]
    assert torch.corrcoef(torch.tensor(np.stack([a, b])))[0, 1] > 0.5
