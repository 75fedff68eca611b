"""Do the intervals cover? A simulation with known truth, shaped like real
per-prompt values.

For each kind of statistic the pages show with an interval:

* ``effect`` — a component's mean effect over prompts (prob, logprob, kl);
* ``logit_diff`` — the normalised logit difference, a *ratio of means*
  mean(LD_patched − LD_corrupt) / mean(LD_clean − LD_corrupt);
* ``spearman`` — the rank correlation of two settings' effects over the
  components (the prompts are shared, so one draw of prompts moves every
  component at once);

synthetic prompts are drawn from the per-prompt values of real sweeps (the
shipped demo's): a cell's population is the empirical distribution of its
stored per-prompt values (their skew, their outlying prompts) smoothed by a
Student-t₃ kernel of bandwidth ``h``·SD (heavier tails than any 8 prompts
show), so the truth is known exactly: the mean of the stored values (their
ratio; the Spearman of the two settings' means). Each replicate draws n
prompts, computes the point estimate and the 95 % interval from ``n_boot``
resamples as the pages do (:func:`patching.analysis.inference.interval` or
the plain percentile for comparison), and records whether the interval holds
the truth. Vectorised numpy; the suite runs a small version
(tests/unit/analysis/test_coverage.py), ``benchmarks/coverage.py`` the table
in docs/statistics.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from patching.analysis.inference import expanded_level

__all__ = ["METHODS", "Source", "effect_coverage", "ratio_coverage", "spearman_coverage", "coverage_table"]

#: Interval methods compared: the expanded percentile (the one the pages use)
#: and the plain percentile (the one they used before).
METHODS = ("expanded", "percentile")


@dataclass
class Source:
    """Per-prompt values of real cells: ``x`` [cells, n0] (the effect, or the
    numerator mean(LD_patched − LD_corrupt) of a ratio), ``gap`` [n0] (the
    ratio's denominator LD_clean − LD_corrupt; None for a mean) and, for a
    Spearman, ``y`` [cells, n0] (the second setting, the same prompts)."""

    name: str
    x: np.ndarray
    gap: np.ndarray | None = None
    y: np.ndarray | None = None


def _weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.repeat(np.arange(n_boot), n), idx.reshape(-1)), 1.0 / n)
    return w


def _draw(v: np.ndarray, j: np.ndarray, h: float, rng: np.random.Generator) -> np.ndarray:
    """Synthetic prompts of each cell (row of ``v``): the stored values at
    draws ``j`` ([cells, reps, n] or [reps, n], shared by every cell) plus
    t₃ noise of SD h·SD(cell); the population mean stays the cell's mean."""
    sd = v.std(axis=1)
    picked = np.take_along_axis(v[:, None, :], j, axis=2) if j.ndim == 3 else v[:, j]
    noise = rng.standard_t(3, size=picked.shape) / np.sqrt(3.0)
    return picked + h * sd[:, None, None] * noise


def _bounds(boot: np.ndarray, n: int, ci: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    a = expanded_level(n, ci) if method == "expanded" else (1 - ci) / 2
    return np.quantile(boot, a, axis=-1), np.quantile(boot, 1 - a, axis=-1)


def effect_coverage(src: Source, n: int, reps: int = 40, n_boot: int = 400, seed: int = 0, ci: float = 0.95,
                    h: float = 0.5) -> dict[str, float]:
    """Coverage of a component's mean effect (``src.gap`` None) or of the
    ratio of means (``src.gap`` given) over ``reps`` replicates of every
    cell; {method: share of intervals holding the truth}."""
    rng = np.random.default_rng(seed)
    x = np.asarray(src.x, dtype=float)
    cells, n0 = x.shape
    j = rng.integers(0, n0, size=(cells, reps, n))
    xs = _draw(x, j, h, rng)  # [cells, reps, n]
    w = _weights(n, n_boot, rng)
    if src.gap is None:
        truth = x.mean(axis=1)
        boot = xs @ w.T  # [cells, reps, B]
    else:
        g = np.asarray(src.gap, dtype=float)
        truth = x.mean(axis=1) / g.mean()
        gs = _draw(np.broadcast_to(g, (cells, n0)), j, h, rng)  # the same prompts as the numerators
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (xs @ w.T) / (gs @ w.T)
    t = truth[:, None]
    return {m: float(np.mean((lo <= t) & (t <= hi))) for m in METHODS for lo, hi in [_bounds(boot, n, ci, m)]}


def ratio_coverage(src: Source, n: int, **kw) -> dict[str, float]:
    """:func:`effect_coverage` of the ratio of means (``src.gap`` must be set)."""
    if src.gap is None:
        raise ValueError("ratio_coverage: the source has no denominator (gap)")
    return effect_coverage(src, n, **kw)


def _zranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, axis=-1)
    r = np.empty(x.shape)
    np.put_along_axis(r, order, np.broadcast_to(np.arange(x.shape[-1], dtype=float), x.shape), axis=-1)
    r -= r.mean(axis=-1, keepdims=True)
    return r / np.sqrt((r * r).sum(axis=-1, keepdims=True))


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_zranks(a) * _zranks(b)).sum(axis=-1)


