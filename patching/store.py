"""The result store: SQLite in WAL mode under the cache folder.

One row per computed spec, keyed by ``Spec.cache_key`` (canonical spec hash +
weight fingerprint + engine version). The spec, baselines and meta are stored
as JSON; the tidy table as Parquet bytes (``table_parquet``), never pickle, so
a result served from the store is bit for bit the one computed: float64 exact
(NaN and -0.0 included), nullable Int64 stays Int64, strings stay strings. A
row is written in one transaction with ``INSERT OR IGNORE``: a reader sees a
whole result or none, and two processes that computed the same spec leave
exactly one row.

Stores written before the Parquet column hold the table as JSON text
(``table_json``, 15 significant digits). Opening such a store adds the column
in place (idempotent; safe when several processes open it at once) and its old
rows are still read from ``table_json``. New rows write ``table_parquet`` and
an empty ``table_json``.

Provenance: each row records where it came from (``origin``: ``computed``
here or ``imported`` from a bundle; ``provenance_json``: when, from which
bundle and weights) and who made it (``owner``: the signed-in user or the
browser session that computed or imported it; empty for the command line).
A computation replaces a stored row of the same key that was imported (or
stored before provenance was recorded, or is of another kind): imported
numbers never pre-empt computed ones. Between computations ``INSERT OR
IGNORE`` stays: two processes computing the same spec leave the first row.
Stores without these columns gain them on opening (old rows: origin unknown).

Importing this module loads neither torch nor pandas; pandas (and pyarrow,
through it) is imported by the methods that build or read a table.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from patching.core.config import cache_dir
from patching.core.schema import to_parquet

if TYPE_CHECKING:
    import pandas as pd

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
    table_json TEXT NOT NULL,
    table_parquet BLOB,
    per_prompt_parquet BLOB,
    origin TEXT,
    owner TEXT,
    provenance_json TEXT
);
CREATE INDEX IF NOT EXISTS results_created ON results(created_at);
CREATE TABLE IF NOT EXISTS datasets (
    digest TEXT PRIMARY KEY,
    pairs_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


#: Columns of a row besides its table, in the order ``get`` returns them.
_META_COLS = ("key", "kind", "spec_json", "label", "model", "model_fingerprint", "engine_version", "created_at",
              "compute_seconds", "baselines_json", "meta_json")
#: A whole row as bundles carry it.
ROW_COLS = _META_COLS + ("table_parquet", "per_prompt_parquet")
#: Where a row came from and who made it (added in place to older stores).
PROVENANCE_COLS = ("origin", "owner", "provenance_json")
COMPUTED, IMPORTED = "computed", "imported"

#: Who the current computation or import is for (a signed-in user or a
#: browser session; None: the command line). The app sets it around a
#: button's work (:func:`acting_as`); the service stores it with each row.
OWNER: contextvars.ContextVar[str | None] = contextvars.ContextVar("patchboard_owner", default=None)


@contextlib.contextmanager
def acting_as(owner: str | None):
    """Rows stored inside this block carry ``owner``."""
    token = OWNER.set(owner)
    try:
        yield
    finally:
        OWNER.reset(token)


def computed_provenance(fingerprint: str, engine_version: str) -> dict[str, Any]:
    """A computed row's provenance: computed here, when, on which weights."""
    return {"origin": COMPUTED, "at": time.time(), "weights": fingerprint, "engine_version": engine_version}


def default_path() -> Path:
    return cache_dir() / "results.sqlite"


