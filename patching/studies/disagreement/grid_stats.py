"""A grid's statistics, computed once from its stored sweeps (no model run)
and stored with them, so a page or ``python -m patching compare`` that opens
a stored grid reads them instead of recomputing (seconds on a 2-core machine).

:class:`GridStats` holds, for the available settings of one grid and one k:

* ``agreement`` — per pair of settings: the agreement table
  (:func:`patching.studies.disagreement.tables.agreement`) over the
  measurement cells, with the intervals and noise floors of
  :func:`patching.studies.disagreement.report.robustness`;
* ``factors`` — per factor (:mod:`patching.studies.disagreement.factors`);
* ``cells`` — per component × setting (:mod:`patching.studies.disagreement.consensus`);
* ``tests`` — every disagreement as a paired test with its p, Benjamini–Hochberg
  q and significance (:func:`patching.studies.disagreement.significance.disagreement_tests`).

The resamples are drawn once (:func:`patching.studies.disagreement.robust.grid_samples`)
and shared by all of them.

As one tidy table (:meth:`GridStats.to_table`: ``part, a, b, component,
stat, value``) it is stored and bundled like any result; :data:`STATS_VERSION`
changes whenever a number would change, so older stored statistics are never
read for newer definitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from patching.analysis import inference
from patching.analysis.stats import _differs_in
from patching.analysis.uncertainty import DEFAULT_BOOT
from patching.grid_stats_request import PART_STATS, STATS_VERSION, TABLE_DTYPES, TEST_VALUES
from patching.studies.disagreement import consensus, factors, layout, report, robust, significance, tables
from patching.studies.disagreement.grid import AGREEMENT_COLUMNS, Grid

_INT_STATS = {"n", "sign_flips", "sign_flips_detected", "n_unmeasured", "n_pairs", "detected"}
_BOOL_STATS = {"significant", "measured", "disagreement"}


@dataclass
class GridStats:
    """The statistics of one grid's available settings (see the module doc)."""

    settings: list[str]  # drawing order (:func:`patching.studies.disagreement.layout.ordered`)
    info: dict[str, Any]  # k, n_boot (asked for), resampled (0/1: every sweep had per-prompt values), level, seed, n_prompts, ...
    agreement: pd.DataFrame
    factors: pd.DataFrame
    cells: pd.DataFrame
    tests_frame: pd.DataFrame | None = None  # see :attr:`tests`
    seconds: float = 0.0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def tests(self) -> pd.DataFrame:
        """Every test of the two families (:data:`patching.studies.disagreement.significance.COLUMNS`;
        ``disagreement``: the ones the point estimates show). Read from the
        stored rows on first use: the largest part, not needed for the page's first screen."""
        if self.tests_frame is None:
            self.tests_frame = _tests_from_long(self._cache.pop("test_rows"))
        return self.tests_frame

    @property
    def k(self) -> int:
        return int(self.info["k"])

    @property
    def has_intervals(self) -> bool:
        return bool(self.info.get("n_boot")) and bool(self.info.get("resampled"))

    def factor_pairs(self) -> pd.DataFrame:
        """The pairs each factor's bar averages, with their values."""
        if "fp" not in self._cache:
            self._cache["fp"] = factors.factor_pair_values(self.agreement)
        return self._cache["fp"]

    def effects(self) -> dict[str, pd.Series]:
        """setting -> effect vector (every component, measured or not)."""
        if "eff" not in self._cache:
            wide = self.cells.pivot(index="component", columns="setting", values="effect")
            order = list(dict.fromkeys(self.cells["component"]))
            self._cache["eff"] = {s: wide[s].reindex(order).rename(None) for s in self.settings}
        return self._cache["eff"]

    # ------------------------------------------------------------ storage

    def to_table(self) -> pd.DataFrame:
        """Every number as one tidy table (:data:`TABLE_DTYPES`)."""
        parts = [
            _long(self.agreement, "pair", "setting_a", "setting_b", None),
            _long(self.factors, "factor", "factor", None, None),
            _long(self.cells, "cell", "setting", None, "component"),
        ]
        parts.append(_tests_to_long(self.tests))
        out = pd.concat(parts, ignore_index=True)
        return out.astype(TABLE_DTYPES)[list(TABLE_DTYPES)]

    @classmethod
    def from_table(cls, table: pd.DataFrame, info: dict[str, Any], settings: list[str]) -> "GridStats":
        """The inverse of :meth:`to_table` (``info``/``settings`` from the
        stored row's meta)."""
        by = {p: g for p, g in table.groupby("part", sort=False)}
        empty = table.iloc[:0]
        agreement = _wide(by.get("pair", empty), PART_STATS["pair"], "setting_a", "setting_b", None)
        agreement["differs_in"] = [_differs_in(x, y) for x, y in zip(agreement["setting_a"], agreement["setting_b"])]
        agreement["k"] = int(info["k"])
        head = AGREEMENT_COLUMNS + ["differs_in", "n", "sign_flips_detected", "k"]
        agreement = agreement[head + [c for c in agreement.columns if c not in head]]
        fac = _wide(by.get("factor", empty), PART_STATS["factor"], "factor", None, None)
        if len(fac):
            fac = fac.sort_values("spearman", kind="stable").reset_index(drop=True)
        cells = _wide(by.get("cell", empty), PART_STATS["cell"], "setting", None, "component")
        out = cls(settings=list(settings), info=dict(info), agreement=agreement, factors=fac,
                  cells=cells[consensus.CELL_COLUMNS] if len(cells) else pd.DataFrame(columns=consensus.CELL_COLUMNS))
        out._cache["test_rows"] = by.get("test", empty)
        return out


