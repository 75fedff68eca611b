"""A faithfulness curve read from its stored values: intervals, the random
band, MIB's area summaries and the knee. No model, no torch.

* **Faithfulness** of a circuit is the ``logit_diff`` column of a circuit
  result: MIB's (m(C) − m(∅)) / (m(N) − m(∅)), a ratio of means over the prompts.
* **Intervals**: a seeded bootstrap over prompts from the per-prompt values
  (:mod:`patching.analysis.uncertainty`: a resample recomputes the ratio of
  means, never a mean of per-prompt ratios), read as the project's expanded
  percentile intervals (:func:`patching.analysis.inference.interval`).
* **Random band**: per size, the 5th and 95th percentile and the mean of the
  random circuits' faithfulness.
* **CPR and CMD** as MIB's ``evaluate_area_under_curve`` computes them: with
  x = edges / all edges and f the faithfulness at the evaluated sizes, CPR =
  Σ trapezoids of f (higher is better; the area under the curve) and CMD =
  Σ trapezoids of |1 − f| (lower is better), over the evaluated sizes (MIB's
  grid: 0.1 % to 100 %; a log grid from one edge). ``log_x`` integrates over
  log x instead (MIB's ``log_scale``). Their intervals: the same bootstrap
  resamples, each giving a whole curve.
* **Knee**: the size n at which f(n) − n/E is largest (E: every edge), the
  furthest the curve rises above the diagonal from no edge (f = 0) to every
  edge (f = 1) on MIB's axis (Kneedle's distance, Satopää et al. 2011): past
  it an edge adds less faithfulness than the average edge does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from patching.analysis.inference import interval
from patching.analysis.uncertainty import DEFAULT_BOOT, weights

CI = 0.95


def area(x: np.ndarray, f: np.ndarray, log_x: bool = False) -> tuple[float, float]:
    """(CPR, CMD) of a curve: MIB's trapezoids of f and of |1 − f| over x
    (fractions of all edges, increasing). Works on [..., points] arrays of f."""
    x = np.log(np.asarray(x, dtype=np.float64)) if log_x else np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    dx = np.diff(x)
    cpr = (dx * (f[..., 1:] + f[..., :-1]) / 2).sum(-1)
    cmd = (dx * (np.abs(1 - f[..., 1:]) + np.abs(1 - f[..., :-1])) / 2).sum(-1)
    return cpr, cmd


def knee(n: np.ndarray, f: np.ndarray, n_edges: int | None = None) -> int:
    """Index of the knee of a curve (see the module doc): the largest
    f(n) − n/E (E: ``n_edges``, else the largest n)."""
    n = np.asarray(n, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if not np.isfinite(f).any():
        return 0
    E = float(n_edges or n.max())
    return int(np.nanargmax(f - n / E))


@dataclass
class Curve:
    """What the Circuits page and the CLI show of a curve result."""

    top: pd.DataFrame  # one row per size: n_edges, fraction, n_kept, n_nodes, faithfulness, lo, hi, every metric
    band: pd.DataFrame  # one row per size: n_edges, fraction, mean, lo, hi (random circuits; empty without draws)
    cpr: float
    cmd: float
    cpr_ci: tuple[float, float]
    cmd_ci: tuple[float, float]
    random_cpr: float
    random_cmd: float
    knee: int  # the knee's n_edges
    n_graph_edges: int

    def summary(self) -> str:
        def ci(v):
            return f"[{v[0]:.3f}, {v[1]:.3f}]"

        rand = f"; random circuits: CPR {self.random_cpr:.3f}, CMD {self.random_cmd:.3f}" if math.isfinite(self.random_cpr) else ""
        return (f"CPR {self.cpr:.3f} {ci(self.cpr_ci)} (area under the faithfulness curve, higher is better), "
                f"CMD {self.cmd:.3f} {ci(self.cmd_ci)} (area between the curve and 1, lower is better){rand}; "
                f"knee at {self.knee} edges")


def read_curve(table: pd.DataFrame, per_prompt: pd.DataFrame | None, meta: dict, n_boot: int = DEFAULT_BOOT, seed: int = 0,
               log_x: bool = False) -> Curve:
    """The curve of a stored curve result (its table, per-prompt values and meta)."""
    E = int(meta["n_graph_edges"])
    t = table.reset_index(drop=True)
    top_idx = t.index[t["circuit"] == "top"].to_numpy()
    top = t.loc[top_idx].sort_values("n_edges")
    top_idx = top.index.to_numpy()
    x = top["n_edges"].to_numpy(dtype=np.float64) / E
    f = top["logit_diff"].to_numpy(dtype=np.float64)
    boot = _boot(t, per_prompt, meta, n_boot, seed)  # [cells, B] or None
    n = int(per_prompt["prompt"].max()) + 1 if per_prompt is not None and len(per_prompt) else 0
    lo = hi = np.full(len(top), np.nan)
    cpr_ci = cmd_ci = (float("nan"), float("nan"))
    cpr, cmd = area(x, f, log_x)
    if boot is not None:
        fb = boot[top_idx]  # [sizes, B]
        lo, hi = interval(fb, n, CI, axis=1)
        c_b, m_b = area(x, fb.T, log_x)
        cpr_ci = tuple(float(v) for v in interval(c_b, n, CI))
        cmd_ci = tuple(float(v) for v in interval(m_b, n, CI))
    out = top.assign(fraction=x, faithfulness=f, lo=lo, hi=hi).reset_index(drop=True)
    rand = t[t["circuit"] == "random"]
    if len(rand):
        g = rand.groupby("n_edges")["logit_diff"]
        band = pd.DataFrame({"n_edges": g.mean().index.to_numpy(), "mean": g.mean().to_numpy(),
                             "lo": g.quantile(0.05).to_numpy(), "hi": g.quantile(0.95).to_numpy()})
        band["fraction"] = band["n_edges"] / E
        rc, rm = area(band["fraction"].to_numpy(), band["mean"].to_numpy(), log_x)
    else:
        band = pd.DataFrame(columns=["n_edges", "mean", "lo", "hi", "fraction"])
        rc = rm = float("nan")
    k = knee(top["n_edges"].to_numpy(), f, E)
    return Curve(out, band, float(cpr), float(cmd), cpr_ci, cmd_ci, float(rc), float(rm), int(top["n_edges"].iloc[k]), E)


def _boot(table: pd.DataFrame, per_prompt: pd.DataFrame | None, meta: dict, n_boot: int, seed: int) -> np.ndarray | None:
    """[cells, n_boot] faithfulness of every circuit on every resample of prompts."""
    ref = meta.get("per_prompt_ref") or {}
    if per_prompt is None or not ref or not len(per_prompt):
        return None
    n = int(per_prompt["prompt"].max()) + 1
    pp = per_prompt.sort_values(["cell", "prompt"])
    if len(pp) != len(table) * n:
        return None
    lp = pp["ld_patched"].to_numpy(dtype=np.float64).reshape(len(table), n)
    w = weights(n, n_boot, seed)
    lc = np.asarray(ref["ld_clean"], dtype=np.float64) @ w.T
    lo = np.asarray(ref["ld_corrupt"], dtype=np.float64) @ w.T
    gap = lc - lo
    gap = np.where(np.abs(gap) > 1e-12, gap, np.nan)
    return (lp @ w.T - lo) / gap


def circuit_interval(per_prompt: pd.DataFrame | None, meta: dict, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> tuple[float, float]:
    """The 95 % interval of one circuit result's faithfulness."""
    one = pd.DataFrame({"x": [0]})
    b = _boot(one, per_prompt, meta, n_boot, seed)
    if b is None:
        return float("nan"), float("nan")
    lo, hi = interval(b[0], int(per_prompt["prompt"].max()) + 1, CI)
    return float(lo), float(hi)
