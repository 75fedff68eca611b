"""A disagreement grid with ``method`` as a dimension (``setting@atp`` beside
the exact setting) computed on a tiny model through the service and the store
(the settings themselves: tests/unit/studies/test_disagreement_methods.py)."""

from __future__ import annotations

import numpy as np

from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.studies.disagreement import tables
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import text


def test_a_grid_with_atp_beside_exact(tiny_llama, tmp_path):
    """Computed through the service and the store like any grid; the method
    pair's statistics are those of the two stored tables."""
    from scipy.stats import spearmanr

    from patching.store import Store

    pairs = (Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
             Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"))
    base = Spec(model=tiny_llama.name, task=None, pairs=pairs, component="head")
    settings = disagreement_grid.with_method(["str/logit_diff/denoise"], "atp")
    store = Store(tmp_path / "r.sqlite")
    grid = disagreement_grid.load_or_compute_grid(base, store, tiny_llama, settings=settings)
    assert grid.complete and grid.computed == 2
    assert grid.results["str/logit_diff/denoise@atp"].meta["method"] == "atp"
    eff = grid.effects()
    long = tables.agreement(eff, 5)
    row = long.iloc[0]
    assert row["differs_in"] == "method"
    x, y = eff["str/logit_diff/denoise"], eff["str/logit_diff/denoise@atp"]
    assert np.isclose(row["spearman"], spearmanr(x, y[x.index])[0])
    assert "method" in grid.status_table().columns
    again = disagreement_grid.load_or_compute_grid(base, store, tiny_llama, settings=settings)
    assert again.computed == 0  # both read from the store
    text.summary(grid, 5)  # the plain-language summary reads method pairs too
