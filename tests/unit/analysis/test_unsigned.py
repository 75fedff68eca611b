"""AtP* as |effect|: GradDrop estimates a magnitude (Kramár et al. 2024), so
atp_star results are exported and shown as an unsigned ranking, compared with
|exact|, and kept out of every sign statistic."""

from __future__ import annotations

import numpy as np
import pandas as pd

from patching.analysis import estimate_error, tables
from patching.analysis.result_report import result_report
from patching.core.spec import Spec
from patching.results import Result


def _table(values, measured=None) -> pd.DataFrame:
    n = len(values)
    t = pd.DataFrame({"component": "head", "layer": np.arange(n) // 3, "head": pd.array(np.arange(n) % 3, dtype="Int64"),
                      "pos": pd.array([None] * n, dtype="Int64"), "pos_label": "", "logit_diff": values, "prob": np.asarray(values) / 10,
                      "logprob": values, "kl": np.abs(values)})
    if measured is not None:
        t["measured"] = measured
    return t


def test_atp_star_exports_an_unsigned_ranking():
    vals = np.array([0.5, -0.9, 0.1, -0.05, 0.0, 0.3])
    star = Result(spec=Spec(method="atp_star"), table=_table(vals), baselines={})
    out = star.export_table("logit_diff")
    assert list(out.columns[:5]) == ["component", "layer", "head", "pos", "|value|"]
    assert "|logit_diff|" in out.columns and "logit_diff" not in out.columns and "value" not in out.columns
    np.testing.assert_allclose(out["|value|"], np.abs(vals))
    assert star.unsigned and not Result(spec=Spec(method="atp"), table=_table(vals), baselines={}).unsigned
    exact = Result(spec=Spec(), table=_table(vals), baselines={})
    assert "value" in exact.export_table().columns  # exact stays signed
    rep = result_report(star.table, "logit_diff", unsigned=True)
    assert rep.n_negative == 0 and (rep.top["value"] >= 0).all() and "|logit_diff|" in rep.top_table().columns
    assert rep.top["label"].iloc[0] == "L0H1"  # the largest magnitude, whatever AtP's sign says


def test_estimate_vs_exact_compares_atp_star_with_absolute_exact():
    exact = _table(np.array([0.5, -0.9, 0.1, -0.05, 0.2, 0.3]))
    star = _table(np.array([0.5, 0.9, 0.1, 0.05, 0.2, 0.3]))  # |exact| exactly, signs lost
    a = estimate_error.agreement(star, exact, "logit_diff", k=3, method="atp_star")
    assert a["unsigned"] and a["max_abs_error"] == 0 and a["spearman"] == 1
    signed = estimate_error.agreement(star, exact, "logit_diff", k=3)
    assert signed["max_abs_error"] > 1  # read as signed, the same estimate looks wrong
    assert "magnitudes" in estimate_error.summary_line(a)


def test_estimate_vs_exact_reads_measured_cells_only():
    m = np.array([True, True, True, False, False, True])
    exact = _table(np.array([0.5, -0.9, 0.1, 0.0, 0.0, 0.3]), m)
    approx = _table(np.array([0.4, -0.8, 0.2, 0.0, 0.0, 0.1]), m)
    a = estimate_error.agreement(approx, exact, "logit_diff", k=2)
    b = estimate_error.agreement(approx[m].reset_index(drop=True), exact[m].reset_index(drop=True), "logit_diff", k=2)
    assert a["unmeasured"] == 2 and a["cells"] == 4
    for key in ("pearson", "spearman", "top_k_overlap", "max_abs_error"):
        assert a[key] == b[key]


def test_unsigned_settings_stay_out_of_sign_statistics():
    idx = [f"L{i}H0" for i in range(8)]
    exact = pd.Series([1.0, -1.2, 0.1, 0.05, -0.02, 0.0, 0.3, -0.4], index=idx)
    star = pd.Series([1.0, 1.2, 0.1, 0.05, 0.02, 0.0, 0.3, 0.4], index=idx)
    eff = {"str/logit_diff/denoise": exact, "str/logit_diff/denoise@atp_star": star}
    long = tables.settings_matrix(eff, k=3)
    assert long.loc[0, "sign_flips"] == 0 and abs(long.loc[0, "spearman"] - 1.0) < 1e-12  # |exact| against AtP*'s magnitudes
    assert tables.sign_flip_table(eff, min_sd=0.0).empty
    assert "@atp_star" not in tables.detection_table(eff).get("negative_in", pd.Series([""])).str.cat()
    from patching.studies.disagreement import tables as grid_tables

    sc = grid_tables.scatter_data(eff, *eff)
    assert sc.attrs["magnitudes"] and (sc["a"] >= 0).all() and not sc["sign_flip"].any()
