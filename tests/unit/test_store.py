"""The result store: round trip, keys, atomic single insert across processes,
bit-exact tables, old (JSON-table) stores, delete."""

import io
import json
import multiprocessing as mp
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest

from patching.store import Store, read_table
from tests.helpers import ROOT


def _table():
    return pd.DataFrame({"component": ["head", "head"], "layer": [0, 1], "head": pd.array([2, None], dtype="Int64"),
                         "pos": pd.array([None, None], dtype="Int64"), "logit_diff": [0.123456789012345, -1.5]})


def _put(path, key, value):
    t = _table()
    t["logit_diff"] = value
    return Store(path).put(key, "activation", "{}", "label", "m", "fp", "1", 1.0, {"b": value}, {"m": 1}, t)


def test_round_trip_keeps_exact_values_and_types(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    assert s.put("k1", "activation", json.dumps({"a": 1}), "lbl", "m", "fp", "1", 2.5, {"clean_logit_diff": 3.0}, {"x": [1, 2]}, _table())
    rec = s.get("k1")
    pd.testing.assert_frame_equal(rec["table"], _table())
    assert rec["spec"] == {"a": 1} and rec["baselines"] == {"clean_logit_diff": 3.0} and rec["meta"] == {"x": [1, 2]}
    assert s.get("missing") is None
    assert list(s.list()["key"]) == ["k1"]


def test_second_insert_of_same_key_is_ignored(tmp_path):
    p = tmp_path / "r.sqlite"
    assert _put(p, "k", 1.0) is True
    assert _put(p, "k", 2.0) is False
    assert Store(p).get("k")["baselines"] == {"b": 1.0}
    assert Store(p).count() == 1


def test_concurrent_processes_write_one_row(tmp_path):
    p = tmp_path / "r.sqlite"
    Store(p)
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_put, [(str(p), "same", float(i)) for i in range(8)])
    assert sum(results) == 1
    con = sqlite3.connect(p)
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_store_holds_no_pickles(tmp_path):
    p = tmp_path / "r.sqlite"
    _put(p, "k", 1.0)
    raw = p.read_bytes() + (tmp_path / "r.sqlite-wal").read_bytes() if (tmp_path / "r.sqlite-wal").exists() else p.read_bytes()
    assert b"\x80\x04\x95" not in raw and b"\x80\x05\x95" not in raw  # pickle protocol 4/5 headers


# ------------------------------------------------------------ exact round trip, old stores, delete

AWKWARD = [1 / 3, 1e-300, -0.0, float("nan"), 0.1 + 0.2, 0.12345678901234567, 2.2250738585072014e-308, 5e-324,
           1.7976931348623157e308, float("inf"), -float("inf"), 123456.78901234567, -9.876543210987654e-7]

#: The schema of stores written before ``table_parquet`` existed.
OLD_SCHEMA = """
CREATE TABLE results (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, spec_json TEXT NOT NULL, label TEXT NOT NULL, model TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL, engine_version TEXT NOT NULL, created_at REAL NOT NULL,
    compute_seconds REAL NOT NULL, baselines_json TEXT NOT NULL, meta_json TEXT NOT NULL, table_json TEXT NOT NULL
);
CREATE INDEX results_created ON results(created_at);
CREATE TABLE datasets (digest TEXT PRIMARY KEY, pairs_json TEXT NOT NULL, created_at REAL NOT NULL);
"""


def _awkward_table():
    n = len(AWKWARD)
    return pd.DataFrame({
        "component": ["head"] * n,
        "layer": pd.array(range(n), dtype="Int64"),
        "head": pd.array([i if i % 3 else None for i in range(n)], dtype="Int64"),
        "pos": pd.array([None] * n, dtype="Int64"),
        "pos_label": ["" if i % 2 else f"tok{i}" for i in range(n)],
        "logit_diff": AWKWARD,
        "prob": AWKWARD[::-1],
        "rank": list(range(n)),  # plain int64 stays int64
    })


def _bits(s):
    import numpy as np

    return s.to_numpy(dtype="float64").view(np.uint64)


def _old_store(path, table):
    con = sqlite3.connect(path)
    con.executescript(OLD_SCHEMA)
    con.execute("INSERT INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                ("old", "activation", json.dumps({"a": 1}), "old label", "m", "fp", "1", 1000.0, 3.0,
                 json.dumps({"clean_logit_diff": 2.0}), json.dumps({"n_pairs": 1}),
                 table.to_json(orient="split", index=False, double_precision=15)))
    con.commit()
    con.close()


