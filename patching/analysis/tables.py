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
    FLIP_MIN_SD,
    _as_series,
    _differs_in,
    _eps,
    _finite,
    _natural_key,
    _natural_sorted,
    detect,
    is_unsigned,
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
    min_sd: float = FLIP_MIN_SD,
) -> pd.DataFrame:
    """:func:`~patching.analysis.stats.rank_agreement` for every unordered pair of settings.

    One row per pair, in the dict's order (a before b); ``differs_in`` names the
    parts of the labels that differ ("corruption,metric"; "" when a label does
    not parse). ``attrs["k"]`` records the top-k used, for captions. A pair
    with an unsigned setting (:func:`~patching.analysis.stats.is_unsigned`)
    compares magnitudes. The same numbers as calling rank_agreement on each
    pair, computed together: the pairs that share their measured cells share
    one rank matrix (a 36-setting grid in a fraction of a second).
    """
    keys = list(results)
    pairs = list(itertools.combinations(keys, 2))
    rows = _pair_statistics(results, pairs, k, detect_k, rel_eps, min_sd) if pairs else {}
    out = pd.DataFrame([{"setting_a": a, "setting_b": b, "differs_in": _differs_in(a, b), **rows[(a, b)]} for a, b in pairs],
                       columns=_LONG_COLUMNS)
    out = out.astype({"n": "int64", "sign_flips": "int64", "sign_flips_detected": "int64"})
    for c in ("spearman", "kendall", "topk_jaccard"):
        out[c] = out[c].astype(float)
    out.attrs["k"] = int(k)
    out.attrs["settings"] = keys
    return out


