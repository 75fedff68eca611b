"""Schemas for data that arrives from elsewhere: a stored row's meta and tables.

Two kinds of check, both refusing with one :class:`PatchboardError`:

* :class:`Value` trees check JSON values (a result's meta): types, bounds
  on every string, list and number, the keys of each object. Built from
  small constructors (``Int``, ``Num``, ``Text``, ``ListOf``, ``MapOf``,
  ``Obj``...).
* :class:`TableSchema` is a result table's exact columns and pandas dtypes.
  :meth:`TableSchema.check_frame` checks a DataFrame (the service checks
  every table it stores, so the code can never write a table an import
  would refuse); :func:`read_table` checks Parquet bytes *from their
  metadata before decoding anything* (rows, columns, row groups, the
  uncompressed size, every column's name and type), then decodes string
  columns as dictionaries and bounds their decoded size before any string
  is materialised. The Parquet-level types expected are not written by hand
  either: they are read back from a probe table written by the store's own
  writer (:func:`to_parquet`, which ``patching.store`` writes every table with).

No torch here; pandas and pyarrow are imported when a table is checked.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Callable, Iterable, Mapping

from patching.core.errors import PatchboardError, shown

# ---------------------------------------------------------------- JSON values


class Invalid(ValueError):
    """A value does not fit its schema; ``path`` says where (``meta.warnings[3]``)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


Value = Callable[[Any, str], Any]  # check(value, path) -> value, or raise Invalid


def Int(lo: int = 0, hi: int = 10**12) -> Value:
    def check(v: Any, path: str) -> Any:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise Invalid(path, f"{shown(v, 30)} is not a whole number from {lo} to {hi}")
        return v
    return check


def Num(allow_nan: bool = True) -> Value:
    """A JSON number (NaN and infinities allowed unless said otherwise: a
    metric may be undefined)."""
    def check(v: Any, path: str) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (not allow_nan and not math.isfinite(v)):
            raise Invalid(path, f"{shown(v, 30)} is not a number")
        return v
    return check


def Bool() -> Value:
    def check(v: Any, path: str) -> Any:
        if not isinstance(v, bool):
            raise Invalid(path, f"{shown(v, 30)} is not true or false")
        return v
    return check


def Text(most: int = 1_000) -> Value:
    def check(v: Any, path: str) -> Any:
        if not isinstance(v, str):
            raise Invalid(path, f"{shown(v, 30)} is not text")
        if len(v) > most:
            raise Invalid(path, f"text of {len(v)} characters; at most {most}")
        return v
    return check


def OneOf(*choices: Any) -> Value:
    def check(v: Any, path: str) -> Any:
        if not isinstance(v, (str, int, float, bool, type(None))) or v not in choices:
            raise Invalid(path, f"{shown(v, 30)} is not one of {', '.join(map(str, choices))}")
        return v
    return check


def Opt(inner: Value) -> Value:
    """``inner`` or null."""
    def check(v: Any, path: str) -> Any:
        return None if v is None else inner(v, path)
    return check


def ListOf(item: Value, most: int = 100_000) -> Value:
    def check(v: Any, path: str) -> Any:
        if not isinstance(v, list):
            raise Invalid(path, f"expected a list, got {type(v).__name__}")
        if len(v) > most:
            raise Invalid(path, f"{len(v)} items; at most {most}")
        for i, x in enumerate(v):
            item(x, f"{path}[{i}]")
        return v
    return check


def MapOf(item: Value, key: Value | None = None, most: int = 1_000) -> Value:
    """An object with any keys (text, or checked by ``key``), every value ``item``."""
    key = key or Text(200)

    def check(v: Any, path: str) -> Any:
        if not isinstance(v, dict):
            raise Invalid(path, f"expected an object, got {type(v).__name__}")
        if len(v) > most:
            raise Invalid(path, f"{len(v)} keys; at most {most}")
        for k, x in v.items():
            key(k, f"{path} key")
            item(x, f"{path}.{shown(k, 30)}")
        return v
    return check