@pytest.mark.unit
def test_float64_and_int64_round_trip_bit_for_bit(tmp_path):
    t = _awkward_table()
    s = Store(tmp_path / "r.sqlite")
    assert s.put("k", "activation", "{}", "lbl", "m", "fp", "1", 1.0, {}, {}, t)
    got = Store(tmp_path / "r.sqlite").get("k")["table"]  # a fresh Store, as a second process would open it
    assert list(got.columns) == list(t.columns)
    assert got.dtypes.to_dict() == t.dtypes.to_dict()
    for col in ("logit_diff", "prob"):
        assert (_bits(got[col]) == _bits(t[col])).all(), col  # NaN, -0.0 and the 17th digit included
    for col in ("layer", "head", "pos"):
        assert str(got[col].dtype) == "Int64"
        assert got[col].isna().tolist() == t[col].isna().tolist()
        assert got[col].dropna().tolist() == t[col].dropna().tolist()
    pd.testing.assert_frame_equal(got, t, check_exact=True)
    # the old JSON text could not do this
    via_json = pd.read_json(io.StringIO(t.to_json(orient="split", index=False, double_precision=15)), orient="split")
    assert not (_bits(via_json["logit_diff"]) == _bits(t["logit_diff"])).all()


@pytest.mark.unit
def test_new_rows_store_parquet_not_json(tmp_path):
    p = tmp_path / "r.sqlite"
    Store(p).put("k", "activation", "{}", "lbl", "m", "fp", "1", 1.0, {}, {}, _awkward_table())
    tj, tp = sqlite3.connect(p).execute("SELECT table_json, table_parquet FROM results").fetchone()
    assert tj == "" and isinstance(tp, bytes) and tp[:4] == b"PAR1"
    rec = Store(p).get("k")
    assert "table_json" not in rec and "table_parquet" not in rec
    assert set(rec) == {"key", "kind", "label", "model", "model_fingerprint", "engine_version", "created_at",
                        "compute_seconds", "table", "baselines", "meta", "spec", "per_prompt", "origin", "owner", "provenance"}
    assert rec["origin"] == "computed" and rec["provenance"]["weights"] == "fp" and rec["owner"] is None


@pytest.mark.unit
def test_old_store_opens_reads_and_takes_new_rows(tmp_path):
    p = tmp_path / "old.sqlite"
    old_table = _table()
    _old_store(p, old_table)
    s = Store(p)  # migrates in place
    cols = [r[1] for r in sqlite3.connect(p).execute("PRAGMA table_info(results)")]
    assert cols[-5:] == ["table_parquet", "per_prompt_parquet", "origin", "owner", "provenance_json"] and cols.count("table_parquet") == 1
    Store(p)  # a second open (or a second process) finds the column already there
    rec = s.get("old")
    assert rec["spec"] == {"a": 1} and rec["label"] == "old label" and rec["baselines"] == {"clean_logit_diff": 2.0}
    assert rec["meta"] == {"n_pairs": 1} and "table_json" not in rec and "table_parquet" not in rec
    assert rec["origin"] is None and rec["provenance"] == {"origin": None}  # stored before provenance was recorded
    t = rec["table"]
    assert str(t["head"].dtype) == "Int64" and str(t["pos"].dtype) == "Int64"
    assert t["head"].isna().tolist() == [False, True] and t["pos"].isna().all()
    # read as before this change (15 digits of JSON): the same frame read_table gives, close to the original
    pd.testing.assert_frame_equal(t, read_table(old_table.to_json(orient="split", index=False, double_precision=15)),
                                  check_exact=True)
    assert t["logit_diff"].tolist() == pytest.approx(old_table["logit_diff"].tolist(), rel=1e-14)

    new = _awkward_table()
    assert s.put("new", "paths", "{}", "new label", "m", "fp", "1", 1.0, {}, {}, new)
    assert s.count() == 2 and sorted(s.keys()) == ["new", "old"]
    pd.testing.assert_frame_equal(s.get("new")["table"], new, check_exact=True)
    assert s.get("old")["label"] == "old label"  # still there after the new write
    lst = s.list()
    assert list(lst["key"]) == ["new", "old"] and "table_json" not in lst and "table_parquet" not in lst
    assert list(s.list("paths")["key"]) == ["new"]
    con = sqlite3.connect(p)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _open(path):
    Store(path)
    return True


@pytest.mark.unit
def test_concurrent_opens_of_an_old_store_migrate_once(tmp_path):
    p = tmp_path / "old.sqlite"
    _old_store(p, _table())
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert all(pool.map(_open, [str(p)] * 8))
    cols = [r[1] for r in sqlite3.connect(p).execute("PRAGMA table_info(results)")]
    assert cols.count("table_parquet") == 1
    assert Store(p).count() == 1 and Store(p).get("old") is not None


@pytest.mark.unit
def test_delete(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    _put(tmp_path / "r.sqlite", "a", 1.0)
    _put(tmp_path / "r.sqlite", "b", 2.0)
    assert s.delete("a") is True
    assert s.delete("a") is False and s.delete("missing") is False
    assert s.get("a") is None and s.get("b")["baselines"] == {"b": 2.0}
    assert list(s.keys()) == ["b"] and s.count() == 1
    assert _put(tmp_path / "r.sqlite", "a", 3.0) is True  # the key can be stored again
    assert s.get("a")["baselines"] == {"b": 3.0}


@pytest.mark.unit
def test_import_is_light():
    """``import patching.store`` loads neither torch nor pandas (checked in a fresh interpreter)."""
    code = "import sys, patching.store; print(sorted(m for m in ('torch', 'pandas', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out.strip() == "[]"
