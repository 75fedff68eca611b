"""Result bundles: stored results that travel between machines.

A bundle is a zip of data only, never code or pickles::

    manifest.json          {"format": "patchboard.bundle/1", "created_at", "engine_version",
                            "packages": {...}, "results": [{"key", "kind", "label", "model"}, ...]}
    results/0.json         one stored row: key, kind, spec_json, label, model, model_fingerprint,
                           engine_version, created_at, compute_seconds, baselines_json, meta_json
                           (and provenance_json: where the exporting machine had it from)
    results/0.parquet      its tidy table
    results/0.prompts.parquet   its per-prompt values, when stored
    ...

Importing validates the WHOLE bundle before writing anything, and a bundle
cannot lie about what it holds:

* member names, counts and sizes (each JSON member at most
  ``MAX_JSON_MEMBER``, far below what a server can parse in a moment; a key
  given twice in a JSON object is refused);
* the manifest lists exactly the rows the bundle carries, in order;
* every row's key is recomputed from its kind's request (its spec and meta,
  canonicalised; :mod:`patching.kinds`): a row whose key does not match what
  it says it is, of any kind, is refused; the meta is checked against its
  kind's schema;
* every table is checked from its Parquet metadata before it is decoded
  (rows, row groups, uncompressed size, the exact columns and dtypes of its
  kind), and its text columns' decoded size is bounded before any string is
  built (:func:`patching.core.schema.read_table`).

Then every row is inserted in one transaction: a bad, truncated or
oversized bundle changes nothing. Rows already stored are kept; each new row
records its provenance (imported, from which bundle, when, on which weights)
and a later computation of the same key replaces it (:mod:`patching.store`).
``verify=K`` recomputes K randomly chosen results here first and refuses the
bundle if any differs beyond the dtype's tolerance. Results computed on
weights whose fingerprint differs from this machine's copy of the model are
refused unless ``allow_other_weights``. An imported result opens through its
ordinary link (its key is the same everywhere).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from patching.core.codec import loads_bounded
from patching.core.errors import PatchboardError, shown
from patching.core.schema import Int, Json, ListOf, MapOf, Num, Obj, OneOf, Opt, Text, read_table, validate
from patching.core.spec import ENGINE_VERSION, Spec
from patching.kinds import KINDS, kind_of, row_geometry
from patching.store import IMPORTED, ROW_COLS, Store

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


# ---------------------------------------------------------------- selecting


def select_keys(store: Store, keys: Iterable[str] = (), kind: str | None = None, model: str | None = None,
                task: str | None = None) -> list[str]:
    """Stored keys matching every filter given (a key may be a unique prefix of
    at least 8 characters); no filter at all selects everything."""
    df = store.list()
    wanted = [k.strip() for k in keys if k and k.strip()]
    if wanted:
        out = []
        for k in wanted:
            hits = [x for x in df["key"] if x.startswith(k)] if len(k) >= 8 else []
            if len(hits) != 1:
                raise PatchboardError("key", f"{shown(k, 70)} matches {len(hits)} stored results; give 8+ characters of one key (see the Library page)")
            out.append(hits[0])
        df = df[df["key"].isin(out)]
    if kind:
        if kind not in _KINDS:
            raise PatchboardError("kind", f"{shown(kind, 30)} is not one of {', '.join(_KINDS)}")
        df = df[df["kind"] == kind]
    if model:
        df = df[df["model"] == model]
    if task:
        df = df[[json.loads(s).get("task") == task for s in df["spec_json"]]]
    return list(df["key"])


# ---------------------------------------------------------------- writing


def _packages() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformer-lens", "transformers", "pandas", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def bundle_bytes(store: Store, keys: Iterable[str]) -> bytes:
    """A bundle of the stored results ``keys`` (in memory)."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise PatchboardError("bundle", "nothing selected to export; pick at least one stored result")
    if len(keys) > MAX_RESULTS:
        raise PatchboardError("bundle", f"{len(keys)} results; a bundle holds at most {MAX_RESULTS}")
    buf = io.BytesIO()
    entries = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, key in enumerate(keys):
            row = store.raw(key)
            if row is None:
                raise PatchboardError("key", f"{key[:12]} is not stored")
            table = row.pop("table_parquet")
            prompts = row.pop("per_prompt_parquet")
            if row.get("provenance_json") is None:
                row.pop("provenance_json", None)  # stored before provenance was recorded: as older bundles wrote it
            zf.writestr(f"results/{i}.json", json.dumps(row, sort_keys=True))
            zf.writestr(f"results/{i}.parquet", table)
            if prompts is not None:
                zf.writestr(f"results/{i}.prompts.parquet", prompts)
            entries.append({"key": row["key"], "kind": row["kind"], "label": row["label"], "model": row["model"]})
        manifest = {"format": FORMAT, "created_at": time.time(), "engine_version": ENGINE_VERSION, "packages": _packages(),
                    "results": entries}
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return buf.getvalue()


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


