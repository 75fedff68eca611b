"""Everything the Disagreement page and ``python -m patching compare`` show
about one grid, computed once: the effects, the agreement table (with the
resampling intervals when every sweep has per-prompt values), detections,
sign flips and the findings in words; then the small tables the page derives
for a reader's choices (one statistic's matrix, setting A against B, the top
components across settings). No streamlit: the page caches and draws it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from patching.analysis.uncertainty import DEFAULT_BOOT
from patching.studies.disagreement import robust, tables, text
from patching.studies.disagreement.grid import Grid

#: The columns resampling adds to the agreement table, in the CLI's order
#: (Kendall's only when its intervals were asked for: they cost O(cells^2)).
INTERVAL_COLUMNS = ["spearman_lo", "spearman_hi", "kendall_lo", "kendall_hi", "topk_jaccard_lo", "topk_jaccard_hi", "floor_a", "floor_b"]


@dataclass
class Robustness:
    """The grid's statistics over resamples of the prompts."""

    agreement: pd.DataFrame  # per pair of settings: intervals, split-half floors, n_noop
    disagreements: pd.DataFrame  # every disagreement with the share of resamples it holds in
    summary: list[str]


@dataclass
class GridReport:
    """One grid's numbers for ``k`` (the top-k of the Jaccard overlap)."""

    k: int
    settings: list[str]  # the available settings, in the grid's order
    effects: dict[str, pd.Series]
    agreement: pd.DataFrame  # the CLI's table, with INTERVAL_COLUMNS when robustness is known
    disagreements: pd.DataFrame  # detected under some settings, missed under others
    sign_flips: pd.DataFrame
    detection_sets: pd.DataFrame
    summary: list[str]  # the findings, then the robustness sentences
    robustness: Robustness | None

    def interval_columns(self, stat: str) -> list[str]:
        """The resampling columns a matrix of ``stat`` carries (Spearman also
        each setting's agreement with itself across halves of the prompts)."""
        if self.robustness is None or stat not in ("spearman", "topk_jaccard"):
            return []
        return [f"{stat}_lo", f"{stat}_hi"] + (["floor_a", "floor_b"] if stat == "spearman" else [])

    def matrix(self, stat: str) -> pd.DataFrame:
        """``stat`` for every ordered pair of settings (setting_a, setting_b,
        value, stat), with :meth:`interval_columns` for either order."""
        m = tables.matrix_long(self.agreement, stat, self.settings)
        extra = self.interval_columns(stat)
        if not extra:
            return m
        pairs = self.agreement[["setting_a", "setting_b"] + extra]
        swapped = self.agreement[["setting_b", "setting_a"] + extra].rename(
            columns={"setting_a": "setting_b", "setting_b": "setting_a", "floor_a": "floor_b", "floor_b": "floor_a"})
        return m.merge(pd.concat([pairs, swapped]), on=["setting_a", "setting_b"], how="left")

    def robust_disagreements(self) -> pd.DataFrame | None:
        """The disagreements as the page lists them: who detects, who misses,
        and the share of resamples (in %) each holds in."""
        if self.robustness is None:
            return None
        shown = self.robustness.disagreements.rename(columns={"setting_a": "detected / positive under", "setting_b": "missed / negative under",
                                                              "frequency": "holds in"})
        shown["holds in"] = (shown["holds in"] * 100).round(1)
        return shown

    def detected_sign_flips(self) -> pd.DataFrame:
        """The sign flips of components detected under some setting (the rest
        are small effects around zero)."""
        return self.sign_flips[self.sign_flips["detected_in"].astype(str) != ""]

    def scatter(self, a: str, b: str) -> pd.DataFrame:
        """Each component's effect under setting ``a`` against ``b``."""
        return tables.scatter_data(self.effects, a, b)

    def pair(self, a: str, b: str) -> pd.Series | None:
        """The agreement table's row of settings ``a`` and ``b`` (either order)."""
        long = self.agreement
        rows = long[((long.setting_a == a) & (long.setting_b == b)) | ((long.setting_a == b) & (long.setting_b == a))]
        return rows.iloc[0] if len(rows) else None

    def ranks(self, reference: str, top: int) -> pd.DataFrame:
        """The ``top`` components of ``reference`` ranked under every setting;
        ``shown_rank`` stops at ``2 * top + 1`` (the bottom of the chart)."""
        rk = tables.rank_data(self.effects, int(top), reference=reference)
        rk["shown_rank"] = rk["rank"].clip(upper=2 * int(top) + 1)
        return rk

    def effects_table(self) -> pd.DataFrame:
        """Every effect, a column per setting (the export)."""
        return tables.effects_table(self.effects)


def with_intervals(long: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """The agreement table with the resampling columns of ``intervals``
    (:func:`patching.studies.disagreement.robust.robust_agreement`)."""
    cols = [c for c in INTERVAL_COLUMNS if c in intervals.columns]
    return long.merge(intervals[["setting_a", "setting_b"] + cols], on=["setting_a", "setting_b"], how="left")


def robustness(grid: Grid, k: int = 10, n_boot: int = DEFAULT_BOOT, level: float = 0.95, kendall: bool = False) -> Robustness | None:
    """Intervals, floors and robust disagreements from ``n_boot`` resamples
    (a disagreement is robust when it holds in ``level`` of them); None
    when a sweep has no per-prompt values."""
    samples = robust.grid_samples(grid, n_boot)
    if samples is None:
        return None
    agreement = robust.robust_agreement(samples, k, level, kendall=kendall)
    disagreements = robust.robust_disagreements(samples, level=level)
    return Robustness(agreement, disagreements, robust.robust_summary(disagreements, samples, level))


def grid_report(grid: Grid, k: int = 10, n_boot: int = DEFAULT_BOOT, level: float = 0.95, kendall: bool = False) -> GridReport:
    """The report of ``grid``'s available settings; ``n_boot=0``: no
    resampling (then ``robustness`` is None, as for sweeps without
    per-prompt values)."""
    effects = grid.effects()
    long = tables.agreement(effects, k)
    summary = text.summary(grid, k, effects, long)
    rob = robustness(grid, k, n_boot, level, kendall) if n_boot else None
    if rob is not None:
        long = with_intervals(long, rob.agreement)
        summary = summary + rob.summary
    return GridReport(k=int(k), settings=grid.available, effects=effects, agreement=long, disagreements=tables.disagreements(effects),
                      sign_flips=tables.sign_flips(effects), detection_sets=tables.detection_sets(effects), summary=summary, robustness=rob)
