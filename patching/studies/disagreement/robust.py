"""The grid's statistics with uncertainty, from the stored per-prompt values
(no extra model run).

The settings of a grid share their prompts (paired by identity,
:mod:`patching.studies.disagreement.pairing`), so every resample draws one set
of prompt weights and applies it to every setting jointly
(:func:`patching.analysis.uncertainty.weights`). Only measurements count
(:func:`patching.analysis.measurement.measured`): a statistic of two settings
reads the cells measured (and finite) in both. From B resamples, Spearman,
Kendall (tau-b, from the first :data:`KENDALL_BOOT` resamples: it counts
pairs of components) and top-k Jaccard get intervals by the expanded
percentile bootstrap (:func:`patching.analysis.inference.interval`). The
noise floors are in :mod:`patching.studies.disagreement.floor`, the tests of
the disagreements in :mod:`patching.studies.disagreement.significance`.

An unsigned setting (``@atp_star``: AtP*'s GradDrop estimates |effect|) is
compared by magnitude: both sides' |effect| are ranked.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from patching.analysis import inference, measurement, stats, uncertainty
from patching.analysis.coverage import ld_numerator
from patching.results import UNSIGNED_METHODS
from patching.studies.disagreement.grid import Grid
from patching.studies.disagreement.pairing import prompt_order

#: Resamples behind the Kendall intervals (a prefix of the others; the rest use all).
KENDALL_BOOT = 200
#: Bootstrap values held at once (settings x cells x resamples); a larger grid gets fewer resamples.
BOOT_BUDGET = 60_000_000


@dataclass
class GridSamples:
    """Every available setting's effects on all prompts, per prompt and per resample."""

    settings: list[str]
    labels: list[str]
    measured: dict[str, np.ndarray]  # setting -> [cells] bool: a measurement, finite on all prompts and every resample
    point: dict[str, np.ndarray]  # setting -> [cells] effects on all prompts (as the table stores them)
    per_prompt: dict[str, np.ndarray]  # setting -> [cells, n]: per-prompt values whose mean is the point (LD: numerator / mean gap)
    gap: dict[str, np.ndarray]  # setting -> [n] the ratio's denominator per prompt over its mean (ones for a mean): effect on prompt weights w = per_prompt @ w / gap @ w
    boot: dict[str, np.ndarray]  # setting -> [cells, B] float32
    unsigned: dict[str, bool]
    n_prompts: int
    seed: int = 0
    weights: np.ndarray = field(default=None, repr=False)  # [B, n]

    @property
    def n_boot(self) -> int:
        return int(self.weights.shape[0])

    def both(self, a: str, b: str) -> np.ndarray:
        """Cells measured under both settings."""
        return self.measured[a] & self.measured[b]

    def compared(self, a: str, b: str) -> bool:
        """Whether a pair is compared by magnitude (either side unsigned)."""
        return self.unsigned[a] or self.unsigned[b]

    @property
    def n_unmeasured(self) -> int:
        return int((~np.logical_and.reduce([self.measured[s] for s in self.settings])).sum())


