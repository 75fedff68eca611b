"""Resample ablation (Goldowsky-Dill et al.): each prompt's corrupted input is another prompt of
the same dataset, seeded, K samples per prompt averaged. (Mean and zero ablation, in every
method: tests/engine/engine/test_ablation.py.)"""

from __future__ import annotations

import pytest
import torch

from patching.core.data import build_dataset
from patching.core.errors import PatchboardError
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.engine.reference import resample_index
from patching.methods.activation import compute

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
    Pair("When Kate and David went to the school, David gave a ring to", "When Kate and David went to the school, Kate gave a ring to", " Kate", " David"),
    Pair("When Lucy and Brian went to the beach, Brian gave a shell to", "When Lucy and Brian went to the beach, Lucy gave a shell to", " Lucy", " Brian"),
)
K = 3


def test_resample_sweep_matches_a_hand_computation(tiny_llama, embedded_tokenizer):
    lm, ds = tiny_llama, build_dataset(list(PAIRS), embedded_tokenizer)
    spec = Spec(model=lm.name, task=None, pairs=PAIRS, corruption="resample", noise_samples=K, seed=7,
                component="resid_pre", direction="denoise")
    res = compute(spec, lm, ds)
    assert res.meta["rows"] == len(PAIRS) * K
    idx = resample_index(len(PAIRS), K, 7)
    clean, corrupt = ds.clean_tokens, ds.clean_tokens[idx]
    a, c = ds.answer_ids.repeat_interleave(K), ds.counter_ids.repeat_interleave(K)

    def ld(logits):
        x = logits[:, -1].float()
        return x.gather(1, a[:, None])[:, 0] - x.gather(1, c[:, None])[:, 0]

    with torch.no_grad():
        ld_corrupt = float(ld(lm.bridge(corrupt)).mean())
        cl_logits, cache = lm.bridge.run_with_cache(clean)
        ld_clean = float(ld(cl_logits.repeat_interleave(K, 0)).mean())
        assert res.baselines["corrupt_logit_diff"] == pytest.approx(ld_corrupt, abs=1e-4)
        assert res.baselines["clean_logit_diff"] == pytest.approx(ld_clean, abs=1e-4)
        # One cell by hand: layer 1's residual stream at the last position, clean into the resampled run.
        src = cache["blocks.1.hook_resid_pre"].repeat_interleave(K, 0)

        def put(act, hook=None):
            act[:, -1] = src[:, -1]
            return act

        patched = float(ld(lm.bridge.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.hook_resid_pre", put)])).mean())
    t = res.table
    cell = t[(t["layer"] == 1) & (t["pos"] == ds.seq_len - 1)]
    assert float(cell["logit_diff"].iloc[0]) == pytest.approx((patched - ld_corrupt) / (ld_clean - ld_corrupt), abs=1e-4)
    assert t["logit_diff"].notna().all() and float(t["kl"].abs().max()) > 1e-3


def test_resample_needs_two_pairs_in_the_engine_too(tiny_llama, embedded_tokenizer):
    from patching.engine.reference import prepare

    ds = build_dataset(list(PAIRS[:1]), embedded_tokenizer)
    with pytest.raises(PatchboardError, match="at least 2 pairs"):
        prepare(tiny_llama, ds, "resample", "noise", set(), noise_samples=2)
