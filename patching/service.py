"""The one entry point: lookup, compute and store, for every method.

The CLI, the pages, the disagreement grid and scripts all go through
:func:`run` (stored result, or compute and store it) and :func:`lookup`
(stored result or None, never loading a model), with a *request*
(:mod:`patching.requests`): a :class:`~patching.core.spec.Spec` alone (an
activation sweep), a :class:`PathSweep`, a :class:`HypothesisEval`, a
:class:`CircuitEval` or a :class:`CircuitCurve`. Each
request declares its parameters, knows its canonical form, its cache key and
how to compute itself; the service does the rest the same way for all of
them:

* the model comes from the one registry (:mod:`patching.core.registry`);
* the key is the canonical spec + the request's own parameters + the
  weights' fingerprint + the engine version; a stored spec is answered from
  the store without importing torch or loading the model when the
  fingerprint is known (the embedded model's sidecar, or a model already
  loaded in this process);
* the dataset is built once (:func:`patching.core.tasks.dataset_for`) and
  checked with one clean forward pass;
* every forward pass runs under the model's lock, gradients off unless the
  request takes them (attribution methods; set here once, per request), so
  two computations on one shared model never interleave;
* the result is stored in one transaction; a failure stores nothing. Its
  tables are checked against its kind's declaration first
  (:mod:`patching.kinds`), and it records where it came from (computed
  here; it replaces a row of the same key that was only imported);
* a stored row answers only a request of its own kind.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from patching.core.progress import ProgressFn
from patching.core.registry import REGISTRY, get_model
from patching.core.spec import ENGINE_VERSION, Spec
from patching.kinds import check_result
from patching.methods.graph import Geometry
from patching.methods.path_request import geometry_for
from patching.requests import PATHS_VERSION, Activation, CircuitCurve, CircuitEval, HypothesisEval, PathSweep, Request, as_request
from patching.results import Result
from patching.store import Store, computed_provenance

__all__ = ["Activation", "PathSweep", "HypothesisEval", "CircuitEval", "CircuitCurve", "PATHS_VERSION", "run", "run_many", "lookup", "get_model", "dataset_for", "key_of",
           "preflight"]


# ---------------------------------------------------------------- keys


def key_of(request: Any, fingerprint: str, geo: Geometry | None = None) -> str:
    """The store key of a request (canonicalised with ``geo`` where needed)."""
    req = _canonical(as_request(request), geo)
    return req.spec.cache_key(fingerprint, **req.key_extra())


def _canonical(req: Request, geo: Geometry | None) -> Request:
    if getattr(req, "needs_geometry", False):
        if geo is None:
            raise ValueError("this request needs the model's geometry")
        return req.canonical(geo)
    return req.canonical(None)


# ---------------------------------------------------------------- lookup / run


def lookup(request: Any, store: Store | None = None, fingerprint: str | None = None) -> Result | None:
    """The stored result of ``request``, or None. Never loads a model: the
    fingerprint (and a path request's geometry) must be known without it."""
    req = as_request(request)
    spec = req.spec.validated()
    fp = fingerprint or REGISTRY.fingerprint(spec.model, spec.dtype)
    if fp is None:
        return None
    geo = geometry_for(spec.model) if getattr(req, "needs_geometry", False) else None
    if getattr(req, "needs_geometry", False) and geo is None:
        return None
    req = _canonical(replace(req, spec=spec), geo)
    return _read(req, store if store is not None else Store(), fp, request)


def run(request: Any, store: Store | None = None, progress: ProgressFn | None = None, lm=None,
        use_store: bool = True, executor=None, fresh: bool = False) -> Result:
    """The stored result of ``request``, or compute and store it. With a
    remote ``executor`` (:mod:`patching.executors`) the computation runs
    there and this process, the one writer, stores it. ``fresh``: compute
    even when stored (an imported row of the key is then replaced; a
    computed one is kept, see :meth:`patching.store.Store.put`)."""
    if executor is not None and not executor.local and not fresh:
        return run_many([request], store, progress, executor=executor, use_store=use_store)[0]
    from patching.engine.resources import model_lock, no_graph

    req = as_request(request)
    req = replace(req, spec=req.spec.validated())
    if lm is None:
        preflight(req)
    lm = lm or get_model(req.spec.model, req.spec.dtype)
    check_dtype(req.spec, lm)
    req = _canonical(req, Geometry.of(lm) if getattr(req, "needs_geometry", False) else None)
    store = store if store is not None else (Store() if use_store else None)
    if store is not None and not fresh:
        hit = _read(req, store, lm.fingerprint, request)
        if hit is not None:
            return hit
    # No autograd graph outside the methods' own gradient passes
    # (patching.engine.resources owns the mode, whatever the calling thread's).
    with model_lock(lm.bridge), no_graph():
        ds = dataset_for(req.spec, lm)
        res = req.compute(lm, ds, progress)
    return finish(req, res, lm.fingerprint, store)


def preflight(request: Any) -> None:
    """What can be refused before the model loads, from its config alone: a
    known model not added here, a path request on an architecture it does
    not support, receivers or senders outside the model's geometry."""
    from patching.core.config import can_load, known, not_installed_error
    from patching.methods import path_request

    req = as_request(request)
    name = req.spec.model
    if known(name) is not None and not can_load(name):
        raise not_installed_error(name)
    if getattr(req, "needs_geometry", False):
        path_request.preflight(name)
        geo = geometry_for(name)
        if geo is not None:
            _canonical(req, geo)  # bad receivers, senders or positions: refused now


def run_many(requests: list, store: Store | None = None, progress: ProgressFn | None = None, executor=None,
             use_store: bool = True, lm=None) -> list[Result]:
    """Every request's stored result, computing the missing ones together:
    on a remote ``executor`` they are farmed out in parallel (a large sweep in
    chunks of its components), each stored here as it completes, so a failure
    or an interrupt keeps what finished and stores nothing partial. Locally
    they run one after another."""
    reqs = [as_request(r) for r in requests]
    reqs = [replace(r, spec=r.spec.validated()) for r in reqs]
    if executor is None or executor.local:
        total = len(reqs)
        out = []
        for i, r in enumerate(reqs):
            step = (lambda d, t, _i=i: progress(_i * 1000 + (1000 * d // max(t, 1)), total * 1000)) if progress else None
            out.append(run(r, store, step, lm=lm, use_store=use_store))
        return out
    store = store if store is not None else (Store() if use_store else None)
    out: list[Result | None] = [None] * len(reqs)
    todo: list[tuple[int, Request, str]] = []
    for i, r in enumerate(reqs):
        fp = REGISTRY.fingerprint(r.spec.model, r.spec.dtype) or executor.fingerprint(r.spec.model, r.spec.dtype)
        geo = executor.geometry(r.spec.model, r.spec.dtype) if getattr(r, "needs_geometry", False) else None
        c = _canonical(r, geo)
        hit = _read(c, store, fp, requests[i]) if store is not None else None
        if hit is not None:
            out[i] = hit
        else:
            todo.append((i, c, fp))

    def done(j: int, res: Result) -> None:
        i, c, fp = todo[j]
        if res.meta.get("model_fingerprint", fp) != fp:
            from patching.core.errors import PatchboardError

            raise PatchboardError("model", f"a worker loaded other weights for {c.spec.model!r} than the driver expects; "
                                  "give every node the same copy of the model")
        out[i] = finish(c, res, fp, store)

    if todo:
        executor.compute_many([c for _, c, _ in todo], progress, done)
    return out  # type: ignore[return-value]


def finish(req: Request, res: Result, fingerprint: str, store: Store | None) -> Result:
    """Label a computed result with its request and key, and store it (one
    transaction; this process is the only writer)."""
    res.kind = req.kind
    res.request = req
    res.params = req.params()
    res.key = req.spec.cache_key(fingerprint, **req.key_extra())
    # The kind's declared tables (patching/kinds.py) are what an import of
    # this row will demand: a method that drifted from them is a bug, caught here.
    check_result(req.kind, req.spec, res.table, res.per_prompt, res.meta)
    res.provenance = computed_provenance(fingerprint, ENGINE_VERSION)
    if store is not None:
        row = (res.key, req.kind, req.spec.to_json(), req.label(res), req.spec.model, fingerprint, ENGINE_VERSION,
               res.meta["compute_seconds"], res.baselines, res.meta, res.table)
        kw = {"per_prompt": res.per_prompt, "provenance": res.provenance}
        if not store.put(*row, **kw):
            old = store.get(res.key, kind=req.kind)
            if old is not None and _missing_metrics(old["table"], req.kind) - _missing_metrics(res.table, req.kind):
                # A computed row stored before a metric existed (prob_diff): the same numbers and more.
                store.delete(res.key)
                store.put(*row, **kw)
    return res


def _missing_metrics(table, kind: str) -> set[str]:
    """The metric columns a sweep's table lacks (a row stored before the
    metric existed); hypotheses have none."""
    from patching.core.spec import METRICS

    return set(METRICS) - set(table.columns) if kind in ("activation", "paths") else set()


def check_dtype(spec: Spec, lm) -> None:
    """A model loaded in another dtype than the spec asks for computes other numbers."""
    have = getattr(lm, "dtype", "float32")
    if have != spec.dtype:
        from patching.core.errors import PatchboardError

        raise PatchboardError("dtype", f"the spec asks for {spec.dtype} but the model given is loaded in {have}; "
                              f"load it in {spec.dtype} (get_model(name, {spec.dtype!r})) or set dtype={have}")


def dataset_for(spec: Spec, lm):
    """The spec's dataset for a loaded model, checked with one clean forward
    pass (a warning when the clean run prefers the counter-answer)."""
    from patching.core.tasks import dataset_for as build
    from patching.engine.reference import check_clean_behaviour

    return check_clean_behaviour(build(spec, lm.tokenizer), lm)


def _read(req: Request, store: Store, fingerprint: str, asked: Any) -> Result | None:
    """The stored result under the request's key, if that row is of the
    request's kind (a row of another kind under the key is not an answer:
    it is treated as absent, and a computation replaces it)."""
    key = req.spec.cache_key(fingerprint, **req.key_extra())
    rec = store.get(key, kind=req.kind)
    if rec is None:
        return None
    if as_request(asked).spec.validated().metric in _missing_metrics(rec["table"], req.kind):
        return None  # stored before this metric existed: computing it replaces the row
    meta = rec["meta"]
    meta["created_at"] = rec["created_at"]
    # The stored spec has the metric it was first asked with; show this one.
    spec = as_request(asked).spec.validated() if req.kind == "activation" else req.spec
    req = Activation(spec) if req.kind == "activation" else req
    return Result(spec=spec, table=rec["table"], baselines=rec["baselines"], meta=meta, from_store=True, kind=req.kind, params=req.params(),
                  key=key, per_prompt=rec.get("per_prompt"), request=req, provenance=rec.get("provenance") or {})


# ---------------------------------------------------------------- progress helpers


def quiet(_done: int, _total: int) -> None:
    """A progress callback that says nothing."""


StatusFn = Callable[[str], None]
