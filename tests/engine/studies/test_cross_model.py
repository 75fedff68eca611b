"""The same study across models (patching/studies/cross_model.py) on two tiny
random models of different families (Llama: 3 layers × 4 heads; Gemma 3 with
post-norms), every number recomputed here by hand from the stored sweeps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from patching.analysis import stats
from patching.core.spec import Spec
from patching.studies import cross_model
from tests.helpers import registered


@pytest.fixture(scope="module")
def study_report(tiny_llama, tiny_gemma3, tmp_path_factory):
    from patching.core.registry import REGISTRY
    from patching.store import Store

    store = Store(tmp_path_factory.mktemp("cross") / "results.sqlite")
    base = Spec(task="ioi", n_pairs=4, seed=1, noise_samples=2)
    study = cross_model.Study(base, ("tiny-llama", "tiny-gemma3"), "str/*/*")
    with registered(tiny_llama), registered(tiny_gemma3):
        assert not cross_model.lookup(study, store, REGISTRY.fingerprint).complete
        cross_model.compute(study, store)
        cm = cross_model.lookup(study, store, REGISTRY.fingerprint)  # everything read back from the store
        rep = cross_model.report(cm, n_boot=200)
    return study, cm, rep


def test_study_is_complete_and_reads_back(study_report):
    study, cm, rep = study_report
    assert cm.complete and not cm.missing()
    assert set(rep.depth["model"]) == set(study.models)
    assert len(rep.lines) >= 2 * 4


def test_depth_profile_is_each_layers_strongest_cell(study_report):
    _, cm, rep = study_report
    for m, part in cm.parts.items():
        for c in cross_model.LAYER_COMPONENTS:
            t = part.layers[c].table
            got = rep.depth[(rep.depth["model"] == m) & (rep.depth["component"] == c)].sort_values("layer")
            assert list(got["rel_depth"]) == [0.0, 0.5, 1.0]  # 3 layers
            for layer, row in zip(range(3), got.itertuples()):
                cells = t[t["layer"] == layer]
                best = cells.loc[cells["logit_diff"].abs().idxmax()]
                assert row.effect == pytest.approx(float(best["logit_diff"])) and row.pos == int(best["pos"])
                assert row.lo <= row.hi


def test_attention_share_by_hand(study_report):
    _, cm, rep = study_report
    for m, part in cm.parts.items():
        tot = {}
        for c in cross_model.LAYER_COMPONENTS:
            t = part.layers[c].table
            tot[c] = sum(float(t[t["layer"] == l]["logit_diff"].abs().max()) for l in range(3))
        row = rep.share[rep.share["model"] == m].iloc[0]
        assert row["share"] == pytest.approx(tot["attn_out"] / (tot["attn_out"] + tot["mlp_out"]))
        assert 0 <= row["lo"] <= row["hi"] <= 1


def test_detected_heads_by_the_2sd_rule(study_report):
    study, cm, rep = study_report
    for m, part in cm.parts.items():
        res = part.grid.results[study.head_spec_setting]
        noop = set(res.meta.get("noop_cells") or ())
        vals = res.table["logit_diff"].to_numpy(float)
        keep = np.array([i not in noop for i in range(len(vals))])
        x = vals[keep]
        want = int((np.abs(x - x.mean()) > 2 * x.std()).sum())
        row = rep.detected[rep.detected["model"] == m].iloc[0]
        assert row["n_detected"] == want and row["n_heads"] == 12


def test_factor_medians_are_spearman_between_one_factor_apart(study_report):
    _, cm, rep = study_report
    for m, part in cm.parts.items():
        eff = part.grid.effects()
        noop = set()
        for r in part.grid.results.values():
            noop |= set(r.meta.get("noop_cells") or ())
        keep = [i for i in range(len(next(iter(eff.values())))) if i not in noop]
        g = rep.factors[rep.factors["model"] == m].set_index("factor")
        assert set(g.index) == {"metric", "direction"}  # str only: no corruption pairs
        for f in g.index:
            pairs = [(a, b) for i, a in enumerate(eff) for b in list(eff)[i + 1:] if stats._differs_in(a, b) == f]
            want = np.median([sps.spearmanr(eff[a].to_numpy()[keep], eff[b].to_numpy()[keep])[0] for a, b in pairs])
            assert g.loc[f, "spearman"] == pytest.approx(want, abs=1e-9)
            assert g.loc[f, "pairs"] == len(pairs)
        assert g["most"].sum() == 1 and g.loc[g["spearman"].idxmin(), "most"]


def test_export_table_has_every_number(study_report):
    _, _, rep = study_report
    t = cross_model.export_table(rep)
    assert list(t.columns[:5]) == ["what", "model", "value", "lo", "hi"]
    assert set(t["what"]) == {"depth", "attention_share", "heads_detected", "factor_spearman"}


def test_models_are_parsed_with_one_line_errors():
    from patching.core.errors import PatchboardError

    assert cross_model.parse_models("a, b,a") == ("a", "b")
    with pytest.raises(PatchboardError, match="models"):
        cross_model.parse_models("only-one")
