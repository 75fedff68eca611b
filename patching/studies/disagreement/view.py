"""What the Disagreement page draws, derived from a grid's stored statistics
(:class:`patching.studies.disagreement.grid_stats.GridStats`): the matrices'
cells, the tables behind the expanders, setting A against B and the ranks of
the top components. Selections and joins only, no statistics; no streamlit.
"""

from __future__ import annotations

import pandas as pd

from patching.analysis import inference
from patching.studies.disagreement import consensus, layout, significance, tables
from patching.studies.disagreement.grid_stats import GridStats

#: The statistics the agreement matrix offers (the URL's ``stat``).
MATRIX_STATS = ("spearman", "topk_jaccard", "kendall", "sign_flips")
_IDENTITY = {"spearman": 1.0, "kendall": 1.0, "topk_jaccard": 1.0, "sign_flips": 0.0}


def matrix(stats: GridStats, stat: str) -> pd.DataFrame:
    """``stat`` for every ordered pair of settings, the diagonal included:
    ``setting_a, setting_b, value, differs_in`` and, where the statistic
    has them, ``lo, hi`` (and for Spearman each setting's noise floor, the
    two settings' agreement on the same split halves and the q-value of
    their difference: ``floor_a, floor_b, cross, floor_q``)."""
    if stat not in MATRIX_STATS:
        raise ValueError(f"stat must be one of {', '.join(MATRIX_STATS)}")
    a = stats.agreement
    cols = {"value": stat, "differs_in": "differs_in"}
    if f"{stat}_lo" in a.columns:
        cols.update(lo=f"{stat}_lo", hi=f"{stat}_hi")
    if stat == "spearman":
        cols.update({c: c for c in ("floor_a", "floor_b", "cross", "floor_q") if c in a.columns})
    fwd = pd.DataFrame({"setting_a": a["setting_a"], "setting_b": a["setting_b"], **{k: a[v] for k, v in cols.items()}})
    rev = fwd.rename(columns={"setting_a": "setting_b", "setting_b": "setting_a", "floor_a": "floor_b", "floor_b": "floor_a"})[fwd.columns]
    diag = pd.DataFrame({"setting_a": stats.settings, "setting_b": stats.settings, "value": _IDENTITY[stat], "differs_in": ""})
    return pd.concat([fwd, rev, diag], ignore_index=True)


def settings_layout(stats: GridStats) -> pd.DataFrame:
    return layout.layout(stats.settings)


def consensus_cells(stats: GridStats, top: int = 30) -> pd.DataFrame:
    """The consensus matrix's cells (:func:`patching.studies.disagreement.consensus.matrix`)."""
    return consensus.matrix(stats.cells, top)


def components(stats: GridStats) -> pd.DataFrame:
    """Every component detected under some setting, core first (the expander's table)."""
    return consensus.components(stats.cells)


def component_detail(stats: GridStats, component: str) -> pd.DataFrame:
    return consensus.detail(stats.cells, component)


def factor_pairs(stats: GridStats) -> pd.DataFrame:
    """The pairs each factor's bar averages (the expander's table)."""
    fp = stats.factor_pairs()
    return fp.assign(factor=fp["factor"].map(layout.FACTORS))


def detection_sets(stats: GridStats) -> pd.DataFrame:
    """Per setting, how many components the 2-SD rule detects above and below the band."""
    c = stats.cells[stats.cells["measured"]]
    g = c.assign(pos=c["detected"] > 0, neg=c["detected"] < 0).groupby("setting", sort=False)
    out = pd.DataFrame({"detected above": g["pos"].sum(), "detected below": g["neg"].sum(), "significant": g["significant"].sum(),
                        "measured cells": g.size()}).reindex(stats.settings).reset_index()
    above = c[c["detected"] > 0].sort_values("z", ascending=False).groupby("setting", sort=False)["component"].agg(", ".join)
    below = c[c["detected"] < 0].sort_values("z").groupby("setting", sort=False)["component"].agg(", ".join)
    out["above (strongest first)"] = out["setting"].map(above).fillna("")
    out["below (strongest first)"] = out["setting"].map(below).fillna("")
    return out


def disagreements(stats: GridStats, kind: str) -> pd.DataFrame:
    """The disagreements of ``kind`` ("detected/missed" or "sign flip") the
    point estimates show, each with its paired test: the effects, the
    difference claimed, p, the Benjamini–Hochberg q over the kind's whole
    family, and whether it is significant at the grid's FDR."""
    t = significance.shown(stats.tests)
    t = t[t["kind"] == kind]
    first = "detected under" if kind == "detected/missed" else "positive under"
    second = "missed under" if kind == "detected/missed" else "negative under"
    fdr = float(stats.info.get("fdr", 0.05))
    return pd.DataFrame({"component": t["component"], first: t["setting_a"], second: t["setting_b"], "effect there": t["effect_a"],
                         "effect here": t["effect_b"], "difference": t["difference"], "p": t["p"], "q": t["q"],
                         f"significant at FDR {fdr:g}": t["significant"].astype(bool)}).reset_index(drop=True)


def disagreement_counts(stats: GridStats) -> dict[str, tuple[int, int, int]]:
    """kind -> (significant, shown by the point estimates, tested: the family's size)."""
    t = stats.tests
    return {kind: (int((t["kind"] == kind).mul(t["significant"].astype(bool)).sum()), int(((t["kind"] == kind) & t["disagreement"].astype(bool)).sum()),
                   int((t["kind"] == kind).sum())) for kind in significance.KINDS}


def coverage_note(stats: GridStats) -> str | None:
    """The sentence a page shows when the grid has too few prompts for
    "significant" labels (None when enough, or without resamples)."""
    if not stats.has_intervals:
        return None
    return inference.coverage_sentence(int(stats.info["n_prompts"]), "effect")


def rank_note(stats: GridStats) -> str | None:
    """How far a rank correlation's interval can be trusted at this many
    prompts (:func:`patching.analysis.inference.coverage_sentence`)."""
    if not stats.has_intervals:
        return None
    return inference.coverage_sentence(int(stats.info["n_prompts"]), "spearman")


def scatter(stats: GridStats, a: str, b: str) -> pd.DataFrame:
    """Each component's effect under setting ``a`` against ``b``."""
    return tables.scatter_data(stats.effects(), a, b)


def pair(stats: GridStats, a: str, b: str) -> pd.Series | None:
    """The agreement row of settings ``a`` and ``b`` (either order)."""
    g = stats.agreement
    rows = g[((g.setting_a == a) & (g.setting_b == b)) | ((g.setting_a == b) & (g.setting_b == a))]
    return rows.iloc[0] if len(rows) else None


def ranks(stats: GridStats, reference: str, top: int) -> pd.DataFrame:
    """The ``top`` components of ``reference`` ranked under every setting;
    ``shown_rank`` stops at ``2 * top + 1`` (the bottom of the chart)."""
    rk = tables.rank_data(stats.effects(), int(top), reference=reference)
    rk["shown_rank"] = rk["rank"].clip(upper=2 * int(top) + 1)
    return rk


def effects_table(stats: GridStats) -> pd.DataFrame:
    """Every effect, a column per setting (the export; empty where not measured)."""
    return tables.effects_table(stats.effects())


def cells_table(stats: GridStats) -> pd.DataFrame:
    """Every component × setting cell with its interval, z, detection and
    stability (the consensus export)."""
    return stats.cells.copy()
