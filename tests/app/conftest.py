"""The app tier: pages under Streamlit's AppTest."""

from __future__ import annotations

import pytest

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
