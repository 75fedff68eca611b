"""A faithfulness curve's summaries (patching.analysis.circuit_curve) and the
curve's sizes and rankings (patching.methods.circuit_curve), without a model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from patching.analysis.circuit_curve import area, circuit_interval, knee, read_curve
from patching.methods.circuit_curve import decode_scores, encode_scores, random_masks, ranking, size_grid, top_masks
from patching.methods.circuit_graph import MIB_PERCENTAGES


def _mib_areas(percentages, faithfulnesses, log_scale=False):
    """MIB's evaluate_area_under_curve, its loop as written (hannamw/MIB-circuit-track)."""
    area_under = 0.0
    area_from_1 = 0.0
    for i in range(len(faithfulnesses) - 1):
        x_1, x_2 = percentages[i], percentages[i + 1]
        if log_scale:
            x_1, x_2 = math.log(x_1), math.log(x_2)
        area_from_1 += (x_2 - x_1) * ((abs(1.0 - faithfulnesses[i]) + abs(1.0 - faithfulnesses[i + 1])) / 2)
        area_under += (x_2 - x_1) * ((faithfulnesses[i] + faithfulnesses[i + 1]) / 2)
    return area_under, area_from_1


@pytest.mark.parametrize("log_x", [False, True])
def test_cpr_and_cmd_are_mibs(log_x):
    f = [0.05, 0.2, 0.5, 0.9, 1.2, 0.95, 1.0, 0.99, 1.0, 1.0]
    cpr, cmd = area(np.array(MIB_PERCENTAGES), np.array(f), log_x)
    want = _mib_areas(MIB_PERCENTAGES, f, log_x)
    assert cpr == pytest.approx(want[0], abs=1e-12) and cmd == pytest.approx(want[1], abs=1e-12)


def test_knee_is_where_the_curve_rises_furthest_above_the_diagonal():
    n = np.array([1, 10, 100, 1000, 10000])
    assert knee(n, np.array([0.0, 0.1, 0.8, 0.85, 1.0])) == 2
    assert knee(n, np.array([0.0, 0.1, 0.2, 0.95, 1.0])) == 3
    # The demo's curve (IOI, 8 pairs): past 6,734 of 70,651 edges each edge adds less than its share.
    demo = [1, 357, 3741, 6734, 12119, 21811, 70651]
    assert demo[knee(np.array(demo), np.array([0.0, 0.54, 0.70, 0.84, 0.88, 1.01, 1.0]), 70651)] == 6734


def test_sizes_rankings_and_random_circuits():
    assert size_grid(70_651, 20)[0] == 1 and size_grid(70_651, 20)[-1] == 70_651 and len(size_grid(70_651, 20)) == 20
    assert size_grid(30, 20) == sorted(set(size_grid(30, 20)))  # repeats dropped on a small graph
    assert size_grid(1000, grid="mib") == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    scores = np.array([0.1, -0.5, 0.5, 0.0, 0.3])
    assert ranking(scores, "abs").tolist() == [1, 2, 4, 0, 3]  # ties by index
    assert ranking(scores, "signed").tolist() == [2, 4, 0, 3, 1]
    m = top_masks(ranking(scores), [1, 3], 5)
    assert m.sum(1).tolist() == [1, 3] and m[0, 1]
    r = random_masks(100, [5, 50], 4, seed=7)
    assert r.sum(1).tolist() == [5] * 4 + [50] * 4
    assert np.array_equal(r, random_masks(100, [5, 50], 4, seed=7)) and not np.array_equal(r, random_masks(100, [5, 50], 4, seed=8))
    s = np.random.default_rng(0).normal(size=11)
    assert np.array_equal(decode_scores(encode_scores(s), 11), s)
    with pytest.raises(Exception, match="11 edges"):
        decode_scores(encode_scores(s[:5]), 11)


def _curve_result(n_prompts=6, sizes=(1, 10, 100), draws=3, E=100):
    """A synthetic curve result: LD per prompt for each circuit."""
    rng = np.random.default_rng(1)
    ld_clean = rng.normal(3, 0.5, n_prompts)
    ld_corrupt = rng.normal(-1, 0.5, n_prompts)
    rows, pp = [], []
    frac = {1: 0.2, 10: 0.6, 100: 1.0}
    for circ, draw_list in (("top", [0]), ("random", range(draws))):
        for n in sizes:
            for k in draw_list:
                t = frac[n] if circ == "top" else 0.05 * k
                ld = ld_corrupt + t * (ld_clean - ld_corrupt)
                c = len(rows)
                rows.append({"circuit": circ, "n_edges": n, "draw": k, "n_kept": n, "n_nodes": 1,
                             "logit_diff": float((ld.mean() - ld_corrupt.mean()) / (ld_clean.mean() - ld_corrupt.mean()))})
                pp += [{"cell": c, "prompt": i, "ld_patched": ld[i]} for i in range(n_prompts)]
    meta = {"n_graph_edges": E, "per_prompt_ref": {"ld_clean": ld_clean.tolist(), "ld_corrupt": ld_corrupt.tolist()}}
    return pd.DataFrame(rows), pd.DataFrame(pp), meta


def test_read_curve():
    table, pp, meta = _curve_result()
    c = read_curve(table, pp, meta, n_boot=200)
    assert c.top["faithfulness"].tolist() == pytest.approx([0.2, 0.6, 1.0])
    # Every prompt moves by the same fraction, so every resample gives the same ratio of means.
    assert np.allclose(c.top["lo"], c.top["faithfulness"]) and np.allclose(c.top["hi"], c.top["faithfulness"])
    assert c.cpr == pytest.approx(area(np.array([0.01, 0.1, 1.0]), np.array([0.2, 0.6, 1.0]))[0])
    assert c.cpr_ci[0] == pytest.approx(c.cpr) and c.knee in (1, 10, 100)
    assert c.band["mean"].tolist() == pytest.approx([0.05] * 3) and c.band["hi"].max() <= 0.1 + 1e-12
    assert "CPR" in c.summary() and "knee" in c.summary()
    one = table.iloc[[0]]
    lo, hi = circuit_interval(pp[pp["cell"] == 0], meta, n_boot=50)
    assert lo == pytest.approx(hi) == pytest.approx(float(one["logit_diff"].iloc[0]))