# ---------------------------------------------------------------- importing


@dataclass
class ImportReport:
    added: int
    already: int
    kinds: dict[str, int]
    verified: list[str] = field(default_factory=list)  # keys recomputed and found equal


def import_bundle(store: Store, data: bytes, allow_other_weights: bool = False, name: str = "bundle.zip",
                  owner: str | None = None, verify: int = 0, recompute: "Callable[[dict], Any] | None" = None,
                  max_unpacked: int | None = None) -> ImportReport:
    """Validate ``data`` completely, check the weights' fingerprints,
    recompute ``verify`` randomly chosen results (refusing the bundle if one
    differs), then insert every row in one transaction, each recording its
    provenance (``name``: the bundle's file name, shown as plain text) and
    ``owner`` (who imported it)."""
    return import_rows(store, read_bundle(data, max_unpacked), allow_other_weights, name, owner, verify, recompute)


def import_rows(store: Store, b: Bundle, allow_other_weights: bool = False, name: str = "bundle.zip", owner: str | None = None,
                verify: int = 0, recompute: "Callable[[dict], Any] | None" = None) -> ImportReport:
    """:func:`import_bundle` for a bundle already read (:func:`read_bundle`)."""
    from patching.core.registry import REGISTRY
    from patching.store import OWNER

    here: dict[str, str | None] = {}
    for row in b.rows:
        local = here.setdefault(row["model"], REGISTRY.fingerprint(row["model"]))
        if not allow_other_weights and local is not None and local != row["model_fingerprint"]:
            raise PatchboardError(
                "model-fingerprint",
                f"the bundle's results for {row['model'][:60]} were computed on other weights ({row['model_fingerprint'][:12]}, "
                f"here {local[:12]}); import anyway with --allow-other-weights (they open only where those weights are loaded)")
    verified = verify_rows(b, verify, recompute) if verify else []
    now = time.time()
    name = _plain_name(name)
    owner = owner if owner is not None else OWNER.get()
    rows = []
    for row in b.rows:
        local = here.get(row["model"])
        prov = {"origin": IMPORTED, "at": now, "bundle": name, "bundle_sha256": b.sha256,
                "bundle_created_at": b.manifest.get("created_at"), "weights": row["model_fingerprint"],
                "weights_here": "unknown" if local is None else "same" if local == row["model_fingerprint"] else "other",
                "verified": int(row["key"] in verified)}
        if row.get("upstream"):
            up = dict(row["upstream"])
            up.pop("upstream", None)  # one level: where the exporter had it from
            prov["upstream"] = up
        rows.append({**{c: row[c] for c in ROW_COLS}, "origin": IMPORTED, "owner": owner, "provenance_json": json.dumps(prov, sort_keys=True)})
    added = store.put_rows(rows)
    kinds: dict[str, int] = {}
    for row in b.rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    return ImportReport(added=added, already=len(b.rows) - added, kinds=kinds, verified=verified)


def _plain_name(name: Any) -> str:
    """A bundle's file name as provenance keeps it: its last path part, printable, at most 200 characters."""
    text = re.split(r"[\\/]", str(name or "bundle.zip"))[-1]
    text = "".join(ch for ch in text if ch.isprintable())[:200]
    return text or "bundle.zip"


# ---------------------------------------------------------------- verifying

#: (absolute, relative) tolerance of a recomputed number, per dtype: the
#: largest column bound of docs/scale-out.md's table (results of one dtype on
#: two devices differ only by the order of float sums).
TOLERANCE = {"float32": (1e-4, 1e-4), "float16": (0.015, 0.01), "bfloat16": (0.1, 0.05)}


