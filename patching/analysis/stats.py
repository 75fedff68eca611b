"""Statistics for the disagreement page: how much do patching settings agree?

Zhang & Nanda (arXiv 2309.16042) show that the corruption (STR / GN), the
metric (logit difference / probability / KL) and, per Heimersheim & Nanda, the
direction (denoising / noising) change which components a patching sweep
finds. This module holds the numbers for one effect vector or one pair of
them: labels, the k-SD detection rule and rank agreement. The multi-setting
tables live in :mod:`patching.analysis.tables` and the plain-language sentences
in :mod:`patching.analysis.text`; both import from here, never the reverse, so
the numbers can be read (and tested) without the English. It is pure
numpy/pandas/scipy (no torch, no streamlit), so it can be tested without a
model.

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

import math
import re
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_REL_EPS",
    "FLIP_MIN_SD",
    "SETTING_PARTS",
    "component_labels",
    "effect_series",
    "detect",
    "rank_agreement",
    "parse_setting",
]

# Two effects have "opposite signs" only if each is further than
# DEFAULT_REL_EPS * max|effect of its setting| from zero. Effects are
# differences of float32 quantities (logits of size ~10-100) that are often
# 10-100x bigger than the effect itself, so float32 noise (~1e-7 relative)
# reaches ~1e-5 of the largest effect; 1e-4 leaves a 10x margin and is still far
# below anything one could read off a heatmap. Scaled per setting because
# metrics have different units (probability vs normalised LD vs KL).
DEFAULT_REL_EPS = 1e-4

# A sign flip is only a claim about components that matter under both
# settings: each effect must be at least FLIP_MIN_SD population SDs (over
# that setting's measured components) away from zero, on opposite sides
# (+0.001 against -0.002 is not a flip anyone should read). 0 keeps only the
# float-noise margin above.
FLIP_MIN_SD = 1.0

# An SD at most this fraction of max|effect| is float noise around a constant:
# treat the vector as constant (nothing detected, z = 0).
_CONST_REL_TOL = 1e-12

# A pair of settings that differ in one factor "disagrees" if a component is
# detected under only one of them, a detected component flips sign, or the
# Spearman correlation is below this.
WEAK_SPEARMAN = 0.5

SETTING_PARTS = ("corruption", "metric", "direction", "variant", "method")


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


def _eps(x: np.ndarray, rel_eps: float, min_sd: float = 0.0) -> float:
    """How far from 0 an effect must be to have a sign: ``rel_eps`` ·
    max|effect| (float noise) or ``min_sd`` population SDs, the larger."""
    v = x[_finite(x)]
    return max(rel_eps * float(np.max(np.abs(v))), min_sd * float(v.std())) if len(v) else 0.0


def _opposite(x: np.ndarray, y: np.ndarray, ex: float, ey: float) -> np.ndarray:
    return ((x > ex) & (y < -ey)) | ((x < -ex) & (y > ey))


def rank_agreement(
    a: pd.Series | np.ndarray,
    b: pd.Series | np.ndarray,
    k: int = 10,
    *,
    detect_k: float = 2.0,
    rel_eps: float = DEFAULT_REL_EPS,
    min_sd: float = FLIP_MIN_SD,
    magnitudes: bool = False,
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
      = max(``rel_eps`` * max|effect|, ``min_sd`` * SD) of each vector (see
      DEFAULT_REL_EPS and FLIP_MIN_SD).
    * ``magnitudes``: compare |a| with |b| (a setting whose values estimate
      |effect|, AtP*): the ranks are of magnitudes and nothing can flip sign.
    * ``sign_flips_detected``: those of them detected by the ``detect_k``-SD
      rule in at least one of the two (detection uses each full vector, before
      alignment, since it is a property of a setting's whole sweep).
    """
    if int(k) != k or k < 1:
        raise ValueError(f"rank_agreement: k must be a positive integer, got {k!r}")
    k = int(k)
    sa, sb = _align(a, b)
    if magnitudes:
        sa, sb = sa.abs(), sb.abs()
    # Detection and eps use each full vector: they are properties of a
    # setting's whole sweep, not of the overlap.
    det_a = detect(sa, detect_k)["detected"]
    det_b = detect(sb, detect_k)["detected"]
    ea = _eps(sa.to_numpy(dtype=float), rel_eps, min_sd)
    eb = _eps(sb.to_numpy(dtype=float), rel_eps, min_sd)
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

    flips = _opposite(x, y, ea, eb) & (not magnitudes)
    return {
        "n": int(n),
        "spearman": spearman,
        "kendall": kendall,
        "topk_jaccard": jaccard,
        "sign_flips": int(flips.sum()),
        "sign_flips_detected": int((flips & (det_a | det_b)).sum()),
    }


def parse_setting(label: str) -> dict[str, str] | None:
    """``"str/logit_diff/denoise[/variant...][@method]"`` -> its parts; None if
    the label has fewer than three parts (then nothing can be attributed to a
    factor). No ``@method`` means exact patching."""
    text, _, method = str(label).partition("@")
    parts = [p.strip() for p in text.split("/")]
    if len(parts) < 3 or not all(parts[:3]):
        return None
    return {
        "corruption": parts[0].lower(),
        "metric": parts[1].lower(),
        "direction": parts[2].lower(),
        "variant": "/".join(parts[3:]),
        "method": method.strip().lower() or "exact",
    }


def is_unsigned(setting: str) -> bool:
    """Whether a setting's values are magnitudes (``@atp_star``: AtP*'s
    GradDrop estimates |effect|), kept out of every sign statistic."""
    p = parse_setting(setting)
    from patching.results import UNSIGNED_METHODS

    return p is not None and p["method"] in UNSIGNED_METHODS


def _differs_in(a: str, b: str) -> str:
    pa, pb = parse_setting(a), parse_setting(b)
    if pa is None or pb is None:
        return ""
    return ",".join(p for p in SETTING_PARTS if pa[p] != pb[p])
