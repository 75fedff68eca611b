"""Inference over prompts: the interval every statistic uses, the paired
sign-flip test, Benjamini–Hochberg q-values, the Spearman–Brown correction,
and whether a grid has enough prompts for its intervals to be trusted.

Pure numpy (no torch, no streamlit, no scipy at import).

**Intervals: the expanded percentile bootstrap** (Hesterberg 2015, "What
teachers should know about the bootstrap", §4.2). A plain percentile interval
over n prompts is too narrow: the bootstrap spread is the plug-in SD, too small
by sqrt((n-1)/n), and its tails are normal where the truth is t_{n-1}-like, so
at n = 8 a nominal 95 % interval covers ~85 %. The expanded interval takes the
bootstrap quantiles at α'/2 and 1 − α'/2 with
α'/2 = Φ(−sqrt(n/(n−1)) · t_{n−1, 1−α/2}): the width of a t interval, the
skew (and the bias) of the bootstrap distribution. It was chosen by the
coverage simulation in :mod:`patching.analysis.coverage` over the percentile,
BCa and t-on-bootstrap-SE intervals (docs/statistics.md has the table).

**Tests: the paired sign-flip permutation test**, as TransformerLens 4.3's
``utilities.statistics.sign_flip_permutation_pvalue`` (behind
``PatchingResult.permutation_pvalue``) computes it: under the null every
per-prompt difference is symmetric about 0, so each of the 2^n sign patterns
is equally likely; with n <= 12 all patterns are enumerated and p = hits / 2^n
(the observed pattern counts), above that random patterns and p = (hits + 1)
/ (patterns + 1); a null mean within a relative 100·eps of the observed one
counts as a hit. Two-sided: |null| >= |observed|. Above 12 prompts a test
whose p is clearly not small after 199 (then 1,999) patterns stops there
(sequential Monte Carlo, Besag & Clifford 1991); the rest use 9,999, the
resolution Benjamini–Hochberg needs.
"""

from __future__ import annotations

import functools
import itertools
import math
from statistics import NormalDist

import numpy as np

__all__ = [
    "INTERVAL_METHOD",
    "DEFAULT_FDR",
    "EXACT_MAX_N",
    "MIN_PROMPTS",
    "expanded_level",
    "interval",
    "sign_flip_pvalues",
    "bh_qvalues",
    "spearman_brown",
    "significance_allowed",
    "coverage_sentence",
]

#: How every interval in Patchboard is computed from the bootstrap resamples.
INTERVAL_METHOD = "expanded percentile bootstrap (Hesterberg 2015)"
#: Benjamini–Hochberg's false discovery rate by default.
DEFAULT_FDR = 0.05
#: Up to this many prompts the sign-flip test enumerates every pattern (TransformerLens's default).
EXACT_MAX_N = 12
#: Random sign patterns above EXACT_MAX_N (at most; see STAGES).
N_PERMUTATIONS = 9999
#: The sequential stages: after each, a test with at least REFINE_HITS
#: patterns as extreme as its data stops (its p is at least ~20 / stage, and
#: known to within a few per cent of itself); the others go on, up to N_PERMUTATIONS.
STAGES = (199, 1999)
REFINE_HITS = 20

#: The fewest prompts at which the coverage simulation
#: (:mod:`patching.analysis.coverage`, docs/statistics.md) finds the nominal 95 %
#: interval covering at least 93 % for each kind of statistic, on synthetic
#: per-prompt effects shaped like the shipped demo's (skewed, heavy-tailed).
#: "spearman": never up to 64 prompts (None): a rank correlation over all
#: components is biased by every component's noise (attenuated, or inflated by
#: noise the settings share through their prompts), so its interval misses
#: the population value; compare settings with the noise floor instead.
#: "floor" is the noise-floor test's (its false-positive rate on settings that
#: measure the same thing stays under its level from 8 prompts on;
#: tests/unit/studies/test_disagreement_stats.py). Below it the pages say so
#: and attach no "significant" label.
MIN_PROMPTS: dict[str, int | None] = {"effect": 32, "logit_diff": 32, "spearman": None, "floor": 8}

_NORMAL = NormalDist()


def _t_quantile(p: float, df: int) -> float:
    """Student t quantile (scipy, imported here only: it costs seconds at import)."""
    from scipy import stats as sps

    return float(sps.t.ppf(p, df))


def expanded_level(n: int, ci: float = 0.95) -> float:
    """The lower tail α'/2 of Hesterberg's expanded percentile interval for n
    prompts: Φ(−sqrt(n/(n−1)) · t_{n−1, (1+ci)/2}); the plain (1 − ci)/2 when n < 2."""
    if not 0 < ci < 1:
        raise ValueError("ci must be between 0 and 1")
    if n < 2:
        return (1 - ci) / 2
    return _NORMAL.cdf(-math.sqrt(n / (n - 1)) * _t_quantile((1 + ci) / 2, n - 1))