def verify_rows(b: Bundle, k: int, recompute: "Callable[[dict], Any] | None" = None, rng=None) -> list[str]:
    """Recompute ``k`` randomly chosen rows of ``b`` here (all when ``k`` >=
    their number) and compare them with what the bundle says; raises
    PatchboardError("verify") naming the first that differs beyond its
    dtype's tolerance. ``recompute(row) -> Result`` defaults to the service
    with the local model (nothing is stored). Returns the keys verified."""
    import random

    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise PatchboardError("verify", f"{shown(k, 20)} is not a whole number of results to recompute")
    rng = rng or random.SystemRandom()  # unpredictable: a forger cannot know which rows are checked
    picked = rng.sample(range(len(b.rows)), min(k, len(b.rows)))
    recompute = recompute or (lambda row: _recompute_here(row, b))
    done = []
    for i in picked:
        row = b.rows[i]
        res = recompute(row)
        problem = differs(row, res)
        if problem:
            raise PatchboardError("verify", f"result {i} ({row['label'][:80]}) differs from its recomputation here: {problem}; "
                                  "the bundle is refused, nothing was imported")
        done.append(row["key"])
    return done


def _recompute_here(row: dict, bundle: Bundle | None = None) -> Any:
    """The row's request computed again with this machine's copy of its model
    (not stored); a grid's statistics from its sweeps, in the bundle or the
    store, without a model."""
    from patching import service
    from patching.core.registry import REGISTRY

    kind = KINDS[row["kind"]]
    if kind.name == "grid_stats":
        from patching.studies.disagreement import stored

        return stored.recompute_row(row, bundle.rows if bundle is not None else [], Store())
    spec = Spec.from_dict(json.loads(row["spec_json"])).validated()
    local = REGISTRY.fingerprint(spec.model, spec.dtype)
    if local is not None and local != row["model_fingerprint"]:
        raise PatchboardError("verify", f"result {row['key'][:12]} was computed on other weights of {spec.model[:60]}; it cannot be verified here")
    lm = service.get_model(spec.model, spec.dtype)
    if lm.fingerprint != row["model_fingerprint"]:
        raise PatchboardError("verify", f"result {row['key'][:12]} was computed on other weights of {spec.model[:60]}; it cannot be verified here")
    req = kind.request(spec, json.loads(row["meta_json"]))
    res = service.run(req, store=None, lm=lm, use_store=False)
    if res.key != row["key"]:
        raise PatchboardError("verify", f"result {row['key'][:12]}: its recomputation has another key ({res.key[:12]})")
    return res


def differs(row: dict, res: Any) -> str | None:
    """Where a recomputed result differs from a bundle's row beyond its
    dtype's tolerance (None: it agrees): the baselines, then every table
    column (text and integer columns exactly; numbers within tolerance,
    NaN where NaN)."""
    import numpy as np

    from patching.store import table_from_parquet

    spec = json.loads(row["spec_json"])
    atol, rtol = TOLERANCE.get(spec.get("dtype") or "float32", TOLERANCE["float32"])
    base = json.loads(row["baselines_json"])
    for name, v in res.baselines.items():
        w = base.get(name)
        if (v is None) != (w is None) or (v is not None and not np.isclose(float(w), float(v), rtol=rtol, atol=atol, equal_nan=True)):
            return f"baseline {name}: {w} in the bundle, {v} here"
    pairs = [("table", table_from_parquet(row["table_parquet"]), res.table)]
    if row.get("per_prompt_parquet") is not None and res.per_prompt is not None:
        pairs.append(("per-prompt values", table_from_parquet(row["per_prompt_parquet"]), res.per_prompt))
    for what, theirs, ours in pairs:
        # A table written by an older version may lack a column the code writes now (patching/kinds.py's optional ones).
        if not set(theirs.columns) <= set(ours.columns) or len(theirs) != len(ours):
            return f"its {what} has another shape ({len(theirs)} rows, here {len(ours)})"
        for c in theirs.columns:
            a, b = theirs[c], ours[c]
            if a.dtype.kind == "f" or b.dtype.kind == "f":
                x, y = a.to_numpy(dtype=float, na_value=np.nan), b.to_numpy(dtype=float, na_value=np.nan)
                bad = ~np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
                if bad.any():
                    j = int(np.flatnonzero(bad)[0])
                    return f"{what} row {j}, {c}: {float(x[j])!r} in the bundle, {float(y[j])!r} here (tolerance {atol:g})"
            elif not a.astype(object).where(a.notna(), None).tolist() == b.astype(object).where(b.notna(), None).tolist():
                return f"{what} column {c} differs"
    return None
