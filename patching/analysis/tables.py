"""Tables over many settings: the pairwise agreement matrix and the
components that settings disagree on.

:func:`settings_matrix` runs :func:`patching.analysis.stats.rank_agreement` on
every pair of settings and :func:`square` turns one of its statistics into a
settings x settings heatmap; :func:`detection_table` and
:func:`sign_flip_table` list the components detected under only some settings
or changing sign between them. Kept apart from :mod:`patching.analysis.stats`
(one vector or one pair) so neither module grows past a readable size; it
imports from stats, never the reverse, and :mod:`patching.analysis.text`
builds its sentences from these tables. Pure numpy/pandas, like stats.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from patching.analysis.stats import (
    DEFAULT_REL_EPS,
    _as_series,
    _differs_in,
    _finite,
    _natural_key,
    _natural_sorted,
    detect,
    rank_agreement,
)

__all__ = [
    "settings_matrix",
    "square",
    "detection_table",
    "sign_flip_table",
]

_TABLE_COLUMNS = {
    "component",
    "detected_in",
    "missed_in",
    "negative_in",
    "positive_in",
    "strongest_positive",
    "strongest_negative",
    "flip_strength",
}


# ---------------------------------------------------------------- pairs of settings


_LONG_COLUMNS = [
    "setting_a",
    "setting_b",
    "differs_in",
    "n",
    "spearman",
    "kendall",
    "topk_jaccard",
    "sign_flips",
    "sign_flips_detected",
]


def settings_matrix(
    results: Mapping[str, pd.Series | np.ndarray],
    k: int = 10,
    *,
    detect_k: float = 2.0,
    rel_eps: float = DEFAULT_REL_EPS,
) -> pd.DataFrame:
    """:func:`~patching.analysis.stats.rank_agreement` for every unordered pair of settings.

    One row per pair, in the dict's order (a before b); ``differs_in`` names the
    parts of the labels that differ ("corruption,metric"; "" when a label does
    not parse). ``attrs["k"]`` records the top-k used, for captions.
    """
    keys = list(results)
    rows = []
    for a, b in itertools.combinations(keys, 2):
        r = rank_agreement(results[a], results[b], k=k, detect_k=detect_k, rel_eps=rel_eps)
        rows.append({"setting_a": a, "setting_b": b, "differs_in": _differs_in(a, b), **r})
    out = pd.DataFrame(rows, columns=_LONG_COLUMNS)
    out = out.astype({"n": "int64", "sign_flips": "int64", "sign_flips_detected": "int64"})
    for c in ("spearman", "kendall", "topk_jaccard"):
        out[c] = out[c].astype(float)
    out.attrs["k"] = int(k)
    out.attrs["settings"] = keys
    return out


_IDENTITY = {
    "spearman": 1.0,
    "kendall": 1.0,
    "topk_jaccard": 1.0,
    "sign_flips": 0.0,
    "sign_flips_detected": 0.0,
}


def square(
    long_df: pd.DataFrame,
    stat: str,
    diagonal: float | None = None,
    settings: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One statistic of :func:`settings_matrix` as a symmetric settings x
    settings matrix for a heatmap. The diagonal is the statistic's value for a
    setting against itself (1 for correlations and Jaccard, 0 for flip counts,
    NaN for anything else) unless ``diagonal`` is given. ``settings`` fixes the
    order (and includes settings absent from ``long_df``); by default the order
    of first appearance. Missing pairs are NaN.
    """
    if stat not in long_df.columns:
        raise ValueError(f"square: no column {stat!r}; choose one of {', '.join(map(str, long_df.columns))}")
    if settings is None:
        settings = long_df.attrs.get("settings")
    if settings is None:
        seen: dict[str, None] = {}
        for a, b in zip(long_df["setting_a"], long_df["setting_b"]):
            seen.setdefault(a, None)
            seen.setdefault(b, None)
        settings = list(seen)
    settings = list(settings)
    diag = _IDENTITY.get(stat, float("nan")) if diagonal is None else float(diagonal)
    m = pd.DataFrame(np.nan, index=pd.Index(settings, dtype=object), columns=pd.Index(settings, dtype=object))
    for s in settings:
        m.loc[s, s] = diag
    for a, b, v in zip(long_df["setting_a"], long_df["setting_b"], long_df[stat]):
        if a in m.index and b in m.index and a != b:
            m.loc[a, b] = v
            m.loc[b, a] = v
    return m


# ---------------------------------------------------------------- tables


def _frame(results: Mapping[str, pd.Series | np.ndarray]) -> pd.DataFrame:
    """Settings as columns on the union of labels (natural order)."""
    bad = [s for s in results if s in _TABLE_COLUMNS]
    if bad:
        raise ValueError(f"setting label(s) {bad} clash with table columns; rename the setting")
    series = {s: _as_series(v, s) for s, v in results.items()}
    lengths = {len(v) for s, v in results.items() if not isinstance(v, pd.Series)}
    if len(lengths) > 1:
        raise ValueError("effect arrays of different lengths; pass Series indexed by component label")
    union: dict[Any, None] = {}
    for s in series.values():
        for lab in s.index:
            union.setdefault(lab, None)
    index = pd.Index(_natural_sorted(list(union)), dtype=object)
    return pd.DataFrame({s: v.reindex(index) for s, v in series.items()}, index=index)


