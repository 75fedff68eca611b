"""The Across models page (pages/6_Across_models.py): a study stored for the
two known models (computed here on tiny stand-ins under their names and
table fingerprints, as an imported bundle leaves it) draws every comparison
without loading a model; the numbers are the CLI's."""

from __future__ import annotations

from dataclasses import replace

import pytest

from patching.core.config import GEMMA3_270M, SMOLLM2
from patching.core.spec import Spec
from tests.helpers import registered
from tests.helpers.apptest import charts, open_page, texts
from ui.plain import md_plain

BASE = Spec(task="ioi", n_pairs=3, seed=2, noise_samples=2)


@pytest.fixture
def stored_study(tmp_path, monkeypatch, tiny_llama, tiny_gemma3):
    from patching.store import Store
    from patching.studies import cross_model

    (tmp_path / "models").mkdir()  # no model installed: the table's fingerprints answer
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PATCHBOARD_ALLOWED_MODELS", raising=False)
    study = cross_model.Study(BASE, (SMOLLM2.name, GEMMA3_270M.name))
    a = replace(tiny_llama, name=SMOLLM2.name, fingerprint=SMOLLM2.fingerprint)
    b = replace(tiny_gemma3, name=GEMMA3_270M.name, fingerprint=GEMMA3_270M.fingerprint)
    with registered(a), registered(b):
        cross_model.compute(study, Store())
    return study


def test_across_models_page_draws_the_stored_study(stored_study):
    from patching.core.registry import REGISTRY
    from patching.store import Store
    from patching.studies import cross_model

    at = open_page("pages/6_Across_models.py", {**BASE.to_query(), "models": "smollm2-135m,gemma-3-270m", "noise-samples": "2"},
                   timeout=180)
    assert not at.exception and not at.error
    assert len(charts(at)) == 4
    shown = texts(at)
    rep = cross_model.report(cross_model.lookup(stored_study, Store(), REGISTRY.fingerprint))
    for line in rep.lines:
        assert md_plain(line) in shown
    assert "python -m patching across-models --models smollm2-135m,gemma-3-270m" in shown or any(
        "across-models" in c.value for c in at.code)
    assert REGISTRY.peek(GEMMA3_270M.name) is None and REGISTRY.peek(SMOLLM2.name) is None
