"""The one owner of loaded models in a process.

Every caller (the CLI, the service, the app's pages) asks :data:`REGISTRY`
for a model; nothing else keeps a loaded model alive. It holds at most
``PATCHBOARD_MAX_MODELS`` (default 2) models, least recently used first out:
evicting drops the registry's reference and collects garbage, so the weights
are freed as soon as no running computation still holds them.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from typing import Callable

from patching.core.config import known_fingerprint


def _capacity() -> int:
    try:
        return max(1, int(os.environ.get("PATCHBOARD_MAX_MODELS", "2")))
    except ValueError:
        return 2


class ModelRegistry:
    def __init__(self, capacity: int | None = None, loader: Callable | None = None):
        self.capacity = capacity
        self._loader = loader
        self._models: "OrderedDict[str, object]" = OrderedDict()
        self._fingerprints: dict[str, str] = {}
        self._guard = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, name: str, dtype: str = "float32"):
        """The loaded model ``name`` in ``dtype`` (loaded once; concurrent callers wait)."""
        key = _key(name, dtype)
        with self._guard:
            lm = self._models.get(key)
            if lm is not None:
                self._models.move_to_end(key)
                return lm
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:  # one load per name and dtype, others wait for it
            with self._guard:
                lm = self._models.get(key)
            if lm is None:
                loader = self._loader
                if loader is None:
                    from patching.core.models import load_model as loader
                lm = loader(name) if dtype == "float32" else loader(name, dtype=dtype)
                self.add(lm)
            return lm

    def add(self, lm) -> None:
        """Register an already loaded model (tests wrap tiny models so)."""
        key = _key(lm.name, getattr(lm, "dtype", "float32"))
        with self._guard:
            self._models[key] = lm
            self._models.move_to_end(key)
            self._fingerprints[key] = lm.fingerprint
            over = len(self._models) - (self.capacity or _capacity())
            evicted = [self._models.popitem(last=False) for _ in range(max(0, over))]
        if evicted:
            del evicted
            gc.collect()

    def peek(self, name: str, dtype: str = "float32"):
        """The model if loaded, else None (never loads)."""
        with self._guard:
            return self._models.get(_key(name, dtype))

    def evict(self, name: str, dtype: str = "float32") -> bool:
        with self._guard:
            lm = self._models.pop(_key(name, dtype), None)
        if lm is None:
            return False
        del lm
        gc.collect()
        return True

    def forget(self, name: str, dtype: str = "float32") -> None:
        """Evict the model and forget its fingerprint: the name may next stand
        for other weights (tests register different tiny models under one name)."""
        self.evict(name, dtype)
        with self._guard:
            self._fingerprints.pop(_key(name, dtype), None)

    def clear(self) -> None:
        with self._guard:
            self._models.clear()
        gc.collect()

    def names(self) -> list[str]:
        with self._guard:
            return list(self._models)

    def fingerprint(self, name: str, dtype: str = "float32") -> str | None:
        """The weights' fingerprint without loading: a model loaded in this
        process, else the embedded model's sidecar (its float32 file names it
        in every dtype); None while unknown."""
        with self._guard:
            fp = self._fingerprints.get(_key(name, dtype))
        return fp or known_fingerprint(name)


#: The process's registry.
REGISTRY = ModelRegistry()


def get_model(name: str, dtype: str = "float32"):
    return REGISTRY.get(name, dtype)


def _key(name: str, dtype: str) -> str:
    # models.registry_key without importing torch here
    return name if dtype == "float32" else f"{name}@{dtype}"
