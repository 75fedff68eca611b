"""Answer sets (greater-than scored as in the paper): P(answer) is the summed
probability of the set, LD the logit-sum difference, recomputed by hand."""

from __future__ import annotations

import pytest
import torch

from patching.core import tasks
from patching.core.data import build_dataset
from patching.core.pairs import Pair, parse_pairs_text
from patching.core.spec import Spec
from patching.methods.activation import compute


@pytest.fixture(scope="module")
def gt(tiny_llama, embedded_tokenizer):
    spec = Spec(model=tiny_llama.name, task="greater_than", n_pairs=4, seed=1, component="head", direction="denoise")
    ds = tasks.dataset_for(spec, embedded_tokenizer)
    return spec, ds, compute(spec, tiny_llama, ds)


def _by_hand(logits, ds):
    x = logits[:, -1].float()
    p = torch.softmax(x, -1)
    prob, ld = [], []
    for i, pair in enumerate(ds.pairs):
        a = [int(t) for t in ds.answer_sets[i] if t >= 0]
        c = [int(t) for t in ds.counter_sets[i] if t >= 0]
        assert len(a) == len(pair.answers) and len(c) == len(pair.counter_answers)
        prob.append(float(p[i, a].sum()))
        ld.append(float(x[i, a].sum() - x[i, c].sum()))
    return sum(prob) / len(prob), sum(ld) / len(ld)


def test_greater_than_metric_recomputed_by_hand(gt, tiny_llama):
    spec, ds, res = gt
    assert ds.answer_sets is not None and all(len(p.answers) > 1 or len(p.counter_answers) > 1 for p in ds.pairs)
    bridge = tiny_llama.bridge
    with torch.no_grad():
        cl_logits, cache = bridge.run_with_cache(ds.clean_tokens)
        co_logits = bridge(ds.corrupt_tokens)
        p_cl, ld_cl = _by_hand(cl_logits, ds)
        p_co, ld_co = _by_hand(co_logits, ds)
        b = res.baselines
        assert b["clean_prob"] == pytest.approx(p_cl, abs=1e-5) and b["corrupt_prob"] == pytest.approx(p_co, abs=1e-5)
        assert b["clean_logit_diff"] == pytest.approx(ld_cl, abs=1e-3) and b["corrupt_logit_diff"] == pytest.approx(ld_co, abs=1e-3)
        # One head by hand: its clean output at every position into the corrupted run.
        src = cache["blocks.2.attn.hook_z"]

        def put(act, hook=None):
            act[:, :, 1] = src[:, :, 1]
            return act

        pt_logits = bridge.run_with_hooks(ds.corrupt_tokens, fwd_hooks=[("blocks.2.attn.hook_z", put)])
        p_pt, ld_pt = _by_hand(pt_logits, ds)
    row = res.table[(res.table["layer"] == 2) & (res.table["head"] == 1)].iloc[0]
    assert float(row["prob"]) == pytest.approx(p_pt - p_co, abs=1e-5)
    assert float(row["logit_diff"]) == pytest.approx((ld_pt - ld_co) / (ld_cl - ld_co), abs=1e-4)


def test_custom_pairs_take_answer_sets(embedded_tokenizer, tiny_llama):
    text = ('{"clean": "The capital of France is", "corrupt": "The capital of Italy is", '
            '"answer": [" Paris", " Lyon"], "counter_answer": [" Rome", " Milan"]}\n')
    (p,) = parse_pairs_text(text, "jsonl")
    assert p.answer == " Paris| Lyon" and p.answers == (" Paris", " Lyon") and p.counter_answers == (" Rome", " Milan")
    (q,) = parse_pairs_text('clean,corrupt,answer,counter_answer\nThe capital of France is,The capital of Italy is, Paris| Lyon, Rome\n', "csv")
    assert q.answers == (" Paris", " Lyon") and q.counter_answers == (" Rome",)
    ds = build_dataset([p, Pair("The capital of Spain is", "The capital of Japan is", " Madrid", " Tokyo")], embedded_tokenizer)
    assert ds.answer_sets.shape == (2, 2) and int(ds.answer_sets[1, 1]) == -1
    # Singletons read exactly as before: a set of one is the one token.
    one = build_dataset([Pair("The capital of Spain is", "The capital of Japan is", " Madrid", " Tokyo")], embedded_tokenizer)
    assert one.answer_sets is None
    spec = Spec(model=tiny_llama.name, task=None, pairs=(p, p), component="attn_out")
    res = compute(spec, tiny_llama, build_dataset([p, p], embedded_tokenizer))
    assert res.table["prob"].notna().all()


def test_path_patching_takes_answer_sets(gt, tiny_llama):
    from patching.methods import paths

    spec, ds, _ = gt
    table = paths.sweep(spec, tiny_llama, ds, "logits").table
    assert table["prob"].notna().any() and table["logit_diff"].notna().any()
