"""The disagreement grid: one model, dataset and component type under every
patching setting; which settings there are and what of them is stored.

A *setting* is ``corruption/metric/direction`` (``"str/logit_diff/denoise"``);
for the IOI task a 4th part says which names the corruption replaces
(``"gn/prob/noise/s1_io"``). A suffix ``@atp`` (``@atp_star``, ``@ig``)
computes the setting by attribution patching instead of exact patching
(``"str/logit_diff/denoise@atp"``), so "how much does the approximation
change the conclusion" reads like any other setting; no suffix is exact, and
the default grid is exact only. The metric is not part of what is computed (one
stored sweep holds every metric), so the grid

    corruption {str, gn} x metric {logit_diff, prob, kl} x direction {denoise, noise}
    [x ioi_corrupt {s2, s1_io, abc} for IOI]

is 12 (36) settings but only 4 (12) sweeps. Each sweep goes through
``patching.service.run`` and so through the store: a sweep already stored is read, never
recomputed, and the page and the CLI read the same rows.

Everything here is pandas/numpy (statistics in ``patching.analysis.stats``);
no streamlit, so the page stays thin and the CLI prints the same numbers. The
tables comparing the settings are in ``patching.studies.disagreement.tables``,
the plain-language parts (summary, mechanisms, the equivalent CLI command) in
``patching.studies.disagreement.text``; both import from here, never the reverse.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from patching.analysis import stats
from patching.analysis.measurement import measured
from patching.core.progress import ProgressFn
from patching.core.errors import PatchboardError
from patching.core.spec import ABLATIONS, CORRUPTIONS, DIRECTIONS, IG_STEPS, IOI_CORRUPT, METHODS, METRICS, Spec
from patching.grid_stats_request import grid_base
from patching.store import Store
from patching.results import Result

#: The default grid's corruptions; ``resample`` is a valid explicit setting
#: (e.g. ``resample/kl/noise``) but not in the default grid, which stays 12 sweeps.
GRID_CORRUPTIONS = ("str", "gn")
GRID_METRICS = ("logit_diff", "prob", "kl")
GRID_DIRECTIONS = DIRECTIONS  # ("denoise", "noise")
GRID_VARIANTS = IOI_CORRUPT  # ("s2", "s1_io", "abc")
#: What may be estimated beside every exact setting (:func:`with_method`; the CLI's --method), as the page offers it.
GRID_METHODS = {"exact": "nothing (exact only)", "atp": "atp (attribution patching)", "atp_star": "atp_star (AtP*)",
                "ig": f"ig (integrated gradients, {IG_STEPS} steps, left rule)"}

# The CLI's columns, in this order; extra columns follow.
AGREEMENT_COLUMNS = ["setting_a", "setting_b", "spearman", "kendall", "topk_jaccard", "sign_flips"]

StatusFn = Callable[[str], None]


# ---------------------------------------------------------------- settings


def has_variants(spec: Spec) -> bool:
    """Whether settings carry the IOI corruption variant (4th part)."""
    return spec.pairs is None and spec.task == "ioi"


def setting_of(spec: Spec) -> str:
    """The setting label of a (validated) spec."""
    parts = [spec.corruption, spec.metric, spec.direction]
    if has_variants(spec):
        parts.append(spec.ioi_corrupt)
    return "/".join(parts)


def default_settings(base: Spec, variants: Sequence[str] | None = None) -> list[str]:
    """The full grid for ``base``'s model/data/component, in a fixed order:
    variant, then corruption, then direction, then metric (so the settings
    that share one stored sweep sit together)."""
    base = grid_base(base)
    if has_variants(base):
        vs = list(variants) if variants is not None else list(GRID_VARIANTS)
        for v in vs:
            if v not in GRID_VARIANTS:
                raise PatchboardError("ioi-corrupt", f"{v!r} is not one of {', '.join(GRID_VARIANTS)}")
    else:
        vs = [None]
    out = []
    for v in vs:
        for c in GRID_CORRUPTIONS:
            for d in GRID_DIRECTIONS:
                for m in GRID_METRICS:
                    out.append("/".join([c, m, d] + ([v] if v else [])))
    return out


def parse_settings(text: str | Sequence[str] | None, base: Spec) -> list[str]:
    """Settings from ``"str/logit_diff/denoise,gn/prob/noise"`` (or a list).

    Each part may be ``*`` (every grid value: str,gn / logit_diff,prob,kl /
    denoise,noise / s2,s1_io,abc). For IOI a 3-part setting means the base
    spec's ``ioi_corrupt``; for other data a 4th part is an error. Returns
    canonical labels (4 parts for IOI), duplicates removed, order kept; None or
    "" gives the full grid. Raises a one-line PatchboardError naming the field.
    """
    base = grid_base(base)
    if text is None:
        return default_settings(base)
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    items = [t for t in items if t]
    if not items:
        return default_settings(base)
    variants = has_variants(base)
    out: dict[str, None] = {}
    for item in items:
        text, at, method = item.partition("@")
        method = method.strip().lower()
        if at and method not in METHODS:
            raise PatchboardError("settings", f"{item!r}: method {method[:20]!r} is not one of {', '.join(METHODS)}")
        suffix = f"@{method}" if at and method != "exact" else ""
        parts = [p.strip().lower() for p in text.split("/")]
        if len(parts) == 4 and not variants:
            raise PatchboardError("settings", f"{item!r}: a 4th part (ioi_corrupt) applies to the ioi task only; use corruption/metric/direction")
        if len(parts) not in (3, 4):
            raise PatchboardError("settings", f"{item!r} is not corruption/metric/direction{'[/ioi_corrupt]' if variants else ''}, e.g. str/logit_diff/denoise")
        if len(parts) == 3:
            parts.append(base.ioi_corrupt)  # ignored (not written) unless the data is IOI
        choices = [("corruption", GRID_CORRUPTIONS, CORRUPTIONS), ("metric", GRID_METRICS, METRICS),
                   ("direction", GRID_DIRECTIONS, DIRECTIONS), ("ioi_corrupt", GRID_VARIANTS, IOI_CORRUPT)]
        expanded = []
        for p, (name, grid_vals, valid) in zip(parts, choices):
            if p == "*":
                expanded.append(list(grid_vals))
            elif p in valid:
                expanded.append([p])
            else:
                raise PatchboardError("settings", f"{item!r}: {name} {p!r} is not one of {', '.join(valid)} (or *)")
        # A wildcard expands in the grid's order (variant, corruption, direction, metric);
        # a wildcard direction leaves out denoise for mean and zero ablation (noising only).
        combos = sorted((c for c in itertools.product(*expanded) if not (parts[2] == "*" and c[0] in ABLATIONS and c[2] == "denoise")),
                        key=_grid_order)
        for combo in combos:
            out.setdefault("/".join(combo[:3] + ((combo[3],) if variants else ())) + suffix, None)
    return list(out)


def with_method(settings: Sequence[str], method: str) -> list[str]:
    """Each setting, then its twin computed by ``method`` (an attribution
    method; exact gives the settings unchanged)."""
    if method not in METHODS:
        raise PatchboardError("method", f"{str(method)[:20]!r} is not one of {', '.join(METHODS)}")
    if method == "exact":
        return list(settings)
    out: dict[str, None] = {}
    for s in settings:
        out.setdefault(s, None)
        out.setdefault(s.partition("@")[0] + f"@{method}", None)
    return list(out)


def page_settings(base: Spec, variants: Sequence[str] | None, method: str = "exact") -> list[str]:
    """The Disagreement page's grid: every setting (for IOI those of the
    chosen ``variants``), each beside its ``method`` twin; validated, so a
    setting the method cannot estimate fails here with the field named."""
    if has_variants(base) and not variants:
        raise PatchboardError("variants", "pick at least one IOI corruption")
    settings = with_method(default_settings(base, variants if has_variants(base) else None), method)
    grid_specs(base, settings)  # e.g. a component attribution does not estimate
    return settings


def default_contrast(available: Sequence[str], variant: str | None, method: str = "exact") -> tuple[str, str]:
    """Settings A and B the page's scatter opens on: the paper's logit diff
    against prob, or with an estimate beside exact, A against its own
    estimate; the first available settings when those are not stored."""
    suffix = f"/{variant}" if variant else ""
    b = f"str/logit_diff/denoise{suffix}@{method}" if method != "exact" else f"str/prob/denoise{suffix}"

    def pick(setting: str, fallback: int) -> str:
        return setting if setting in available else (available[fallback] if len(available) > fallback else "")

    return pick(f"str/logit_diff/denoise{suffix}", 0), pick(b, 1)


def _grid_order(combo: tuple[str, ...]) -> tuple[int, ...]:
    c, m, d, v = combo
    return (IOI_CORRUPT.index(v), CORRUPTIONS.index(c), DIRECTIONS.index(d), GRID_METRICS.index(m) if m in GRID_METRICS else len(GRID_METRICS) + METRICS.index(m))


def spec_for(base: Spec, setting: str) -> Spec:
    """The validated spec that computes ``setting`` on ``base``'s data."""
    p = stats.parse_setting(setting)
    if p is None:
        raise PatchboardError("settings", f"{setting!r} is not corruption/metric/direction")
    kw: dict[str, Any] = dict(corruption=p["corruption"], metric=p["metric"], direction=p["direction"], method=p["method"])
    if p["variant"]:
        kw["ioi_corrupt"] = p["variant"]
    return replace(grid_base(base), **kw).validated()


