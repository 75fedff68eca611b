"""Uncertainty from the stored per-prompt values: a seeded bootstrap over
prompts, with no extra model run.

A resample draws n prompts with replacement; a component's effect on it is
recomputed the way the sweep computed it on all prompts: the mean of the
per-prompt effects for ``prob``, ``logprob`` and ``kl`` (linear in the
prompts), and for the normalised logit difference the *ratio of means*
(mean LD_patched − mean LD_corrupt) / (mean LD_clean − mean LD_corrupt) (or
its noising form), never a mean of per-prompt ratios. A resample is a vector of
prompt weights, so B resamples of every component are one matrix product.

Intervals are percentile intervals. A component's *detection stability* is
the fraction of resamples in which the 2-SD rule (Zhang & Nanda; population SD
over the components, :func:`patching.analysis.stats.detect`) detects it.
Components that are zero by construction (patches confined to the prefix both
prompts share: exact no-ops, listed in the result's ``meta["noop_cells"]``)
are left out of the 2-SD band.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from patching.core.spec import METRICS

#: Resamples by default (the CLI's --bootstrap).
DEFAULT_BOOT = 1000


def weights(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, n] resampling weights (draw counts / n), seeded."""
    if not (isinstance(n_boot, int) and 1 <= n_boot <= 100_000):
        raise ValueError("n_boot must be a whole number from 1 to 100000")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.repeat(np.arange(n_boot), n), idx.reshape(-1)), 1.0)
    return w / n


def matrices(per_prompt: pd.DataFrame, n_cells: int) -> tuple[dict[str, np.ndarray], int]:
    """The long per-prompt table as {column: [n_cells, n_prompts]} float64."""
    n = int(per_prompt["prompt"].max()) + 1
    order = np.lexsort((per_prompt["prompt"].to_numpy(), per_prompt["cell"].to_numpy()))
    pp = per_prompt.iloc[order]
    if len(pp) != n_cells * n:
        raise ValueError(f"per-prompt values: {len(pp)} rows for {n_cells} components x {n} prompts")
    out = {c: pp[c].to_numpy(dtype=np.float64).reshape(n_cells, n) for c in pp.columns if c not in ("cell", "prompt")}
    return out, n


def samples(mats: dict[str, np.ndarray], ref: dict, metric: str, direction: str, w: np.ndarray) -> np.ndarray:
    """[n_cells, n_boot] effects of every component on every resample."""
    if metric == "logit_diff":
        lp = mats["ld_patched"] @ w.T
        lc = np.asarray(ref["ld_clean"], dtype=np.float64) @ w.T
        lo = np.asarray(ref["ld_corrupt"], dtype=np.float64) @ w.T
        gap = lc - lo
        gap = np.where(np.abs(gap) > 1e-12, gap, np.nan)
        return ((lp - lo) if direction == "denoise" else (lc - lp)) / gap
    return mats[metric] @ w.T


def detection_frequency(s: np.ndarray, k: float = 2.0, exclude: Sequence[int] = ()) -> np.ndarray:
    """Per component, the fraction of resamples (columns of ``s``) in which
    |effect − mean| > k·SD over the components (population SD; components in
    ``exclude`` are outside the band and never detected)."""
    x = s.copy()
    if len(exclude):
        x[list(exclude)] = np.nan
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(x, axis=0)
        sd = np.nanstd(x, axis=0)
        scale = np.nanmax(np.abs(x), axis=0)
        ok = (sd > 0) & (sd > 1e-12 * scale)
        det = (np.abs(x - mean) > k * sd) & ok
    det &= np.isfinite(x)
    return det.mean(axis=1)


def intervals(table: pd.DataFrame, per_prompt: pd.DataFrame, ref: dict, direction: str, metric: str,
              n_boot: int = DEFAULT_BOOT, ci: float = 0.95, seed: int = 0, noop: Sequence[int] = (), k: float = 2.0) -> pd.DataFrame:
    """For every row of ``table``: ``<m>_lo``, ``<m>_hi`` for every metric,
    ``value_lo``/``value_hi`` for ``metric`` and ``detect_stability`` (the
    fraction of resamples in which the 2-SD rule detects it under ``metric``)."""
    if not (isinstance(ci, float) and 0 < ci < 1):
        raise ValueError("ci must be a number between 0 and 1")
    mats, n = matrices(per_prompt, len(table))
    w = weights(n, n_boot, seed)
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    out = pd.DataFrame(index=table.index)
    for m in METRICS:
        if m != "logit_diff" and m not in mats:
            continue  # a row stored before the metric existed (prob_diff)
        s = samples(mats, ref, m, direction, w)
        with warnings.catch_warnings():  # all-NaN rows (components no receiver reads) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(s, lo_q, axis=1), np.nanquantile(s, hi_q, axis=1)
        out[f"{m}_lo"], out[f"{m}_hi"] = lo, hi
        if m == metric:
            out["value_lo"], out["value_hi"] = lo, hi
            out["detect_stability"] = detection_frequency(s, k, noop)
    return out


def width_note(table: pd.DataFrame, iv: pd.DataFrame, metric: str) -> str | None:
    """A plain sentence when the intervals are wide next to the effects: the
    median interval width of the 10 strongest components over their median
    |effect|."""
    vals = table[metric].abs()
    top = vals.nlargest(min(10, len(vals))).index
    if not len(top):
        return None
    width = float((iv.loc[top, "value_hi"] - iv.loc[top, "value_lo"]).median())
    size = float(vals.loc[top].median())
    if not (math.isfinite(width) and math.isfinite(size)) or size == 0:
        return None
    if width > size:
        return (f"The intervals are wide: for the strongest components the 95 % interval is {width / size:.1f}x as wide as the effect "
                "itself, so another draw of prompts could change the picture. Use more pairs.")
    return None


def result_intervals(res, n_boot: int = DEFAULT_BOOT, ci: float = 0.95, seed: int = 0) -> pd.DataFrame | None:
    """:func:`intervals` for a stored or fresh activation result (None when it
    has no per-prompt values, e.g. computed before they were stored)."""
    ref = res.meta.get("per_prompt_ref")
    if res.per_prompt is None or not ref:
        return None
    return intervals(res.table, res.per_prompt, ref, res.spec.direction, res.spec.metric, n_boot, ci, seed,
                     noop=res.meta.get("noop_cells") or ())


def per_prompt_table(res) -> pd.DataFrame | None:
    """The CLI's --per-prompt CSV: component,layer,head,pos,prompt, then one
    column per metric (``logit_diff`` per prompt is that prompt's own ratio),
    then ld_patched, ld_clean, ld_corrupt (the raw logit differences)."""
    ref = res.meta.get("per_prompt_ref")
    if res.per_prompt is None or not ref:
        return None
    pp = res.per_prompt.sort_values(["cell", "prompt"]).reset_index(drop=True)
    cells = res.table.iloc[pp["cell"].to_numpy()].reset_index(drop=True)
    out = cells[["component", "layer", "head", "pos"]].copy()
    out["prompt"] = pp["prompt"].to_numpy()
    for m in METRICS:
        if m in pp.columns:  # a row stored before prob_diff existed lacks it
            out[m] = pp[m].to_numpy(dtype=np.float64)
    out["ld_patched"] = pp["ld_patched"].to_numpy(dtype=np.float64)
    out["ld_clean"] = np.asarray(ref["ld_clean"])[out["prompt"]]
    out["ld_corrupt"] = np.asarray(ref["ld_corrupt"])[out["prompt"]]
    return out
