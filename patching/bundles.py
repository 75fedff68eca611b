"""Result bundles: stored results that travel between machines.

A bundle is a zip of data only, never code or pickles::

    manifest.json          {"format": "patchboard.bundle/1", "created_at", "engine_version",
                            "packages": {...}, "results": [{"key", "kind", "label", "model"}, ...]}
    results/0.json         one stored row: key, kind, spec_json, label, model, model_fingerprint,
                           engine_version, created_at, compute_seconds, baselines_json, meta_json
    results/0.parquet      its tidy table
    results/0.prompts.parquet   its per-prompt values, when stored
    ...

Importing validates the WHOLE bundle before writing anything (member names,
sizes and counts, JSON schema and depth, every spec, every table, the keys
that can be recomputed), then inserts every row in one transaction: a bad,
truncated or oversized bundle changes nothing. Rows already stored are kept.
Results computed on weights whose fingerprint differs from this machine's
copy of the model are refused unless ``allow_other_weights``. An imported
result opens through its ordinary link (its key is the same everywhere).
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterable

from patching.core.codec import loads_bounded
from patching.core.errors import PatchboardError
from patching.core.spec import ENGINE_VERSION, Spec
from patching.results import KINDS, TABLE_COLUMNS
from patching.store import ROW_COLS, Store

FORMAT = "patchboard.bundle/1"
#: Largest bundle file accepted (bytes, compressed).
MAX_BUNDLE_BYTES = 256 << 20
#: Largest total of the members once uncompressed, and of one member.
MAX_UNPACKED_BYTES = 1 << 30
MAX_MEMBER_BYTES = 256 << 20
#: Most results in one bundle.
MAX_RESULTS = 10_000
#: Most rows in one result's table.
MAX_TABLE_ROWS = 2_000_000

_KINDS = KINDS  # every result kind travels
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_TEXT_FIELDS = ("key", "kind", "spec_json", "label", "model", "model_fingerprint", "engine_version", "baselines_json", "meta_json")


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
                raise PatchboardError("key", f"{k!r} matches {len(hits)} stored results; give 8+ characters of one key (see the Library page)")
            out.append(hits[0])
        df = df[df["key"].isin(out)]
    if kind:
        if kind not in _KINDS:
            raise PatchboardError("kind", f"{kind!r} is not one of {', '.join(_KINDS)}")
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
    rows: list[dict[str, Any]] = field(default_factory=list)  # every ROW_COLS column


def read_bundle(data: bytes) -> Bundle:
    """Parse and validate a bundle completely; raises PatchboardError("bundle")
    naming the first problem. Writes nothing."""
    if not isinstance(data, (bytes, bytearray)):
        raise _err("expected the bundle's bytes")
    if len(data) > MAX_BUNDLE_BYTES:
        raise _err(f"{len(data)} bytes; a bundle may be at most {MAX_BUNDLE_BYTES >> 20} MB")
    try:
        zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise _err("not a Patchboard bundle (not a readable zip file; truncated?)") from None
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise _err("a member name repeats; the bundle was edited")
    if "manifest.json" not in names:
        raise _err("no manifest.json; not a Patchboard bundle")
    if len(names) > 3 * MAX_RESULTS + 1:
        raise _err(f"{len(names)} members; a bundle holds at most {MAX_RESULTS} results")
    if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
        raise _err(f"unpacks to more than {MAX_UNPACKED_BYTES >> 20} MB")

    def member(name: str) -> bytes:
        try:
            with zf.open(name) as f:
                raw = f.read(MAX_MEMBER_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError):
            raise _err(f"member {name} is not readable (truncated or corrupt)") from None
        if len(raw) > MAX_MEMBER_BYTES:
            raise _err(f"member {name} unpacks to more than {MAX_MEMBER_BYTES >> 20} MB")
        return raw

    manifest = _json_member(member("manifest.json"), "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _err(f"manifest.json: format is not {FORMAT!r}")
    entries = manifest.get("results")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_RESULTS:
        raise _err(f"manifest.json: \"results\" must list 1 to {MAX_RESULTS} results")
    n = len(entries)
    expected = {"manifest.json"} | {f"results/{i}.json" for i in range(n)} | {f"results/{i}.parquet" for i in range(n)}
    optional = {f"results/{i}.prompts.parquet" for i in range(n)}
    extra = sorted(set(names) - expected - optional)
    if extra:
        raise _err(f"unexpected member {extra[0][:60]!r}; a bundle holds manifest.json and results/<i>.json|parquet|prompts.parquet only")
    missing = sorted(expected - set(names))
    if missing:
        raise _err(f"member {missing[0]} is missing (truncated bundle?)")
    rows = []
    seen = set()
    for i in range(n):
        row = _check_row(_json_member(member(f"results/{i}.json"), f"results/{i}.json"), i)
        if row["key"] in seen:
            raise _err(f"result {i}: key {row['key'][:12]} appears twice")
        seen.add(row["key"])
        # A hypothesis' table has one row per δ, sweeps one per component, circuits one per circuit.
        row["table_parquet"] = _check_table(member(f"results/{i}.parquet"), i, TABLE_COLUMNS[row["kind"]])
        pp = f"results/{i}.prompts.parquet"
        row["per_prompt_parquet"] = _check_table(member(pp), i, ("cell", "prompt")) if pp in names else None
        rows.append(row)
    return Bundle(manifest=manifest, rows=rows)


def _json_member(raw: bytes, name: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _err(f"{name} is not UTF-8 JSON") from None
    try:
        return loads_bounded(text, "bundle")
    except PatchboardError as e:
        raise _err(f"{name}: {e.message}") from None


def _check_row(obj: Any, i: int) -> dict[str, Any]:
    where = f"result {i}"
    if not isinstance(obj, dict):
        raise _err(f"{where}: expected a JSON object")
    cols = [c for c in ROW_COLS if not c.endswith("_parquet")]
    if set(obj) != set(cols):
        odd = sorted(set(obj) ^ set(cols))
        raise _err(f"{where}: field {odd[0]!r} is {'unexpected' if odd[0] in obj else 'missing'}")
    for c in _TEXT_FIELDS:
        if not isinstance(obj[c], str) or len(obj[c]) > MAX_MEMBER_BYTES:
            raise _err(f"{where}: {c} must be text")
    for c in ("created_at", "compute_seconds"):
        v = obj[c]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise _err(f"{where}: {c} must be a finite number >= 0")
    if obj["kind"] not in _KINDS:
        raise _err(f"{where}: kind {obj['kind'][:30]!r} is not one of {', '.join(_KINDS)}")
    if not re.fullmatch(r"[0-9a-f]{64}", obj["key"]):
        raise _err(f"{where}: key must be 64 hex digits")
    if not _HEX.match(obj["model_fingerprint"]):
        raise _err(f"{where}: model_fingerprint must be hex")
    if len(obj["label"]) > 2000 or len(obj["model"]) > 500 or len(obj["engine_version"]) > 20:
        raise _err(f"{where}: label, model or engine_version is too long")
    try:
        spec = Spec.from_dict(loads_bounded(obj["spec_json"], "spec")).validated()
    except PatchboardError as e:
        raise _err(f"{where}: its spec is not valid ({e})") from None
    except (TypeError, ValueError):
        raise _err(f"{where}: its spec is not valid") from None
    if spec.model != obj["model"]:
        raise _err(f"{where}: the spec's model differs from the row's model")
    baselines = loads_bounded(obj["baselines_json"], "baselines")
    if not isinstance(baselines, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, (int, float))) for k, v in baselines.items()):
        raise _err(f"{where}: baselines must map names to numbers")
    meta = loads_bounded(obj["meta_json"], "meta")
    if not isinstance(meta, dict):
        raise _err(f"{where}: meta must be a JSON object")
    expected = _expected_key(obj["kind"], spec, obj, meta)
    if expected is not None and expected != obj["key"]:
        raise _err(f"{where}: its key does not match its spec (edited?)")
    out = dict(obj)
    out["created_at"] = float(obj["created_at"])
    out["compute_seconds"] = float(obj["compute_seconds"])
    return out


def _expected_key(kind: str, spec: Spec, row: dict, meta: dict) -> str | None:
    """The key this row must have, where it can be recomputed without the
    model (activation sweeps and path sweeps); None for hypotheses and
    circuits (their keys hold edges resolved on the model's geometry)."""
    fp, engine = row["model_fingerprint"], row["engine_version"]
    if kind == "activation":
        return spec.cache_key(fp, engine=engine)
    if kind == "paths":
        from patching.requests import PathSweep

        try:
            req = PathSweep.from_meta(spec, meta)
            return req.spec.cache_key(fp, engine=engine, **req.key_extra())
        except (KeyError, TypeError):
            raise _err("a path sweep's meta lacks its receivers, senders or positions") from None
    return None


def _check_table(raw: bytes, i: int, needs: tuple[str, ...] = ("component",)) -> bytes:
    import pandas as pd

    try:
        df = pd.read_parquet(io.BytesIO(raw))
    except Exception:  # noqa: BLE001 - any parse failure is a bad bundle
        raise _err(f"result {i}: its table is not a readable Parquet file") from None
    if len(df) > MAX_TABLE_ROWS or not set(needs) <= set(df.columns):
        raise _err(f"result {i}: its table is not a Patchboard result table")
    return bytes(raw)


# ---------------------------------------------------------------- importing


@dataclass
class ImportReport:
    added: int
    already: int
    kinds: dict[str, int]


def import_bundle(store: Store, data: bytes, allow_other_weights: bool = False) -> ImportReport:
    """Validate ``data`` completely, check the weights' fingerprints, then
    insert every row in one transaction."""
    from patching.core.registry import REGISTRY

    b = read_bundle(data)
    if not allow_other_weights:
        for row in b.rows:
            local = REGISTRY.fingerprint(row["model"])
            if local is not None and local != row["model_fingerprint"]:
                raise PatchboardError(
                    "model-fingerprint",
                    f"the bundle's results for {row['model'][:60]} were computed on other weights ({row['model_fingerprint'][:12]}, "
                    f"here {local[:12]}); import anyway with --allow-other-weights (they open only where those weights are loaded)")
    added = store.put_rows(b.rows)
    kinds: dict[str, int] = {}
    for row in b.rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    return ImportReport(added=added, already=len(b.rows) - added, kinds=kinds)
