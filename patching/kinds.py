"""Every kind of stored result, declared once.

A :class:`Kind` says what a stored row of that kind is: the request it
answers (rebuilt from the row's spec and meta, so its key can be recomputed
and a Library row links back to its view), the page that opens it, its
table's exact columns and pandas dtypes, its per-prompt table's (if it has
one) and its meta's schema. Everything that reads or writes rows uses it:

* the service checks every table it stores against its kind
  (:func:`check_result`), so the code can never store a table an import
  would refuse (the schemas cannot drift from what the methods write: every
  engine test that computes a result goes through that check);
* bundles (:mod:`patching.bundles`) recompute every imported row's key from
  its kind's request, check its tables from their Parquet metadata before
  decoding them, and its meta against the schema;
* the service answers a request only from a row of the request's kind;
* the Library opens each kind on its page.

Adding a kind is one ``Kind(...)`` in :data:`KINDS` (the circuits were added so).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

from patching.core.config import EMBEDDED
from patching.core.errors import PatchboardError
from patching.core.limits import MAX_PAIRS
from patching.core.schema import (
    TEXT,
    Bool,
    Int,
    Json,
    Limits,
    ListOf,
    MapOf,
    Num,
    Obj,
    Opt,
    TableSchema,
    Text,
    Value,
)
from patching.core.spec import METRICS, Spec
from patching.methods.graph import Geometry
from patching.methods.hypothesis_format import DELTAS
from patching.requests import Activation, CircuitCurve, CircuitEval, HypothesisEval, PathSweep, Request
from patching import grid_stats_request
from patching.results import MEASURED

# ---------------------------------------------------------------- tables


@lru_cache(maxsize=256)
def activation_table(component: str, window: int) -> TableSchema:
    """``methods.activation.sweep_table`` (exact and attribution sweeps): a
    row per cell; a window adds each metric's summation baseline and single-layer effect."""
    cols = [("component", TEXT), ("layer", "int64"), ("head", "Int64"), ("pos", "Int64"), ("pos_label", TEXT)]
    cols += [(m, "float64") for m in METRICS]
    if window > 1:
        cols += [(f"{p}_{m}", "float64") for m in METRICS for p in ("sum", "single")]
    # ``measured`` (patching/analysis/measurement.py): rows stored before it
    # lack it and get it from meta["noop_cells"] when read (Result.__post_init__).
    cols += [(MEASURED, "bool")]
    later = (MEASURED, *LATER_METRICS, *(f"{p}_{m}" for m in LATER_METRICS for p in ("sum", "single") if window > 1))
    return TableSchema(tuple(cols), {"component": (component,)}, optional=later)


#: Metric columns added after results were stored (issue 20's prob_diff): rows
#: stored before them lack them (their keys and other numbers are unchanged);
#: asking for one computes the sweep again (patching/service.py).
LATER_METRICS = ("prob_diff",)
#: ``methods.activation.per_prompt_frame``: a row per (cell, prompt).
PER_PROMPT = TableSchema((("cell", "int32"), ("prompt", "int32"), *((m, "float32") for m in METRICS + ("ld_patched",))),
                         limits=Limits(rows=16_000_000, decoded=512 << 20), optional=LATER_METRICS)


@lru_cache(maxsize=8)
def paths_table(form: str = "direct") -> TableSchema:
    """``methods.paths.sweep`` and ``methods.edges.sweep``: a row per sender
    (and position); form ``tl_direct``: a row per sender → receiver edge."""
    cols = [("component", TEXT), ("layer", "Int64"), ("head", "Int64"), ("pos", "Int64"), ("pos_label", TEXT)]
    cols += [("receiver", TEXT)] if form == "tl_direct" else []
    cols += [(m, "float64") for m in METRICS] + [(MEASURED, "bool")]
    return TableSchema(tuple(cols), {"component": ("embed", "head", "mlp")}, optional=(MEASURED, *LATER_METRICS))


PATHS_TABLE = paths_table()
#: ``methods.hypothesis.evaluate``: a row per δ.
HYPOTHESIS_TABLE = TableSchema((("delta", TEXT), ("aue", "float64"), ("ate", "float64"), ("proportion_explained", "float64"),
                                ("max_unexplained", "float64")), {"delta": DELTAS}, Limits(rows=len(DELTAS)))

#: ``methods.circuit_curve``: a row per circuit (one circuit: ``given``; a curve:
#: its ``top``-n circuits and ``random`` draws), every metric (``logit_diff`` is the faithfulness).
CIRCUIT_TABLE = TableSchema((("circuit", TEXT), ("n_edges", "int64"), ("draw", "int64"), ("n_kept", "int64"), ("n_nodes", "int64"),
                             *((m, "float64") for m in METRICS)), {"circuit": ("given", "top", "random")}, Limits(rows=100_000))

# ---------------------------------------------------------------- meta

