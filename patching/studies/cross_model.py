"""The same study on several models, compared where their components cannot
be matched one to one (SmolLM2's 30 layers × 9 heads against Gemma 3's 18 × 4).

For each model, on the same task, prompts settings and seed:

* **effects by relative depth**: the attention and MLP outputs' sweeps
  (``attn_out``, ``mlp_out``; layer × position) at the study's setting; per
  layer the cell with the largest |effect| (its position named), placed at
  relative depth ``layer / (n_layers − 1)`` (0 = first block, 1 = last);
* **attention vs MLP share**: Σ over layers of those |effects| for attention
  over the same for attention and MLP together;
* **components detected**: heads past the 2-SD rule (Zhang & Nanda;
  :func:`patching.analysis.stats.detect`) in the head sweep, as a count and
  as a fraction of the model's heads;
* **which factor changes the answer most**: over the model's Disagreement
  grid of head sweeps, for each factor (corruption, metric, direction, IOI
  variant) the median Spearman rank correlation between settings that differ
  in that factor alone; the factor with the lowest median moves the
  conclusion most.

Every number comes with a 95 % percentile interval from one seeded bootstrap
over prompts (the stored per-prompt values; no model run): the same resample
weights give the depth profile, the share and the detection count, and the
grid's own resamples give the factor medians. Nothing here loads a model:
:func:`lookup` reads the store (each model's fingerprint known without
loading), :func:`compute` fills it through :mod:`patching.service`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from patching.analysis import stats, uncertainty
from patching.analysis.measurement import measured
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.results import Result
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import robust

#: What the depth profile and the share are read from.
LAYER_COMPONENTS = ("attn_out", "mlp_out")
#: The grid's settings by default: every corruption, metric and direction;
#: for IOI the study's own corruption variant (12 sweeps with all three).
DEFAULT_SETTINGS = "*/*/*"
FACTORS = ("corruption", "metric", "direction", "variant")
MAX_MODELS = 4


def parse_models(text: str | Sequence[str]) -> tuple[str, ...]:
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    items = list(dict.fromkeys(t for t in items if t))
    if not 2 <= len(items) <= MAX_MODELS:
        raise PatchboardError("models", f"give 2 to {MAX_MODELS} models, comma-separated (e.g. smollm2-135m,gemma-3-270m)")
    return tuple(items)


@dataclass(frozen=True)
class Study:
    """What is compared: ``base`` (task, prompts, setting, seed; its model
    and component are set per model) on ``models``, the grid's ``settings``."""

    base: Spec
    models: tuple[str, ...]
    settings: str = DEFAULT_SETTINGS

    def spec(self, model: str, component: str) -> Spec:
        return replace(self.base, model=model, component=component, window=1, method="exact").validated()

    def layer_specs(self, model: str) -> dict[str, Spec]:
        return {c: self.spec(model, c) for c in LAYER_COMPONENTS}

    def grid_base(self, model: str) -> Spec:
        return replace(self.base, model=model, component="head", window=1, method="exact")

    def grid_specs(self, model: str) -> dict[str, Spec]:
        return disagreement_grid.grid_specs(self.grid_base(model), self.settings)

    @property
    def head_spec_setting(self) -> str:
        """The grid setting the detection count reads (the study's own)."""
        return disagreement_grid.setting_of(self.spec(self.models[0], "head"))


@dataclass
class ModelPart:
    """One model's stored pieces (None / missing where not stored)."""

    model: str
    fingerprint: str | None
    layers: dict[str, Result] = field(default_factory=dict)
    grid: disagreement_grid.Grid | None = None

    @property
    def complete(self) -> bool:
        return len(self.layers) == len(LAYER_COMPONENTS) and self.grid is not None and self.grid.complete


@dataclass
class CrossModel:
    study: Study
    parts: dict[str, ModelPart]

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.parts.values())

    def missing(self) -> list[str]:
        out = []
        for m, p in self.parts.items():
            if p.fingerprint is None:
                out.append(f"{m}: fingerprint unknown until the model loads once")
                continue
            out += [f"{m}: {c} sweep" for c in LAYER_COMPONENTS if c not in p.layers]
            if p.grid is None or not p.grid.complete:
                n = p.grid.n_missing_sweeps if p.grid is not None else len(disagreement_grid.sweeps_of(self.study.grid_specs(m)))
                out.append(f"{m}: {n} head sweep(s) of the grid")
        return out