def _long(df: pd.DataFrame, part: str, a: str, b: str | None, comp: str | None) -> pd.DataFrame:
    stats = [s for s in PART_STATS[part] if s in df.columns]
    ids = [c for c in (a, b, comp) if c]
    m = df[ids + stats].melt(id_vars=ids, value_vars=stats, var_name="stat", value_name="value")
    return pd.DataFrame({"part": part, "a": m[a].astype(str), "b": m[b].astype(str) if b else "", "component": m[comp].astype(str) if comp else "",
                         "stat": m["stat"], "value": pd.to_numeric(m["value"], errors="coerce").astype("float64")})


def _wide(long: pd.DataFrame, stats: tuple[str, ...], a: str, b: str | None, comp: str | None) -> pd.DataFrame:
    ids = [c for c, used in (("a", True), ("b", b is not None), ("component", comp is not None)) if used]
    names = {"a": a, "b": b, "component": comp}
    if long.empty:
        return pd.DataFrame(columns=[names[i] for i in ids] + list(stats))
    # The stored order of the ids is kept (pivot would sort them).
    w = long.pivot(index=ids, columns="stat", values="value")
    first = long.drop_duplicates(ids)[ids]
    w = w.reindex(pd.MultiIndex.from_frame(first) if len(ids) > 1 else pd.Index(first[ids[0]]))
    w = w.reset_index().rename(columns=names)
    w.columns.name = None
    for s in stats:
        if s not in w.columns:
            continue
        if s in _BOOL_STATS:
            w[s] = w[s].fillna(0).astype(bool)
        elif s in _INT_STATS and w[s].notna().all():
            w[s] = w[s].astype(np.int64)
    return w[[names[i] for i in ids] + [s for s in stats if s in w.columns]]


# ---------------------------------------------------------------- computing


def _tests_to_long(t: pd.DataFrame) -> pd.DataFrame:
    if t.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else object) for c in TABLE_DTYPES})
    m = t.melt(id_vars=["kind", "component", "setting_a", "setting_b"], value_vars=list(TEST_VALUES), var_name="col", value_name="value")
    return pd.DataFrame({"part": "test", "a": m["setting_a"].astype(str), "b": m["setting_b"].astype(str), "component": m["component"].astype(str),
                         "stat": m["kind"].astype(str) + "|" + m["col"], "value": pd.to_numeric(m["value"].astype(float), errors="coerce")})