_TOKENS = ListOf(Text(1_000), 100_000)
_BIG = 10**9
#: Keys every kind's meta may hold (``patching.results.run_meta`` and the
#: methods' own); any other key is plain, bounded JSON, never drawn.
COMMON_META: dict[str, Value] = {
    "n_pairs": Int(1, MAX_PAIRS), "rows": Int(0, _BIG), "seq_len": Int(0, 1_000_000), "n_layers": Int(1, 100_000),
    "n_heads": Int(1, 100_000), "n_kv_heads": Int(1, 100_000), "position_labels": _TOKENS, "clean_tokens": _TOKENS,
    "corrupt_tokens": _TOKENS, "key_positions": ListOf(Int(-1_000_000, 1_000_000), 100_000), "sigma": Opt(Num()),
    "compute_seconds": Num(allow_nan=False), "created_at": Num(allow_nan=False), "warnings": ListOf(Text(4_000), 1_000),
    "model": Text(500), "model_fingerprint": Text(64), "kind": Text(40), "method": Text(40), "ig_steps": Int(0, 100_000),
    "noop_cells": ListOf(Int(0, _BIG), 10_000_000), "part": ListOf(Int(0, _BIG), 2), "synthetic": Bool(),
    "page_query": MapOf(Text(600 * 1024), most=200), "per_prompt_ref": MapOf(ListOf(Num(), 100_000), most=20),
}
PATHS_META: dict[str, Value] = {
    "receivers": Text(200_000), "receivers_described": ListOf(Text(1_000), 100_000), "senders": Text(200_000),
    "sender_positions": Text(50_000), "by_pos": Bool(), "form": Text(40),
}
HYPOTHESIS_META: dict[str, Value] = {
    "name": Text(200), "n_edges": Int(0, _BIG), "n_live_nodes": Int(0, _BIG), "hypothesis_digest": Text(64),
    "hypothesis_warnings": ListOf(Text(4_000), 1_000), "hypothesis": Json(100_000, 10_000),
    "per_row": MapOf(ListOf(Num(), 1_000_000), most=20), "per_row_total": MapOf(ListOf(Num(), 1_000_000), most=20),
    "attribution": Obj({"tokens": ListOf(_TOKENS, MAX_PAIRS), "targets": ListOf(_TOKENS, MAX_PAIRS)},
                       others=ListOf(ListOf(Num(), 100_000), MAX_PAIRS)),
}
CIRCUIT_META: dict[str, Value] = {
    "edges": Text(4_000_000), "n_graph_edges": Int(1, 100_000_000), "shared_prefix": Int(0, 1_000_000),
}
CURVE_META: dict[str, Value] = {
    **CIRCUIT_META, "scores": Text(200_000_000), "sizes": ListOf(Int(1, 100_000_000), 1_000), "score_prompts": Int(1, MAX_PAIRS),
    "score_seed": Int(0, 2**31 - 1), "scoring": Text(40), "score_direction": Text(40), "score_metric": Text(40), "rank": Text(40),
    "score_seconds": Num(allow_nan=False), "eval_seconds": Num(allow_nan=False), "circuits_evaluated": Int(0, _BIG), "ig_rule": Text(20),
    "request": MapOf(Json(100, 1_000), most=40),
}
#: Any other key: plain JSON, bounded.
OTHER_META = Json(1_000_000, 10_000)


def meta_schema(*extra: Mapping[str, Value]) -> Value:
    fields: dict[str, Value] = dict(COMMON_META)
    for e in extra:
        fields.update(e)
    return Obj(fields, others=OTHER_META)


# ---------------------------------------------------------------- kinds


#: A Disagreement grid's statistics (:mod:`patching.studies.disagreement.stored`).
GRID_STATS_META: dict[str, Value] = {
    "settings": ListOf(Text(120), 1_000), "sweep_keys": MapOf(Text(64), key=Text(120), most=1_000),
    "sweep_stamps": MapOf(Num(allow_nan=False), key=Text(64), most=1_000),
    "info": Obj({"k": Int(1, 10_000), "n_boot": Int(0, 100_000), "resampled": Int(0, 1), "level": Num(allow_nan=False),
                 "fdr": Num(allow_nan=False), "seed": Int(0, 2**32),
                 "n_prompts": Int(0, _BIG), "n_noop": Int(0, _BIG), "n_components": Int(0, _BIG), "n_measured": Int(0, _BIG),
                 "stats_version": Text(20)},
                required=("k", "n_boot", "resampled", "level", "fdr", "seed", "n_prompts", "n_noop", "n_components", "n_measured",
                          "stats_version")),
}


