"""Results of a known model travel without its weights: a bundle of Gemma
results imports on a machine where Gemma is not installed (the table's
fingerprint names its weights), and results computed on other weights under
that name are refused."""

from __future__ import annotations

from dataclasses import replace

import pytest

from patching.core.config import GEMMA3_270M
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from tests.helpers import registered


def test_gemma_bundle_imports_without_the_weights_and_refuses_other_weights(tmp_path, monkeypatch, tiny_gemma3):
    from patching import bundles, service
    from patching.store import Store

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path / "here"))  # Gemma not installed here
    spec = Spec(model=GEMMA3_270M.name, task="ioi", n_pairs=2, component="head")
    src = Store(tmp_path / "there.sqlite")
    ok = replace(tiny_gemma3, name=GEMMA3_270M.name, fingerprint=GEMMA3_270M.fingerprint)
    with registered(ok):
        res = service.run(spec, src, lm=ok)
    data = bundles.bundle_bytes(src, [res.key])
    here = Store()
    bundles.import_bundle(here, data)
    got = service.lookup(spec, here)  # the table's fingerprint finds it, nothing loaded
    assert got is not None and got.meta["model_fingerprint"] == GEMMA3_270M.fingerprint
    assert got.table.equals(res.table)

    other = replace(tiny_gemma3, name=GEMMA3_270M.name, fingerprint="0123456789abcdef")
    src2 = Store(tmp_path / "elsewhere.sqlite")
    with registered(other):
        res2 = service.run(spec.with_(seed=1), src2, lm=other)
    with pytest.raises(PatchboardError, match="other weights"):
        bundles.import_bundle(Store(tmp_path / "fresh.sqlite"), bundles.bundle_bytes(src2, [res2.key]))
