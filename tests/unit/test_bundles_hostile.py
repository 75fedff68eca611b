"""Bundles that cannot lie (issue 22): the probe's poisoned and forged bundles,
each refused in one line with the store unchanged; genuine bundles of every
kind still import; imported rows carry their provenance and never pre-empt a
computation; a stored row answers only a request of its own kind.

Memory of the hostile decodes is asserted generously (tracemalloc's peak);
times are printed, never asserted.
"""

from __future__ import annotations

import io
import json
import time
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from patching import bundles
from patching.core.errors import PatchboardError
from patching.core.spec import ENGINE_VERSION, Spec
from patching.store import Store
from tests.helpers import ROOT
from tests.helpers.bundles import (FP, MODEL, activation_table, meta_edit, members, put_activation, put_hypothesis, put_paths, rezip,
                                   row_edit, table_edit)

pytestmark = pytest.mark.unit

SPEC = Spec(model=MODEL, task="ioi", n_pairs=2, seed=0, component="head")


@pytest.fixture
def three(tmp_path):
    """A store with one result of each kind, and its bundle (activation, paths, hypothesis)."""
    s = Store(tmp_path / "src.sqlite")
    keys = [put_activation(s, SPEC), put_paths(s, SPEC), put_hypothesis(s, SPEC)]
    return s, keys, bundles.bundle_bytes(s, keys)


def refused(data: bytes, tmp_path, needle: str, max_mb: float = 50) -> PatchboardError:
    """Import ``data`` into a store holding one other result: refused with
    ``needle`` in one line, the store unchanged, within ``max_mb`` of memory."""
    dst = Store(tmp_path / "dst.sqlite")
    put_activation(dst, Spec(model=MODEL, task="facts", n_pairs=1))
    before = sorted(dst.keys())
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(PatchboardError) as e:
            bundles.import_bundle(dst, data)
    finally:
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    print(f"\n[bundle] refused in {seconds * 1000:.0f} ms, peak {peak / 1e6:.1f} MB: {str(e.value)[:140]}")
    assert e.value.field == "bundle" and needle in e.value.message, str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 700
    assert sorted(dst.keys()) == before
    assert peak < max_mb * 1e6
    return e.value


def test_every_kind_round_trips_with_its_key_recomputed(three, tmp_path):
    src, keys, data = three
    dst = Store(tmp_path / "dst.sqlite")
    rep = bundles.import_bundle(dst, data, name="../../from alice\n.zip")
    assert rep.added == 3 and rep.kinds == {"activation": 1, "paths": 1, "hypothesis": 1}
    for k in keys:
        a, b = src.get(k), dst.get(k)
        pd.testing.assert_frame_equal(a["table"], b["table"], check_exact=True)
        assert b["origin"] == "imported" and a["origin"] == "computed"
        p = b["provenance"]
        assert p["bundle"] == "from alice.zip" and p["weights"] == FP and p["weights_here"] == "unknown" and len(p["bundle_sha256"]) == 64
        assert p["upstream"]["origin"] == "computed"  # where the exporter had it from
    # the owner never travels
    assert all("owner" not in json.loads(raw) for name, raw in members(data).items() if name.endswith(".json") and name != "manifest.json")


# ---------------------------------------------------------------- forged identities

def _hypothesis_under_activation_key(m):
    act, hyp = json.loads(m["results/0.json"]), json.loads(m["results/2.json"])
    hyp["key"] = act["key"]
    m["results/2.json"] = json.dumps(hyp).encode()
    m.pop("results/0.json"), m.pop("results/0.parquet")
    m["results/0.json"], m["results/0.parquet"] = m.pop("results/2.json"), m.pop("results/2.parquet")
    manifest = json.loads(m["manifest.json"])
    manifest["results"] = [dict(manifest["results"][2], key=act["key"]), manifest["results"][1]]
    m["manifest.json"] = json.dumps(manifest).encode()
    return m


