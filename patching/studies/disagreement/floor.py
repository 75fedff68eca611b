"""The noise floor: how well a setting agrees with itself, and whether two
settings agree less than that.

A setting's effects on n prompts are a noisy copy of its effects on all
prompts it could be run on; two noisy copies of the *same* setting do not
agree perfectly either. The floor measures that, on a construction the
cross-setting agreement shares:

* :data:`FLOOR_SPLITS` seeded random splits of the prompts into two disjoint
  halves of ⌊n/2⌋; on each, setting a's effects on one half against a's on
  the other (within), and a on one half against b on the other, averaged
  with b against a (cross): both numbers pair disjoint prompts, so neither
  gains from noise the two halves share;
* the split-half Spearman correlations are averaged over the splits and
  Spearman–Brown corrected to the full n (2r / (1 + r)): ``floor_a``,
  ``floor_b`` and ``cross``;
* if a and b rank the components the same way, cross equals the geometric
  mean of the floors (noise only attenuates); ``floor_gap`` =
  sqrt(floor_a · floor_b) − cross, and a one-sided test of floor_gap > 0
  (t on its delete-a-group jackknife standard error over :data:`FLOOR_GROUPS`
  groups of prompts, t_{G−1}) gives ``floor_p``; Benjamini–Hochberg across
  the pairs gives ``floor_q``. The floors' and the gap's intervals are
  jackknife t intervals (each jackknife replicate averages :data:`JACK_SPLITS`
  splits of the prompts it keeps).

The floors read the cells both settings measure. Settings without
per-prompt values (attribution estimates) have no floor.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import pandas as pd

from patching.analysis import inference
from patching.grid_stats_request import FLOOR_COLUMNS
from patching.studies.disagreement.robust import GridSamples, mask_groups, zranks

#: Random half splits behind each floor.
FLOOR_SPLITS = 50
#: Groups of prompts left out in turn for the jackknife (leave-one-out when n is smaller).
FLOOR_GROUPS = 8
#: Half splits behind each jackknife replicate (fewer than the point's: their
#: split-to-split noise only widens the standard error, never narrows it).
JACK_SPLITS = 20



def _half_weights(n: int, splits: int, rng: np.random.Generator, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[splits, n] weights of two disjoint random halves of the prompts in ``keep``."""
    avail = np.flatnonzero(keep)
    h = len(avail) // 2
    w1, w2 = np.zeros((splits, n)), np.zeros((splits, n))
    for k in range(splits):
        p = rng.permutation(avail)
        w1[k, p[:h]] = 1.0 / h
        w2[k, p[h:2 * h]] = 1.0 / h
    return w1, w2


def _groups(n: int, g: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    return [perm[i::g] for i in range(min(g, n))]


def _jack(theta: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Delete-a-group jackknife standard errors: ``theta`` [G, ...]."""
    g = theta.shape[0]
    with np.errstate(invalid="ignore"):
        return np.sqrt((g - 1) / g * ((theta - theta.mean(axis=0)) ** 2).sum(axis=0))


def noise_floors(gs: GridSamples, pairs: Sequence[tuple[str, str]] | None = None, ci: float = 0.95,
                 splits: int = FLOOR_SPLITS, groups: int = FLOOR_GROUPS, seed: int = 0) -> pd.DataFrame:
    """Per pair of settings: :data:`FLOOR_COLUMNS` (see the module docstring).
    NaN when n < 4 (halves of fewer than two prompts)."""
    pairs = list(pairs or itertools.combinations(gs.settings, 2))
    n = gs.n_prompts
    cols = {c: np.full(len(pairs), np.nan) for c in FLOOR_COLUMNS}

    def frame() -> pd.DataFrame:
        cols["floor_q"] = inference.bh_qvalues(cols["floor_p"])
        return pd.DataFrame({"setting_a": [a for a, _ in pairs], "setting_b": [b for _, b in pairs], **cols})

    if n < 4 or not pairs:
        return frame()
    rng = np.random.default_rng(seed)
    parts = _groups(n, groups, rng)
    G = len(parts)
    w1, w2 = [], []
    jack = min(splits, JACK_SPLITS)
    for i, keep in enumerate([np.ones(n, dtype=bool)] + [~np.isin(np.arange(n), p) for p in parts]):
        a, b = _half_weights(n, splits if i == 0 else jack, rng, keep)
        w1.append(a)
        w2.append(b)
    W1, W2 = np.concatenate(w1), np.concatenate(w2)  # [splits + G * jack, n]
    which = np.concatenate([np.zeros(splits, dtype=int)] + [np.full(jack, g + 1) for g in range(G)])
    tq = inference._t_quantile((1 + ci) / 2, G - 1) if G > 1 else np.nan
    index = {p: i for i, p in enumerate(pairs)}
    se = np.full(len(pairs), np.nan)
    for mask, group in mask_groups(gs, pairs).values():
        if mask.sum() < 3:
            continue
        names = list(dict.fromkeys(s for p in group for s in p))
        pp = np.stack([gs.per_prompt[s][mask] for s in names])  # [S, cells, n]
        gap = np.stack([gs.gap[s] for s in names])  # [S, n]: a ratio of means is recomputed on each half
        with np.errstate(invalid="ignore", divide="ignore"):
            z1 = zranks(((pp @ W1.T) / (gap @ W1.T)[:, None, :]).transpose(0, 2, 1).astype(np.float32))  # [S, R, cells]
            z2 = zranks(((pp @ W2.T) / (gap @ W2.T)[:, None, :]).transpose(0, 2, 1).astype(np.float32))
        per_split = np.matmul(z1.transpose(1, 0, 2), z2.transpose(1, 2, 0)).astype(np.float64)  # [R, S, S]: a on half 1, b on half 2
        r = np.stack([per_split[which == g].mean(axis=0) for g in range(1 + G)])  # [1 + G, S, S]
        within = inference.spearman_brown(np.diagonal(r, axis1=1, axis2=2))  # [1 + G, S]
        cross = inference.spearman_brown((r + r.transpose(0, 2, 1)) / 2)  # [1 + G, S, S]
        with np.errstate(invalid="ignore"):
            geo = np.sqrt(np.where((within[:, :, None] > 0) & (within[:, None, :] > 0), within[:, :, None] * within[:, None, :], np.nan))
        gap = geo - cross
        se_w, se_g = _jack(within[1:], within[0]), _jack(gap[1:], gap[0])
        pos = {s: i for i, s in enumerate(names)}
        for a, b in group:
            i, j, row = pos[a], pos[b], index[(a, b)]
            g0, sg = gap[0, i, j], se_g[i, j]
            vals = {"floor_a": within[0, i], "floor_a_lo": within[0, i] - tq * se_w[i], "floor_a_hi": within[0, i] + tq * se_w[i],
                    "floor_b": within[0, j], "floor_b_lo": within[0, j] - tq * se_w[j], "floor_b_hi": within[0, j] + tq * se_w[j],
                    "cross": cross[0, i, j], "floor_gap": g0, "floor_gap_lo": g0 - tq * sg, "floor_gap_hi": g0 + tq * sg}
            se[row] = sg
            for c, v in vals.items():
                cols[c][row] = float(v)
    if G > 1:
        from scipy import stats as sps

        g0 = cols["floor_gap"]
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(se > 0, sps.t.sf(g0 / np.where(se > 0, se, 1.0), G - 1), np.where(g0 > 0, 0.0, 1.0))
        cols["floor_p"] = np.where(np.isfinite(g0) & np.isfinite(se), p, np.nan)
    return frame()
