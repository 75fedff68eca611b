"""The model menu (ui/panel.py) as a registry: installed known models are
listed, the others are named with the command that adds them, and a link to
a stored result of a known model that is not installed here opens it under
its own name (results travel without the weights)."""

from __future__ import annotations

import pytest

from patching.core.config import GEMMA3_270M
from patching.core.spec import Spec
from tests.helpers import ROOT, registered
from tests.helpers.apptest import charts, open_page, texts
from tests.helpers.store import default_models_dir, link_models


@pytest.fixture
def no_gemma_cache(tmp_path, monkeypatch):
    """A cache where only the embedded model is converted (whatever the
    default cache holds)."""
    (tmp_path / "default").mkdir()
    link_models(tmp_path / "default")  # converts the embedded model once if needed
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smollm2-135m").symlink_to(default_models_dir() / "smollm2-135m", target_is_directory=True)
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PATCHBOARD_ALLOWED_MODELS", raising=False)
    return tmp_path


def test_gemma_result_opens_without_the_weights_labelled(no_gemma_cache, tiny_gemma3):
    """A Gemma result stored under the table's fingerprint (as an imported
    bundle leaves it) draws without the model; the menu keeps its name and
    says how to add it; nothing loads."""
    from dataclasses import replace

    from patching import service
    from patching.core.registry import REGISTRY
    from patching.store import Store

    spec = Spec(model=GEMMA3_270M.name, task="ioi", n_pairs=2, component="attn_out")
    lm = replace(tiny_gemma3, name=GEMMA3_270M.name, fingerprint=GEMMA3_270M.fingerprint)
    with registered(lm):
        service.run(spec, Store(), lm=lm)  # stored under the fingerprint every machine knows
    assert REGISTRY.peek(GEMMA3_270M.name) is None
    at = open_page("app.py", spec.to_query(), timeout=180)
    assert not at.exception and not at.error
    assert charts(at) and "Read from the store" in texts(at)
    menu = at.selectbox(key="pb_w_model")
    assert menu.value == GEMMA3_270M.name and "smollm2-135m" in menu.options
    shown = texts(at)
    assert "not installed here" in shown and "models add gemma-3-270m --accept-gemma-terms" in shown
    assert GEMMA3_270M.fingerprint in shown
    assert REGISTRY.peek(GEMMA3_270M.name) is None


def test_menu_lists_installed_models_and_how_to_add_the_others(no_gemma_cache):
    at = open_page("app.py", {}, timeout=180)
    menu = at.selectbox(key="pb_w_model")
    assert menu.options == ["smollm2-135m"]
    assert "models add gemma-3-270m --accept-gemma-terms" in (menu.help or "")
