"""The shipped demo bundle's results in a store of a test's own, without the
embedded model: the bundle is imported whatever this machine's weights
(``allow_other_weights``) and read back under the bundle's own fingerprint."""

from __future__ import annotations

from pathlib import Path

from patching import demo


def demo_store(folder: Path):
    """(store, fingerprint) holding every result of patching/demo/demo.zip."""
    from patching import bundles
    from patching.store import Store

    data = demo.DEMO_PATH.read_bytes()
    store = Store(folder / "demo.sqlite")
    bundles.import_bundle(store, data, allow_other_weights=True)
    fps = {r["model_fingerprint"] for r in bundles.read_bundle(data).rows}
    assert len(fps) == 1
    return store, fps.pop()


def demo_result(store, fingerprint: str, **spec_fields):
    """The demo's activation result of the embedded model's Spec(**spec_fields)."""
    from patching import service
    from patching.core.config import EMBEDDED
    from patching.core.spec import Spec

    res = service.lookup(Spec(model=EMBEDDED, **spec_fields), store, fingerprint)
    assert res is not None, f"not in the demo bundle: {spec_fields}"
    return res