def Obj(fields: Mapping[str, Value], required: Iterable[str] = (), others: Value | None = None) -> Value:
    """An object whose listed keys are checked when present (``required``
    ones must be); any other key's value is checked by ``others`` (refused
    when None)."""
    required = tuple(required)

    def check(v: Any, path: str) -> Any:
        if not isinstance(v, dict):
            raise Invalid(path, f"expected an object, got {type(v).__name__}")
        for k in required:
            if k not in v:
                raise Invalid(path, f"lacks {k!r}")
        for k, x in v.items():
            if not isinstance(k, str):
                raise Invalid(path, "a key is not text")
            if k in fields:
                fields[k](x, f"{path}.{k}")
            elif others is None:
                raise Invalid(path, f"unexpected key {shown(k, 40)}")
            else:
                others(x, f"{path}.{shown(k, 40)}")
        return v
    return check


def Json(most_nodes: int = 100_000, most_text: int = 10_000) -> Value:
    """Any JSON value, with at most ``most_nodes`` values and strings of at
    most ``most_text`` characters (walked iteratively, stopping at the bound)."""
    def check(v: Any, path: str) -> Any:
        stack, n = [v], 0
        while stack:
            x = stack.pop()
            n += 1
            if n > most_nodes:
                raise Invalid(path, f"more than {most_nodes} values")
            if isinstance(x, str):
                if len(x) > most_text:
                    raise Invalid(path, f"text of {len(x)} characters; at most {most_text}")
            elif isinstance(x, dict):
                stack.extend(x.keys())
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)
            elif not (x is None or isinstance(x, (bool, int, float))):
                raise Invalid(path, f"{type(x).__name__} is not a JSON value")
        return v
    return check


def validate(schema: Value, value: Any, field_name: str, where: str) -> Any:
    """``schema(value)``, a mismatch raised as PatchboardError(field_name, "{where}: {path}: ...")."""
    try:
        return schema(value, where)
    except Invalid as e:
        raise PatchboardError(field_name, str(e)) from None


# ---------------------------------------------------------------- tables

#: Bytes per value of each fixed-width pandas dtype a result table may hold
#: (nullable Int64 keeps a mask byte besides its values).
_WIDTH = {"int64": 8, "Int64": 9, "float64": 8, "int32": 4, "float32": 4, "bool": 1}
#: The text dtype of this pandas (``str`` from pandas 3 on, ``object`` before).
TEXT = "str"


@dataclass(frozen=True)
class Limits:
    """What a table read from elsewhere may cost."""

    rows: int = 1_000_000
    row_groups: int = 64
    #: Uncompressed bytes of every page together (from the file's metadata).
    uncompressed: int = 256 << 20
    #: Decoded size: rows x the fixed-width columns' bytes, plus every text value's bytes.
    decoded: int = 256 << 20
    #: Longest text value (characters).
    text: int = 1_000
    #: Bytes of the file's metadata (its footer: schema and row-group descriptions).
    footer: int = 1 << 20


@dataclass(frozen=True)
class TableSchema:
    """A result table's exact columns: ``columns`` maps each name to the
    pandas dtype the writer gives it (``str``, ``int64``, ``Int64``,
    ``float64``, ``int32``, ``float32``); ``choices`` lists the values a text
    column may take (None: any text)."""

    columns: tuple[tuple[str, str], ...]
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    limits: Limits = Limits()
    #: Columns the current code writes that tables written by an older
    #: version lack (a table read from elsewhere may omit them; never others).
    optional: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.columns)

    @property
    def dtypes(self) -> dict[str, str]:
        return dict(self.columns)

    def missing_ok(self, missing) -> bool:
        return set(missing) <= set(self.optional)

    def check_frame(self, df, what: str = "table", written_now: bool = True) -> None:
        """Raise ValueError unless ``df`` has exactly these columns and dtypes
        (``written_now``: the optional ones too, as the code writes them)."""
        have = {str(c): _dtype_name(df[c].dtype) for c in df.columns}
        extra, missing = sorted(set(have) - set(self.names)), sorted(set(self.names) - set(have))
        if len(have) != len(df.columns) or extra or (missing and (written_now or not self.missing_ok(missing))):
            raise ValueError(f"{what}: columns differ from the kind's schema (unexpected {extra}, missing {missing})")
        bad = [(c, have[c], t) for c, t in self.columns if c in have and have[c] != t]
        if bad:
            c, got, want = bad[0]
            raise ValueError(f"{what}: column {c} is {got}, the kind's schema says {want}")

    @cached_property
    def parquet_types(self) -> dict[str, tuple[str, str]]:
        """name -> (Arrow type, pandas numpy_type) as the store's writer
        writes this schema: read back from a probe table, not written by hand."""
        import pandas as pd
        import pyarrow.parquet as pq

        probe = pd.DataFrame({n: pd.Series([], dtype=t) for n, t in self.columns})
        pf = pq.ParquetFile(io.BytesIO(to_parquet(probe)))
        numpy = {c["name"]: c["numpy_type"] for c in _pandas_meta(pf.schema_arrow)["columns"]}
        return {f.name: (_arrow_name(f.type), numpy[f.name]) for f in pf.schema_arrow}


