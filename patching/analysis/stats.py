"""Statistics for the disagreement page: how much do patching settings agree?

Zhang & Nanda (arXiv 2309.16042) show that the corruption (STR / GN), the
metric (logit difference / probability / KL) and, per Heimersheim & Nanda, the
direction (denoising / noising) change which components a patching sweep
finds. This module compares effect vectors of the *same* components obtained
under different *settings* and turns the comparison into tables and plain
sentences. It is pure numpy/pandas/scipy (no torch, no streamlit), so it can be
tested without a model.

Conventions
-----------
* A **setting** is labelled ``"corruption/metric/direction"`` with an optional
  4th part (``"str/logit_diff/denoise/s1_io"``), see :func:`parse_setting`.
* An **effect vector** is a ``pd.Series`` indexed by component label
  (:func:`component_labels`, e.g. ``"L9H6"``); build one from a tidy result
  with :func:`effect_series`.
* Signs are compared across settings as they are stored, so the engine must
  orient every setting the same way (positive = the component supports the
  behaviour); noising results stored as "patched minus clean" would make every
  important component look like a sign flip against denoising.
* Non-finite effects (NaN, +-inf) count as "not measured": they are left out of
  means, SDs, correlations and counts, never raised on.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_REL_EPS",
    "SETTING_PARTS",
    "component_labels",
    "effect_series",
    "detect",
    "rank_agreement",
    "settings_matrix",
    "square",
    "detection_table",
    "sign_flip_table",
    "parse_setting",
    "summarize",
]

# Two effects have "opposite signs" only if each is further than
# DEFAULT_REL_EPS * max|effect of its setting| from zero. Effects are
# differences of float32 quantities (logits of size ~10-100) that are often
# 10-100x bigger than the effect itself, so float32 noise (~1e-7 relative)
# reaches ~1e-5 of the largest effect; 1e-4 leaves a 10x margin and is still far
# below anything one could read off a heatmap. Scaled per setting because
# metrics have different units (probability vs normalised LD vs KL).
DEFAULT_REL_EPS = 1e-4

# An SD at most this fraction of max|effect| is float noise around a constant:
# treat the vector as constant (nothing detected, z = 0).
_CONST_REL_TOL = 1e-12

# A pair of settings that differ in one factor "disagrees" if a component is
# detected under only one of them, a detected component flips sign, or the
# Spearman correlation is below this.
WEAK_SPEARMAN = 0.5

SETTING_PARTS = ("corruption", "metric", "direction", "variant")

# Metrics whose effects are not floored near zero for negative components
# (logprob and LD are unbounded below; KL differences are not floored at
# -P_corrupt either).
_UNFLOORED_METRICS = ("logit_diff", "kl", "logprob")

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

_MINUS = "\u2212"


# ---------------------------------------------------------------- labels


def component_labels(df: pd.DataFrame, kind: bool | None = None) -> pd.Series:
    """Stable, human-readable labels for the rows of a tidy patching result.

    ``L9H6`` (head), ``L3P5`` (layer x position), ``L9H6P5`` (head x position),
    ``L3`` (a whole layer). These are the keys used to align the same component
    across settings, so they depend only on ``layer``/``head``/``pos`` (NA parts
    are left out; a row with no layer is labelled by its ``component``).

    ``kind``: prefix the component kind (``"mlp:L3P5"``) always (True), never
    (False), or, by default, only on rows whose plain label is shared with a row
    of another kind (e.g. ``mlp`` and ``attn`` outputs of the same layer), so
    that labels are unique whenever the rows are.
    """
    if "layer" not in df.columns:
        raise ValueError("component_labels: the result has no 'layer' column")
    n = len(df)
    empty = pd.Series([pd.NA] * n, index=df.index, dtype=object)
    layer = df["layer"]
    head = df["head"] if "head" in df.columns else empty
    pos = df["pos"] if "pos" in df.columns else empty
    comp = df["component"].astype(object) if "component" in df.columns else None

    base: list[str] = []
    for i, (lay, hd, ps) in enumerate(zip(layer, head, pos)):
        parts = []
        if not pd.isna(lay):
            parts.append(f"L{int(lay)}")
        if not pd.isna(hd):
            parts.append(f"H{int(hd)}")
        if not pd.isna(ps):
            parts.append(f"P{int(ps)}")
        if not parts:
            parts.append(str(comp.iloc[i]) if comp is not None else "?")
        base.append("".join(parts))
    labels = pd.Series(base, index=df.index, dtype=object)
    if comp is None or kind is False:
        return labels
    if kind is True:
        prefix = pd.Series(True, index=df.index)
    else:
        kinds_per_label = pd.DataFrame({"b": base, "c": comp.to_numpy()}).groupby("b")["c"].nunique()
        prefix = pd.Series([kinds_per_label[b] > 1 for b in base], index=df.index)
    return labels.where(~prefix, comp.astype(str) + ":" + labels)


def effect_series(df: pd.DataFrame, metric: str, kind: bool | None = None) -> pd.Series:
    """One metric column of a tidy result as an effect vector indexed by label.

    Raises if two rows share a label (e.g. one row per prompt): average them
    first, because every statistic here assumes one effect per component.
    """
    if metric not in df.columns:
        raise ValueError(f"effect_series: the result has no {metric!r} column")
    labels = component_labels(df, kind=kind)
    dup = labels[labels.duplicated()]
    if len(dup):
        raise ValueError(
            f"effect_series: {len(dup)} duplicate component label(s), e.g. {dup.iloc[0]!r}; "
            "give one row per component (average over prompts first)"
        )
    out = pd.Series(pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan), index=pd.Index(labels, dtype=object))
    out.name = metric
    return out


def _natural_key(label: Any) -> tuple:
    """Sort key that orders L9H6 before L10H0 (digit runs compared as ints)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", str(label)))


