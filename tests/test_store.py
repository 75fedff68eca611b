"""The result store: round trip, keys, atomic single insert across processes."""

import json
import multiprocessing as mp
import sqlite3

import pandas as pd

from patching.store import Store


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
