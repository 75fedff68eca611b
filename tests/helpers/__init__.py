"""Helpers shared by the test tiers (plain functions; the fixtures are in the
tiers' ``conftest.py`` files)."""

import os
from contextlib import contextmanager
from pathlib import Path

#: The repository root (app.py, pages/, examples/).
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def registered(lm):
    """``lm`` in the process's model registry for the block, and afterwards
    neither it nor its fingerprint: the next test may register other weights
    under the same name (a remembered fingerprint would make their results
    look computed on other weights)."""
    from patching.core.registry import REGISTRY

    REGISTRY.add(lm)
    try:
        yield lm
    finally:
        REGISTRY.forget(lm.name, getattr(lm, "dtype", "float32"))


@contextmanager
def env_restored(name: str):
    """Whatever the block does to ``os.environ[name]``, it is as before
    afterwards (unset again if it was unset)."""
    old = os.environ.get(name)
    try:
        yield old
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
