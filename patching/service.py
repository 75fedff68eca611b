"""The library's front door: spec in, result out, through the store.

The CLI, the Streamlit pages and scripts all call ``run``; that is what makes
a page's numbers reproducible from the command line with the same spec.
"""

from __future__ import annotations

import threading

import torch
from typing import Callable

from patching.core.data import Dataset, build_dataset
from patching.core.progress import ProgressFn
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel, load_model
from patching.core.spec import ENGINE_VERSION, Spec
from patching.store import Store
from patching.methods.activation import Result, compute

_models: dict[str, LoadedModel] = {}
_lock = threading.Lock()


def get_model(name: str) -> LoadedModel:
    """One loaded copy per model per process."""
    with _lock:
        if name not in _models:
            _models[name] = load_model(name)
        return _models[name]


def dataset_for(spec: Spec, lm: LoadedModel) -> Dataset:
    from patching.core import tasks

    spec = spec.validated()
    if spec.pairs is not None:
        pairs = list(spec.pairs)
    else:
        pairs = tasks.generate(spec.task, lm.tokenizer, spec.n_pairs, spec.seed, ioi_corrupt=spec.ioi_corrupt)
    ds = build_dataset(pairs, lm.tokenizer, spec.corruption, spec.key_positions)
    return check_clean_behaviour(ds, lm)


@torch.no_grad()
def check_clean_behaviour(ds: Dataset, lm: LoadedModel) -> Dataset:
    """Warn (with the number) when the clean run does not prefer the answer."""
    logits = lm.bridge(ds.clean_tokens.to(lm.device))[:, -1, :]
    a = logits.gather(1, ds.answer_ids.to(lm.device)[:, None])[:, 0]
    c = logits.gather(1, ds.counter_ids.to(lm.device)[:, None])[:, 0]
    wrong = int((a <= c).sum())
    if wrong:
        ds.warnings.append(f"the clean run prefers the counter-answer over the answer on {wrong} of {ds.n} pair(s)")
    return ds


def result_from_record(rec: dict) -> Result:
    return Result(spec=Spec.from_dict(rec["spec"]), table=rec["table"], baselines=rec["baselines"], meta=rec["meta"], from_store=True)


def lookup(spec: Spec, store: Store, fingerprint: str) -> Result | None:
    rec = store.get(spec.cache_key(fingerprint))
    if rec is None:
        return None
    res = result_from_record(rec)
    # The stored spec has the metric it was first asked with; show this one.
    res.spec = spec.validated()
    res.meta["created_at"] = rec["created_at"]
    return res


def run(spec: Spec, store: Store | None = None, progress: ProgressFn | None = None, lm: LoadedModel | None = None,
        use_store: bool = True) -> Result:
    """Return the stored result for ``spec`` or compute and store it."""
    spec = spec.validated()
    lm = lm or get_model(spec.model)
    store = store if store is not None else (Store() if use_store else None)
    if store is not None:
        hit = lookup(spec, store, lm.fingerprint)
        if hit is not None:
            return hit
    ds = dataset_for(spec, lm)
    res = compute(spec, lm, ds, progress)
    if store is not None:
        store.put(spec.cache_key(lm.fingerprint), "activation", spec.to_json(), spec.label(), spec.model, lm.fingerprint,
                  ENGINE_VERSION, res.meta["compute_seconds"], res.baselines, res.meta, res.table)
    return res