def _natural_sorted(labels: Sequence[Any]) -> list[Any]:
    return sorted(labels, key=_natural_key)


# ---------------------------------------------------------------- detection


def _as_series(values: pd.Series | np.ndarray | Sequence[float], name: str = "values") -> pd.Series:
    if isinstance(values, pd.Series):
        s = values
    elif isinstance(values, pd.DataFrame):
        raise TypeError(f"{name}: give one effect vector (a Series), not a DataFrame")
    else:
        arr = np.asarray(values, dtype=float)
        if arr.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D effect vector, got shape {arr.shape}")
        s = pd.Series(arr)
    if s.index.has_duplicates:
        raise ValueError(f"{name}: duplicate component labels, e.g. {s.index[s.index.duplicated()][0]!r}")
    return pd.Series(pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan), index=s.index, name=s.name)


def _finite(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x)


def detect(values: pd.Series | np.ndarray, k: float = 2.0) -> pd.DataFrame:
    """The paper's k-SD rule: detected if |effect - mean| > k * SD.

    Zhang & Nanda call a component detected when its effect lies more than 2 SD
    from the mean effect over all components. The SD is numpy's default
    population SD (ddof=0): the components are the whole population of the
    sweep, not a sample. Consequence: with n finite values max|z| is
    sqrt(n - 1), so k=2 can detect nothing when n <= 5.

    Returns a DataFrame on the input's index with ``detected`` (bool), ``sign``
    ("positive"/"negative" for detected components, by the sign of the effect
    itself as in the paper's "negative heads"; "" otherwise or for an effect of
    exactly 0) and ``z`` (the z-score). Non-finite values are ignored for the
    mean/SD and get z = NaN. A constant vector (SD 0, or SD within float noise
    of 0) detects nothing and gets z = 0, without division warnings. ``attrs``
    carry ``mean``, ``sd``, ``k``, ``lower`` and ``upper`` (the thresholds; NaN
    when nothing can be detected) for drawing threshold lines.
    """
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k >= 0):
        raise ValueError(f"detect: k must be a finite number >= 0, got {k!r}")
    s = _as_series(values)
    x = s.to_numpy(dtype=float)
    n = len(x)
    fin = _finite(x)
    z = np.full(n, np.nan)
    detected = np.zeros(n, dtype=bool)
    mean = sd = float("nan")
    lower = upper = float("nan")
    if fin.any():
        v = x[fin]
        mean = float(v.mean())
        sd = float(v.std())  # ddof=0
        scale = float(np.max(np.abs(v)))
        if sd > 0 and sd > _CONST_REL_TOL * scale:
            z[fin] = (v - mean) / sd
            detected[fin] = np.abs(z[fin]) > k
            lower, upper = mean - k * sd, mean + k * sd
        else:
            z[fin] = 0.0
            sd = 0.0
    sign = np.full(n, "", dtype=object)
    sign[detected & (x > 0)] = "positive"
    sign[detected & (x < 0)] = "negative"
    out = pd.DataFrame({"detected": detected, "sign": sign, "z": z}, index=s.index)
    out.attrs.update(mean=mean, sd=sd, k=float(k), lower=lower, upper=upper)
    return out


