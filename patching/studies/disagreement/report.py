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

from patching.analysis import inference
from patching.analysis.uncertainty import DEFAULT_BOOT
from patching.studies.disagreement import floor, robust, significance, tables, text
from patching.studies.disagreement.grid import Grid

#: The columns resampling adds to the agreement table, in the CLI's order
#: (Kendall's only when its intervals were asked for: they cost O(cells^2)).
INTERVAL_COLUMNS = ["spearman_lo", "spearman_hi", "kendall_lo", "kendall_hi", "topk_jaccard_lo", "topk_jaccard_hi",
                    *floor.FLOOR_COLUMNS, "n_unmeasured"]


@dataclass
class Robustness:
    """The grid's statistics over the prompts: intervals, noise floors and
    the disagreements as tests."""

    agreement: pd.DataFrame  # per pair of settings: intervals, noise floors and their test, n_unmeasured
    disagreements: pd.DataFrame  # every test of the two families (significance.COLUMNS); disagreement=True: the ones shown
    summary: list[str]
    n_prompts: int = 0
    n_boot: int = 0
    fdr: float = inference.DEFAULT_FDR

    @property
    def significance_allowed(self) -> bool:
        """Whether the grid has enough prompts for "significant" labels."""
        return inference.significance_allowed(self.n_prompts, "effect")

    @property
    def coverage_note(self) -> str | None:
        """The page's sentence when the prompts are too few (None when enough)."""
        return inference.coverage_sentence(self.n_prompts, "effect")

    def family_sizes(self) -> dict[str, int]:
        """How many disagreements of each kind were tested (the BH family)."""
        return significance.family_sizes(self.disagreements)


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
        each setting's noise floor, the two settings' agreement on the same
        split halves and the q-value of their difference)."""
        if self.robustness is None or stat not in ("spearman", "topk_jaccard"):
            return []
        return [f"{stat}_lo", f"{stat}_hi"] + (["floor_a", "floor_b", "cross", "floor_q"] if stat == "spearman" else [])

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
        the claimed difference, p, q and whether significant at FDR q."""
        if self.robustness is None:
            return None
        shown = significance.shown(self.robustness.disagreements).drop(columns="disagreement")
        return shown.rename(columns={"setting_a": "detected / positive under", "setting_b": "missed / negative under",
                                     "significant": f"significant at FDR {self.robustness.fdr:g}"})

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


def robustness(grid: Grid, k: int = 10, n_boot: int = DEFAULT_BOOT, ci: float = 0.95, kendall: bool = False,
               fdr: float = inference.DEFAULT_FDR, seed: int = 0, samples: robust.GridSamples | None = None) -> Robustness | None:
    """Intervals (``ci``), noise floors and the disagreements' tests (FDR
    ``fdr``) from ``n_boot`` resamples (``samples`` when already drawn:
    :mod:`patching.studies.disagreement.grid_stats` shares them with the
    per-factor agreement); None when fewer than two sweeps have per-prompt values."""
    samples = samples if samples is not None else robust.grid_samples(grid, n_boot, seed)
    if samples is None:
        return None
    agreement = robust.robust_agreement(samples, k, ci, kendall=kendall)
    floors = floor.noise_floors(samples, ci=ci, seed=seed)
    agreement = agreement.merge(floors, on=["setting_a", "setting_b"], how="left")
    tests = significance.disagreement_tests(samples, fdr=fdr, seed=seed)
    summary = significance.tests_summary(tests, samples, fdr) + floor_summary(agreement, samples.n_prompts, fdr)
    return Robustness(agreement, tests, summary, samples.n_prompts, samples.n_boot, fdr)


def floor_summary(agreement: pd.DataFrame, n: int, fdr: float) -> list[str]:
    """The noise-floor sentence: which pairs agree less than each setting
    agrees with itself, by the test of the difference (BH over the pairs)."""
    tested = agreement[agreement["floor_p"].notna()] if "floor_p" in agreement.columns else agreement.iloc[:0]
    if tested.empty:
        return []
    below = tested[tested["floor_q"] <= fdr].sort_values("floor_gap", ascending=False)
    how = (f"each setting's agreement with itself over 50 random splits of the {n} prompts into halves (Spearman–Brown corrected) "
           "against the two settings' agreement on the same splits (A on one half, B on the other)")
    if not len(below):
        return [f"No pair of settings agrees less than its settings agree with themselves at FDR q = {fdr:g} ({len(tested)} pairs tested; {how})."]
    top = below.iloc[0]
    label = "" if inference.significance_allowed(n, "floor") else " (not labelled significant: too few prompts)"
    return [f"{len(below)} of {len(tested)} pairs of settings agree less than their settings agree with themselves at FDR q = {fdr:g}{label} "
            f"({how}); the clearest: {top.setting_a} vs {top.setting_b}, agreement {top.cross:.2f} against floors {top.floor_a:.2f} and "
            f"{top.floor_b:.2f} (q = {top.floor_q:.2g})."]


def grid_report(grid: Grid, k: int = 10, n_boot: int = DEFAULT_BOOT, ci: float = 0.95, kendall: bool = False,
                fdr: float = inference.DEFAULT_FDR) -> GridReport:
    """The report of ``grid``'s available settings; ``n_boot=0``: no
    resampling (then ``robustness`` is None, as for sweeps without
    per-prompt values). Refuses (PatchboardError) a grid whose sweeps do not
    share their prompts (:mod:`patching.studies.disagreement.pairing`)."""
    effects = grid.effects()
    long = tables.agreement(effects, k)
    summary = text.summary(grid, k, effects, long)
    rob = robustness(grid, k, n_boot, ci, kendall, fdr) if n_boot else None
    if rob is not None:
        long = with_intervals(long, rob.agreement)
        summary = summary + rob.summary
    return GridReport(k=int(k), settings=grid.available, effects=effects, agreement=long, disagreements=tables.disagreements(effects),
                      sign_flips=tables.sign_flips(effects), detection_sets=tables.detection_sets(effects), summary=summary, robustness=rob)