def spearman_coverage(src: Source, n: int, reps: int = 150, n_boot: int = 150, seed: int = 0, ci: float = 0.95,
                      h: float = 0.5) -> dict[str, float]:
    """Coverage of the Spearman correlation of two settings over the
    components; one draw of prompts per replicate moves every component."""
    if src.y is None:
        raise ValueError("spearman_coverage: the source has no second setting (y)")
    rng = np.random.default_rng(seed)
    x, y = np.asarray(src.x, dtype=float), np.asarray(src.y, dtype=float)
    n0 = x.shape[1]
    truth = float(_spearman(x.mean(axis=1), y.mean(axis=1)))
    j = rng.integers(0, n0, size=(reps, n))
    xs, ys = _draw(x, j, h, rng), _draw(y, j, h, rng)  # [cells, reps, n]
    w = _weights(n, n_boot, rng)
    ba = np.einsum("crn,bn->rbc", xs, w)
    bb = np.einsum("crn,bn->rbc", ys, w)
    boot = _spearman(ba, bb)  # [reps, B]
    return {m: float(np.mean((lo <= truth) & (truth <= hi))) for m in METHODS for lo, hi in [_bounds(boot, n, ci, m)]}


KINDS: dict[str, Callable[..., dict[str, float]]] = {"effect": effect_coverage, "logit_diff": ratio_coverage, "spearman": spearman_coverage}


def coverage_table(sources: dict[str, list[Source]], ns=(8, 16, 32, 64), seed: int = 0, ci: float = 0.95, **kw) -> pd.DataFrame:
    """One row per statistic kind (``effect``, ``logit_diff``, ``spearman``),
    source and n: the coverage of each interval method. ``kw`` goes to the
    simulation (reps, n_boot, h)."""
    rows = []
    for kind, srcs in sources.items():
        fn = KINDS[kind]
        for s_i, src in enumerate(srcs):
            for n in ns:
                cov = fn(src, int(n), seed=seed + 1000 * s_i + int(n), ci=ci, **kw)
                rows.append({"statistic": kind, "source": src.name, "n": int(n), **cov})
    return pd.DataFrame(rows)


def worst(table: pd.DataFrame, method: str = "expanded") -> pd.DataFrame:
    """The lowest coverage over the sources: statistic x n."""
    return table.pivot_table(index="statistic", columns="n", values=method, aggfunc="min")


def linearised(res, metric: str) -> np.ndarray:
    """[measured cells, n] per-prompt values whose mean over prompts is the
    result's ``metric`` (for the normalised logit difference: the numerator
    over the mean gap, a constant that keeps the ranks)."""
    from patching.analysis import measurement, uncertainty

    mats, _ = uncertainty.matrices(res.per_prompt, len(res.table))
    live = measurement.measured(res.table).to_numpy()
    if metric == "logit_diff":
        num, gap = ld_numerator(mats, res.meta["per_prompt_ref"], res.spec.direction)
        return num[live] / gap.mean()
    return mats[metric][live]


def spearman_source(name: str, res_a, metric_a: str, res_b, metric_b: str) -> Source:
    """Two settings on the same prompts (and the same measured cells) as a
    Spearman source."""
    return Source(name, linearised(res_a, metric_a), y=linearised(res_b, metric_b))


def sources_from(results: dict[str, object]) -> dict[str, list[Source]]:
    """Sources from stored activation results (``{name: Result}`` with
    per-prompt values): every measured cell's prob and kl (``effect``) and its
    logit-difference numerator and gap (``logit_diff``); Spearman sources
    come from :func:`spearman_source`."""
    from patching.analysis import measurement, uncertainty

    out: dict[str, list[Source]] = {"effect": [], "logit_diff": []}
    for name, res in results.items():
        mats, _ = uncertainty.matrices(res.per_prompt, len(res.table))
        live = measurement.measured(res.table).to_numpy()
        num, gap = ld_numerator(mats, res.meta["per_prompt_ref"], res.spec.direction)
        for m in ("prob", "kl"):
            out["effect"].append(Source(f"{name} {m}", mats[m][live]))
        out["logit_diff"].append(Source(f"{name} logit_diff", num[live], gap=gap))
    return out


def ld_numerator(mats: dict[str, np.ndarray], ref: dict, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, the normalised logit difference's numerator ([cells, n]:
    LD_patched − LD_corrupt denoising, LD_clean − LD_patched noising) and its
    denominator LD_clean − LD_corrupt ([n])."""
    lc = np.asarray(ref["ld_clean"], dtype=float)
    lo = np.asarray(ref["ld_corrupt"], dtype=float)
    lp = mats["ld_patched"]
    return ((lp - lo) if direction == "denoise" else (lc - lp)), lc - lo