# ---------------------------------------------------------------- store


def lookup(study: Study, store, fingerprint: Callable[[str], str | None]) -> CrossModel:
    """Whatever of the study is stored; never loads a model."""
    from patching import service

    parts = {}
    for m in study.models:
        fp = fingerprint(m)
        part = ModelPart(m, fp)
        if fp is not None:
            for c, spec in study.layer_specs(m).items():
                hit = service.lookup(spec, store, fp)
                if hit is not None:
                    part.layers[c] = hit
            part.grid = disagreement_grid.lookup_grid(study.grid_base(m), store, fp, study.settings)
        parts[m] = part
    return CrossModel(study, parts)


def compute(study: Study, store, progress: Callable[[str], None] | None = None) -> CrossModel:
    """Compute (and store) whatever of the study is missing, one model at a time."""
    from patching import service

    for m in study.models:
        lm = service.get_model(m)
        for c, spec in study.layer_specs(m).items():
            if progress:
                progress(f"{m}: {c}")
            service.run(spec, store, lm=lm)
        if progress:
            progress(f"{m}: the head grid")
        disagreement_grid.load_or_compute_grid(study.grid_base(m), store, lm, settings=study.settings,
                                               status=(lambda s, m=m: progress(f"{m}: {s}")) if progress else None)
    from patching.core.registry import REGISTRY

    return lookup(study, store, REGISTRY.fingerprint)


# ---------------------------------------------------------------- statistics


