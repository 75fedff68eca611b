"""Reading a result bundle (the format :mod:`patching.bundles` writes), and
everything it must be before a row reaches a store: member names, counts and
sizes; the manifest against the rows; every row's key recomputed from its
kind's request; meta against its kind's schema; every table checked from its
Parquet metadata before it is decoded. :func:`read_bundle` returns a
:class:`Bundle` of checked rows or raises PatchboardError("bundle", ...)
naming the first problem; nothing is written here.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

from patching.core.codec import loads_bounded
from patching.core.errors import PatchboardError, shown
from patching.core.schema import Int, Json, ListOf, MapOf, Num, Obj, OneOf, Opt, Text, read_table, validate
from patching.core.spec import Spec
from patching.kinds import KINDS, kind_of, row_geometry
from patching.store import ROW_COLS

FORMAT = "patchboard.bundle/1"
#: Largest bundle file accepted (bytes, compressed).
MAX_BUNDLE_BYTES = 256 << 20
#: Largest total of the members once uncompressed, and of one table member.
MAX_UNPACKED_BYTES = 1 << 30
MAX_MEMBER_BYTES = 256 << 20
#: Largest JSON member (a result's row, the manifest): parsed in well under a second.
MAX_JSON_MEMBER = 16 << 20
#: Most results in one bundle.
MAX_RESULTS = 10_000
#: Most a bundle may unpack to, as a multiple of its own size (results
#: compress 1.5-10x; a zip bomb compresses 1,000x).
MAX_RATIO = 100
#: What a bundle uploaded in the app may unpack to (its upload is capped by
#: Streamlit's server.maxUploadSize; larger bundles go through the CLI).
MAX_UNPACKED_APP = 64 << 20

_KINDS = tuple(KINDS)
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_TEXT_FIELDS = ("key", "kind", "spec_json", "label", "model", "model_fingerprint", "engine_version", "baselines_json", "meta_json")
#: A row's JSON member: these fields exactly (``provenance_json`` optional: older bundles lack it).
_ROW_FIELDS = tuple(c for c in ROW_COLS if not c.endswith("_parquet"))
_OPTIONAL_FIELDS = ("provenance_json",)

#: What a manifest holds (other keys: plain bounded JSON, for newer versions).
MANIFEST = Obj({
    "format": OneOf(FORMAT), "created_at": Num(allow_nan=False), "engine_version": Text(40), "packages": MapOf(Text(100), most=100),
    "results": ListOf(Obj({"key": Text(64), "kind": Text(40), "label": Text(2_000), "model": Text(500)},
                          required=("key", "kind", "label", "model")), MAX_RESULTS),
}, required=("format", "results"), others=Json(10_000, 2_000))
#: Where the exporting machine had a row from (its own provenance), kept as the import's upstream.
UPSTREAM = Obj({"origin": Opt(OneOf("computed", "imported")), "at": Opt(Num(allow_nan=False)), "weights": Opt(Text(64)),
                "engine_version": Opt(Text(40)), "bundle": Opt(Text(300)), "bundle_sha256": Opt(Text(64)),
                "bundle_created_at": Opt(Num(allow_nan=False)), "weights_here": Opt(Text(20)), "verified": Opt(Int(0, 1))},
               others=Json(200, 300))
BASELINES = MapOf(Opt(Num()), Text(100), most=200)


def _err(message: str) -> PatchboardError:
    return PatchboardError("bundle", message)


# ---------------------------------------------------------------- reading


@dataclass
class Bundle:
    manifest: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)  # every ROW_COLS column, and provenance_json
    sha256: str = ""


def read_bundle(data: bytes, max_unpacked: int | None = None) -> Bundle:
    """Parse and validate a bundle completely; raises PatchboardError("bundle")
    naming the first problem. Writes nothing. ``max_unpacked``: the most its
    members may unpack to together (default MAX_UNPACKED_BYTES; the app
    passes less), and never more than MAX_RATIO times the bundle's size."""
    if not isinstance(data, (bytes, bytearray)):
        raise _err("expected the bundle's bytes")
    if len(data) > MAX_BUNDLE_BYTES:
        raise _err(f"{len(data)} bytes; a bundle may be at most {MAX_BUNDLE_BYTES >> 20} MB")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data if isinstance(data, bytes) else bytes(data)))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise _err("not a Patchboard bundle (not a readable zip file; truncated?)") from None
    names = [i.filename for i in infos]
    if len(names) > 3 * MAX_RESULTS + 1:
        raise _err(f"{len(names)} members; a bundle holds at most {MAX_RESULTS} results")
    if len(set(names)) != len(names):
        raise _err("a member name repeats; the bundle was edited")
    if "manifest.json" not in names:
        raise _err("no manifest.json; not a Patchboard bundle")
    limit = min(max_unpacked or MAX_UNPACKED_BYTES, MAX_UNPACKED_BYTES, max(MAX_RATIO * len(data), 1 << 20))
    if sum(i.file_size for i in infos) > limit:
        raise _err(f"unpacks to more than {limit >> 20} MB ({_why_limit(limit, len(data))})")
    unpacked = 0

    def member(name: str, most: int = MAX_MEMBER_BYTES) -> bytes:
        # The zip's own sizes may lie: the read stops one byte past the limit.
        nonlocal unpacked
        try:
            with zf.open(name) as f:
                # In 1 MB pieces: one read of the whole member lets zlib grow its output
                # buffer in blocks to ~3.5x the member's size (measured on a 5.6 MB table).
                buf = bytearray()
                while len(buf) <= most:
                    piece = f.read(min(1 << 20, most + 1 - len(buf)))
                    if not piece:
                        break
                    buf += piece
                raw = bytes(buf)
                del buf
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError, NotImplementedError):
            raise _err(f"member {name} is not readable (truncated or corrupt)") from None
        if len(raw) > most:
            raise _err(f"member {name} unpacks to more than {most >> 20} MB")
        unpacked += len(raw)
        if unpacked > limit:
            raise _err(f"unpacks to more than {limit >> 20} MB ({_why_limit(limit, len(data))})")
        return raw

    manifest = _json_member(member("manifest.json", MAX_JSON_MEMBER), "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _err(f"manifest.json: format is not {FORMAT!r}")
    entries = manifest.get("results")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_RESULTS:
        raise _err(f"manifest.json: \"results\" must list 1 to {MAX_RESULTS} results")
    validate(MANIFEST, manifest, "bundle", "manifest.json")
    n = len(entries)
    expected = {"manifest.json"} | {f"results/{i}.json" for i in range(n)} | {f"results/{i}.parquet" for i in range(n)}
    optional = {f"results/{i}.prompts.parquet" for i in range(n)}
    extra = sorted(set(names) - expected - optional)
    if extra:
        raise _err(f"unexpected member {shown(extra[0], 60)}; a bundle holds manifest.json and results/<i>.json|parquet|prompts.parquet only")
    missing = sorted(expected - set(names))
    if missing:
        raise _err(f"member {missing[0]} is missing (truncated bundle?)")
    rows = []
    seen = set()
    for i in range(n):
        row, spec = _check_row(_json_member(member(f"results/{i}.json", MAX_JSON_MEMBER), f"results/{i}.json"), i)
        if row["key"] in seen:
            raise _err(f"result {i}: key {row['key'][:12]} appears twice")
        seen.add(row["key"])
        entry = entries[i]
        if {k: entry[k] for k in ("key", "kind", "label", "model")} != {k: row[k] for k in ("key", "kind", "label", "model")}:
            raise _err(f"manifest.json: entry {i} does not describe result {i} (key, kind, label or model differ; edited?)")
        kind = kind_of(row["kind"])
        row["table_parquet"] = member(f"results/{i}.parquet")
        meta = json.loads(row["meta_json"])
        table = read_table(row["table_parquet"], kind.table(spec, meta), f"result {i}: its table")
        if kind.check is not None:  # what the kind's schemas cannot say (a grid's statistics: its settings and statistics)
            try:
                kind.check(spec, meta, table)
            except PatchboardError as e:
                raise _err(f"result {i}: {e.message}") from None
        pp = f"results/{i}.prompts.parquet"
        if pp in names:
            pschema = kind.per_prompt(spec)
            if pschema is None:
                raise _err(f"result {i}: a {row['kind']} result carries no per-prompt values (unexpected member {pp})")
            row["per_prompt_parquet"] = member(pp)
            read_table(row["per_prompt_parquet"], pschema, f"result {i}: its per-prompt values")
        else:
            row["per_prompt_parquet"] = None
        rows.append(row)
    return Bundle(manifest=manifest, rows=rows, sha256=hashlib.sha256(bytes(data)).hexdigest())


def _why_limit(limit: int, size: int) -> str:
    if limit == max(MAX_RATIO * size, 1 << 20) and limit < MAX_UNPACKED_BYTES:
        return f"{MAX_RATIO}x its {size} bytes: a zip bomb, not results"
    return "the limit here; import larger bundles with python -m patching import" if limit < MAX_UNPACKED_BYTES else "MAX_UNPACKED_BYTES"


def _json_member(raw: bytes, name: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _err(f"{name} is not UTF-8 JSON") from None
    try:
        return loads_bounded(text, "bundle")
    except PatchboardError as e:
        raise _err(f"{name}: {e.message}") from None


def _check_row(obj: Any, i: int) -> tuple[dict[str, Any], Spec]:
    """A result's JSON member checked field by field, its key recomputed
    from what it says it is; returns the row and its spec."""
    where = f"result {i}"
    if not isinstance(obj, dict):
        raise _err(f"{where}: expected a JSON object")
    allowed = set(_ROW_FIELDS) | set(_OPTIONAL_FIELDS)
    if not set(_ROW_FIELDS) <= set(obj) or not set(obj) <= allowed:
        odd = sorted((set(obj) - allowed) | (set(_ROW_FIELDS) - set(obj)))
        raise _err(f"{where}: field {shown(odd[0], 40)} is {'unexpected' if odd[0] in obj else 'missing'}")
    for c in _TEXT_FIELDS:
        if not isinstance(obj[c], str) or len(obj[c]) > MAX_JSON_MEMBER:
            raise _err(f"{where}: {c} must be text")
    for c in ("created_at", "compute_seconds"):
        v = obj[c]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise _err(f"{where}: {c} must be a finite number >= 0")
    if obj["kind"] not in KINDS:
        raise _err(f"{where}: kind {shown(obj['kind'], 30)} is not one of {', '.join(KINDS)}")
    if not re.fullmatch(r"[0-9a-f]{64}", obj["key"]):
        raise _err(f"{where}: key must be 64 hex digits")
    if not _HEX.match(obj["model_fingerprint"]):
        raise _err(f"{where}: model_fingerprint must be hex")
    if len(obj["label"]) > 2000 or len(obj["model"]) > 500 or len(obj["engine_version"]) > 20:
        raise _err(f"{where}: label, model or engine_version is too long")
    try:
        spec = Spec.from_dict(_object(obj["spec_json"], "spec", where)).validated()
    except PatchboardError as e:
        raise _err(f"{where}: its spec is not valid ({e})") from None
    except (TypeError, ValueError):
        raise _err(f"{where}: its spec is not valid") from None
    if spec.model != obj["model"]:
        raise _err(f"{where}: the spec's model differs from the row's model")
    validate(BASELINES, _object(obj["baselines_json"], "baselines", where), "bundle", f"{where}: baselines")
    kind = KINDS[obj["kind"]]
    meta = validate(kind.meta, _object(obj["meta_json"], "meta", where), "bundle", f"{where}: meta")
    if meta.get("model_fingerprint", obj["model_fingerprint"]) != obj["model_fingerprint"]:
        raise _err(f"{where}: the meta's weights differ from the row's")
    upstream = None
    if obj.get("provenance_json") is not None:
        if not isinstance(obj["provenance_json"], str):
            raise _err(f"{where}: provenance_json must be text")
        upstream = validate(UPSTREAM, _object(obj["provenance_json"], "provenance", where), "bundle", f"{where}: provenance")
    try:
        expected = kind.key(spec, meta, obj["model_fingerprint"], obj["engine_version"], lambda: row_geometry(obj["model"], meta))
    except PatchboardError as e:
        raise _err(f"{where}: its {obj['kind']} request cannot be rebuilt ({e.message})") from None
    except (KeyError, TypeError, ValueError):
        raise _err(f"{where}: its meta lacks what a {obj['kind']} result records (its request cannot be rebuilt)") from None
    if expected != obj["key"]:
        raise _err(f"{where}: its key does not match its spec (edited?)")
    out = {c: obj[c] for c in _ROW_FIELDS}
    out["created_at"] = float(obj["created_at"])
    out["compute_seconds"] = float(obj["compute_seconds"])
    out["upstream"] = upstream
    return out, spec


def _object(text: str, what: str, where: str) -> Any:
    try:
        value = loads_bounded(text, what)
    except PatchboardError as e:
        raise _err(f"{where}: its {what} is not valid JSON ({e.message})") from None
    if not isinstance(value, dict):
        raise _err(f"{where}: its {what} must be a JSON object")
    return value
