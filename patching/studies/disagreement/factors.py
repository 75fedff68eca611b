"""Which choice changes the answer: the agreement between settings that differ
in exactly one factor (corruption, metric, direction, prompt variant, method),
per factor, with intervals over resamples of the prompts.

For a factor F, the *F pairs* are the pairs of settings that differ in F and
nothing else (:func:`patching.studies.disagreement.layout.factor_pairs`:
str/prob/denoise/s2 vs gn/prob/denoise/s2 is a corruption pair). The factor's
agreement is the mean over its pairs of

* Spearman's ρ between the two settings' effects, and
* the top-k overlap (Jaccard of the k components with the largest |effect|),

both over the measurement cells only (cells zero by construction are left
out, :attr:`patching.studies.disagreement.robust.GridSamples.valid`), taken
from the agreement table's point values. The interval is the percentile
interval of the same mean recomputed on each resample of the prompts (one
draw of prompt weights for every setting, as the settings share prompts). The
lower a factor's agreement, the more that choice changes the ranking; the
difference between the two lowest factors gets its own interval (same
resamples), so "the metric matters most" is said only as far as it holds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from patching.studies.disagreement import layout
from patching.studies.disagreement.robust import GridSamples, _jaccard_rows, _ranks, _spearman_rows, _topk_masks, _zscore

#: The factor table's columns.
FACTOR_COLUMNS = ["factor", "n_pairs", "spearman", "spearman_lo", "spearman_hi", "spearman_min", "spearman_max",
                  "topk_jaccard", "topk_jaccard_lo", "topk_jaccard_hi", "topk_jaccard_min", "topk_jaccard_max",
                  "gap_to_next", "gap_lo", "gap_hi"]


def pair_samples(gs: GridSamples, pairs: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Spearman and top-k Jaccard of every pair in ``pairs`` (setting_a,
    setting_b) on every resample, over the measurement cells: two
    [pairs, B] arrays (NaN where a resample's ranks are constant)."""
    v = gs.valid
    kk = max(1, min(int(k), int(v.sum())))
    used = list(dict.fromkeys(list(pairs["setting_a"]) + list(pairs["setting_b"])))
    boot = {s: gs.boot[s][v].T for s in used}  # [B, cells]
    ranks = {s: _zscore(_ranks(b)) for s, b in boot.items()}
    tops = {s: _topk_masks(b, kk) for s, b in boot.items()}
    n_boot = next(iter(boot.values())).shape[0] if boot else 0
    sp = np.full((len(pairs), n_boot), np.nan)
    jc = np.full((len(pairs), n_boot), np.nan)
    for i, (a, b) in enumerate(zip(pairs["setting_a"], pairs["setting_b"])):
        sp[i] = _spearman_rows(ranks[a], ranks[b])
        jc[i] = _jaccard_rows(tops[a], tops[b])
    return sp, jc


def factor_pair_values(agreement: pd.DataFrame) -> pd.DataFrame:
    """The pairs of the agreement table's settings that differ in one factor
    (:func:`patching.studies.disagreement.layout.factor_pairs`) with their
    ``spearman`` and ``topk_jaccard`` (what each factor's bar averages)."""
    settings = list(dict.fromkeys(list(agreement["setting_a"]) + list(agreement["setting_b"])))
    fp = layout.factor_pairs(settings)
    if fp.empty:
        return fp.assign(spearman=pd.Series(dtype=float), topk_jaccard=pd.Series(dtype=float))
    point = agreement.set_index(["setting_a", "setting_b"])[["spearman", "topk_jaccard"]]
    both = pd.concat([point, point.rename_axis(["setting_b", "setting_a"]).reorder_levels([1, 0])])
    vals = both.loc[list(zip(fp["setting_a"], fp["setting_b"]))].to_numpy(dtype=float)
    return fp.assign(spearman=vals[:, 0], topk_jaccard=vals[:, 1])


def _q(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if len(x) else float("nan")


def factor_agreement(gs: GridSamples | None, agreement: pd.DataFrame, k: int, level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per factor that has pairs: the mean Spearman and top-k overlap of its
    pairs (points from ``agreement``, the grid's agreement table over the
    measurement cells) with ``level`` percentile intervals from ``gs``'s
    resamples (NaN without per-prompt values, ``gs`` None), the range over
    its pairs, and for the lowest factor ``gap_to_next`` (the next factor's
    mean Spearman minus this one's) with its interval. Sorted by Spearman,
    lowest (the choice that changes the ranking most) first.

    Also returns the pairs: ``factor, setting_a, setting_b, level_a,
    level_b, spearman, topk_jaccard`` (what each bar averages)."""
    fp = factor_pair_values(agreement)
    if fp.empty:
        return pd.DataFrame(columns=FACTOR_COLUMNS), fp
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    sp, jc = pair_samples(gs, fp, k) if gs is not None else (None, None)
    rows, means = [], {}
    for f in layout.FACTORS:
        idx = np.flatnonzero(fp["factor"].to_numpy() == f)
        if not len(idx):
            continue
        row = {"factor": f, "n_pairs": len(idx)}
        for stat, samples in (("spearman", sp), ("topk_jaccard", jc)):
            x = fp[stat].to_numpy(dtype=float)[idx]
            row[stat] = float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
            row[f"{stat}_min"], row[f"{stat}_max"] = float(np.nanmin(x)), float(np.nanmax(x))
            m = _nanmean_rows(samples[idx]) if samples is not None else None
            row[f"{stat}_lo"], row[f"{stat}_hi"] = (_q(m, lo_q), _q(m, hi_q)) if m is not None else (float("nan"), float("nan"))
            if stat == "spearman":
                means[f] = m
        rows.append(row)
    out = pd.DataFrame(rows).sort_values("spearman", kind="stable").reset_index(drop=True)
    out["gap_to_next"] = out["gap_lo"] = out["gap_hi"] = float("nan")
    if len(out) >= 2:
        first, second = out.at[0, "factor"], out.at[1, "factor"]
        out.at[0, "gap_to_next"] = float(out.at[1, "spearman"] - out.at[0, "spearman"])
        if means.get(first) is not None:
            d = means[second] - means[first]
            out.at[0, "gap_lo"], out.at[0, "gap_hi"] = _q(d, lo_q), _q(d, hi_q)
    return out[FACTOR_COLUMNS], fp


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """The mean over pairs (axis 0) on each resample, NaN pairs left out."""
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok.any(0), np.where(ok, x, 0.0).sum(0) / ok.sum(0), np.nan)
