"""Models, the store and computing, for the pages.

* Models come from the library's one registry (``patching.core.registry``):
  it is the cache, so nothing here keeps a model alive (no
  ``st.cache_resource`` over models: an evicted model is then really freed).
  Every model named in a URL or a widget is checked against
  ``PATCHBOARD_ALLOWED_MODELS`` first.
* :func:`lookup_result` reads the store with the weights' fingerprint known
  without loading (the registry: a loaded model or the embedded sidecar), so a
  stored result shows without loading the model.
* Computing happens only in :func:`run_request` (a page's button), for any
  request of ``patching.service``: a ``Spec``, a ``PathSweep`` or a
  ``HypothesisEval``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import streamlit as st

from patching.core.config import EMBEDDED, check_allowed, installed_models, known
from patching.core.errors import PatchboardError
from patching.core.registry import REGISTRY
from patching.core.spec import Spec
from ui import access
from ui.plain import md_plain

__all__ = ["allowed_env", "allowed_models", "cached_model", "executor", "store", "fingerprint_for", "lookup_result", "run_request",
           "run_spec", "run_grid", "progress_callback", "ProgressBar", "token_preview", "grid_stats", "recompute_button"]


def allowed_env() -> str:
    return os.environ.get("PATCHBOARD_ALLOWED_MODELS", "")


def allowed_models(extra: str | None = None) -> tuple[list[str], bool]:
    """(models offered in the model menu, whether any hub id may be typed).

    The known models installed here (the embedded one first; see
    ``python -m patching models``), then ``PATCHBOARD_ALLOWED_MODELS``
    (comma list; ``*`` = any hub id), then ``extra``: a known model a link
    names that is not installed (its stored results still open)."""
    items = [s.strip() for s in allowed_env().split(",") if s.strip()]
    opts = installed_models()
    opts += [i for i in items if i not in ("*",) and i not in opts]
    if extra and known(extra) is not None and extra not in opts:
        opts.append(extra)
    return opts, "*" in items


def cached_model(name: str, dtype: str = "float32"):
    """The loaded model from the registry (loaded once per process).
    Raises PatchboardError for a model the server does not allow."""
    check_allowed(name, allowed_env())
    return REGISTRY.get(name, dtype)


def executor():
    """Where compute buttons run: the Ray cluster at ``PATCHBOARD_RAY_ADDRESS``
    (one actor pool per server), or None for this process."""
    from patching.executors import from_env

    return from_env()


#: Stored rows kept in memory per server (a stored row never changes).
READ_CACHE_ROWS = 64


@st.cache_resource(show_spinner=False)
def _store(path: str):
    import copy
    import threading
    from collections import OrderedDict

    from patching.store import Store

    class ReadCachedStore(Store):
        """The store, its rows kept once read (first paint of a link opened
        again: no Parquet decoding); every caller gets its own copy of the
        tables and meta. A cached row is used only while the row under its key
        is still the same one (:meth:`Store.stamp`: a computation replaces an
        imported row, from this process or another). Deleting drops the row
        from the cache."""

        def __init__(self, p):
            super().__init__(p)
            self._rows: OrderedDict = OrderedDict()
            self._lock = threading.Lock()

        def get(self, key: str, kind: str | None = None):
            stamp = self.stamp(key)
            if stamp is None:
                return None
            with self._lock:
                got = self._rows.get(key)
                rec = got[1] if got is not None and got[0] == stamp else None
                if rec is not None:
                    self._rows.move_to_end(key)
            if rec is None:
                rec = super().get(key)
                if rec is None:
                    return None
                with self._lock:
                    self._rows[key] = ((rec["kind"], rec["origin"], rec["created_at"]), rec)
                    while len(self._rows) > READ_CACHE_ROWS:
                        self._rows.popitem(last=False)
            if kind is not None and rec["kind"] != kind:
                return None
            out = {k: copy.deepcopy(v) if isinstance(v, (dict, list)) else v for k, v in rec.items()}
            for k in ("table", "per_prompt"):
                if out.get(k) is not None:
                    out[k] = out[k].copy()
            return out

        def delete(self, key: str) -> bool:
            with self._lock:
                self._rows.pop(key, None)
            return super().delete(key)

    return ReadCachedStore(path or None)


def store():
    """The result store (``PATCHBOARD_CACHE_DIR``/results.sqlite), one per path."""
    from patching.store import default_path

    return _store(str(default_path()))


def fingerprint_for(name: str, dtype: str = "float32") -> str | None:
    """The weight fingerprint without loading the model; None when unknown."""
    return REGISTRY.fingerprint(name, dtype)


def lookup_result(request: Any):
    """The stored ``Result`` of a request (a Spec, PathSweep or
    HypothesisEval), or None when it is not stored or the model's
    fingerprint (or shape) is unknown until it loads. Never loads a model;
    raises PatchboardError for an invalid request (e.g. bad receivers)."""
    from patching import service

    spec = request if isinstance(request, Spec) else request.spec
    fp = fingerprint_for(spec.model, spec.dtype)
    if fp is None:
        return None
    return service.lookup(request, store(), fp)


@st.cache_data(show_spinner=False, max_entries=128)
def _chart_spec(key: tuple, _build: Callable[[], Any]) -> dict:
    from ui.charts import spec_of

    return spec_of(_build())


def chart_spec(key: tuple | None, build: Callable[[], Any]) -> dict:
    """The Vega-Lite spec of the chart ``build()`` makes, built once per
    ``key`` (a stored result's key and everything else the chart depends on;
    None: not cached): a link opened again skips Altair entirely."""
    if key is None or not key[0]:
        from ui.charts import spec_of

        return spec_of(build())
    return _chart_spec(key, build)


class ProgressBar:
    """An ``st.progress`` bar with an ETA, called as ``(done, total)``:
    "text: done/total batches", or with ``share_of`` "text — 40% of
    share_of". :meth:`status` renames the work under way (a grid's sweep);
    ``waiting`` is the bar's text until the first call."""

    def __init__(self, text: str = "Computing", share_of: str | None = None, waiting: str | None = None):
        self.text, self.share_of = text, share_of
        self.bar = st.progress(0.0, text=waiting or f"{text}…")
        self.t0 = time.time()

    def status(self, text: str) -> None:
        self.text = text

    def __call__(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        el = time.time() - self.t0
        eta = f", about {el / frac - el:.0f} s left" if 0 < frac < 1 and el > 1 else ""
        shown = f"{self.text} — {frac:.0%} of {self.share_of}" if self.share_of else f"{self.text}: {done}/{total} batches"
        self.bar.progress(min(1.0, frac), text=shown + eta)


def progress_callback(text: str = "Computing") -> Callable[[int, int], None]:
    """A ``(done, total)`` callback driving an ``st.progress`` bar with an ETA."""
    return ProgressBar(text)


def recompute_button(res, key: str) -> None:
    """Under an imported result: a button computing the same view here,
    which replaces the imported numbers (not offered in read-only mode)."""
    if not getattr(res, "imported", False) or access.read_only() or res.request is None:
        return
    if st.button("Compute it here (replaces the imported numbers)", key=f"pb_recompute_{key}", icon=":material/refresh:"):
        if run_request(res.request, "Recomputing", fresh=True) is not None:
            st.rerun()


def run_request(request: Any, progress_text: str = "Computing", fresh: bool = False):
    """Every page's compute button: load the (allowed) model from the
    registry, then the stored result or compute it with a progress bar and
    store it (``fresh``: compute even when an imported row is stored; it is
    replaced). Errors are shown and None returned. Holds no model afterwards."""
    from patching import service
    from patching.store import acting_as
    from ui.html import show_error

    if access.refuse():
        return None
    spec = request if isinstance(request, Spec) else request.spec
    try:
        with acting_as(access.identity()):
            ex = executor()
            if ex is not None:
                check_allowed(spec.model, allowed_env())
                with st.spinner(f"Sending to the Ray cluster ({md_plain(spec.model)} loads once per worker)…"):
                    return service.run(request, store(), progress_callback(progress_text), executor=ex, fresh=fresh)
            with st.spinner(f"Loading {md_plain(spec.model)} (once per server)…"):
                lm = cached_model(spec.model, spec.validated().dtype)
            return service.run(request, store(), progress_callback(progress_text), lm, fresh=fresh)
    except PatchboardError as e:
        show_error(e)
        return None


def attention_view(spec: Spec, layer: int, head: int, pair: int = 0):
    """One head's attention pattern on the clean, corrupt and noised prompts
    (:func:`patching.methods.attention.attention_patterns`), or None with the
    error shown. Loads the (allowed) model."""
    from patching.methods.attention import attention_patterns
    from patching.service import dataset_for
    from ui.html import show_error

    if access.refuse("Loading the model"):
        return None
    try:
        with st.spinner(f"Loading {md_plain(spec.model)} (once per server)…"):
            lm = cached_model(spec.model, spec.validated().dtype)
        ds = dataset_for(spec.validated(), lm)
        gn = spec.with_(corruption="gn")
        return attention_patterns(lm, ds, layer, head, pair, gn.noise_scale, gn.noise_samples, gn.seed)
    except PatchboardError as e:
        show_error(e)
        return None


def run_spec(spec: Spec):
    """An activation sweep (:func:`run_request` with the Patch page's bar)."""
    return run_request(spec, "Patching")


# ---------------------------------------------------------------- prompt tokens


@st.cache_data(show_spinner=False, max_entries=256)
def _preview(spec_json: str, model: str) -> dict:
    import json

    from patching.core import tasks
    from patching.core.models import tokenizer_only

    spec = Spec.from_dict(json.loads(spec_json))
    lm = REGISTRY.peek(model)
    tok = lm.tokenizer if lm is not None else tokenizer_only(model)
    ds = tasks.dataset_for(spec, tok)
    p0 = ds.pairs[0]
    return {
        "clean_tokens": ds.clean_strs,
        "corrupt_tokens": ds.corrupt_strs,
        "key_positions": ds.key_positions[0],
        "position_labels": ds.position_labels,
        "n_pairs": ds.n,
        "answer": p0.answer,
        "counter_answer": p0.counter_answer,
        "clean_text": p0.clean,
        "corrupt_text": p0.corrupt,
        "pairs": tasks.pairs_rows(ds),  # the exact dataset (what ``python -m patching pairs`` writes)
    }


def token_preview(spec: Spec) -> dict:
    """The first pair's tokens for ``spec`` (clean_tokens, corrupt_tokens,
    key_positions, position_labels, answer, counter_answer...) from the
    tokenizer alone, without the model's weights. Raises PatchboardError when
    the prompts are not valid for this model (e.g. unequal lengths); returns
    {"unavailable": reason} when the tokenizer is not at hand."""
    from patching.core.config import can_load

    if not can_load(spec.model) and REGISTRY.peek(spec.model) is None:
        return {"unavailable": f"the tokens of {md_plain(spec.model)} show once the model is loaded (press Run)"}
    return _preview(spec.to_json(), spec.model)


def bundle_button(keys, what: str = "this result", name: str = "patchboard_bundle.zip") -> None:
    """A "Download bundle" button: the stored results ``keys`` as a bundle
    another machine opens with ``python -m patching import`` or the Library."""
    from patching import bundles

    keys = [k for k in keys if k]
    if keys and access.shared():  # other people's results are theirs to export
        owners = store().owners(keys)
        keys = [k for k in keys if access.may_export(owners.get(k))]
    if not keys:
        return
    st.download_button(f"Download bundle ({what})", data=lambda: bundles.bundle_bytes(store(), keys), file_name=name,
                       mime="application/zip", on_click="ignore", icon=":material/package_2:", key=f"pb_bundle_{keys[0][:12]}_{len(keys)}",
                       help="Every number of this view with its spec, for another machine: python -m patching import FILE, "
                            "or Library → Open a bundle.")


def notebook_button(request, name: str = "patchboard_view.ipynb") -> None:
    """A "Download notebook" button: a Jupyter notebook reproducing this
    view's numbers and chart with the library's Python API."""
    from patching.notebook import notebook_json

    st.download_button("Download notebook", data=lambda: notebook_json(request), file_name=name, mime="application/x-ipynb+json",
                       on_click="ignore", icon=":material/code_blocks:", key=f"pb_nb_{name}",
                       help="Run it from the repository root: it reads the same store, or recomputes.")


@st.cache_data(show_spinner=False, max_entries=64)
def _intervals(key: str, metric: str, _res):
    from patching.analysis.uncertainty import result_intervals

    return result_intervals(_res)


def intervals(res):
    """Bootstrap intervals and detection stability of a result's components
    (None without per-prompt values); cached per stored result and metric."""
    if res.per_prompt is None:
        return None
    return _intervals(res.key or str(id(res)), res.spec.metric, res)


def run_grid(base: Spec, settings: list[str]):
    """The Disagreement page's compute button: the grid's missing sweeps
    computed (on the Ray cluster at ``PATCHBOARD_RAY_ADDRESS``, or in this
    process with the allowed model) and stored, with one progress bar for the
    grid. Errors are shown and None returned."""
    from patching.studies.disagreement.grid import load_or_compute_grid
    from ui.html import show_error

    from patching.store import acting_as

    if access.refuse():
        return None
    bar = ProgressBar("Computing", share_of="the grid", waiting="Loading the model…")
    try:
        with acting_as(access.identity()):
            ex = executor()
            lm = cached_model(base.model, base.dtype) if ex is None else None
            return load_or_compute_grid(base, store(), lm, bar, settings, status=bar.status, executor=ex)
    except PatchboardError as e:
        show_error(e)
        return None


#: Grid statistics kept in memory per server (each is a few MB of tables).
GRID_STATS_KEPT = 8


@st.cache_resource(show_spinner=False)
def _grid_stats_memory():
    import threading
    from collections import OrderedDict

    return {"lock": threading.Lock(), "stats": OrderedDict(), "computing": {}}


def grid_stats(base: Spec, settings: list[str], k: int):
    """``(stats, stored, key)``: the statistics of the stored settings among
    ``settings`` (:class:`~patching.studies.disagreement.grid_stats.GridStats`),
    the setting -> sweep key map of those stored and the statistics' store
    key; ``(None, stored, None)`` when fewer than two are stored or the
    weights are unknown. Read from the store (kept
    in memory once read); when not stored yet, computed once from the stored
    sweeps (no model; two sessions asking at once compute it once) and stored
    for every later visit, on this server and in its bundles."""
    import threading

    from patching.studies.disagreement import stored

    fp = fingerprint_for(base.model, base.dtype)
    if fp is None:
        return None, {}, None
    available, stamps = stored.stored_sweeps(store(), stored.sweep_keys(base, settings, fp))
    if len(available) < 2:
        return None, available, None
    key = stored.stats_key(base, available, stamps, fp, k)
    mem = _grid_stats_memory()
    stamp = store().stamp(key)  # the row under the key now (a computation may replace an imported one)
    with mem["lock"]:
        got = mem["stats"].get((key, stamp))
        if got is not None:
            mem["stats"].move_to_end((key, stamp))
            return got, available, key
        gate = mem["computing"].setdefault(key, threading.Lock())
    with gate:  # a second session waits for the first one's computation, then reads it
        with mem["lock"]:
            got = mem["stats"].get((key, stamp))
        if got is None:
            got = stored.load(store(), key)
            if got is None:
                keep = not access.read_only()  # a read-only server shows them without storing them
                with st.spinner(f"Computing the statistics of these {len(available)} settings once (no model"
                                + ("; stored for every later visit)…" if keep else ")…")):
                    got, _, _ = stored.load_or_compute(store(), base, list(available), fp, k, keep=keep)
            stamp = store().stamp(key)
        with mem["lock"]:
            if got is not None:
                mem["stats"][(key, stamp)] = got
                while len(mem["stats"]) > GRID_STATS_KEPT:
                    mem["stats"].popitem(last=False)
            mem["computing"].pop(key, None)
    return got, available, key if got is not None else None