def _tests_from_long(t: pd.DataFrame) -> pd.DataFrame:
    if t.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("kind", "component", "setting_a", "setting_b") else
                                          (bool if c in ("disagreement", "significant") else float)) for c in significance.COLUMNS})
    kind_col = t["stat"].str.rsplit("|", n=1)
    t = t.assign(kind=kind_col.str[0], col=kind_col.str[1])
    w = t.pivot(index=["kind", "component", "a", "b"], columns="col", values="value")
    first = t.drop_duplicates(["kind", "component", "a", "b"])[["kind", "component", "a", "b"]]
    w = w.reindex(pd.MultiIndex.from_frame(first)).reset_index().rename(columns={"a": "setting_a", "b": "setting_b"})
    w.columns.name = None
    for c in ("disagreement", "significant"):
        w[c] = w[c].fillna(0).astype(bool)
    return w[significance.COLUMNS]


def compute(grid: Grid, k: int = 10, n_boot: int = DEFAULT_BOOT, level: float = 0.95, seed: int = 0,
            fdr: float = inference.DEFAULT_FDR) -> GridStats:
    """Every statistic of ``grid``'s available settings (at least two); the
    intervals, noise floors and tests from the stored per-prompt values
    (``info["resampled"]`` 0 when fewer than two sweeps have them; settings
    without them get no interval). Refuses (PatchboardError) a grid whose
    sweeps do not share their prompts."""
    t0 = time.time()
    settings = layout.ordered(grid.available)
    if len(settings) < 2:
        raise ValueError("a grid's statistics need at least two available settings")
    gs = robust.grid_samples(grid, n_boot, seed) if n_boot else None
    eff_all = grid.effects()  # NaN where a cell is not a measurement
    eff = {s: eff_all[s] for s in settings}
    agreement = tables.agreement(eff, k)
    tests = _tests_from_long(pd.DataFrame(columns=list(TABLE_DTYPES)))
    if gs is not None:
        rob = report.robustness(grid, k, n_boot, level, kendall=False, fdr=fdr, seed=seed, samples=gs)
        agreement = agreement.merge(either_order(rob.agreement, agreement), on=["setting_a", "setting_b"], how="left")
        tests = rob.disagreements
    fac, _ = factors.factor_agreement(gs, agreement, k, level)
    cell_table = consensus.cells(eff, gs, level)
    measured_everywhere = cell_table.groupby("component", sort=False)["measured"].all()
    first = grid.results[settings[0]]
    info = {"k": int(k), "n_boot": int(n_boot), "resampled": int(gs is not None), "level": float(level), "seed": int(seed), "fdr": float(fdr),
            "n_prompts": int(gs.n_prompts) if gs is not None else int(first.meta.get("n_pairs") or grid.base.n_pairs),
            "n_noop": int((~measured_everywhere).sum()), "n_components": int(len(measured_everywhere)),
            "n_measured": int(measured_everywhere.sum()), "stats_version": STATS_VERSION}
    return GridStats(settings=settings, info=info, agreement=agreement, factors=fac, cells=cell_table, tests_frame=tests, seconds=time.time() - t0)


def either_order(iv: pd.DataFrame, agreement: pd.DataFrame) -> pd.DataFrame:
    """``iv``'s rows keyed like ``agreement``'s pairs (the layout may have
    put a pair's settings the other way round: the per-setting columns swap too)."""
    cols = [c for c in iv.columns if c not in ("setting_a", "setting_b")]
    swap = {"setting_a": "setting_b", "setting_b": "setting_a"}
    swap.update({c: c.replace("floor_a", "floor_b") for c in cols if c.startswith("floor_a")})
    swap.update({c: c.replace("floor_b", "floor_a") for c in cols if c.startswith("floor_b")})
    swapped = iv.rename(columns=swap)  # cross, floor_gap and its test are symmetric in the pair
    both = pd.concat([iv, swapped[iv.columns]], ignore_index=True).drop_duplicates(["setting_a", "setting_b"])
    keys = agreement[["setting_a", "setting_b"]]
    return keys.merge(both[["setting_a", "setting_b"] + cols], on=["setting_a", "setting_b"], how="left")
