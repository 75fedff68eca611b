"""The one service, the one model lock and the one model owner.

* Two different computations (an activation sweep and a q/k/v path sweep) on
  one shared tiny model, from two threads at once, give the serial numbers
  bit for bit (two browser sessions on one server share a model).
* Evicting a model from the registry frees it.
* A result served from the store is bit for bit the computed one (a stored
  spec answered by the CLI without importing torch:
  tests/integration/test_service.py).
"""

from __future__ import annotations

import gc
import threading
import weakref

import pandas as pd
import pytest

from patching import service
from patching.core.pairs import Pair
from patching.core.registry import ModelRegistry
from patching.core.spec import Spec

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
)


def _spec(model: str, **kw) -> Spec:
    return Spec(model=model, task=None, pairs=PAIRS, **kw).validated()


def _computations(lm):
    act = _spec(lm.name, component="head_by_pos", direction="noise")
    paths = service.PathSweep(_spec(lm.name), "*.*:*", senders="*")
    return [act, paths]


def _tables(lm, reqs):
    return [service.run(r, lm=lm, use_store=False).table for r in reqs]


@pytest.mark.engine
def test_two_threads_on_one_model_get_the_serial_numbers(tiny_llama):
    reqs = _computations(tiny_llama)
    serial = _tables(tiny_llama, reqs)
    for _ in range(3):
        got: dict[int, pd.DataFrame] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def work(i):
            try:
                start.wait()
                for _ in range(2):
                    got[i] = service.run(reqs[i], lm=tiny_llama, use_store=False).table
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i in range(2):
            pd.testing.assert_frame_equal(got[i], serial[i], check_exact=True)
    # the shared model's config is back as it was
    assert not getattr(tiny_llama.bridge.cfg, "use_split_qkv_input", False)


@pytest.mark.engine
def test_evicting_a_model_frees_it(tiny_model):
    lm = tiny_model("gpt2", name="tiny-evict")
    reg = ModelRegistry(capacity=2)
    reg.add(lm)
    ref = weakref.ref(lm.bridge)
    del lm
    gc.collect()
    assert ref() is not None and reg.peek("tiny-evict") is not None
    assert reg.evict("tiny-evict")
    gc.collect()
    assert ref() is None, "the evicted model is still referenced somewhere"


@pytest.mark.engine
def test_registry_keeps_at_most_capacity_models(tiny_model):
    reg = ModelRegistry(capacity=1)
    a = tiny_model("gpt2", name="tiny-a")
    ref = weakref.ref(a.bridge)
    reg.add(a)
    del a
    reg.add(tiny_model("gpt2", name="tiny-b"))
    gc.collect()
    assert reg.names() == ["tiny-b"] and ref() is None


@pytest.mark.engine
def test_store_hit_is_bit_for_bit(tiny_llama, store):
    spec = _spec(tiny_llama.name, component="resid_pre")
    fresh = service.run(spec, store=store, lm=tiny_llama)
    hit = service.run(spec, store=store, lm=tiny_llama)
    assert not fresh.from_store and hit.from_store
    pd.testing.assert_frame_equal(hit.table, fresh.table, check_exact=True)
    assert hit.baselines == fresh.baselines