@dataclass(frozen=True)
class Kind:
    name: str
    #: The page that opens a row of this kind (``pages/<page>``).
    page: str
    #: The request a stored row answers, from its spec and meta (KeyError or
    #: TypeError when the meta lacks what this kind records).
    request: Callable[[Spec, Mapping[str, Any]], Request]
    #: Its table's schema, given the request's spec and the row's meta.
    table: Callable[[Spec, Mapping[str, Any]], TableSchema]
    #: Its per-prompt table's schema (None: this kind stores none).
    per_prompt: Callable[[Spec], TableSchema | None]
    meta: Value
    #: What the schemas cannot say, checked on import after them (None: nothing more):
    #: ``check(spec, meta, table)`` raises PatchboardError naming the problem.
    check: Callable[[Spec, Mapping[str, Any], Any], None] | None = None

    def key(self, spec: Spec, meta: Mapping[str, Any], fingerprint: str, engine_version: str,
            geometry: Callable[[], Geometry | None]) -> str:
        """The key a row of this kind must have: its request, rebuilt from
        its spec and meta and canonicalised (with ``geometry()`` where the
        request needs the model's geometry), hashed with the weights and engine."""
        req = self.request(spec, meta)
        needs = getattr(req, "needs_geometry", False)
        geo = geometry() if needs else None
        if needs and geo is None:
            raise PatchboardError("bundle", f"the shape of {spec.model[:60]} is unknown here and the row does not record it")
        req = req.canonical(geo)
        return req.spec.cache_key(fingerprint, engine=engine_version, **req.key_extra())


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("activation", "1_Patch.py", lambda spec, meta: Activation(spec),
         lambda spec, meta=None: activation_table(spec.component, spec.window),
         lambda spec: PER_PROMPT if spec.method == "exact" else None, meta_schema()),
    Kind("paths", "4_Paths.py", PathSweep.from_meta, lambda spec, meta=None: paths_table(str((meta or {}).get("form", "direct"))),
         lambda spec: None, meta_schema(PATHS_META)),
    Kind("hypothesis", "4_Paths.py", HypothesisEval.from_meta, lambda spec, meta=None: HYPOTHESIS_TABLE, lambda spec: None,
         meta_schema(HYPOTHESIS_META)),
    Kind("circuit", "6_Circuits.py", CircuitEval.from_meta, lambda spec, meta=None: CIRCUIT_TABLE, lambda spec: PER_PROMPT,
         meta_schema(CIRCUIT_META)),
    Kind("circuit_curve", "6_Circuits.py", CircuitCurve.from_meta, lambda spec, meta=None: CIRCUIT_TABLE, lambda spec: PER_PROMPT,
         meta_schema(CURVE_META)),
    Kind("grid_stats", "3_Disagreement.py", grid_stats_request.request_of, lambda spec, meta=None: grid_stats_request.TABLE, lambda spec: None,
         meta_schema(GRID_STATS_META), grid_stats_request.check_bundled),
)}


def kind_of(name: str) -> Kind:
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise PatchboardError("kind", f"{str(name)[:30]!r} is not one of {', '.join(KINDS)}") from None


def check_result(kind: str, spec: Spec, table, per_prompt=None, meta: Mapping[str, Any] | None = None) -> None:
    """Raise ValueError unless a computed result's tables have its kind's
    exact columns and dtypes (the service calls this before storing)."""
    k = kind_of(kind)
    k.table(spec, meta or {}).check_frame(table, f"a {kind} table")
    pp = k.per_prompt(spec)
    if per_prompt is not None:
        if pp is None:
            raise ValueError(f"a {kind} result with per-prompt values; its kind declares none")
        pp.check_frame(per_prompt, f"a {kind} per-prompt table")


def _known_geometry(model: str) -> Geometry | None:
    from patching.methods.path_request import geometry_for

    return geometry_for(model)


def row_geometry(model: str, meta: Mapping[str, Any]) -> Geometry | None:
    """The geometry a row's key is computed with: the model's, where it is
    known here without reading any path the row names (the embedded model, or
    a model this process loaded); else the one the row records (``n_layers``,
    ``n_heads``, ``n_kv_heads``); None when neither. A row whose recorded
    geometry differs from the known one is refused."""
    from patching.core.registry import REGISTRY

    known = None
    if model == EMBEDDED or REGISTRY.peek(model) is not None:
        known = _known_geometry(model)
    try:
        claimed = Geometry(int(meta["n_layers"]), int(meta["n_heads"]), int(meta.get("n_kv_heads") or meta["n_heads"]))
        if not (claimed.n_layers > 0 and claimed.n_heads > 0 and claimed.n_kv > 0 and claimed.n_heads % claimed.n_kv == 0):
            claimed = None
    except (KeyError, TypeError, ValueError):
        claimed = None
    if known is not None and claimed is not None and (known.n_layers, known.n_heads) != (claimed.n_layers, claimed.n_heads):
        raise PatchboardError("bundle", f"the row says {model[:60]} has {claimed.n_layers} layers x {claimed.n_heads} heads; "
                              f"here it has {known.n_layers} x {known.n_heads}")
    return known or claimed
