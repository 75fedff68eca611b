"""Disagreements that survive resampling: the grid's statistics with
uncertainty, from the stored per-prompt values (no extra model run).

The settings of a grid share their prompts, so every resample draws one set of
prompt weights and applies it to every setting jointly
(:func:`patching.analysis.uncertainty.weights`). From B resamples:

* Spearman, Kendall (tau-b) and top-k Jaccard between two settings get
  percentile intervals (Kendall from the first :data:`KENDALL_BOOT`
  resamples: it counts pairs of components, O(cells^2) each);
* the *noise floor* of a setting is its agreement with itself across two
  disjoint halves of the prompts (the first ⌈n/2⌉ and the rest): two settings
  that agree less than each agrees with itself disagree beyond chance;
* a "detected here, missed there" disagreement (2-SD rule) or a sign flip is
  *robust* when it holds in at least ``level`` (95 %) of the resamples.

Components that are zero by construction (patches confined to the prefix both
prompts share) are left out of the correlations and the 2-SD band.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from patching.analysis import stats, uncertainty
from patching.studies.disagreement.grid import Grid


#: Resamples behind the Kendall intervals (a prefix of the others; the rest use all).
KENDALL_BOOT = 200


@dataclass
class GridSamples:
    settings: list[str]
    labels: list[str]
    valid: np.ndarray  # [cells] bool: finite everywhere and not a no-op
    point: dict[str, np.ndarray]  # setting -> [cells] effects on all prompts
    boot: dict[str, np.ndarray]  # setting -> [cells, B]
    halves: dict[str, tuple[np.ndarray, np.ndarray]]  # setting -> effects on each half
    n_prompts: int
    n_noop: int


def grid_samples(grid: Grid, n_boot: int = uncertainty.DEFAULT_BOOT, seed: int = 0) -> GridSamples | None:
    """Bootstrap samples of every available setting; None when a sweep has no
    per-prompt values or the sweeps do not share one prompt set."""
    settings = grid.available
    if len(settings) < 2:
        return None
    first = grid.results[settings[0]]
    labels = list(stats.component_labels(first.table))
    mats_by_sweep: dict[int, tuple] = {}
    n = None
    noop: set[int] = set()
    for s in settings:
        r = grid.results[s]
        if r.per_prompt is None or not r.meta.get("per_prompt_ref"):
            return None
        if id(r.per_prompt) not in mats_by_sweep:
            if list(stats.component_labels(r.table)) != labels:
                return None
            m, k = uncertainty.matrices(r.per_prompt, len(r.table))
            mats_by_sweep[id(r.per_prompt)] = (m, k)
            if n is not None and k != n:
                return None
            n = k
        noop |= set(r.meta.get("noop_cells") or ())
    w = uncertainty.weights(n, n_boot, seed)
    half = (n + 1) // 2
    wa = np.zeros((1, n))
    wa[0, :half] = 1.0 / half
    wb = np.zeros((1, n))
    wb[0, half:] = 1.0 / max(1, n - half)
    point, boot, halves = {}, {}, {}
    for s in settings:
        r = grid.results[s]
        mats, _ = mats_by_sweep[id(r.per_prompt)]
        ref, d, metric = r.meta["per_prompt_ref"], r.spec.direction, grid.specs[s].metric
        boot[s] = uncertainty.samples(mats, ref, metric, d, w)
        point[s] = stats.effect_series(r.table, metric).to_numpy(dtype=float)
        halves[s] = (uncertainty.samples(mats, ref, metric, d, wa)[:, 0], uncertainty.samples(mats, ref, metric, d, wb)[:, 0]) if n >= 2 else (None, None)
    valid = np.ones(len(labels), dtype=bool)
    valid[list(noop)] = False
    for s in settings:
        valid &= np.isfinite(point[s]) & np.isfinite(boot[s]).all(axis=1)
    return GridSamples(settings, labels, valid, point, boot, halves, n, len(noop))


# ---------------------------------------------------------------- agreement


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (one argsort; exact ties, rare between
    float effects once no-op cells are left out, are ranked by position)."""
    order = np.argsort(x, axis=-1)
    r = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(r, order, np.broadcast_to(np.arange(x.shape[-1], dtype=np.float64), x.shape), axis=-1)
    return r


