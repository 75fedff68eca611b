"""Per-prompt values and bootstrap intervals: the stored per-prompt values give
back every mean in the table, the intervals match an independent bootstrap,
and the CLI writes both."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from patching import service
from patching.analysis import inference, uncertainty
from patching.core.pairs import Pair
from patching.core.spec import Spec

pytestmark = pytest.mark.engine

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
    Pair("When Lucy and Mark went to the shop, Mark gave a ring to", "When Lucy and Mark went to the shop, Lucy gave a ring to", " Lucy", " Mark"),
    Pair("When Sara and Tom went to the farm, Tom gave a fish to", "When Sara and Tom went to the farm, Sara gave a fish to", " Sara", " Tom"),
)


@pytest.fixture(scope="module", params=[("str", "denoise", "head"), ("gn", "noise", "resid_pre")], ids=["str-denoise", "gn-noise"])
def res(request, tiny_llama, tmp_path_factory):
    corruption, direction, component = request.param
    spec = Spec(model=tiny_llama.name, task=None, pairs=PAIRS, corruption=corruption, direction=direction, component=component,
                noise_samples=3).validated()
    from patching.store import Store

    store = Store(tmp_path_factory.mktemp("u") / "r.sqlite")
    service.run(spec, store=store, lm=tiny_llama)
    return service.run(spec, store=store, lm=tiny_llama)  # read back from the store


def test_per_prompt_values_give_back_the_table(res):
    assert res.from_store and res.per_prompt is not None
    mats, n = uncertainty.matrices(res.per_prompt, len(res.table))
    assert n == len(PAIRS) and set(res.per_prompt["prompt"]) == set(range(n))
    for m in ("prob", "logprob", "kl"):
        np.testing.assert_allclose(mats[m].mean(1), res.table[m].to_numpy(), atol=1e-5)  # float32 sums
    ref = res.meta["per_prompt_ref"]
    w = np.full((1, n), 1.0 / n)
    ld = uncertainty.samples(mats, ref, "logit_diff", res.spec.direction, w)[:, 0]
    np.testing.assert_allclose(ld, res.table["logit_diff"].to_numpy(), rtol=1e-4, atol=1e-4, equal_nan=True)


def test_intervals_match_an_independent_bootstrap(res):
    B, ci = 200, 0.9
    iv = uncertainty.intervals(res.table, res.per_prompt, res.meta["per_prompt_ref"], res.spec.direction, "logit_diff", B, ci, seed=3)
    n = len(PAIRS)
    idx = np.random.default_rng(3).integers(0, n, size=(B, n))  # the same draws, resampled by hand
    pp = res.per_prompt.sort_values(["cell", "prompt"])
    lp = pp["ld_patched"].to_numpy(np.float64).reshape(len(res.table), n)
    kl = pp["kl"].to_numpy(np.float64).reshape(len(res.table), n)
    lc, lo = np.array(res.meta["per_prompt_ref"]["ld_clean"]), np.array(res.meta["per_prompt_ref"]["ld_corrupt"])
    ratio, klb = [], []
    for b in range(B):
        i = idx[b]
        gap = lc[i].mean() - lo[i].mean()
        num = lp[:, i].mean(1) - lo[i].mean() if res.spec.direction == "denoise" else lc[i].mean() - lp[:, i].mean(1)
        ratio.append(num / gap)
        klb.append(kl[:, i].mean(1))
    ratio, klb = np.array(ratio), np.array(klb)
    a = inference.expanded_level(n, ci)  # Hesterberg's expanded percentile interval
    live = res.table["measured"].to_numpy()
    np.testing.assert_allclose(iv["logit_diff_lo"][live], np.quantile(ratio, a, axis=0)[live], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(iv["logit_diff_hi"][live], np.quantile(ratio, 1 - a, axis=0)[live], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(iv["kl_hi"][live], np.quantile(klb, 1 - a, axis=0)[live], rtol=1e-9, atol=1e-12)
    assert (iv["value_lo"][live] <= res.table["logit_diff"][live] + 1e-9).mean() > 0.9
    assert iv["detect_stability"][live].between(0, 1).all() and iv["detect_stability"][~live].isna().all()


def test_no_op_cells_are_never_detected(res):
    noop = res.meta["noop_cells"]
    if res.spec.component == "head":
        assert noop == []  # a head's patch covers every position
        return
    assert noop, "resid_pre at the shared prefix patches nothing"
    from patching.analysis.measurement import measured

    assert measured(res.table).tolist() == [i not in noop for i in range(len(res.table))]  # stored with the table
    assert (res.table.loc[noop, ["logit_diff", "prob", "logprob", "kl"]] == 0).all().all()  # the engine returns the base run
    iv = uncertainty.result_intervals(res, 100)
    assert iv.loc[noop, "detect_stability"].isna().all() and iv.loc[noop, "value_lo"].isna().all()  # not measured: no interval
    assert (res.table.loc[noop, "logit_diff"].abs() < 1e-6).all()


def test_cli_writes_intervals_and_per_prompt_values(tiny_model, tmp_path, monkeypatch, capsys):
    from patching.cli import main

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "tiny"
    tiny_model.hf("gpt2").save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p.to_row()) + "\n" for p in PAIRS))
    out, pp = tmp_path / "r.csv", tmp_path / "pp.csv"
    args = ["run", "--model", str(folder), "--pairs", str(pairs), "--component", "head", "--metric", "prob",
            "--bootstrap", "300", "--out", str(out), "--per-prompt", str(pp)]
    assert main(args) == 0, capsys.readouterr().err
    t, p = pd.read_csv(out), pd.read_csv(pp)
    assert list(t.columns[:7]) == ["component", "layer", "head", "pos", "value", "value_lo", "value_hi"]
    assert {f"{m}_{e}" for m in ("logit_diff", "prob", "logprob", "kl") for e in ("lo", "hi")} | {"detect_stability"} <= set(t.columns)
    assert (t["value_lo"] == t["prob_lo"]).all() and (t["value_lo"] <= t["value_hi"]).all()
    assert list(p.columns[:5]) == ["component", "layer", "head", "pos", "prompt"] and len(p) == len(t) * len(PAIRS)
    np.testing.assert_allclose(p.groupby(["layer", "head"])["prob"].mean().to_numpy(), t.sort_values(["layer", "head"])["prob"].to_numpy(), atol=1e-5)
    assert main(args[:-2] + ["--ci", "1.5"]) == 2
    assert "error: ci:" in capsys.readouterr().err