class Store:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect()
        try:
            con.executescript(SCHEMA)
            _migrate(con)
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=30000")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    # ------------------------------------------------------------ writing

    def _transaction(self, statements: "list[tuple[str, tuple]]") -> int:
        """Run ``statements`` in one IMMEDIATE transaction (all or none);
        returns the rows they changed."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            changed = sum(con.execute(sql, args).rowcount for sql, args in statements)
            con.execute("COMMIT")
            return changed
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def put(self, key: str, kind: str, spec_json: str, label: str, model: str, fingerprint: str, engine_version: str,
            compute_seconds: float, baselines: dict, meta: dict, table: pd.DataFrame, per_prompt: pd.DataFrame | None = None,
            provenance: dict | None = None, owner: str | None = None) -> bool:
        """Store a computed result; returns False if the key already holds a
        computed row of this kind (kept: the first computation wins). A row of
        the key that was imported, stored before provenance was recorded or is
        of another kind is replaced."""
        row = {"key": key, "kind": kind, "spec_json": spec_json, "label": label, "model": model, "model_fingerprint": fingerprint,
               "engine_version": engine_version, "created_at": time.time(), "compute_seconds": float(compute_seconds),
               "baselines_json": json.dumps(baselines, sort_keys=True), "meta_json": json.dumps(meta, sort_keys=True, default=_jsonable),
               "table_parquet": table_to_parquet(table), "per_prompt_parquet": table_to_parquet(per_prompt) if per_prompt is not None else None,
               "origin": COMPUTED, "owner": owner if owner is not None else OWNER.get(),
               "provenance_json": json.dumps(provenance or computed_provenance(fingerprint, engine_version), sort_keys=True)}
        cols = ROW_COLS + PROVENANCE_COLS
        sql = (f"INSERT INTO results ({', '.join(cols)}, table_json) VALUES ({', '.join('?' * len(cols))}, '') "
               f"ON CONFLICT(key) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in cols if c != 'key')}, table_json='' "
               f"WHERE results.origin IS NOT '{COMPUTED}' OR results.kind IS NOT excluded.kind")
        return self._transaction([(sql, _values(row, cols))]) == 1

    def put_rows(self, rows: "list[dict[str, Any]]") -> int:
        """Insert whole rows (every column of :data:`ROW_COLS`, the tables as
        Parquet bytes, ``created_at`` kept; :data:`PROVENANCE_COLS` when given)
        in ONE transaction: all or none. Keys already stored are left as they
        are (an import never replaces anything). Returns how many were new."""
        cols = ROW_COLS + PROVENANCE_COLS
        sql = f"INSERT OR IGNORE INTO results ({', '.join(cols)}, table_json) VALUES ({', '.join('?' * len(cols))}, '')"
        return self._transaction([(sql, _values(r, cols)) for r in rows])

    def delete(self, key: str) -> bool:
        """Remove one result; returns False if the key was not stored."""
        return self._transaction([("DELETE FROM results WHERE key=?", (key,))]) == 1

    # ------------------------------------------------------------ reading

    def _select(self, key: str):
        con = self._connect()
        try:
            r = con.execute(f"SELECT {', '.join(_META_COLS + PROVENANCE_COLS)}, table_json, table_parquet, per_prompt_parquet "
                            "FROM results WHERE key=?", (key,)).fetchone()
        finally:
            con.close()
        if r is None:
            return None
        n = len(_META_COLS + PROVENANCE_COLS)
        return dict(zip(_META_COLS + PROVENANCE_COLS, r[:n])), r[n:]

    def raw(self, key: str) -> "dict[str, Any] | None":
        """One row as stored (JSON text columns, the tables as Parquet bytes;
        an old JSON table is converted; its provenance, never its owner), for bundles."""
        got = self._select(key)
        if got is None:
            return None
        row, (table_json, table_parquet, per_prompt) = got
        row.pop("owner")
        row.pop("origin")
        row["table_parquet"] = bytes(table_parquet) if table_parquet is not None else table_to_parquet(read_table(table_json))
        row["per_prompt_parquet"] = bytes(per_prompt) if per_prompt is not None else None
        return row

    def owners(self, keys: "list[str]") -> dict[str, str | None]:
        """Who made each stored row of ``keys`` (None: the command line, an old row)."""
        keys = list(keys)
        con = self._connect()
        try:
            out: dict[str, str | None] = {}
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                out.update(con.execute(f"SELECT key, owner FROM results WHERE key IN ({', '.join('?' * len(part))})", part).fetchall())
            return out
        finally:
            con.close()

    def stamp(self, key: str) -> "tuple | None":
        """What identifies the row now under ``key`` (its kind, origin and
        time), without reading its tables: a cache of rows compares it, since
        a computation may replace an imported row."""
        con = self._connect()
        try:
            return con.execute("SELECT kind, origin, created_at FROM results WHERE key=?", (key,)).fetchone()
        finally:
            con.close()

    def get(self, key: str, kind: str | None = None) -> dict[str, Any] | None:
        """One row with its tables and JSON decoded; None when the key is not
        stored, or (``kind`` given) holds a result of another kind."""
        got = self._select(key)
        if got is None:
            return None
        rec, (table_json, table_parquet, per_prompt) = got
        if kind is not None and rec["kind"] != kind:
            return None
        rec["per_prompt"] = table_from_parquet(per_prompt) if per_prompt is not None else None
        rec["provenance"] = _provenance(rec.pop("provenance_json"), rec["origin"])
        if table_parquet is not None:
            rec["table"] = table_from_parquet(table_parquet)
        elif table_json:
            rec["table"] = read_table(table_json)  # a row written before the Parquet column
        else:
            raise ValueError(f"result {key!r} in {self.path} has no table (neither table_parquet nor table_json)")
        rec["baselines"] = json.loads(rec.pop("baselines_json"))
        rec["meta"] = json.loads(rec.pop("meta_json"))
        rec["spec"] = json.loads(rec.pop("spec_json"))
        return rec

    def list(self, kind: str | None = None, with_meta: bool = False) -> pd.DataFrame:
        """Every stored result, newest first, without its table (with its
        meta JSON text when ``with_meta``)."""
        import pandas as pd

        con = self._connect()
        try:
            q = ("SELECT key, kind, label, model, model_fingerprint, engine_version, created_at, compute_seconds, spec_json, origin, owner, "
                 "length(meta_json) + length(table_json) + coalesce(length(table_parquet), 0) + coalesce(length(per_prompt_parquet), 0) AS bytes"
                 + (", meta_json" if with_meta else "") + " FROM results")
            args: tuple = ()
            if kind:
                q += " WHERE kind=?"
                args = (kind,)
            df = pd.read_sql_query(q + " ORDER BY created_at DESC", con, params=args)
        finally:
            con.close()
        df["created"] = pd.to_datetime(df["created_at"], unit="s").dt.strftime("%Y-%m-%d %H:%M")
        return df

    def stamps(self, keys: "list[str]") -> "dict[str, float]":
        """``created_at`` of each stored key among ``keys`` (absent keys are
        left out): one query, no table read (what a grid's statistics are keyed by)."""
        out: dict[str, float] = {}
        con = self._connect()
        try:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i:i + 500])
                q = f"SELECT key, created_at FROM results WHERE key IN ({', '.join('?' * len(chunk))})"
                out.update({k: float(t) for k, t in con.execute(q, chunk)})
        finally:
            con.close()
        return out

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