# ---------------------------------------------------------------- agreement


def _align(a: Any, b: Any) -> tuple[pd.Series, pd.Series]:
    """Two effect vectors on one label index: Series keep their labels (the
    other side of a Series/array mix borrows them); two arrays get 0..n-1."""
    sa, sb = _as_series(a, "a"), _as_series(b, "b")
    a_is, b_is = isinstance(a, pd.Series), isinstance(b, pd.Series)
    if not (a_is and b_is):
        if len(sa) != len(sb):
            raise ValueError(f"rank_agreement: vectors of different lengths ({len(sa)} vs {len(sb)})")
        idx = sa.index if a_is else sb.index
        sa.index = idx
        sb.index = idx
    return sa, sb


def _topk(labels: Sequence[Any], x: np.ndarray, k: int) -> set:
    """Top-k labels by |effect|; ``labels`` are already in natural order and the
    sort is stable, so ties go to the label that sorts first."""
    order = np.argsort(-np.abs(x), kind="stable")[:k]
    return {labels[i] for i in order}


def _eps(x: np.ndarray, rel_eps: float) -> float:
    v = x[_finite(x)]
    return rel_eps * float(np.max(np.abs(v))) if len(v) else 0.0


def _opposite(x: np.ndarray, y: np.ndarray, ex: float, ey: float) -> np.ndarray:
    return ((x > ex) & (y < -ey)) | ((x < -ex) & (y > ey))


def rank_agreement(
    a: pd.Series | np.ndarray,
    b: pd.Series | np.ndarray,
    k: int = 10,
    *,
    detect_k: float = 2.0,
    rel_eps: float = DEFAULT_REL_EPS,
) -> dict[str, Any]:
    """How similarly two settings rank the same components.

    ``a``/``b``: effect vectors. Two Series are aligned on their common labels
    (``n`` says how many); arrays must have equal length. Components with a
    non-finite effect in either are dropped.

    * ``spearman``, ``kendall``: scipy's spearmanr and kendalltau (tau-b, which
      corrects for ties). NaN, not an exception, when n < 2 or either vector is
      constant (a correlation is undefined there).
    * ``topk_jaccard``: |A & B| / |A | B| for the top-min(k, n) components by
      *absolute* effect: a component matters whether it helps or hurts (the
      paper's negative heads), so sign must not push it out of the top set.
      Ties at the cut are broken by natural label order (L9H6 < L10H0), which
      makes the result deterministic and symmetric in a/b. NaN when n = 0 or a
      vector is all zeros (no ranking to compare).
    * ``sign_flips``: components > eps in one and < -eps in the other, with eps
      = ``rel_eps`` * max|effect| of each vector (see DEFAULT_REL_EPS).
    * ``sign_flips_detected``: those of them detected by the ``detect_k``-SD
      rule in at least one of the two (detection uses each full vector, before
      alignment, since it is a property of a setting's whole sweep).
    """
    if int(k) != k or k < 1:
        raise ValueError(f"rank_agreement: k must be a positive integer, got {k!r}")
    k = int(k)
    sa, sb = _align(a, b)
    # Detection and eps use each full vector: they are properties of a
    # setting's whole sweep, not of the overlap.
    det_a = detect(sa, detect_k)["detected"]
    det_b = detect(sb, detect_k)["detected"]
    ea = _eps(sa.to_numpy(dtype=float), rel_eps)
    eb = _eps(sb.to_numpy(dtype=float), rel_eps)
    common = pd.Index(_natural_sorted(list(sa.index.intersection(sb.index))), dtype=object)
    sa, sb = sa.reindex(common), sb.reindex(common)
    det_a = det_a.reindex(common).to_numpy(dtype=bool)
    det_b = det_b.reindex(common).to_numpy(dtype=bool)

    x, y = sa.to_numpy(dtype=float), sb.to_numpy(dtype=float)
    keep = _finite(x) & _finite(y)
    labels = list(sa.index[keep])
    x, y, det_a, det_b = x[keep], y[keep], det_a[keep], det_b[keep]
    n = len(x)

    spearman = kendall = float("nan")
    if n >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from scipy import stats as _sps  # lazy: scipy.stats costs seconds at import, pages that only detect skip it

            spearman = float(_sps.spearmanr(x, y).statistic)
            kendall = float(_sps.kendalltau(x, y, variant="b").statistic)

    jaccard = float("nan")
    if n > 0 and np.any(x != 0) and np.any(y != 0):
        kk = min(k, n)
        ta, tb = _topk(labels, x, kk), _topk(labels, y, kk)
        jaccard = len(ta & tb) / len(ta | tb)

    flips = _opposite(x, y, ea, eb)
    return {
        "n": int(n),
        "spearman": spearman,
        "kendall": kendall,
        "topk_jaccard": jaccard,
        "sign_flips": int(flips.sum()),
        "sign_flips_detected": int((flips & (det_a | det_b)).sum()),
    }