def grid_samples(grid: Grid, n_boot: int = uncertainty.DEFAULT_BOOT, seed: int = 0) -> GridSamples | None:
    """Bootstrap samples of every available setting with per-prompt values
    (attribution estimates have none: they get no interval); None when fewer
    than two have them. Raises a one-line PatchboardError when the sweeps'
    prompts cannot be paired (:func:`patching.studies.disagreement.pairing.prompt_order`)."""
    settings = [s for s in grid.available if grid.results[s].per_prompt is not None and grid.results[s].meta.get("per_prompt_ref")]
    if len(settings) < 2:
        return None
    first = grid.results[settings[0]]
    labels = list(stats.component_labels(first.table))
    mats_by_sweep: dict[int, tuple] = {}
    for s in settings:
        r = grid.results[s]
        if id(r.per_prompt) not in mats_by_sweep:
            if r.table is not first.table and list(stats.component_labels(r.table)) != labels:
                return None
            mats_by_sweep[id(r.per_prompt)] = uncertainty.matrices(r.per_prompt, len(r.table))
    order = prompt_order({s: grid.results[s] for s in settings}, {s: mats_by_sweep[id(grid.results[s].per_prompt)][1] for s in settings})
    n = len(next(iter(order.values())))
    cells = len(labels)
    n_boot = int(max(1, min(n_boot, max(200, BOOT_BUDGET // max(1, cells * len(settings))))))
    w = uncertainty.weights(n, n_boot, seed)
    out = GridSamples(settings, labels, {}, {}, {}, {}, {}, {}, n, seed, w)
    for s in settings:
        r = grid.results[s]
        mats, _ = mats_by_sweep[id(r.per_prompt)]
        idx = order[s]
        mats = {c: v[:, idx] for c, v in mats.items()}
        ref = {k: list(np.asarray(v)[idx]) for k, v in r.meta["per_prompt_ref"].items()}
        metric, d = grid.specs[s].metric, r.spec.direction
        unsigned = grid.specs[s].method in UNSIGNED_METHODS
        if metric == "logit_diff":
            num, gap = ld_numerator(mats, ref, d)
            ok = abs(gap.mean()) > 1e-12
            pp = num / gap.mean() if ok else np.full_like(num, np.nan)
            out.gap[s] = gap / gap.mean() if ok else np.full(n, np.nan)
        else:
            pp = mats[metric]
            out.gap[s] = np.ones(n)
        boot = uncertainty.samples(mats, ref, metric, d, w)
        point = pd.to_numeric(r.table[metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        live = measurement.measured(r.table, metric).to_numpy() & np.isfinite(pp).all(axis=1)
        # A resample whose denominator vanishes (a ratio of means with a zero gap) is dropped for this setting, not its cells.
        bad = ~np.isfinite(boot[live]).all(axis=0) if live.any() else np.zeros(boot.shape[1], dtype=bool)
        boot[:, bad] = np.nan
        live &= np.isfinite(boot[:, ~bad]).all(axis=1)
        if unsigned:
            point, pp, boot = np.abs(point), np.abs(pp), np.abs(boot)
        out.measured[s], out.point[s], out.per_prompt[s] = live, np.where(live, point, np.nan), pp
        out.boot[s], out.unsigned[s] = boot.astype(np.float32), unsigned
    return out


# ---------------------------------------------------------------- ranks


def zranks(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Ranks along the last axis, centred and scaled to unit norm, so that
    the dot product of two rows is their Spearman correlation (one argsort;
    exact ties, rare between measured effects, are ranked by position; a row
    with a non-finite value is NaN). float32 by default: the bootstrap's
    thousands of rows; float64 for a point estimate to the last digit."""
    n = x.shape[-1]
    order = np.argsort(x, axis=-1)
    # Ranks are a permutation of 0..n-1: their mean and norm are the same for every row.
    centred = np.arange(n, dtype=np.float64) - (n - 1) / 2
    norm = float(np.sqrt((centred * centred).sum()))
    r = np.empty(x.shape, dtype=dtype)
    if norm == 0:
        r[...] = np.nan
        return r
    np.put_along_axis(r, order, np.broadcast_to((centred / norm).astype(dtype), x.shape), axis=-1)
    bad = ~np.isfinite(x).all(axis=-1)
    if bad.any():  # a row with a missing value has no ranking
        r[bad] = np.nan
    return r


def spearman_rows(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """Spearman of each pair of rows of two :func:`zranks` arrays."""
    return (za.astype(np.float64) * zb).sum(axis=-1)


def mask_groups(gs: GridSamples, pairs: Sequence[tuple[str, str]]) -> dict[bytes, tuple[np.ndarray, list[tuple[str, str]]]]:
    """The pairs grouped by the cells both settings measure (one group for a
    grid whose sweeps share their no-op cells): mask bytes -> (mask, pairs)."""
    out: dict[bytes, tuple[np.ndarray, list]] = {}
    for a, b in pairs:
        m = gs.both(a, b)
        key = m.tobytes()
        out.setdefault(key, (m, []))[1].append((a, b))
    return out


def _kendall_all(x: np.ndarray, budget: int = 64 << 20) -> np.ndarray:
    """Kendall tau-b between every pair of rows on every resample: ``x`` is
    [settings, B, cells]; returns [B, settings, settings]. Through the
    pairwise-sign vectors of each setting, whose Gram matrix (one batched
    matrix product per chunk of resamples) counts concordant minus discordant
    pairs; ties drop out of both the count and the tau-b normaliser."""
    S, B, n = x.shape
    iu, ju = np.triu_indices(n, 1)
    out = np.empty((B, S, S))
    step = max(1, budget // max(1, 4 * S * len(iu)))
    for s in range(0, B, step):
        sg = np.sign(x[:, s:s + step, iu] - x[:, s:s + step, ju]).astype(np.float32).transpose(1, 0, 2)  # [b, S, P]
        g = np.matmul(sg, sg.transpose(0, 2, 1)).astype(np.float64)  # [b, S, S]
        nz = (sg != 0).sum(-1).astype(np.float64)  # [b, S]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + step] = g / np.sqrt(nz[:, :, None] * nz[:, None, :])
    return out


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """[..., cells] float32 masks of the k largest |x| per row (ties at the
    cut, rare between measured effects, may add a cell)."""
    a = np.abs(x)
    if k >= x.shape[-1]:
        return np.ones(x.shape, dtype=np.float32)
    cut = np.partition(a, a.shape[-1] - k, axis=-1)[..., a.shape[-1] - k, None]
    return (a >= cut).astype(np.float32)


def pair_samples(gs: GridSamples, pairs: Sequence[tuple[str, str]], k: int = 10,
                 kendall: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Spearman, top-k Jaccard (and with ``kendall`` Kendall, on the first
    :data:`KENDALL_BOOT` resamples) of every pair on every resample, over
    the cells both settings measure: [pairs, B] arrays (NaN on a dropped
    resample), and each pair's count of cells either setting does not measure.
    The per-factor agreement (:mod:`patching.studies.disagreement.factors`)
    averages these over a factor's pairs."""
    pairs = list(pairs)
    index = {p: i for i, p in enumerate(pairs)}
    B = gs.n_boot
    sp_all = np.full((len(pairs), B), np.nan, dtype=np.float32)
    jc_all = np.full((len(pairs), B), np.nan, dtype=np.float32)
    kd_all = np.full((len(pairs), min(B, KENDALL_BOOT)), np.nan) if kendall else None
    unmeasured = np.zeros(len(pairs), dtype=np.int64)
    for mask, group in mask_groups(gs, pairs).values():
        live = int(mask.sum())
        kk = max(1, min(int(k), live))
        for magnitudes in (False, True):
            sub = [(a, b) for a, b in group if gs.compared(a, b) == magnitudes]
            if not sub:
                continue
            names = list(dict.fromkeys(s for p in sub for s in p))
            pos = {s: i for i, s in enumerate(names)}
            vals = np.stack([gs.boot[s][mask].T for s in names])  # [S, B, cells]
            if magnitudes:
                vals = np.abs(vals)
            z = zranks(vals)
            sp = np.matmul(z.transpose(1, 0, 2), z.transpose(1, 2, 0))  # [B, S, S]
            tops = _topk(vals, kk).transpose(1, 0, 2)  # [B, S, cells]
            inter = np.matmul(tops, tops.transpose(0, 2, 1))  # [B, S, S]: |top(a) & top(b)|
            size = tops.sum(axis=-1)  # [B, S]
            kd = _kendall_all(vals[:, :KENDALL_BOOT]) if kendall and live >= 2 else None
            ii = np.array([pos[a] for a, _ in sub])
            jj = np.array([pos[b] for _, b in sub])
            rows = np.array([index[p] for p in sub])
            sp_all[rows] = sp[:, ii, jj].T
            both = inter[:, ii, jj]
            jc_all[rows] = (both / np.maximum(size[:, ii] + size[:, jj] - both, 1)).T
            if kd is not None:
                kd_all[rows] = kd[:, ii, jj].T
            unmeasured[rows] = len(mask) - live
    jc_all[~np.isfinite(sp_all)] = np.nan  # a dropped resample (non-finite values) counts for neither statistic
    return sp_all, jc_all, kd_all, unmeasured


def robust_agreement(gs: GridSamples, k: int = 10, ci: float = 0.95, kendall: bool = True,
                     pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Per pair of settings: ``spearman_lo/hi``, ``kendall_lo/hi`` (with
    ``kendall``), ``topk_jaccard_lo/hi`` (expanded percentile intervals over
    the resamples) and ``n_unmeasured`` (cells either setting does not measure)."""
    pairs = list(pairs or itertools.combinations(gs.settings, 2))
    n = gs.n_prompts
    sp_all, jc_all, kd_all, unmeasured = pair_samples(gs, pairs, k, kendall)
    out = pd.DataFrame({"setting_a": [a for a, _ in pairs], "setting_b": [b for _, b in pairs]})
    out["spearman_lo"], out["spearman_hi"] = inference.interval(sp_all, n, ci)
    out["topk_jaccard_lo"], out["topk_jaccard_hi"] = inference.interval(jc_all, n, ci)
    if kd_all is not None:
        out["kendall_lo"], out["kendall_hi"] = inference.interval(kd_all, n, ci)
    out["n_unmeasured"] = unmeasured
    return out
