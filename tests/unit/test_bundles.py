"""Result bundles: export then import gives identical results; bad, truncated,
oversized, edited or hostile bundles are refused with one line and the store
unchanged; other weights are refused unless allowed."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from patching import bundle_format, bundles
from patching.cli import main
from patching.core.errors import PatchboardError
from patching.core.spec import ENGINE_VERSION, Spec
from patching.store import Store

pytestmark = pytest.mark.unit

FP = "0123456789abcdef"
MODEL = "tiny-bundle"  # no fingerprint known here, unlike the embedded model


def _put(store: Store, spec: Spec, seed: int = 0) -> str:
    spec = spec.validated()
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({
        "component": ["head"] * 6, "layer": np.array([0, 0, 0, 1, 1, 1], dtype=np.int64),
        "head": pd.array([0, 1, 2, 0, 1, 2], dtype="Int64"), "pos": pd.array([None] * 6, dtype="Int64"), "pos_label": [""] * 6,
        **{m: rng.normal(size=6) / 3 for m in ("logit_diff", "prob", "logprob", "kl")},
    })
    key = spec.cache_key(FP)
    store.put(key, "activation", spec.to_json(), spec.label(), spec.model, FP, ENGINE_VERSION, 1.5,
              {"clean_logit_diff": 1 / 3}, {"n_pairs": spec.n_pairs, "warnings": []}, table)
    return key


@pytest.fixture
def filled(tmp_path):
    s = Store(tmp_path / "a.sqlite")
    keys = [_put(s, Spec(model=MODEL, task="ioi", n_pairs=2, seed=i, component="head"), i) for i in range(3)]
    return s, keys


def test_export_then_import_is_identical(filled, tmp_path):
    src, keys = filled
    data = bundles.bundle_bytes(src, keys)
    dst = Store(tmp_path / "b.sqlite")
    rep = bundles.import_bundle(dst, data)
    assert rep.added == 3 and rep.already == 0
    for k in keys:
        a, b = src.get(k), dst.get(k)
        pd.testing.assert_frame_equal(a["table"], b["table"], check_exact=True)
        assert a["baselines"] == b["baselines"] and a["meta"] == b["meta"] and a["created_at"] == b["created_at"]
    assert bundles.import_bundle(dst, data).already == 3  # importing twice adds nothing


def test_select_by_filters_and_key_prefix(filled):
    store, keys = filled
    assert set(bundles.select_keys(store)) == set(keys)
    assert bundles.select_keys(store, [keys[1][:10]]) == [keys[1]]
    assert bundles.select_keys(store, kind="paths") == []
    with pytest.raises(PatchboardError, match="key"):
        bundles.select_keys(store, ["abc"])


def _rezip(data: bytes, edit) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    members = {i.filename: src.read(i.filename) for i in src.infolist()}
    members = edit(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return out.getvalue()


def _row_edit(field, value):
    def edit(m):
        row = json.loads(m["results/1.json"])
        row[field] = value
        m["results/1.json"] = json.dumps(row).encode()
        return m
    return edit


BAD = [
    ("truncated", lambda d: d[: len(d) // 2], "not a readable zip"),
    ("not a zip", lambda d: b"\x80\x04\x95 pickle?", "not a readable zip"),
    ("path member", lambda d: _rezip(d, lambda m: {**m, "../evil.py": b"print(1)"}), "unexpected member"),
    ("missing table", lambda d: _rezip(d, lambda m: {k: v for k, v in m.items() if k != "results/2.parquet"}), "missing"),
    ("edited key", lambda d: _rezip(d, _row_edit("key", "f" * 64)), "does not match its spec"),
    ("edited spec", lambda d: _rezip(d, _row_edit("spec_json", json.dumps({"task": "nope"}))), "spec is not valid"),
    ("extra field", lambda d: _rezip(d, _row_edit("code", "import os")), "unexpected"),
    ("deep json", lambda d: _rezip(d, lambda m: {**m, "manifest.json": b"[" * 5000 + b"]" * 5000}), "nested deeper"),
    ("bad table", lambda d: _rezip(d, lambda m: {**m, "results/0.parquet": b"PAR1 not really"}), "not a readable Parquet"),
    ("bad format", lambda d: _rezip(d, lambda m: {**m, "manifest.json": json.dumps({"format": "x"}).encode()}), "format"),
    ("nan time", lambda d: _rezip(d, _row_edit("created_at", float("nan"))), "finite"),
]


@pytest.mark.parametrize("name,mangle,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_bundles_are_refused_and_change_nothing(filled, tmp_path, name, mangle, needle):
    src, keys = filled
    data = mangle(bundles.bundle_bytes(src, keys))
    dst = Store(tmp_path / "b.sqlite")
    _put(dst, Spec(model=MODEL, task="facts", n_pairs=1))
    before = dst.count()
    with pytest.raises(PatchboardError) as e:
        bundles.import_bundle(dst, data)
    assert e.value.field == "bundle" and needle in e.value.message and "\n" not in str(e.value)
    assert dst.count() == before


def test_oversized_and_bomb_bundles_are_refused(filled, tmp_path, monkeypatch):
    src, keys = filled
    data = bundles.bundle_bytes(src, keys)
    monkeypatch.setattr(bundle_format, "MAX_BUNDLE_BYTES", len(data) - 1)
    with pytest.raises(PatchboardError, match="at most"):
        bundles.read_bundle(data)
    monkeypatch.undo()
    bomb = _rezip(data, lambda m: {**m, "results/0.json": b" " * (3 << 20) + m["results/0.json"]})
    monkeypatch.setattr(bundle_format, "MAX_JSON_MEMBER", 1 << 20)
    with pytest.raises(PatchboardError, match="unpacks to more than"):
        bundles.read_bundle(bomb)


def test_other_weights_are_refused_unless_allowed(filled, tmp_path, monkeypatch):
    from patching.core.registry import REGISTRY

    src, keys = filled
    data = bundles.bundle_bytes(src, keys)
    monkeypatch.setattr(REGISTRY, "fingerprint", lambda name: "feedfacefeedface")
    dst = Store(tmp_path / "b.sqlite")
    with pytest.raises(PatchboardError) as e:
        bundles.import_bundle(dst, data)
    assert e.value.field == "model-fingerprint" and dst.count() == 0
    assert bundles.import_bundle(dst, data, allow_other_weights=True).added == 3


def test_cli_export_by_link_and_import(tmp_path, monkeypatch, capsys):
    from patching.core.registry import REGISTRY

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path / "one"))
    monkeypatch.setattr(REGISTRY, "fingerprint", lambda name: FP)
    spec = Spec(task="ioi", n_pairs=3, component="head")
    key = _put(Store(), spec)
    _put(Store(), Spec(task="facts", n_pairs=2))
    out = tmp_path / "view.zip"
    link = "http://localhost:8501/?" + "&".join(f"{k}={v}" for k, v in spec.validated().to_query().items())
    assert main(["export", "--link", link, "--out", str(out)]) == 0
    assert [r["key"] for r in bundles.read_bundle(out.read_bytes()).rows] == [key]
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path / "two"))
    assert main(["import", str(out)]) == 0
    assert Store().get(key) is not None and Store().count() == 1
    capsys.readouterr()
    assert main(["import", str(tmp_path)]) == 2  # a folder
    (tmp_path / "x.zip").write_bytes(b"garbage")
    assert main(["import", str(tmp_path / "x.zip")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "not a regular file" in err and "bundle:" in err