FORGED = [
    ("hypothesis under an activation key", _hypothesis_under_activation_key, "key does not match"),
    ("kind relabelled", lambda m: row_edit(0, kind="hypothesis")(m), "cannot be rebuilt"),
    ("hypothesis edited", meta_edit(2, hypothesis={"paths": [{"sender": "embed", "receiver": "logits"}]}), "key does not match"),
    ("paths receivers edited", meta_edit(1, receivers="0.0:q"), "key does not match"),
    ("engine edited", row_edit(0, engine_version="999"), "key does not match"),
    ("manifest lies", lambda m: {**m, "manifest.json": json.dumps({**json.loads(m["manifest.json"]), "results": list(
        reversed(json.loads(m["manifest.json"])["results"]))}).encode()}, "does not describe result"),
    ("duplicate json key", lambda m: {**m, "results/0.json": m["results/0.json"].replace(b'{"baselines_json"', b'{"kind": "paths", "baselines_json"', 1)},
     "appears twice"),
    ("markdown in meta", meta_edit(0, n_layers="![beacon](http://127.0.0.1:9/b.png)"), "not a whole number"),
    ("huge warning", meta_edit(0, warnings=["[Session expired, log in](http://127.0.0.1:9/)" * 200]), "at most 4000"),
    ("provenance forged", row_edit(0, provenance_json=json.dumps({"origin": "mine", "at": 1})), "not one of"),
    ("per-prompt on a hypothesis", lambda m: {**m, "results/2.prompts.parquet": m["results/0.parquet"]}, "carries no per-prompt values"),
]


@pytest.mark.parametrize("name,edit,needle", FORGED, ids=[f[0] for f in FORGED])
def test_forged_bundles_are_refused(three, tmp_path, name, edit, needle):
    refused(rezip(three[2], edit), tmp_path, needle)


# ---------------------------------------------------------------- poisoned tables

def _parquet(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def _with_pandas_meta(df: pd.DataFrame, arrays: dict) -> pa.Table:
    """``arrays`` under the pandas metadata of ``df`` (a table that claims to be a result table)."""
    schema = pa.Schema.from_pandas(df, preserve_index=False)
    return pa.table(arrays).replace_schema_metadata(schema.metadata)


def test_text_layer_column_is_refused_from_metadata(three, tmp_path):
    t = activation_table()
    t["layer"] = t["layer"].astype(str)
    refused(rezip(three[2], table_edit(0, t)), tmp_path, "column layer is string")


def test_extra_or_missing_columns_are_refused(three, tmp_path):
    refused(rezip(three[2], table_edit(0, activation_table().assign(extra=1.0))), tmp_path, "unexpected column 'extra'")
    refused(rezip(three[2], table_edit(0, activation_table().drop(columns=["kl"]))), tmp_path, "column kl is missing")
    refused(rezip(three[2], table_edit(0, activation_table().assign(component="mlp_out"))), tmp_path, "not one of head")


def test_many_row_groups_are_refused_before_decoding(three, tmp_path):
    """The probe's one-row row groups: past 64 refused from the metadata; past a
    1 MB footer refused before the footer is even parsed."""
    t = pd.concat([activation_table()] * 17, ignore_index=True)  # 102 rows, one per row group
    raw = _parquet(pa.Table.from_pandas(t, preserve_index=False), row_group_size=1)
    refused(rezip(three[2], table_edit(0, raw)), tmp_path, "102 row groups; at most 64")
    t = pd.concat([activation_table()] * 500, ignore_index=True)  # 3,000 row groups: a ~3 MB footer
    raw = _parquet(pa.Table.from_pandas(t, preserve_index=False), row_group_size=1)
    data = rezip(three[2], table_edit(0, raw))
    # Refused from the footer's length alone: the bundle and its member are read
    # (their own bytes and zipfile's buffers), the footer is never parsed.
    refused(data, tmp_path, "its metadata is", max_mb=3 * (len(data) + len(raw)) / 1e6 + 1)


def test_a_long_string_from_a_small_parquet_is_refused(three, tmp_path):
    t = activation_table()
    t.loc[0, "pos_label"] = "x" * (64 << 20)
    raw = _parquet(pa.Table.from_pandas(t, preserve_index=False), compression="zstd", compression_level=19)
    assert len(raw) < 100_000  # the probe's: 2 KB of Parquet for a 64 MB string
    refused(rezip(three[2], table_edit(0, raw)), tmp_path, "compressed with 'ZSTD'")
    snappy = _parquet(pa.Table.from_pandas(t.assign(pos_label=["y" * 5_000] * len(t)), preserve_index=False))
    refused(rezip(three[2], table_edit(0, snappy)), tmp_path, "holds a text of 5000 characters")


def test_many_rows_are_refused_from_metadata(three, tmp_path):
    n = 1_200_000
    df = activation_table()
    arrays = {c: pa.array(np.zeros(n, dtype=np.int64)) if c == "layer" else
              pa.array(np.zeros(n)) if df[c].dtype.kind == "f" else
              pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array(["head"])).cast(pa.large_string())
              if c in ("component", "pos_label") else pa.nulls(n, pa.int64()) for c in df.columns}
    raw = _parquet(_with_pandas_meta(df, arrays))
    refused(rezip(three[2], table_edit(0, raw)), tmp_path, "1200000 rows", max_mb=120)