def to_parquet(table) -> bytes:
    """A tidy table as Parquet bytes (index dropped, dtypes kept in pandas'
    metadata): the one writer of stored tables (``patching.store`` uses it)."""
    buf = io.BytesIO()
    table.to_parquet(buf, engine="pyarrow", index=False)
    return buf.getvalue()


@lru_cache(maxsize=1)
def _writer_codecs() -> tuple[str, ...]:
    """The compression the store's writer uses (read back from a probe table)."""
    import pandas as pd
    import pyarrow.parquet as pq

    md = pq.ParquetFile(io.BytesIO(to_parquet(pd.DataFrame({"x": [1.0], "t": ["a"]})))).metadata
    return tuple(sorted({md.row_group(0).column(c).compression for c in range(md.num_columns)}))


def _dtype_name(dtype) -> str:
    name = str(dtype)
    return TEXT if name in ("object", "string", "str") else name


def _arrow_name(t) -> str:
    name = str(t)
    return "string" if name in ("string", "large_string") else name


def _pandas_meta(schema) -> dict:
    raw = (schema.metadata or {}).get(b"pandas")
    if raw is None:
        raise ValueError("no pandas metadata")
    if len(raw) > 256 << 10:
        raise ValueError("oversized pandas metadata")
    from patching.core.codec import loads_bounded

    meta = loads_bounded(raw.decode("utf-8"), "table")
    if not isinstance(meta, dict) or not isinstance(meta.get("columns"), list):
        raise ValueError("malformed pandas metadata")
    return meta