def grid_specs(base: Spec, settings: str | Sequence[str] | None = None) -> dict[str, Spec]:
    """setting label -> the validated spec that computes it. Model, data,
    component, window, seed and (for gn) noise scale/samples come from
    ``base``; ``settings`` as in :func:`parse_settings` (None: the full grid)."""
    base = grid_base(base)
    return {s: spec_for(base, s) for s in parse_settings(settings, base)}


def _sweep_key(spec: Spec) -> str:
    """Settings with equal keys share one stored sweep (only the metric differs)."""
    return json.dumps(spec.validated().compute_dict(), sort_keys=True, default=str)


def sweeps_of(specs: Mapping[str, Spec]) -> dict[str, list[str]]:
    """Group settings by the sweep that computes them: sweep key -> settings."""
    out: dict[str, list[str]] = {}
    for s, sp in specs.items():
        out.setdefault(_sweep_key(sp), []).append(s)
    return out


# ---------------------------------------------------------------- the grid


@dataclass
class Grid:
    """The settings of one grid and the stored results found for them.

    ``results`` maps each *available* setting to its Result (settings that
    share a sweep share the Result's table); ``missing`` lists settings whose
    sweep is not stored yet. ``computed`` counts sweeps computed by this call.
    """

    base: Spec
    settings: list[str]
    specs: dict[str, Spec]
    results: dict[str, Result] = field(default_factory=dict)
    computed: int = 0
    seconds: float = 0.0

    @property
    def missing(self) -> list[str]:
        return [s for s in self.settings if s not in self.results]

    @property
    def available(self) -> list[str]:
        return [s for s in self.settings if s in self.results]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def n_sweeps(self) -> int:
        return len(sweeps_of(self.specs))

    @property
    def n_missing_sweeps(self) -> int:
        return len(sweeps_of({s: self.specs[s] for s in self.missing}))

    def effects(self) -> dict[str, pd.Series]:
        """setting -> effect vector indexed by component label (L9H6 ...),
        NaN where the cell is not a measurement (zero by construction), so
        that every statistic leaves it out
        (:func:`patching.analysis.measurement.measured_effects`)."""
        labels: dict[int, pd.Index] = {}  # settings that share a sweep share its labels (computing them is the slow part)
        out = {}
        for s in self.available:
            t = self.results[s].table
            if id(t) not in labels:
                labels[id(t)] = pd.Index(stats.component_labels(t), dtype=object)
            v = pd.to_numeric(t[self.specs[s].metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            v = np.where(measured(t).to_numpy(), v, np.nan)
            out[s] = pd.Series(v, index=labels[id(t)], name=self.specs[s].metric)
        return out

    def n_unmeasured(self) -> int:
        """Cells that are zero by construction under at least one available setting."""
        masks = [measured(self.results[s].table).to_numpy() for s in self.available]
        return int((~np.logical_and.reduce(masks)).sum()) if masks else 0

    def baselines(self) -> dict[str, dict[str, float]]:
        """setting -> that sweep's baselines (clean_prob, corrupt_prob, ...),
        the form ``patching.analysis.text.summarize`` reads P_corrupt / P_clean from."""
        return {s: dict(self.results[s].baselines) for s in self.available}

    def status_table(self) -> pd.DataFrame:
        """One row per sweep: its settings, whether stored, when, how long."""
        rows = []
        for _, sets in sweeps_of(self.specs).items():
            sp = self.specs[sets[0]]
            r = self.results.get(sets[0])
            rows.append({
                "corruption": sp.corruption,
                "direction": sp.direction,
                **({"method": sp.method} if any(x.method != "exact" for x in self.specs.values()) else {}),
                **({"ioi_corrupt": sp.ioi_corrupt} if has_variants(sp) else {}),
                "settings": ", ".join(sets),
                "stored": r is not None,
                "compute_seconds": float(r.meta.get("compute_seconds", math.nan)) if r is not None else math.nan,
            })
        return pd.DataFrame(rows)


def lookup_grid(base: Spec, store: Store, fingerprint: str, settings: str | Sequence[str] | None = None) -> Grid:
    """Read whatever of the grid is stored; computes nothing (instant)."""
    from patching.service import lookup

    specs = grid_specs(base, settings)
    grid = Grid(base=grid_base(base), settings=list(specs), specs=specs)
    for _, sets in sweeps_of(specs).items():
        hit = lookup(specs[sets[0]], store, fingerprint)
        if hit is not None:
            for s in sets:
                grid.results[s] = _with_spec(hit, specs[s])
    return grid


def load_or_compute_grid(
    base: Spec,
    store: Store | None,
    lm: Any = None,
    progress: ProgressFn | None = None,
    settings: str | Sequence[str] | None = None,
    status: StatusFn | None = None,
    executor: Any = None,
) -> Grid:
    """Every setting of the grid, computing (and storing) only the sweeps that
    are not stored yet.

    ``progress(done, total)`` is called for the grid as a whole: the unit is
    one patched run of one row (prompt x noise sample), so a GN sweep with 10
    noise samples weighs 10x a STR sweep, as its cost does. ``status(text)``
    (optional) names the sweep being computed. With a remote ``executor``
    (:mod:`patching.executors`) the missing sweeps are farmed out together and
    stored here as each returns; no model is loaded in this process.
    """
    import torch

    from patching.service import get_model, run

    t0 = time.time()
    base = grid_base(base)
    if store is None:
        store = Store()
    if executor is not None and not executor.local:
        return _farm_grid(base, store, progress, settings, status, executor, t0)
    lm = lm or get_model(base.model, base.dtype)
    grid = lookup_grid(base, store, lm.fingerprint, settings)
    todo = [sets for sets in sweeps_of({s: grid.specs[s] for s in grid.missing}).values()]
    weights = [_cost(grid.specs[sets[0]]) for sets in todo]
    total = int(sum(weights))
    done_before = 0
    if progress and total:
        progress(0, total)
    for i, (sets, w) in enumerate(zip(todo, weights)):
        sp = grid.specs[sets[0]]
        if status:
            status(f"sweep {i + 1}/{len(todo)}: {sp.corruption} · {sp.direction}" + (f" · {sp.ioi_corrupt}" if has_variants(sp) else "")
                   + (f" · {sp.method}" if sp.method != "exact" else ""))

        def cell_progress(done: int, tot: int, _base=done_before, _w=w) -> None:
            if progress and tot:
                progress(min(total, _base + int(round(_w * done / tot))), total)

        with torch.no_grad():  # grad mode is per thread; a Streamlit script thread has it on
            res = run(sp, store=store, lm=lm, progress=cell_progress)
        if not res.from_store:
            grid.computed += 1
        for s in sets:
            grid.results[s] = _with_spec(res, grid.specs[s])
        done_before += w
        if progress and total:
            progress(done_before, total)
    grid.seconds = time.time() - t0
    return grid


def _farm_grid(base: Spec, store: Store, progress: ProgressFn | None, settings, status: StatusFn | None, executor: Any, t0: float) -> Grid:
    from patching.core.registry import REGISTRY
    from patching.service import run_many

    fp = REGISTRY.fingerprint(base.model, base.dtype) or executor.fingerprint(base.model, base.dtype)
    grid = lookup_grid(base, store, fp, settings)
    todo = list(sweeps_of({s: grid.specs[s] for s in grid.missing}).values())
    if status and todo:
        status(f"{len(todo)} sweep(s) on {getattr(executor, 'n_workers', '?')} Ray worker(s)")
    results = run_many([grid.specs[sets[0]] for sets in todo], store, progress, executor=executor)
    for sets, res in zip(todo, results):
        if not res.from_store:
            grid.computed += 1
        for s in sets:
            grid.results[s] = _with_spec(res, grid.specs[s])
    grid.seconds = time.time() - t0
    return grid


def _cost(spec: Spec) -> int:
    rows = spec.n_pairs * (spec.noise_samples if spec.corruption in ("gn", "resample") else 1)
    return max(1, int(rows))


def _with_spec(res: Result, spec: Spec) -> Result:
    """The same stored result, labelled with one setting's spec (metric)."""
    return replace(res, spec=spec)


# ---------------------------------------------------------------- tables
