"""Comparing the settings of a disagreement grid: effect tables, rank
agreement, detections, sign flips, scatter and rank data. Numbers only (the
statistics are in :mod:`patching.analysis`; the sentences in
:mod:`patching.studies.disagreement.text`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from patching.analysis.stats import DEFAULT_REL_EPS, FLIP_MIN_SD, _eps, _natural_sorted, detect, is_unsigned
from patching.analysis.tables import detection_table, settings_matrix, sign_flip_table, square
from patching.core.errors import PatchboardError
from patching.studies.disagreement.grid import AGREEMENT_COLUMNS, Grid


def effects_table(grid_or_effects: Grid | Mapping[str, pd.Series]) -> pd.DataFrame:
    """Every component's effect under every setting: ``component`` then one
    column per setting (the export every statistic can be recomputed from)."""
    eff = _effects(grid_or_effects)
    frame = pd.DataFrame(eff)
    frame = frame.reindex(_natural_sorted(list(frame.index)))
    frame.index.name = "component"
    return frame.reset_index()


def agreement(grid_or_effects: Grid | Mapping[str, pd.Series], k: int = 10) -> pd.DataFrame:
    """One row per unordered pair of settings: the CLI's
    ``setting_a,setting_b,spearman,kendall,topk_jaccard,sign_flips`` and then
    ``differs_in, n, sign_flips_detected, k``."""
    eff = _effects(grid_or_effects)
    _check_k(k)
    long = settings_matrix(eff, k=int(k))
    extra = [c for c in long.columns if c not in AGREEMENT_COLUMNS]
    out = long[AGREEMENT_COLUMNS + extra].copy()
    out["k"] = int(k)
    out.attrs.update(long.attrs)
    return out


def matrices(long: pd.DataFrame, settings: Sequence[str] | None = None,
             stats: Sequence[str] = ("spearman", "kendall", "topk_jaccard", "sign_flips")) -> dict[str, pd.DataFrame]:
    """Each statistic as a symmetric settings x settings matrix."""
    return {st: square(long, st, settings=settings) for st in stats}


def matrix_long(long: pd.DataFrame, stat: str, settings: Sequence[str] | None = None) -> pd.DataFrame:
    """One matrix as tidy rows (row, col, value) for a heatmap."""
    sq = square(long, stat, settings=settings)
    m = sq.stack(future_stack=True).reset_index()
    m.columns = ["setting_a", "setting_b", "value"]
    m["stat"] = stat
    return m


def detection_sets(grid_or_effects: Grid | Mapping[str, pd.Series], k: float = 2.0) -> pd.DataFrame:
    """Per setting, the 2-SD detection set over its measured components:
    which are detected, with which sign (an unsigned setting, AtP*, ranks
    |effect|: no negatives), the thresholds (mean, SD, lower, upper), how many
    components are measured (``n_components``) and how many are not
    (``n_unmeasured``: zero by construction)."""
    eff = _effects(grid_or_effects)
    rows = []
    for s, v in eff.items():
        if is_unsigned(s):
            v = v.abs()
        d = detect(v.dropna(), k)
        det = d[d["detected"]]
        pos = [c for c in det.index if det.at[c, "sign"] == "positive"]
        neg = [c for c in det.index if det.at[c, "sign"] == "negative"]
        order = lambda labs: sorted(labs, key=lambda c: -abs(float(v[c])))  # noqa: E731
        rows.append({
            "setting": s,
            "n_detected": len(det),
            "positive": ", ".join(order(pos)),
            "negative": ", ".join(order(neg)),
            "mean": d.attrs["mean"],
            "sd": d.attrs["sd"],
            "lower": d.attrs["lower"],
            "upper": d.attrs["upper"],
            "n_components": int(v.notna().sum()),
            "n_unmeasured": int(v.isna().sum()),
        })
    return pd.DataFrame(rows, columns=["setting", "n_detected", "positive", "negative", "mean", "sd", "lower", "upper", "n_components",
                                       "n_unmeasured"])


def disagreements(grid_or_effects: Grid | Mapping[str, pd.Series], k: float = 2.0) -> pd.DataFrame:
    """Components detected under some settings and missed under others, with
    the effect under every setting (:func:`patching.analysis.tables.detection_table`)."""
    return detection_table(_effects(grid_or_effects), k)


def sign_flips(grid_or_effects: Grid | Mapping[str, pd.Series], k: float = 2.0) -> pd.DataFrame:
    """Components positive under one setting and negative under another."""
    return sign_flip_table(_effects(grid_or_effects), k)


def scatter_data(grid_or_effects: Grid | Mapping[str, pd.Series], a: str, b: str, k: float = 2.0) -> pd.DataFrame:
    """Effects under setting ``a`` against ``b``, one row per component both
    measure: ``component, a, b`` (raw effects; magnitudes when either is
    unsigned, AtP*), ``z_a, z_b`` (in SDs of each setting, for settings with
    different units), ``detected`` (in a / b / both / "") and ``sign_flip``
    (each side beyond FLIP_MIN_SD SDs). ``attrs["n_unmeasured"]`` counts the
    components left out (zero by construction under either)."""
    eff = _effects(grid_or_effects)
    for name, s in (("a", a), ("b", b)):
        if s not in eff:
            raise PatchboardError(name, f"{s!r} is not an available setting; choose one of {', '.join(eff) or '(none stored)'}")
    sa, sb = eff[a], eff[b]
    mag = is_unsigned(a) or is_unsigned(b)
    if mag:
        sa, sb = sa.abs(), sb.abs()
    finite = lambda v: v.notna() & np.isfinite(v.astype(float))  # noqa: E731
    both = [c for c in sa.index if c in sb.index]
    common = [c for c in both if finite(sa)[c] and finite(sb)[c]]
    da, db = detect(sa.dropna(), k), detect(sb.dropna(), k)
    ea = _eps(sa.to_numpy(dtype=float), DEFAULT_REL_EPS, FLIP_MIN_SD)
    eb = _eps(sb.to_numpy(dtype=float), DEFAULT_REL_EPS, FLIP_MIN_SD)
    rows = []
    for c in common:
        x, y = float(sa[c]), float(sb[c])
        in_a = bool(c in da.index and da.at[c, "detected"])
        in_b = bool(c in db.index and db.at[c, "detected"])
        rows.append({
            "component": c,
            "a": x,
            "b": y,
            "z_a": float(da.at[c, "z"]) if c in da.index else math.nan,
            "z_b": float(db.at[c, "z"]) if c in db.index else math.nan,
            "detected": "both" if in_a and in_b else ("A only" if in_a else ("B only" if in_b else "neither")),
            "sign_flip": bool(not mag and ((x > ea and y < -eb) or (x < -ea and y > eb))),
        })
    out = pd.DataFrame(rows, columns=["component", "a", "b", "z_a", "z_b", "detected", "sign_flip"])
    # Cells either setting does not measure (zero by construction) are not drawn; the page says how many.
    out.attrs.update(setting_a=a, setting_b=b, n_unmeasured=len(both) - len(common), magnitudes=mag)
    return out


def rank_data(grid_or_effects: Grid | Mapping[str, pd.Series], top: int = 10, reference: str | None = None) -> pd.DataFrame:
    """Data for a rank (bump) chart: the ``top`` components by |effect| under
    ``reference`` (default: the first setting), with their rank by |effect|
    (1 = largest) and signed effect under every setting. ``in_top`` says
    whether the component is in that setting's own top ``top``."""
    eff = _effects(grid_or_effects)
    _check_k(top, "top")
    if not eff:
        return pd.DataFrame(columns=["setting", "component", "rank", "effect", "z", "in_top"])
    reference = reference or next(iter(eff))
    if reference not in eff:
        raise PatchboardError("reference", f"{reference!r} is not an available setting")
    ref = eff[reference].dropna()
    chosen = list(ref.abs().sort_values(ascending=False, kind="stable").index[:top])
    rows = []
    for s, v in eff.items():
        v = v.dropna()
        ranks = v.abs().rank(ascending=False, method="min")
        sd = float(v.std(ddof=0)) if len(v) else math.nan
        mean = float(v.mean()) if len(v) else math.nan
        for c in chosen:
            if c not in v.index:
                continue
            rows.append({
                "setting": s,
                "component": c,
                "rank": int(ranks[c]),
                "effect": float(v[c]),
                "z": (float(v[c]) - mean) / sd if sd > 0 else 0.0,
                "in_top": bool(ranks[c] <= top),
            })
    out = pd.DataFrame(rows, columns=["setting", "component", "rank", "effect", "z", "in_top"])
    out.attrs.update(reference=reference, top=int(top))
    return out


# ---------------------------------------------------------------- helpers


def _effects(x: Grid | Mapping[str, pd.Series]) -> dict[str, pd.Series]:
    return x.effects() if isinstance(x, Grid) else dict(x)


def _check_k(k: Any, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise PatchboardError(name, f"{k!r} must be a positive whole number")