def _join(items: Sequence[str]) -> str:
    return ", ".join(items)


def _split(cell: Any) -> list[str]:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    return [p.strip() for p in str(cell).split(",") if p.strip()]


def detection_table(results: Mapping[str, pd.Series | np.ndarray], k: float = 2.0) -> pd.DataFrame:
    """Components detected (k-SD rule) under at least one setting but not all.

    Columns: ``component`` (label), one column per setting with its effect,
    ``detected_in``, ``missed_in`` (settings where it was measured but not
    detected; a setting where it has no finite effect is in neither list) and
    ``negative_in`` (settings where it is detected with a negative effect), each
    a ", "-separated list in the settings' order. Each setting is thresholded
    on its own sweep. Rows are sorted by the largest |z| over settings, so the
    clearest disagreements come first.
    """
    frame = _frame(results)
    settings = list(frame.columns)
    dets = {s: detect(frame[s].dropna(), k) for s in settings}
    rows = []
    for lab in frame.index:
        det_in, miss_in, neg_in, zmax = [], [], [], 0.0
        for s in settings:
            d = dets[s]
            if lab not in d.index or not np.isfinite(d.at[lab, "z"]):
                continue
            zmax = max(zmax, abs(float(d.at[lab, "z"])))
            if d.at[lab, "detected"]:
                det_in.append(s)
                if d.at[lab, "sign"] == "negative":
                    neg_in.append(s)
            else:
                miss_in.append(s)
        if det_in and miss_in:
            row = {"component": lab, **{s: frame.at[lab, s] for s in settings}}
            row.update(detected_in=_join(det_in), missed_in=_join(miss_in), negative_in=_join(neg_in), _z=zmax)
            rows.append(row)
    cols = ["component", *settings, "detected_in", "missed_in", "negative_in"]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=float if c in settings else object) for c in cols})
    out = pd.DataFrame(rows)
    out["_k"] = [_natural_key(c) for c in out["component"]]
    out = out.sort_values(["_z", "_k"], ascending=[False, True], kind="stable")
    return out[cols].reset_index(drop=True)


def sign_flip_table(
    results: Mapping[str, pd.Series | np.ndarray],
    k: float = 2.0,
    rel_eps: float = DEFAULT_REL_EPS,
) -> pd.DataFrame:
    """Components positive under some setting and negative under another.

    "Positive"/"negative" means beyond eps = ``rel_eps`` * max|effect| of that
    setting (float noise around 0 is not a flip). Columns: ``component``, one
    effect column per setting, ``positive_in``, ``negative_in``,
    ``detected_in`` (k-SD rule), ``strongest_positive``/``strongest_negative``
    (the settings with the largest effect of each sign, in SD units) and
    ``flip_strength`` = min(largest positive, largest |negative|) effect in SD
    units of each setting: metrics have different scales, and a flip is only as
    convincing as its weaker side. Sorted by ``flip_strength``, largest first.
    """
    frame = _frame(results)
    settings = list(frame.columns)
    eps, scale, dets = {}, {}, {}
    for s in settings:
        x = frame[s].to_numpy(dtype=float)
        v = x[_finite(x)]
        eps[s] = rel_eps * float(np.max(np.abs(v))) if len(v) else 0.0
        sd = float(v.std()) if len(v) else 0.0
        mx = float(np.max(np.abs(v))) if len(v) else 0.0
        scale[s] = sd if sd > 0 else (mx if mx > 0 else 1.0)
        dets[s] = detect(frame[s].dropna(), k)
    rows = []
    for lab in frame.index:
        pos_in, neg_in, det_in = [], [], []
        best_pos, best_neg = (0.0, ""), (0.0, "")
        for s in settings:
            v = frame.at[lab, s]
            if not np.isfinite(v):
                continue
            if v > eps[s]:
                pos_in.append(s)
                if v / scale[s] > best_pos[0]:
                    best_pos = (v / scale[s], s)
            elif v < -eps[s]:
                neg_in.append(s)
                if -v / scale[s] > best_neg[0]:
                    best_neg = (-v / scale[s], s)
            if bool(dets[s].at[lab, "detected"]):
                det_in.append(s)
        if pos_in and neg_in:
            row = {"component": lab, **{s: frame.at[lab, s] for s in settings}}
            row.update(
                positive_in=_join(pos_in),
                negative_in=_join(neg_in),
                detected_in=_join(det_in),
                strongest_positive=best_pos[1],
                strongest_negative=best_neg[1],
                flip_strength=float(min(best_pos[0], best_neg[0])),
            )
            rows.append(row)
    cols = [
        "component",
        *settings,
        "positive_in",
        "negative_in",
        "detected_in",
        "strongest_positive",
        "strongest_negative",
        "flip_strength",
    ]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=float if c in settings or c == "flip_strength" else object) for c in cols})
    out = pd.DataFrame(rows)
    out["_k"] = [_natural_key(c) for c in out["component"]]
    out = out.sort_values(["flip_strength", "_k"], ascending=[False, True], kind="stable")
    return out[cols].reset_index(drop=True)