def _zscore(r: np.ndarray) -> np.ndarray:
    """Ranks standardised per row (NaN rows where the ranks are constant)."""
    sd = r.std(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, (r - r.mean(-1, keepdims=True)) / sd, np.nan)


def _spearman_rows(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """Spearman of each row pair, from z-scored ranks (Pearson of the ranks)."""
    return np.einsum("ij,ij->i", za, zb) / za.shape[-1]


def _topk_masks(x: np.ndarray, k: int) -> np.ndarray:
    order = np.argpartition(-np.abs(x), k - 1, axis=-1)[..., :k] if k < x.shape[-1] else np.argsort(x, axis=-1)
    m = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(m, order, True, axis=-1)
    return m


def _jaccard_rows(ma: np.ndarray, mb: np.ndarray) -> np.ndarray:
    return (ma & mb).sum(-1) / np.maximum((ma | mb).sum(-1), 1)


def _kendall_all(x: np.ndarray, budget: int = 64 << 20) -> np.ndarray:
    """Kendall tau-b between every pair of settings on every resample:
    ``x`` is [settings, B, cells]; returns [B, settings, settings]. Through
    the pairwise-sign vectors of each setting, whose Gram matrix (one batched
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


def robust_agreement(gs: GridSamples, k: int = 10, ci: float = 0.95, kendall: bool = True,
                     pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Per pair of settings: ``spearman_lo/hi``, ``kendall_lo/hi`` (with
    ``kendall``), ``topk_jaccard_lo/hi`` and the split-half floors
    ``floor_a``/``floor_b`` (each setting's Spearman with itself across two
    disjoint halves of the prompts), and ``n_noop`` (cells left out)."""
    v = gs.valid
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    kk = max(1, min(k, int(v.sum())))
    boot = {s: gs.boot[s][v].T for s in gs.settings}  # [B, cells]
    ranks = {s: _zscore(_ranks(b)) for s, b in boot.items()}
    tops = {s: _topk_masks(b, kk) for s, b in boot.items()}
    floors = {}
    for s in gs.settings:
        ha, hb = gs.halves[s]
        floors[s] = float(_spearman_rows(_zscore(_ranks(ha[v][None])), _zscore(_ranks(hb[v][None])))[0]) if ha is not None else np.nan
    index = {s: i for i, s in enumerate(gs.settings)}
    # Kendall counts pairs of components (O(cells^2) per resample): its interval uses the first KENDALL_BOOT resamples.
    kall = _kendall_all(np.stack([boot[s][:KENDALL_BOOT] for s in gs.settings])) if kendall else None
    rows = []
    for a, b in (pairs or itertools.combinations(gs.settings, 2)):
        sp = _spearman_rows(ranks[a], ranks[b])
        jc = _jaccard_rows(tops[a], tops[b])
        row = {"setting_a": a, "setting_b": b,
               "spearman_lo": np.nanquantile(sp, lo_q) if np.isfinite(sp).any() else np.nan,
               "spearman_hi": np.nanquantile(sp, hi_q) if np.isfinite(sp).any() else np.nan,
               "topk_jaccard_lo": float(np.quantile(jc, lo_q)), "topk_jaccard_hi": float(np.quantile(jc, hi_q)),
               "floor_a": floors[a], "floor_b": floors[b], "n_noop": gs.n_noop}
        if kendall:
            kd = kall[:, index[a], index[b]]
            row["kendall_lo"] = np.nanquantile(kd, lo_q) if np.isfinite(kd).any() else np.nan
            row["kendall_hi"] = np.nanquantile(kd, hi_q) if np.isfinite(kd).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- robust disagreements


def _detected(x: np.ndarray, valid: np.ndarray, k: float) -> np.ndarray:
    """[cells, B] 2-SD detections (population SD over the valid cells)."""
    y = np.where(valid[:, None], x, np.nan)
    mean, sd = np.nanmean(y, 0), np.nanstd(y, 0)
    with np.errstate(invalid="ignore"):
        return (np.abs(y - mean) > k * sd) & (sd > 0) & valid[:, None]


def robust_disagreements(gs: GridSamples, k: float = 2.0, level: float = 0.95, rel_eps: float = stats.DEFAULT_REL_EPS) -> pd.DataFrame:
    """Every disagreement the point estimates show, with how often it holds
    over the resamples: ``kind`` ("detected/missed" or "sign flip"),
    ``component``, ``setting_a`` (detected / positive there), ``setting_b``,
    ``frequency`` and ``robust`` (frequency >= ``level``)."""
    v = gs.valid
    det_point = {s: _detected(gs.point[s][:, None], v, k)[:, 0] for s in gs.settings}
    det_boot = {s: _detected(gs.boot[s], v, k) for s in gs.settings}
    eps = {s: rel_eps * np.nanmax(np.abs(gs.boot[s][v]), axis=0) for s in gs.settings}
    eps_point = {s: rel_eps * np.nanmax(np.abs(gs.point[s][v])) for s in gs.settings}
    pos = {s: gs.boot[s] > eps[s] for s in gs.settings}
    neg = {s: gs.boot[s] < -eps[s] for s in gs.settings}
    labels = np.asarray(gs.labels, dtype=object)
    cols: dict[str, list] = {"kind": [], "component": [], "setting_a": [], "setting_b": [], "frequency": []}

    def add(kind: str, a: str, b: str, c: np.ndarray, f: np.ndarray) -> None:
        cols["kind"].append(np.full(len(c), kind, dtype=object))
        cols["component"].append(labels[c])
        cols["setting_a"].append(np.full(len(c), a, dtype=object))
        cols["setting_b"].append(np.full(len(c), b, dtype=object))
        cols["frequency"].append(f)

    for a, b in itertools.permutations(gs.settings, 2):
        c = np.flatnonzero(det_point[a] & ~det_point[b])  # vectorised over components
        if len(c):
            add("detected/missed", a, b, c, (det_boot[a][c] & ~det_boot[b][c]).mean(1))
        c = np.flatnonzero(v & (gs.point[a] > eps_point[a]) & (gs.point[b] < -eps_point[b]))
        if len(c):
            add("sign flip", a, b, c, (pos[a][c] & neg[b][c]).mean(1))
    out = pd.DataFrame({k: (np.concatenate(x) if x else np.array([], dtype=float if k == "frequency" else object)) for k, x in cols.items()})
    out["frequency"] = out["frequency"].astype(float)
    out["robust"] = out["frequency"] >= level
    return out.sort_values(["robust", "frequency"], ascending=False, kind="stable").reset_index(drop=True)


def robust_summary(dis: pd.DataFrame, gs: GridSamples, level: float = 0.95) -> list[str]:
    """Plain sentences: how many disagreements are robust, and which."""
    out = []
    for kind, what in (("detected/missed", "“detected here, missed there” disagreements"), ("sign flip", "sign flips")):
        d = dis[dis["kind"] == kind]
        if d.empty:
            continue
        r = d[d["robust"]]
        names = ", ".join(f"{x.component} ({x.setting_a} vs {x.setting_b}, {x.frequency:.0%})" for x in r.head(5).itertuples())
        out.append(f"{len(r)} of {len(d)} {what} hold in at least {level:.0%} of {gs.boot[gs.settings[0]].shape[1]} resamples of the "
                   f"{gs.n_prompts} prompts" + (f": {names}{' …' if len(r) > 5 else ''}." if len(r) else "; the others may be sampling noise."))
    if gs.n_noop:
        out.append(f"{gs.n_noop} component(s) are zero by construction (patched only where both prompts are identical) and are left "
                   "out of the correlations and the 2-SD band.")
    return out
