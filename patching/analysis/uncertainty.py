"""Uncertainty from the stored per-prompt values: a seeded bootstrap over
prompts, with no extra model run.

A resample draws n prompts with replacement; a component's effect on it is
recomputed the way the sweep computed it on all prompts: the mean of the
per-prompt effects for ``prob``, ``logprob`` and ``kl`` (linear in the
prompts), and for the normalised logit difference the *ratio of means*
(mean LD_patched − mean LD_corrupt) / (mean LD_clean − mean LD_corrupt) (or
its noising form), never a mean of per-prompt ratios. A resample is a vector of
prompt weights, so B resamples of every component are one matrix product.

Intervals are expanded percentile intervals
(:func:`patching.analysis.inference.interval`: the bootstrap quantiles at the
level a t interval on n − 1 degrees of freedom would need, Hesterberg 2015;
the plain percentile interval under-covers on few prompts). A component's *detection stability* is
the fraction of resamples in which the 2-SD rule (Zhang & Nanda; population SD
over the components, :func:`patching.analysis.stats.detect`) detects it.
Components that are zero by construction (no-op patches,
:func:`patching.analysis.measurement.measured`) are left out of the 2-SD band
and get no interval and no stability (NaN): they are not measurements.
"""

from __future__ import annotations

import math
import numpy as np
import pandas as pd

from patching.analysis.measurement import measured
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


def detection_frequency(s: np.ndarray, k: float = 2.0, live: np.ndarray | None = None) -> np.ndarray:
    """Per component, the fraction of resamples (columns of ``s``) in which
    |effect − mean| > k·SD over the components (population SD over the
    ``live`` rows, the measurements; the others get NaN)."""
    x = s.copy()
    if live is not None:
        x[~np.asarray(live, dtype=bool)] = np.nan
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(x, axis=0)
        sd = np.nanstd(x, axis=0)
        scale = np.nanmax(np.abs(x), axis=0)
        ok = (sd > 0) & (sd > 1e-12 * scale)
        det = (np.abs(x - mean) > k * sd) & ok
    det &= np.isfinite(x)
    out = det.mean(axis=1)
    if live is not None:
        out[~np.asarray(live, dtype=bool)] = np.nan
    return out


def intervals(table: pd.DataFrame, per_prompt: pd.DataFrame, ref: dict, direction: str, metric: str,
              n_boot: int = DEFAULT_BOOT, ci: float = 0.95, seed: int = 0, k: float = 2.0) -> pd.DataFrame:
    """For every row of ``table``: ``<m>_lo``, ``<m>_hi`` for every metric,
    ``value_lo``/``value_hi`` for ``metric`` and ``detect_stability`` (the
    fraction of resamples in which the 2-SD rule detects it under ``metric``);
    NaN for the cells that are not measurements."""
    if not (isinstance(ci, float) and 0 < ci < 1):
        raise ValueError("ci must be a number between 0 and 1")
    from patching.analysis.inference import interval

    mats, n = matrices(per_prompt, len(table))
    w = weights(n, n_boot, seed)
    live = measured(table).to_numpy()
    out = pd.DataFrame(index=table.index)
    for m in METRICS:
        if m != "logit_diff" and m not in mats:
            continue  # a row stored before the metric existed (prob_diff)
        s = samples(mats, ref, m, direction, w)
        s[~live] = np.nan
        lo, hi = interval(s, n, ci, axis=1)  # all-NaN rows (no-ops, components no receiver reads) stay NaN
        out[f"{m}_lo"], out[f"{m}_hi"] = lo, hi
        if m == metric:
            out["value_lo"], out["value_hi"] = lo, hi
            out["detect_stability"] = detection_frequency(s, k, live)
    return out


def width_note(table: pd.DataFrame, iv: pd.DataFrame, metric: str) -> str | None:
    """A plain sentence when the intervals are wide next to the effects: the
    median interval width of the 10 strongest components over their median
    |effect|."""
    vals = table[metric].where(measured(table)).abs().dropna()
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
    return intervals(res.table, res.per_prompt, ref, res.spec.direction, res.spec.metric, n_boot, ci, seed)


def per_prompt_table(res) -> pd.DataFrame | None:
    """The CLI's --per-prompt CSV: component,layer,head,pos,prompt, then one
    column per metric (``logit_diff`` per prompt is that prompt's own ratio),
    then ld_patched, ld_clean, ld_corrupt (the raw logit differences) and
    ``measured`` (False: zero by construction, left out of every statistic)."""
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
    out["measured"] = measured(res.table).to_numpy()[pp["cell"].to_numpy()]
    return out
