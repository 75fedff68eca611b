"""The result store: SQLite in WAL mode under the cache folder.

One row per computed spec, keyed by ``Spec.cache_key`` (canonical spec hash +
weight fingerprint + engine version). The spec is stored as JSON beside the
tidy table (JSON, never pickle). A row is written in one transaction with
``INSERT OR IGNORE``: a reader sees a whole result or none, and two processes
that computed the same spec leave exactly one row.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from patching.core.config import cache_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    label TEXT NOT NULL,
    model TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    engine_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    compute_seconds REAL NOT NULL,
    baselines_json TEXT NOT NULL,
    meta_json TEXT NOT NULL,
    table_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_created ON results(created_at);
CREATE TABLE IF NOT EXISTS datasets (
    digest TEXT PRIMARY KEY,
    pairs_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


def default_path() -> Path:
    return cache_dir() / "results.sqlite"


class Store:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=30000")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    # ------------------------------------------------------------ writing

    def put(self, key: str, kind: str, spec_json: str, label: str, model: str, fingerprint: str, engine_version: str,
            compute_seconds: float, baselines: dict, meta: dict, table: pd.DataFrame) -> bool:
        """Insert once; returns False if the key was already stored."""
        table_json = table.to_json(orient="split", index=False, double_precision=15)
        row = (key, kind, spec_json, label, model, fingerprint, engine_version, time.time(), float(compute_seconds),
               json.dumps(baselines, sort_keys=True), json.dumps(meta, sort_keys=True, default=_jsonable), table_json)
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            cur = con.execute("INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)
            con.execute("COMMIT")
            return cur.rowcount == 1
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    # ------------------------------------------------------------ reading

    def get(self, key: str) -> dict[str, Any] | None:
        con = self._connect()
        try:
            r = con.execute("SELECT * FROM results WHERE key=?", (key,)).fetchone()
            cols = [d[0] for d in con.execute("SELECT * FROM results LIMIT 0").description]
        finally:
            con.close()
        if r is None:
            return None
        rec = dict(zip(cols, r))
        rec["table"] = read_table(rec.pop("table_json"))
        rec["baselines"] = json.loads(rec.pop("baselines_json"))
        rec["meta"] = json.loads(rec.pop("meta_json"))
        rec["spec"] = json.loads(rec.pop("spec_json"))
        return rec

    def list(self, kind: str | None = None) -> pd.DataFrame:
        """Every stored result, newest first, without its table."""
        con = self._connect()
        try:
            q = "SELECT key, kind, label, model, created_at, compute_seconds, spec_json FROM results"
            args: tuple = ()
            if kind:
                q += " WHERE kind=?"
                args = (kind,)
            df = pd.read_sql_query(q + " ORDER BY created_at DESC", con, params=args)
        finally:
            con.close()
        df["created"] = pd.to_datetime(df["created_at"], unit="s").dt.strftime("%Y-%m-%d %H:%M")
        return df

    def keys(self) -> Iterator[str]:
        con = self._connect()
        try:
            yield from (r[0] for r in con.execute("SELECT key FROM results"))
        finally:
            con.close()

    def count(self) -> int:
        con = self._connect()
        try:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        finally:
            con.close()


def read_table(table_json: str) -> pd.DataFrame:
    df = pd.read_json(io.StringIO(table_json), orient="split", dtype=False)
    # JSON has no integer-with-missing type: head/pos (empty where they do not
    # apply) come back as nullable Int64, as the engine writes them.
    for col in ("head", "pos", "sender_head", "receiver_head", "sender_pos", "receiver_pos"):
        if col in df.columns:
            df[col] = df[col].astype("Int64")
    return df


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