def _migrate(con: sqlite3.Connection) -> None:
    """Bring a store written by an older Patchboard up to the current schema, in
    place: add ``table_parquet`` (old rows keep their ``table_json``) and the
    provenance columns (old rows: NULL, origin unknown). Another
    process may add it between our check and our ALTER; its "duplicate column"
    error is success."""
    have = {r[1] for r in con.execute("PRAGMA table_info(results)")}
    for col, sql_type in (("table_parquet", "BLOB"), ("per_prompt_parquet", "BLOB"), ("origin", "TEXT"), ("owner", "TEXT"),
                          ("provenance_json", "TEXT")):
        if col in have:
            continue
        try:
            con.execute(f"ALTER TABLE results ADD COLUMN {col} {sql_type}")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e).lower():
                raise


def table_to_parquet(table: pd.DataFrame) -> bytes:
    """The tidy table as Parquet bytes (index dropped, dtypes kept in pandas' metadata)."""
    return to_parquet(table)


def table_from_parquet(blob: bytes) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(blob), engine="pyarrow")


def read_table(table_json: str) -> pd.DataFrame:
    """A table stored as JSON text (rows written before ``table_parquet``)."""
    import pandas as pd

    df = pd.read_json(io.StringIO(table_json), orient="split", dtype=False)
    # JSON has no integer-with-missing type: head/pos (empty where they do not
    # apply) come back as nullable Int64, as the engine writes them.
    for col in ("head", "pos", "sender_head", "receiver_head", "sender_pos", "receiver_pos"):
        if col in df.columns:
            df[col] = df[col].astype("Int64")
    return df


def _values(row: dict[str, Any], cols: tuple[str, ...]) -> tuple:
    return tuple(sqlite3.Binary(row[c]) if c.endswith("_parquet") and row.get(c) is not None else row.get(c) for c in cols)


def _provenance(text: str | None, origin: str | None) -> dict[str, Any]:
    """A row's provenance (``{"origin": None}`` for rows stored before it was recorded)."""
    try:
        p = json.loads(text) if text else {}
    except ValueError:
        p = {}
    p = p if isinstance(p, dict) else {}
    p["origin"] = origin
    return p


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