def _pair_statistics(results: Mapping[str, Any], pairs: list[tuple[str, str]], k: int, detect_k: float, rel_eps: float,
                     min_sd: float) -> dict[tuple[str, str], dict[str, Any]]:
    from scipy import stats as sps  # lazy: seconds at import

    if int(k) != k or k < 1:
        raise ValueError(f"rank_agreement: k must be a positive integer, got {k!r}")
    frame = _frame(results)
    x = frame.to_numpy(dtype=float).T  # [settings, labels] in natural label order
    pos = {s: i for i, s in enumerate(frame.columns)}
    fin = np.isfinite(x)
    unsigned = {s: is_unsigned(s) for s in frame.columns}
    per_side: dict[tuple[str, bool], tuple[np.ndarray, float]] = {}

    def side(s: str, mag: bool) -> tuple[np.ndarray, float]:
        # Detection and the sign threshold are properties of a setting's whole sweep.
        if (s, mag) not in per_side:
            v = np.abs(x[pos[s]]) if mag else x[pos[s]]
            per_side[(s, mag)] = (detect(v, detect_k)["detected"].to_numpy(dtype=bool), _eps(v, rel_eps, min_sd))
        return per_side[(s, mag)]

    groups: dict[tuple[bytes, bool], list[tuple[str, str]]] = {}
    for a, b in pairs:
        mag = unsigned[a] or unsigned[b]
        groups.setdefault(((fin[pos[a]] & fin[pos[b]]).tobytes(), mag), []).append((a, b))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (key, mag), group in groups.items():
        m = np.frombuffer(key, dtype=bool)
        names = list(dict.fromkeys(s for p in group for s in p))
        v = x[[pos[s] for s in names]][:, m]
        if mag:
            v = np.abs(v)
        n = v.shape[1]
        idx = {s: i for i, s in enumerate(names)}
        const = (np.ptp(v, axis=1) == 0) if n else np.ones(len(names), dtype=bool)
        if n >= 2:
            r = sps.rankdata(v, axis=1)
            r -= r.mean(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                zr = r / np.sqrt((r * r).sum(axis=1, keepdims=True))
            sp = zr @ zr.T
            kd = _kendall_matrix(v) if n <= 1500 else None
        kk = min(int(k), n)
        tops = np.zeros(v.shape, dtype=bool)
        if kk:
            order = np.argsort(-np.abs(v), axis=1, kind="stable")[:, :kk]
            np.put_along_axis(tops, order, True, axis=1)
        for a, b in group:
            i, j = idx[a], idx[b]
            spearman = kendall = float("nan")
            if n >= 2 and not const[i] and not const[j]:
                spearman = float(np.clip(sp[i, j], -1.0, 1.0))
                kendall = float(kd[i, j]) if kd is not None else float(sps.kendalltau(v[i], v[j], variant="b").statistic)
            jaccard = float("nan")
            if n > 0 and np.any(v[i] != 0) and np.any(v[j] != 0):
                jaccard = float((tops[i] & tops[j]).sum() / (tops[i] | tops[j]).sum())
            flips = detected = 0
            if not mag:
                (det_a, ea), (det_b, eb) = side(a, False), side(b, False)
                xa, xb = v[i], v[j]
                f = ((xa > ea) & (xb < -eb)) | ((xa < -ea) & (xb > eb))
                flips, detected = int(f.sum()), int((f & (det_a[m] | det_b[m])).sum())
            out[(a, b)] = {"n": int(n), "spearman": spearman, "kendall": kendall, "topk_jaccard": jaccard,
                           "sign_flips": flips, "sign_flips_detected": detected}
    return out


def _kendall_matrix(v: np.ndarray, budget: int = 32 << 20) -> np.ndarray:
    """Kendall tau-b between every pair of rows of ``v`` [settings, cells]:
    the Gram matrix of the rows' pairwise-sign vectors counts concordant minus
    discordant pairs; ties drop out of the count and of tau-b's normaliser."""
    S, n = v.shape
    iu, ju = np.triu_indices(n, 1)
    g = np.zeros((S, S))
    nz = np.zeros(S)
    step = max(1, budget // max(1, 4 * S))
    for s in range(0, len(iu), step):
        sg = np.sign(v[:, iu[s:s + step]] - v[:, ju[s:s + step]])
        g += sg @ sg.T
        nz += (sg != 0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return g / np.sqrt(nz[:, None] * nz[None, :])


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


def _detections(frame: pd.DataFrame, k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[labels, settings] z, detected and detected-negative by each setting's
    own k-SD rule (an unsigned setting is ranked by magnitude: never negative)."""
    z = np.full(frame.shape, np.nan)
    det = np.zeros(frame.shape, dtype=bool)
    for j, s in enumerate(frame.columns):
        v = frame[s].to_numpy(dtype=float)
        d = detect(np.abs(v) if is_unsigned(s) else v, k)
        z[:, j], det[:, j] = d["z"].to_numpy(), d["detected"].to_numpy(dtype=bool)
    neg = det & (frame.to_numpy(dtype=float) < 0)
    return z, det, neg


def _lists(mask: np.ndarray, settings: list[str]) -> list[str]:
    return [_join([settings[j] for j in np.flatnonzero(row)]) for row in mask]


def detection_table(results: Mapping[str, pd.Series | np.ndarray], k: float = 2.0) -> pd.DataFrame:
    """Components detected (k-SD rule) under at least one setting but not all.

    Columns: ``component`` (label), one column per setting with its effect,
    ``detected_in``, ``missed_in`` (settings where it was measured but not
    detected; a setting where it has no finite effect, e.g. a cell that is
    zero by construction, is in neither list) and ``negative_in`` (settings
    where it is detected with a negative effect), each a ", "-separated list
    in the settings' order. Each setting is thresholded on its own measured
    cells (an unsigned setting, AtP*, on |effect|). Rows are sorted by the
    largest |z| over settings, so the clearest disagreements come first.
    """
    frame = _frame(results)
    settings = list(frame.columns)
    cols = ["component", *settings, "detected_in", "missed_in", "negative_in"]
    z, det, neg = _detections(frame, k)
    measured = np.isfinite(z)
    miss = measured & ~det
    rows = np.flatnonzero(det.any(axis=1) & miss.any(axis=1))
    if not len(rows):
        return pd.DataFrame({c: pd.Series(dtype=float if c in settings else object) for c in cols})
    out = frame.iloc[rows].copy()
    out.insert(0, "component", out.index.to_numpy(dtype=object))
    out["detected_in"] = _lists(det[rows], settings)
    out["missed_in"] = _lists(miss[rows], settings)
    out["negative_in"] = _lists(neg[rows], settings)
    out["_z"] = np.nanmax(np.abs(z[rows]), axis=1)
    out["_k"] = [_natural_key(c) for c in out["component"]]
    out = out.sort_values(["_z", "_k"], ascending=[False, True], kind="stable")
    return out[cols].reset_index(drop=True)


def sign_flip_table(
    results: Mapping[str, pd.Series | np.ndarray],
    k: float = 2.0,
    rel_eps: float = DEFAULT_REL_EPS,
    min_sd: float = FLIP_MIN_SD,
) -> pd.DataFrame:
    """Components positive under some setting and negative under another.

    "Positive"/"negative" means beyond max(``rel_eps`` * max|effect|,
    ``min_sd`` * SD) of that setting (float noise and effects too small to
    matter are not a flip; an unsigned setting, AtP*, has no sign and takes
    no part). Columns: ``component``, one effect column per setting,
    ``positive_in``, ``negative_in``, ``detected_in`` (k-SD rule),
    ``strongest_positive``/``strongest_negative`` (the settings with the
    largest effect of each sign, in SD units) and ``flip_strength`` =
    min(largest positive, largest |negative|) effect in SD units of each
    setting: metrics have different scales, and a flip is only as convincing
    as its weaker side. Sorted by ``flip_strength``, largest first.
    """
    frame = _frame(results)
    settings = list(frame.columns)
    cols = ["component", *settings, "positive_in", "negative_in", "detected_in", "strongest_positive", "strongest_negative", "flip_strength"]
    x = frame.to_numpy(dtype=float)
    eps, scale = np.zeros(len(settings)), np.ones(len(settings))
    signed = np.array([not is_unsigned(s) for s in settings], dtype=bool)
    for j in range(len(settings)):
        v = x[:, j][_finite(x[:, j])]
        eps[j] = _eps(x[:, j], rel_eps, min_sd)
        sd = float(v.std()) if len(v) else 0.0
        mx = float(np.max(np.abs(v))) if len(v) else 0.0
        scale[j] = sd if sd > 0 else (mx if mx > 0 else 1.0)
    _, det, _ = _detections(frame, k)
    with np.errstate(invalid="ignore"):
        pos = (x > eps) & signed
        neg = (x < -eps) & signed
    rows = np.flatnonzero(pos.any(axis=1) & neg.any(axis=1))
    if not len(rows):
        return pd.DataFrame({c: pd.Series(dtype=float if c in settings or c == "flip_strength" else object) for c in cols})
    zs = x[rows] / scale
    best_pos = np.where(pos[rows], zs, -np.inf)
    best_neg = np.where(neg[rows], -zs, -np.inf)
    out = frame.iloc[rows].copy()
    out.insert(0, "component", out.index.to_numpy(dtype=object))
    out["positive_in"] = _lists(pos[rows], settings)
    out["negative_in"] = _lists(neg[rows], settings)
    out["detected_in"] = _lists(det[rows], settings)
    out["strongest_positive"] = [settings[j] for j in best_pos.argmax(axis=1)]
    out["strongest_negative"] = [settings[j] for j in best_neg.argmax(axis=1)]
    out["flip_strength"] = np.minimum(best_pos.max(axis=1), best_neg.max(axis=1)).astype(float)
    out["_k"] = [_natural_key(c) for c in out["component"]]
    out = out.sort_values(["flip_strength", "_k"], ascending=[False, True], kind="stable")
    return out[cols].reset_index(drop=True)
