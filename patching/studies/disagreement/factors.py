"""Which choice changes the answer: the agreement between settings that differ
in exactly one factor (corruption, metric, direction, prompt variant, method),
per factor, with intervals over resamples of the prompts.

For a factor F, the *F pairs* are the pairs of settings that differ in F and
nothing else (:func:`patching.studies.disagreement.layout.factor_pairs`:
str/prob/denoise/s2 vs gn/prob/denoise/s2 is a corruption pair). The factor's
agreement is the mean over its pairs of

* Spearman's ρ between the two settings' effects, and
* the top-k overlap (Jaccard of the k components with the largest |effect|),

both over the cells both settings measure (cells zero by construction are
left out), taken from the agreement table's point values. The interval is the
expanded percentile interval (:func:`patching.analysis.inference.interval`)
of the same mean recomputed on each resample of the prompts (one
draw of prompt weights for every setting, as the settings share prompts). The
lower a factor's agreement, the more that choice changes the ranking; the
difference between the two lowest factors gets its own interval (same
resamples), so "the metric matters most" is said only as far as it holds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from patching.analysis import inference
from patching.grid_stats_request import FACTOR_COLUMNS
from patching.studies.disagreement import layout
from patching.studies.disagreement.robust import GridSamples, pair_samples

#: The factor table's columns.


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


def factor_agreement(gs: GridSamples | None, agreement: pd.DataFrame, k: int, level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per factor that has pairs: the mean Spearman and top-k overlap of its
    pairs (points from ``agreement``, the grid's agreement table over the
    measurement cells) with ``level`` expanded percentile intervals
    (:func:`patching.analysis.inference.interval`) of the same mean over
    ``gs``'s resamples (NaN unless every setting of the factor's pairs has
    per-prompt values), the range over its pairs, and for the lowest factor
    ``gap_to_next`` (the next factor's mean Spearman minus this one's) with
    its interval. Sorted by Spearman, lowest (the choice that changes the
    ranking most) first.

    Also returns the pairs: ``factor, setting_a, setting_b, level_a,
    level_b, spearman, topk_jaccard`` (what each bar averages)."""
    fp = factor_pair_values(agreement)
    if fp.empty:
        return pd.DataFrame(columns=FACTOR_COLUMNS), fp
    sampled = set(gs.settings) if gs is not None else set()
    pairs = list(zip(fp["setting_a"], fp["setting_b"]))
    have = np.array([a in sampled and b in sampled for a, b in pairs])
    sp = jc = None
    if have.any():
        sp_h, jc_h, _, _ = pair_samples(gs, [p for p, h in zip(pairs, have) if h], k)
        sp = np.full((len(pairs), sp_h.shape[1]), np.nan)
        jc = np.full((len(pairs), sp_h.shape[1]), np.nan)
        sp[have], jc[have] = sp_h, jc_h
    n = gs.n_prompts if gs is not None else 0
    rows, means = [], {}
    for f in layout.FACTORS:
        idx = np.flatnonzero(fp["factor"].to_numpy() == f)
        if not len(idx):
            continue
        row = {"factor": f, "n_pairs": len(idx)}
        full = sp is not None and bool(have[idx].all())  # an interval only when every pair of the factor was resampled
        for stat, samples in (("spearman", sp), ("topk_jaccard", jc)):
            x = fp[stat].to_numpy(dtype=float)[idx]
            row[stat] = float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
            row[f"{stat}_min"], row[f"{stat}_max"] = float(np.nanmin(x)), float(np.nanmax(x))
            m = _mean_rows(samples[idx]) if full else None
            lo, hi = inference.interval(m, n, level) if m is not None else (np.nan, np.nan)
            row[f"{stat}_lo"], row[f"{stat}_hi"] = float(lo), float(hi)
            if stat == "spearman":
                means[f] = m
        rows.append(row)
    out = pd.DataFrame(rows).sort_values("spearman", kind="stable").reset_index(drop=True)
    out["gap_to_next"] = out["gap_lo"] = out["gap_hi"] = float("nan")
    if len(out) >= 2:
        first, second = out.at[0, "factor"], out.at[1, "factor"]
        out.at[0, "gap_to_next"] = float(out.at[1, "spearman"] - out.at[0, "spearman"])
        if means.get(first) is not None and means.get(second) is not None:
            lo, hi = inference.interval(means[second] - means[first], n, level)
            out.at[0, "gap_lo"], out.at[0, "gap_hi"] = float(lo), float(hi)
    return out[FACTOR_COLUMNS], fp


def _mean_rows(x: np.ndarray) -> np.ndarray:
    """The mean over pairs (axis 0) on each resample; NaN on a resample
    that any pair dropped (its values were not finite)."""
    ok = np.isfinite(x).all(0)
    return np.where(ok, np.where(np.isfinite(x), x, 0.0).mean(axis=0), np.nan)
