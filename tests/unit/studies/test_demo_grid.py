"""The shipped demo's IOI resid_pre sweep as a grid of its three metrics
(settings sharing one sweep): most of its cells are zero by construction;
every point statistic reads the measured cells only (scipy on them by hand)
and every point rank correlation lies inside its own interval."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from patching import demo
from patching.core.config import EMBEDDED
from patching.core.spec import Spec
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement.report import grid_report
from tests.helpers.demo import demo_store

pytestmark = pytest.mark.skipif(not demo.DEMO_PATH.exists(), reason="no demo bundle: python -m patching demo build")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    store, fp = demo_store(tmp_path_factory.mktemp("demo"))
    grid = disagreement_grid.lookup_grid(Spec(model=EMBEDDED, component="resid_pre"), store, fp, "str/*/denoise/s2")
    assert grid.complete and len(grid.available) == 3
    return grid, grid_report(grid, 10, kendall=True)


def test_point_rank_correlations_lie_inside_their_intervals(report):
    _, r = report
    a = r.agreement
    assert len(a) == 3 and (a["n_unmeasured"] > a["n"]).all()  # most resid_pre cells patch only the shared prefix
    for stat in ("spearman", "kendall"):
        assert ((a[f"{stat}_lo"] <= a[stat]) & (a[stat] <= a[f"{stat}_hi"])).all(), a[[stat, f"{stat}_lo", f"{stat}_hi"]]


def test_point_statistics_are_scipy_on_the_measured_cells(report):
    grid, r = report
    for row in r.agreement.itertuples():
        ta, tb = grid.results[row.setting_a].table, grid.results[row.setting_b].table
        live = ta["measured"].to_numpy() & tb["measured"].to_numpy()
        x, y = ta[grid.specs[row.setting_a].metric].to_numpy()[live], tb[grid.specs[row.setting_b].metric].to_numpy()[live]
        assert row.n == live.sum() < len(ta)
        assert row.spearman == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-9)
        assert row.kendall == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-9)
        everything = sps.spearmanr(ta[grid.specs[row.setting_a].metric], tb[grid.specs[row.setting_b].metric]).statistic
        assert abs(everything - row.spearman) > 0.01  # the zeros would have moved it
    sets = r.detection_sets.set_index("setting")
    assert (sets["n_components"] == r.agreement["n"].iloc[0]).all()
    assert np.isfinite(sets["sd"]).all()