def read_table(raw: bytes, schema: TableSchema, where: str, field_name: str = "bundle"):
    """Parquet bytes -> DataFrame, refusing (PatchboardError naming
    ``where``) anything but this schema within its limits. Everything the
    metadata can tell is checked before a page is decoded; text columns are
    decoded as dictionaries and their decoded size bounded before a string
    is built."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    lim = schema.limits

    def refuse(message: str) -> PatchboardError:
        return PatchboardError(field_name, f"{where}: {message}")

    text_cols = [n for n, t in schema.columns if t == TEXT and n not in schema.optional]
    # The footer (the file's metadata) is parsed first: bound its own size
    # (its length is the 4 bytes before the closing magic), so thousands of
    # row groups are refused before their descriptions are built.
    if len(raw) < 12 or raw[:4] != b"PAR1" or raw[-4:] != b"PAR1":
        raise refuse("not a readable Parquet file")
    footer = int.from_bytes(raw[-8:-4], "little")
    if footer > lim.footer:
        raise refuse(f"its metadata is {footer} bytes; a result table's is at most {lim.footer}")
    try:
        pf = pq.ParquetFile(io.BytesIO(raw), read_dictionary=text_cols)
        md = pf.metadata
        arrow = pf.schema_arrow
    except Exception:  # noqa: BLE001 - any parse failure is a bad table
        raise refuse("not a readable Parquet file") from None
    if md.num_rows > lim.rows:
        raise refuse(f"{md.num_rows} rows; a table holds at most {lim.rows}")
    if md.num_row_groups > lim.row_groups:
        raise refuse(f"{md.num_row_groups} row groups; at most {lim.row_groups}")
    names = list(arrow.names)
    extra, missing = sorted(set(names) - set(schema.names)), sorted(set(schema.names) - set(names))
    if len(names) != len(set(names)) or extra or not schema.missing_ok(missing):
        missing = [m for m in missing if m not in schema.optional]
        what = f"unexpected column {shown(extra[0], 40)}" if extra else f"column {missing[0]} is missing" if missing else "a column repeats"
        raise refuse(f"not this kind's table ({what})")
    if md.num_columns != len(names):
        raise refuse("its metadata disagrees with its schema")
    # Pages are decompressed by the codec the file names: only the store's own
    # writer's (snappy expands at most ~21x) or none, so what the file's bytes
    # can unpack to is bounded by its size, whatever its metadata claims.
    codecs = {"UNCOMPRESSED", *_writer_codecs()}
    size = 0
    text_bytes = {n: 0 for n in text_cols}
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        if rg.num_columns != len(names):
            raise refuse("a row group disagrees with the schema")
        for c in range(rg.num_columns):
            cc = rg.column(c)
            if cc.compression not in codecs:
                raise refuse(f"compressed with {shown(cc.compression, 20)}; result tables are {' or '.join(sorted(codecs))}")
            size += cc.total_uncompressed_size
            if names[c] in text_bytes:
                text_bytes[names[c]] += cc.total_uncompressed_size
        if size > lim.uncompressed:
            raise refuse(f"unpacks to more than {lim.uncompressed >> 20} MB")
    for name, n in text_bytes.items():
        # Every value at most lim.text characters (4 bytes each in UTF-8), plus page overheads.
        if n > md.num_rows * (4 * lim.text + 16) + (64 << 10):
            raise refuse(f"column {name} unpacks to {n} bytes for {md.num_rows} rows; a text value has at most {lim.text} characters")
    fixed = sum(_WIDTH.get(t, 8) for n, t in schema.columns if t != TEXT and n in names)
    if md.num_rows * fixed > lim.decoded:
        raise refuse(f"decodes to more than {lim.decoded >> 20} MB")
    try:
        pmeta = _pandas_meta(arrow)
    except (ValueError, PatchboardError):
        raise refuse("its pandas metadata is missing or malformed") from None
    if pmeta.get("index_columns") not in ([], None):
        raise refuse("it carries an index; result tables carry none")
    numpy = {c.get("name"): c.get("numpy_type") for c in pmeta["columns"] if isinstance(c, dict)}
    want = schema.parquet_types
    for f in arrow:
        arrow_type = _arrow_name(f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
        exp_arrow, exp_numpy = want[f.name]
        got_numpy = numpy.get(f.name)
        if exp_numpy == TEXT and got_numpy == "object":
            got_numpy = TEXT  # text written by pandas < 3
        if arrow_type != exp_arrow or got_numpy != exp_numpy:
            raise refuse(f"column {f.name} is {arrow_type}/{shown(got_numpy, 20)}, this kind's table has {exp_arrow}/{exp_numpy}")
    try:
        table = pf.read(use_threads=False)
    except Exception:  # noqa: BLE001
        raise refuse("not a readable Parquet file (its pages are corrupt)") from None
    if table.num_rows != md.num_rows:
        raise refuse("its metadata disagrees with its rows")
    decoded = md.num_rows * fixed
    for name in text_cols:
        col = table.column(name)
        for chunk in col.chunks:
            if not pa.types.is_dictionary(chunk.type):
                raise refuse(f"column {name} is not text")
            lengths = pc.utf8_length(chunk.dictionary)
            longest = pc.max(lengths).as_py() or 0
            if longest > lim.text:
                raise refuse(f"column {name} holds a text of {longest} characters; at most {lim.text}")
            allowed = schema.choices.get(name)
            if allowed is not None:
                odd = [v for v in chunk.dictionary.to_pylist() if v not in allowed]
                if odd:
                    raise refuse(f"column {name} holds {shown(odd[0], 40)}, not one of {', '.join(allowed)}")
            decoded += int(pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0)
            if decoded > lim.decoded:
                raise refuse(f"decodes to more than {lim.decoded >> 20} MB")
        table = table.set_column(table.schema.get_field_index(name), name, col.cast(pa.large_string()))
    df = table.to_pandas()
    try:
        schema.check_frame(df, written_now=False)
    except ValueError as e:
        raise refuse(str(e)) from None
    return df
