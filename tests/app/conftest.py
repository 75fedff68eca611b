"""The app tier: pages under Streamlit's AppTest."""

from __future__ import annotations

import pytest

from tests.helpers import registered

EMBEDDED = "smollm2-135m"


@pytest.fixture(autouse=True)
def embedded_model_unloaded(request):
    """Pages must draw stored results without loading the model, and some
    tests assert the registry never got it: so each app test starts with the
    embedded model out of the registry, whichever test of another tier loaded
    it before (test order must not matter), and it is put back afterwards.
    Tests on the real grid keep it: their page computes with it."""
    if "real_grid" in request.fixturenames:
        yield
        return
    from patching.core.registry import REGISTRY

    lm = REGISTRY.peek(EMBEDDED)
    if lm is not None:
        REGISTRY.evict(EMBEDDED)
    try:
        yield
    finally:
        if lm is not None and REGISTRY.peek(EMBEDDED) is None:
            REGISTRY.add(lm)


@pytest.fixture
def env_model(tiny_llama):
    """The model ``env`` registers as tiny-llama (a module overrides this
    fixture to register another)."""
    return tiny_llama


@pytest.fixture
def env(tmp_path, monkeypatch, env_model):
    """A fresh store and ``env_model`` registered and allowed as tiny-llama,
    for pages that compute (tests/app/test_pages.py overrides ``env`` with
    its stored results)."""
    import streamlit as st

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATCHBOARD_ALLOWED_MODELS", "tiny-llama")
    with registered(env_model):
        yield tmp_path
    st.cache_resource.clear()