def test_a_flat_json_bomb_is_refused_before_parsing(three, tmp_path):
    bomb = b"[" + b"0," * (40 << 20) + b"0]"  # 80 MB of JSON, a few hundred KB zipped
    data = rezip(three[2], lambda m: {**m, "results/0.json": bomb})
    assert len(data) < 1 << 20
    refused(data, tmp_path, "unpacks to more than", max_mb=60)


def test_an_index_or_foreign_metadata_is_refused(three, tmp_path):
    t = activation_table()
    raw = _parquet(pa.Table.from_pandas(t.set_index("pos_label"), preserve_index=True))
    refused(rezip(three[2], table_edit(0, raw)), tmp_path, "carries an index")
    plain = _parquet(pa.Table.from_pandas(t, preserve_index=False).replace_schema_metadata({}))
    refused(rezip(three[2], table_edit(0, plain)), tmp_path, "pandas metadata is missing")


# ---------------------------------------------------------------- provenance in the store

def test_a_computation_replaces_an_imported_row_but_not_a_computed_one(three, tmp_path):
    src, keys, data = three
    dst = Store(tmp_path / "dst.sqlite")
    bundles.import_bundle(dst, data)
    key = keys[0]
    spec = SPEC.validated()
    other = activation_table(seed=7)

    def compute(table):
        return dst.put(key, "activation", spec.to_json(), spec.label(), MODEL, FP, ENGINE_VERSION, 2.0, {"clean_logit_diff": 0.5},
                       {"n_pairs": 2, "warnings": []}, table)

    assert compute(other) is True  # imported -> replaced by the computation
    got = dst.get(key)
    assert got["origin"] == "computed" and got["baselines"] == {"clean_logit_diff": 0.5}
    pd.testing.assert_frame_equal(got["table"], other, check_exact=True)
    assert compute(activation_table(seed=8)) is False  # computed vs computed: the first stays
    pd.testing.assert_frame_equal(dst.get(key)["table"], other, check_exact=True)
    assert bundles.import_bundle(dst, data).added == 0  # an import never replaces anything
    assert dst.get(key)["origin"] == "computed"


def test_a_row_of_another_kind_is_not_an_answer_and_a_computation_replaces_it(tmp_path):
    from patching import service

    s = Store(tmp_path / "s.sqlite")
    spec = SPEC.validated()
    key = spec.cache_key(FP)
    # An old store poisoned before this change: a hypothesis table under an activation view's key.
    s.put_rows([{"key": key, "kind": "hypothesis", "spec_json": spec.to_json(), "label": "poison", "model": MODEL, "model_fingerprint": FP,
                 "engine_version": ENGINE_VERSION, "created_at": 1.0, "compute_seconds": 0.0, "baselines_json": "{}", "meta_json": "{}",
                 "table_parquet": activation_table().to_parquet(), "per_prompt_parquet": None, "origin": "imported"}])
    assert service.lookup(spec, s, fingerprint=FP) is None
    assert s.get(key, kind="activation") is None and s.get(key)["kind"] == "hypothesis"
    assert put_activation(s, SPEC) == key
    res = service.lookup(spec, s, fingerprint=FP)
    assert res is not None and res.kind == "activation" and res.provenance["origin"] == "computed" and not res.imported


def test_the_shipped_demo_still_imports(tmp_path):
    data = (ROOT / "patching" / "demo" / "demo.zip").read_bytes()
    b = bundles.read_bundle(data)
    from patching.kinds import KINDS

    assert {"activation", "paths", "hypothesis"} <= {r["kind"] for r in b.rows} <= set(KINDS)
    dst = Store(tmp_path / "demo.sqlite")
    rep = bundles.import_rows(dst, b, allow_other_weights=True, name="demo.zip")
    assert rep.added == len(b.rows) and {dst.get(r["key"])["origin"] for r in b.rows} == {"imported"}
