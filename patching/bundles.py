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

Importing validates the WHOLE bundle before writing anything (:mod:`patching.bundle_format`), and a bundle
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

import io
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from patching.bundle_format import (  # noqa: F401 (the limits and reader, under this module's names too)
    FORMAT, MAX_BUNDLE_BYTES, MAX_JSON_MEMBER, MAX_RESULTS, MAX_UNPACKED_APP, MAX_UNPACKED_BYTES, Bundle, read_bundle)
from patching.core.errors import PatchboardError, shown
from patching.core.spec import ENGINE_VERSION, Spec
from patching.kinds import KINDS
from patching.store import IMPORTED, ROW_COLS, Store

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
        if kind not in tuple(KINDS):
            raise PatchboardError("kind", f"{shown(kind, 30)} is not one of {', '.join(tuple(KINDS))}")
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