def _boot(res: Result, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point effects [cells], bootstrap effects [cells, B]) of a sweep under its metric."""
    ref = res.meta.get("per_prompt_ref")
    if res.per_prompt is None or not ref:
        raise PatchboardError("results", f"{res.spec.model}: a {res.spec.component} sweep without per-prompt values; recompute it")
    mats, _ = uncertainty.matrices(res.per_prompt, len(res.table))
    s = uncertainty.samples(mats, ref, res.spec.metric, res.spec.direction, w)
    point = res.table[res.spec.metric].to_numpy(dtype=float)
    return point, s


def _n_prompts(res: Result) -> int:
    return int(res.per_prompt["prompt"].max()) + 1


def _q(x: np.ndarray, level: float) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan, math.nan
    return float(np.quantile(x, (1 - level) / 2)), float(np.quantile(x, 1 - (1 - level) / 2))


def _strongest_cells(t: pd.DataFrame, point: np.ndarray, metric: str) -> dict[int, int]:
    """Per layer, the row of the measured cell with the largest |effect|
    (cells zero by construction never count: patching.analysis.measurement)."""
    ok = measured(t, metric).to_numpy()
    out = {}
    layers = t["layer"].to_numpy()
    for layer in sorted({int(x) for x in t["layer"].dropna()}):
        idx = np.flatnonzero((layers == layer) & ok)
        if len(idx):
            out[layer] = int(idx[int(np.argmax(np.abs(point[idx])))])
    return out


def depth_profile(cm: CrossModel, n_boot: int = uncertainty.DEFAULT_BOOT, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model, component (attn_out, mlp_out) and layer: the cell with the
    largest |effect| (``pos``, ``pos_label``), its ``effect`` with ``lo``/``hi``,
    and ``rel_depth`` = layer / (n_layers − 1)."""
    rows = []
    for m, p in cm.parts.items():
        for c in LAYER_COMPONENTS:
            res = p.layers.get(c)
            if res is None:
                continue
            w = uncertainty.weights(_n_prompts(res), n_boot, seed)
            point, s = _boot(res, w)
            t = res.table
            n_layers = int(t["layer"].max()) + 1
            for layer, i in _strongest_cells(t, point, res.spec.metric).items():
                lo, hi = _q(s[i], level)
                rows.append({"model": m, "component": c, "layer": layer, "n_layers": n_layers,
                             "rel_depth": layer / max(1, n_layers - 1), "pos": int(t["pos"].iloc[i]),
                             "pos_label": str(t["pos_label"].iloc[i]) if "pos_label" in t else "",
                             "effect": float(point[i]), "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def attention_share(cm: CrossModel, n_boot: int = uncertainty.DEFAULT_BOOT, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model: ``share`` = Σ_layers |attn effect| / (Σ |attn| + Σ |mlp|),
    each layer's effect its largest-|effect| cell (as in :func:`depth_profile`),
    with a bootstrap interval (the same cells on every resample)."""
    rows = []
    for m, p in cm.parts.items():
        if any(c not in p.layers for c in LAYER_COMPONENTS):
            continue
        w = uncertainty.weights(_n_prompts(p.layers["attn_out"]), n_boot, seed)
        tot, tot_b = {}, {}
        for c in LAYER_COMPONENTS:
            res = p.layers[c]
            point, s = _boot(res, w)
            t = res.table
            cells = list(_strongest_cells(t, point, res.spec.metric).values())
            tot[c] = float(np.nansum(np.abs(point[cells])))
            tot_b[c] = np.nansum(np.abs(s[cells]), axis=0)
        whole = tot["attn_out"] + tot["mlp_out"]
        share = tot["attn_out"] / whole if whole > 0 else math.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            sb = tot_b["attn_out"] / (tot_b["attn_out"] + tot_b["mlp_out"])
        lo, hi = _q(sb, level)
        rows.append({"model": m, "share": share, "lo": lo, "hi": hi, "attn_total": tot["attn_out"], "mlp_total": tot["mlp_out"]})
    return pd.DataFrame(rows)


def detected(cm: CrossModel, k: float = 2.0, n_boot: int = uncertainty.DEFAULT_BOOT, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model: heads detected by the 2-SD rule in the study's head sweep
    (``n_detected`` of ``n_heads``, ``fraction``), with bootstrap intervals of
    the count (the rule applied on every resample; no-op cells left out)."""
    rows = []
    setting = cm.study.head_spec_setting
    for m, p in cm.parts.items():
        if p.grid is None or setting not in p.grid.results:
            continue
        res = p.grid.results[setting]
        metric = p.grid.specs[setting].metric
        w = uncertainty.weights(_n_prompts(res), n_boot, seed)
        point, s = _boot(replace(res, spec=p.grid.specs[setting]), w)
        keep = measured(res.table, metric).to_numpy()
        det = stats.detect(pd.Series(point[keep]), k)
        n_det = int(det["detected"].sum())
        x = s[keep]
        with np.errstate(invalid="ignore"):
            mean, sd = np.nanmean(x, 0), np.nanstd(x, 0)
            counts = ((np.abs(x - mean) > k * sd) & (sd > 0)).sum(0).astype(float)
        lo, hi = _q(counts, level)
        n = int(keep.sum())
        rows.append({"model": m, "setting": setting, "metric": metric, "n_detected": n_det, "n_heads": n,
                     "fraction": n_det / n if n else math.nan, "lo": lo, "hi": hi,
                     "fraction_lo": lo / n if n else math.nan, "fraction_hi": hi / n if n else math.nan})
    return pd.DataFrame(rows)


def factors(cm: CrossModel, n_boot: int = uncertainty.DEFAULT_BOOT, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model and factor: ``spearman`` = the median Spearman correlation
    of head effects between settings that differ in that factor alone
    (``pairs`` of them), with a bootstrap interval (the median over those
    pairs on every resample); ``most`` marks the model's factor with the
    lowest median (it changes the answer most)."""
    rows = []
    for m, p in cm.parts.items():
        if p.grid is None or len(p.grid.available) < 2:
            continue
        gs = robust.grid_samples(p.grid, n_boot, seed)
        if gs is None:
            continue
        v = np.logical_and.reduce([gs.measured[s] for s in gs.settings])  # the cells every setting measures
        ranks = {s: robust.zranks(gs.boot[s][v].T) for s in gs.settings}
        pranks = {s: robust.zranks(gs.point[s][v][None], np.float64) for s in gs.settings}
        by_factor: dict[str, list[tuple[str, str]]] = {}
        for i, a in enumerate(gs.settings):
            for b in gs.settings[i + 1:]:
                f = stats._differs_in(a, b)
                if f in FACTORS:
                    by_factor.setdefault(f, []).append((a, b))
        part = []
        for f in FACTORS:
            pairs = by_factor.get(f)
            if not pairs:
                continue
            point = float(np.median([robust.spearman_rows(pranks[a], pranks[b])[0] for a, b in pairs]))
            boot = np.median(np.stack([robust.spearman_rows(ranks[a], ranks[b]) for a, b in pairs]), axis=0)
            lo, hi = _q(boot, level)
            part.append({"model": m, "factor": f, "spearman": point, "lo": lo, "hi": hi, "pairs": len(pairs)})
        if part:
            worst = min(part, key=lambda r: r["spearman"])
            for r in part:
                r["most"] = r is worst
            rows += part
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the report


@dataclass
class CrossReport:
    """Everything the view draws, derived once (tidy tables with intervals)."""

    depth: pd.DataFrame
    share: pd.DataFrame
    detected: pd.DataFrame
    factors: pd.DataFrame
    lines: list[str]


def report(cm: CrossModel, n_boot: int = uncertainty.DEFAULT_BOOT, level: float = 0.95, seed: int = 0, k: float = 2.0) -> CrossReport:
    d = depth_profile(cm, n_boot, level, seed)
    sh = attention_share(cm, n_boot, level, seed)
    de = detected(cm, k, n_boot, level, seed)
    fa = factors(cm, n_boot, level, seed)
    return CrossReport(d, sh, de, fa, summary_lines(d, sh, de, fa, level))


def summary_lines(depth: pd.DataFrame, share: pd.DataFrame, det: pd.DataFrame, fac: pd.DataFrame, level: float = 0.95) -> list[str]:
    """Plain sentences, one per comparison and model."""
    pct = f"{level:.0%}"
    out = []
    if len(depth):
        for (m, c), g in depth.groupby(["model", "component"], sort=False):
            top = g.loc[g["effect"].abs().idxmax()]
            out.append(f"{m}: the strongest {c} layer is {int(top['layer'])} of {int(top['n_layers'])} (relative depth {top['rel_depth']:.2f}, "
                       f"at {top['pos_label'] or top['pos']}): effect {top['effect']:.2f} [{top['lo']:.2f}, {top['hi']:.2f}].")
    for r in share.itertuples():
        out.append(f"{r.model}: attention carries {r.share:.0%} of the per-layer effects ({pct} interval {r.lo:.0%}–{r.hi:.0%}), MLPs the rest.")
    for r in det.itertuples():
        out.append(f"{r.model}: {r.n_detected} of {r.n_heads} heads detected ({r.fraction:.1%}; {pct} interval {r.lo:.0f}–{r.hi:.0f} heads) under {r.setting}.")
    if len(fac):
        for m, g in fac.groupby("model", sort=False):
            w = g[g["most"]].iloc[0]
            out.append(f"{m}: the {w['factor']} changes the answer most (median Spearman {w['spearman']:.2f}, {pct} interval "
                       f"{w['lo']:.2f}–{w['hi']:.2f}, over {int(w['pairs'])} pairs of settings).")
    return out


def export_table(rep: CrossReport) -> pd.DataFrame:
    """One long table of every number (the CLI's --out): ``what`` names the comparison."""
    parts = []
    if len(rep.depth):
        d = rep.depth.rename(columns={"effect": "value"}).assign(what="depth")
        parts.append(d)
    if len(rep.share):
        parts.append(rep.share.rename(columns={"share": "value"}).assign(what="attention_share"))
    if len(rep.detected):
        parts.append(rep.detected.rename(columns={"n_detected": "value"}).assign(what="heads_detected"))
    if len(rep.factors):
        parts.append(rep.factors.rename(columns={"spearman": "value"}).assign(what="factor_spearman"))
    if not parts:
        return pd.DataFrame(columns=["what", "model", "value", "lo", "hi"])
    t = pd.concat(parts, ignore_index=True)
    first = ["what", "model", "value", "lo", "hi"]
    return t[first + [c for c in t.columns if c not in first]]


def describe_request(study: Study) -> dict[str, Any]:
    return {"models": ",".join(study.models), "settings": study.settings, **study.base.to_query()}