def interval(boot: np.ndarray, n: int, ci: float = 0.95, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the expanded percentile interval from bootstrap draws along
    ``axis`` (non-finite draws are left out; all-NaN gives NaN)."""
    import warnings

    a = expanded_level(n, ci)
    x = np.asarray(boot, dtype=float)
    fin = np.isfinite(x)
    if fin.all():  # the common case, and much faster than nanquantile
        lo, hi = np.quantile(x, [a, 1 - a], axis=axis)
        return lo, hi
    x = np.where(fin, x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(x, a, axis=axis), np.nanquantile(x, 1 - a, axis=axis)


# ---------------------------------------------------------------- sign-flip test


@functools.lru_cache(maxsize=16)
def _signs(n: int) -> np.ndarray:
    """Every sign pattern of n prompts, [2^n, n], in TransformerLens's order."""
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)))


def _hits(null: np.ndarray, observed: np.ndarray, alternative: str) -> np.ndarray:
    tol = np.abs(observed) * (100 * np.finfo(np.float64).eps)
    if alternative == "two-sided":
        hit = np.abs(null) >= np.abs(observed) - tol
    elif alternative == "greater":
        hit = null >= observed - tol
    else:
        hit = null <= observed + tol
    return hit.sum(axis=-1)


def sign_flip_pvalues(d: np.ndarray, alternative: str = "two-sided", exact_max_n: int = EXACT_MAX_N,
                      n_permutations: int = N_PERMUTATIONS, seed: int = 0, chunk: int = 2048) -> np.ndarray:
    """Per row of ``d`` ([m, n] per-prompt differences), the sign-flip
    permutation p-value that their mean is 0 (TransformerLens's convention,
    see the module docstring). Rows with a non-finite value get NaN. The
    random patterns (n > ``exact_max_n``) are one seeded set shared by every row."""
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    m, n = d.shape
    out = np.full(m, np.nan)
    ok = np.isfinite(d).all(axis=1)
    if n < 1 or not ok.any():
        return out
    x = d[ok]
    observed = x.mean(axis=1, keepdims=True)
    if n <= exact_max_n:
        signs = _signs(n)
        hits = np.concatenate([_hits(x[i:i + chunk] @ signs.T / n, observed[i:i + chunk], alternative)
                               for i in range(0, len(x), chunk)])
        out[ok] = hits / signs.shape[0]
        return out
    # Seeded random patterns, shared by every row. A row whose p is clearly not small after a stage stops
    # there (Besag & Clifford's sequential Monte Carlo p-value); the others go on to n_permutations, the
    # resolution Benjamini-Hochberg needs. p = (hits + 1) / (patterns used + 1).
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(n_permutations, n)) * 2.0 - 1.0
    hits = np.zeros(len(x))
    used = np.zeros(len(x))
    rows, done = np.arange(len(x)), 0
    for stop in sorted({min(s, n_permutations) for s in STAGES} | {n_permutations}):
        pats = signs[done:stop]
        for i in range(0, len(rows), chunk):
            r = rows[i:i + chunk]
            hits[r] += _hits(x[r] @ pats.T / n, observed[r], alternative)
        used[rows] = stop
        done = stop
        rows = rows[hits[rows] < REFINE_HITS]  # the others' p is known well enough
        if not len(rows):
            break
    out[ok] = (hits + 1.0) / (used + 1.0)
    return out


# ---------------------------------------------------------------- false discovery rate


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values): q_(i) =
    min_{j >= i} p_(j) · m / j over the m finite p-values, capped at 1; a
    hypothesis is significant at FDR q when its q-value is <= q. NaN stays NaN
    (and is not counted in m)."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if not m:
        return q
    v = p[ok]
    order = np.argsort(v, kind="stable")
    scaled = v[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    q[ok] = out
    return q


# ---------------------------------------------------------------- reliability


def spearman_brown(r: np.ndarray | float) -> np.ndarray | float:
    """The Spearman–Brown prophecy for doubling: a correlation between two
    halves of the prompts, r, predicts 2r / (1 + r) between two full sets."""
    r = np.asarray(r, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(r > -1, 2 * r / (1 + r), np.nan)
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------- enough prompts?


def significance_allowed(n: int, statistic: str = "effect") -> bool:
    """Whether ``n`` prompts are enough for ``statistic``'s 95 % intervals to
    cover (:data:`MIN_PROMPTS`: "effect" for a component's effect under
    prob/logprob/kl and for the disagreement tests, "logit_diff" for the
    normalised logit difference, "spearman" for rank agreement). Below it a
    page shows its intervals but attaches no "significant" label."""
    if statistic not in MIN_PROMPTS:
        raise ValueError(f"statistic must be one of {', '.join(MIN_PROMPTS)}")
    need = MIN_PROMPTS[statistic]
    return need is not None and int(n) >= need


def coverage_sentence(n: int, statistic: str = "effect") -> str | None:
    """The page's sentence when ``n`` prompts are too few (None when enough)."""
    if significance_allowed(n, statistic):
        return None
    need = MIN_PROMPTS[statistic]
    if need is None:
        return ("A rank correlation over all components is pulled by every component's noise, so its 95 % interval misses the "
                "agreement the settings would show on unlimited prompts more than 7 % of the time at every size simulated "
                "(up to 64 prompts): read it as a description, and tell real disagreement from noise with the noise floor.")
    return (f"With {n} prompts the 95 % intervals are too optimistic: on synthetic effects shaped like real ones they cover "
            f"the truth less than 93 % of the time below {need} prompts, so nothing here is labelled significant. "
            f"Read the intervals as rough; compute with at least {need} pairs for tests you can report.")