def parse_setting(label: str) -> dict[str, str] | None:
    """``"str/logit_diff/denoise[/variant...]"`` -> its parts; None if the label
    has fewer than three parts (then nothing can be attributed to a factor)."""
    parts = [p.strip() for p in str(label).split("/")]
    if len(parts) < 3 or not all(parts[:3]):
        return None
    return {
        "corruption": parts[0].lower(),
        "metric": parts[1].lower(),
        "direction": parts[2].lower(),
        "variant": "/".join(parts[3:]),
    }


def _differs_in(a: str, b: str) -> str:
    pa, pb = parse_setting(a), parse_setting(b)
    if pa is None or pb is None:
        return ""
    return ",".join(p for p in SETTING_PARTS if pa[p] != pb[p])


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
    """:func:`rank_agreement` for every unordered pair of settings.

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


# ---------------------------------------------------------------- summary


def _num(x: Any, digits: int = 2) -> str:
    """Fixed decimals with a true minus sign; "n/a" for NaN."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    s = f"{v:.{digits}f}"
    if s.startswith("-"):
        s = _MINUS + s[1:] if float(s) != 0 else s[1:]
    return s


def _eff(x: Any) -> str:
    """An effect with 3 significant digits and an explicit sign."""
    v = float(x)
    if not math.isfinite(v):
        return "n/a"
    s = f"{abs(v):.3g}"
    return (_MINUS if v < 0 else "+") + s if v != 0 else "0"


def _sig(x: float) -> str:
    return f"{x:.2g}"


def _names(items: Sequence[str], limit: int = 3) -> str:
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one}" if n == 1 else f"{n} {many or one + 's'}"


_BASELINE_KEYS = ("p_corrupt", "P_corrupt", "prob_corrupt", "corrupt_prob", "p_corrupt_answer")


_CLEAN_KEYS = ("p_clean", "P_clean", "prob_clean", "clean_prob")


def _p_corrupt(
    baselines: Mapping[str, Any] | None, setting: str, keys: Sequence[str] = _BASELINE_KEYS
) -> float | None:
    """P_corrupt(answer) (or, with ``keys``, another baseline probability) for a
    setting from ``baselines``, looked up as baselines[setting] (a number, used
    only for the default keys, or a dict with a key like "p_corrupt"), then
    baselines[corruption] (same forms), then a top-level key."""
    if not baselines:
        return None
    parsed = parse_setting(setting)
    candidates = [baselines.get(setting)]
    if parsed is not None:
        candidates.append(baselines.get(parsed["corruption"]))
    candidates.append(baselines)
    for c in candidates:
        if c is None:
            continue
        if isinstance(c, (int, float, np.floating)) and c is not baselines:
            if keys is _BASELINE_KEYS:
                return float(c)
            continue
        if isinstance(c, Mapping):
            for key in keys:
                v = c.get(key)
                if isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)):
                    return float(v)
    return None


def _pair_text(row: pd.Series, k_label: str) -> str:
    return (
        f"{row['setting_a']} vs {row['setting_b']} (Spearman {_num(row['spearman'])}, "
        f"{k_label} Jaccard {_num(row['topk_jaccard'])})"
    )


def _differs_text(row: pd.Series) -> str:
    d = row.get("differs_in", None)
    if d is None or (isinstance(d, float) and math.isnan(d)):
        d = _differs_in(row["setting_a"], row["setting_b"])
    parts = [p for p in str(d).split(",") if p]
    if not parts:
        return ""
    return "; they differ in " + " and ".join(parts)


def _detected_sets(detections: pd.DataFrame | None) -> dict[str, set[str]]:
    """setting -> labels detected under it, among the rows of ``detections``."""
    out: dict[str, set[str]] = {}
    if detections is None or len(detections) == 0:
        return out
    for lab, cell in zip(detections["component"], detections["detected_in"]):
        for s in _split(cell):
            out.setdefault(s, set()).add(str(lab))
    return out


def _measured_sets(detections: pd.DataFrame | None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    if detections is None or len(detections) == 0:
        return out
    for lab, d, m in zip(detections["component"], detections["detected_in"], detections["missed_in"]):
        for s in _split(d) + _split(m):
            out.setdefault(s, set()).add(str(lab))
    return out


def _only_in(detections: pd.DataFrame | None, a: str, b: str) -> tuple[list[str], list[str]]:
    """Labels detected under a but measured-and-missed under b, and vice versa."""
    det, meas = _detected_sets(detections), _measured_sets(detections)
    da, db = det.get(a, set()), det.get(b, set())
    ma, mb = meas.get(a, set()), meas.get(b, set())
    only_a = _natural_sorted([c for c in da - db if c in mb])
    only_b = _natural_sorted([c for c in db - da if c in ma])
    return only_a, only_b


def _single_factor_pairs(long_df: pd.DataFrame, factor: str) -> pd.DataFrame:
    if "differs_in" in long_df.columns:
        d = long_df["differs_in"].astype(object)
    else:
        d = pd.Series([_differs_in(a, b) for a, b in zip(long_df["setting_a"], long_df["setting_b"])], index=long_df.index)
    return long_df[d == factor]


def _factor_sentence(
    long_df: pd.DataFrame,
    detections: pd.DataFrame | None,
    factor: str,
    values: tuple[str, str],
) -> tuple[pd.Series, list[str], list[str]] | None:
    """Worst disagreeing pair that differs only in ``factor`` between the two
    ``values``; with the labels detected only under values[0] / values[1]
    (over all such pairs). None if no such pair disagrees."""
    pairs = _single_factor_pairs(long_df, factor)
    hits = []
    only = {values[0]: set(), values[1]: set()}
    for _, row in pairs.iterrows():
        pa, pb = parse_setting(row["setting_a"]), parse_setting(row["setting_b"])
        if {pa[factor], pb[factor]} != set(values):
            continue
        only_a, only_b = _only_in(detections, row["setting_a"], row["setting_b"])
        only[pa[factor]].update(only_a)
        only[pb[factor]].update(only_b)
        rho = row["spearman"]
        weak = bool(np.isfinite(rho) and rho < WEAK_SPEARMAN)
        if only_a or only_b or int(row["sign_flips_detected"]) > 0 or weak:
            hits.append(row)
    if not hits:
        return None
    worst = min(hits, key=lambda r: (r["spearman"] if np.isfinite(r["spearman"]) else math.inf))
    return worst, _natural_sorted(only[values[0]]), _natural_sorted(only[values[1]])


def _prob_floor_sentence(detections: pd.DataFrame | None, baselines: Mapping[str, Any] | None) -> str | None:
    """Pattern (a): detected negative under LD/KL/logprob, missed under prob in
    a setting that differs only in the metric, with a prob effect that is not
    positive (it sits on the floor, not on the other side)."""
    if detections is None or len(detections) == 0:
        return None
    prob_cols = [c for c in detections.columns if (parse_setting(c) or {}).get("metric") == "prob"]
    tol = {}
    for c in prob_cols:
        v = pd.to_numeric(detections[c], errors="coerce").to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        tol[c] = DEFAULT_REL_EPS * float(np.max(np.abs(v))) if len(v) else 0.0
    found: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for _, row in detections.iterrows():
        for s_neg in _split(row["negative_in"]):
            pn = parse_setting(s_neg)
            if pn is None or pn["metric"] not in _UNFLOORED_METRICS:
                continue
            for s_prob in _split(row["missed_in"]):
                pp = parse_setting(s_prob)
                if pp is None or pp["metric"] != "prob" or s_prob not in detections.columns:
                    continue
                if any(pn[p] != pp[p] for p in SETTING_PARTS if p != "metric"):
                    continue
                v = float(row[s_prob])
                if np.isfinite(v) and v <= tol.get(s_prob, 0.0):
                    found.setdefault((s_neg, s_prob), []).append((str(row["component"]), v))
    if not found:
        return None
    # The pair with the most such components; list them.
    (s_neg, s_prob), comps = max(found.items(), key=lambda kv: (len(kv[1]), -list(found).index(kv[0])))
    labels = [c for c, _ in comps]
    first, first_v = comps[0]
    if parse_setting(s_prob)["direction"] == "noise":
        # Noising: effect = P_clean - P_patched >= P_clean - 1 (P_patched <= 1),
        # so the floor is -(1 - P_clean(answer)), not -P_clean.
        pc = _p_corrupt(baselines, s_prob, _CLEAN_KEYS)
        p = 1.0 - pc if pc is not None else None
        name = "(1 \u2212 P_clean(answer))"
    else:
        p = _p_corrupt(baselines, s_prob)
        name = "P_corrupt(answer)"
    floor = f"{_MINUS}{name} (here {_MINUS}{_sig(p)})" if p is not None else f"{_MINUS}{name}"
    verb = "is" if len(labels) == 1 else "are"
    return (
        f"{_names(labels)} {verb} detected as negative under {s_neg} but missed under {s_prob} "
        f"(probability effect of {first}: {_eff(first_v)}): probability cannot fall below {floor}, "
        "so negative components are squeezed towards zero and stay inside the 2-SD band "
        "(Zhang & Nanda \u00a74.2); read negative components from logit_diff or KL."
    )


def summarize(
    long_df: pd.DataFrame,
    detections: pd.DataFrame | None,
    flips: pd.DataFrame | None,
    baselines: Mapping[str, Any] | None = None,
    *,
    max_items: int = 3,
) -> list[str]:
    """Plain-language findings for the disagreement page, built from the tables.

    ``long_df`` from :func:`settings_matrix`, ``detections`` from
    :func:`detection_table`, ``flips`` from :func:`sign_flip_table`.
    ``baselines`` (optional) gives P_corrupt(answer) for the probability
    floor: ``{"str/prob/denoise": {"p_corrupt": 0.03}}``, ``{"str/prob/denoise":
    0.03}``, ``{"str": {"p_corrupt": 0.03}}`` or ``{"p_corrupt": 0.03}``.

    Sentences, in order: the least- and most-agreeing pairs (Spearman, top-k
    Jaccard, which label parts differ); how many components are detected under
    only some settings; the biggest sign flips; then a known mechanism only
    when its pattern is in the data: (a) negative under LD/KL but missed under
    probability in otherwise equal settings -> the -P_corrupt floor; (b) pairs
    differing only in gn vs str that disagree -> GN is off-distribution; (c)
    pairs differing only in denoise vs noise that disagree -> sufficiency vs
    necessity.
    """
    out: list[str] = []
    k = long_df.attrs.get("k") if long_df is not None else None
    k_label = f"top-{k}" if k is not None else "top-k"

    # 1. Least / most agreeing pair.
    if long_df is None or len(long_df) == 0:
        out.append("Fewer than two settings, so there is nothing to compare.")
    else:
        df = long_df.reset_index(drop=True)
        rho = df["spearman"].astype(float)
        jac = df["topk_jaccard"].astype(float)
        if len(df) == 1:
            row = df.iloc[0]
            out.append(f"One pair of settings: {_pair_text(row, k_label)}{_differs_text(row)}.")
        else:
            key_lo = pd.DataFrame({"r": rho.fillna(math.inf), "j": jac.fillna(math.inf), "i": range(len(df))})
            lo = df.loc[key_lo.sort_values(["r", "j", "i"]).index[0]]
            key_hi = pd.DataFrame({"r": rho.fillna(-math.inf), "j": jac.fillna(-math.inf), "i": range(len(df))})
            hi = df.loc[key_hi.sort_values(["r", "j", "i"], ascending=[False, False, True]).index[0]]
            if rho.notna().any() or jac.notna().any():
                out.append(f"Least agreement: {_pair_text(lo, k_label)}{_differs_text(lo)}.")
                out.append(f"Most agreement: {_pair_text(hi, k_label)}{_differs_text(hi)}.")
        undefined = df[rho.isna()]
        if len(undefined):
            names = [f"{a} vs {b}" for a, b in zip(undefined["setting_a"], undefined["setting_b"])]
            out.append(
                f"Rank correlation is undefined for {_names(names, max_items)} "
                "(an effect vector is constant or has fewer than two measured components)."
            )

    # 2. Detected under some settings only.
    if detections is None or len(detections) == 0:
        out.append("No component is detected (2-SD rule) under some settings but missed under others.")
    else:
        items = []
        for _, row in detections.head(max_items).iterrows():
            items.append(f"{row['component']} (detected in {row['detected_in']}; missed in {row['missed_in']})")
        n = len(detections)
        verb = "is" if n == 1 else "are"
        more = f"; {n - max_items} more in the table" if n > max_items else ""
        out.append(
            f"{_plural(n, 'component')} {verb} detected (2-SD rule) under some settings but missed under others: "
            + "; ".join(items)
            + more
            + "."
        )

    # 3. Sign flips.
    if flips is None or len(flips) == 0:
        out.append("No component changes sign between settings (beyond float noise).")
    else:
        n = len(flips)
        verb = "changes" if n == 1 else "change"
        # Flips of components detected nowhere are small effects jittering
        # around zero; lead with the detected ones.
        if "detected_in" in flips.columns:
            det_mask = np.array([bool(_split(c)) for c in flips["detected_in"]], dtype=bool)
        else:
            det_mask = np.ones(n, dtype=bool)
        n_det = int(det_mask.sum())
        if n_det == 0:
            out.append(
                f"{_plural(n, 'component')} {verb} sign between settings, but none of them is detected "
                "(2-SD rule) under any setting: small effects around zero."
            )
        else:
            items = []
            for _, row in flips[det_mask].head(max_items).iterrows():
                sp, sn = row["strongest_positive"], row["strongest_negative"]
                items.append(f"{row['component']} is {_eff(row[sp])} under {sp} but {_eff(row[sn])} under {sn}")
            out.append(
                f"{_plural(n, 'component')} {verb} sign between settings ({n_det} of them detected under at least "
                "one setting). Biggest: " + "; ".join(items) + "."
            )

    # 4. Mechanisms, only when the data show the pattern.
    s = _prob_floor_sentence(detections, baselines)
    if s:
        out.append(s)
    if long_df is not None and len(long_df):
        hit = _factor_sentence(long_df, detections, "corruption", ("gn", "str"))
        if hit:
            row, only_gn, only_str = hit
            only = []
            if only_gn:
                only.append(f"only under gn: {_names(only_gn)}")
            if only_str:
                only.append(f"only under str: {_names(only_str)}")
            detail = f"; detected {'; '.join(only)}" if only else ""
            out.append(
                f"GN vs STR disagree: {row['setting_a']} vs {row['setting_b']} differ only in corruption, "
                f"yet Spearman is {_num(row['spearman'])} with {int(row['sign_flips_detected'])} detected sign flips{detail}. "
                "Gaussian noise can push activations off-distribution (Zhang & Nanda \u00a73.2), so components found "
                "only under GN may be artefacts; prefer STR where it applies."
            )
        hit = _factor_sentence(long_df, detections, "direction", ("denoise", "noise"))
        if hit:
            row, only_den, only_noi = hit
            only = []
            if only_den:
                only.append(f"only when denoising: {_names(only_den)} (sufficient, not necessary)")
            if only_noi:
                only.append(f"only when noising: {_names(only_noi)} (necessary, not sufficient alone)")
            detail = f"; detected {'; '.join(only)}" if only else ""
            out.append(
                f"Denoise vs noise disagree: {row['setting_a']} vs {row['setting_b']} differ only in direction "
                f"(Spearman {_num(row['spearman'])}){detail}. Denoising finds what is sufficient to restore the "
                "behaviour, noising what is necessary for it (Heimersheim & Nanda), so they can legitimately differ: "
                "for an AND of components only noising finds each part, for an OR only denoising does."
            )
    return out
