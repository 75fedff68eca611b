"""Building and editing bundles in tests without a model: well-formed rows of
each kind under their real keys (a tiny made-up model whose geometry the rows
record), and edits of a bundle's members (a hostile collaborator's tools)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd

from patching.core.spec import ENGINE_VERSION, METRICS, Spec
from patching.store import Store

FP = "0123456789abcdef"
MODEL = "tiny-bundle"  # no fingerprint or geometry known here: rows record their own
GEOMETRY = {"n_layers": 2, "n_heads": 3, "n_kv_heads": 3}


def activation_table(n_layers: int = 2, n_heads: int = 3, seed: int = 0) -> pd.DataFrame:
    """A head sweep's table with exactly the dtypes the engine writes."""
    rng = np.random.default_rng(seed)
    n = n_layers * n_heads
    return pd.DataFrame({
        "component": ["head"] * n, "layer": np.repeat(np.arange(n_layers, dtype=np.int64), n_heads),
        "head": pd.array(np.tile(np.arange(n_heads), n_layers), dtype="Int64"), "pos": pd.array([None] * n, dtype="Int64"),
        "pos_label": [""] * n, **{m: rng.normal(size=n) / 3 for m in METRICS},
    })


def put_activation(store: Store, spec: Spec, seed: int = 0, meta: dict | None = None) -> str:
    spec = spec.validated()
    key = spec.cache_key(FP)
    store.put(key, "activation", spec.to_json(), spec.label(), spec.model, FP, ENGINE_VERSION, 1.5, {"clean_logit_diff": 1 / 3},
              {"n_pairs": spec.n_pairs, "warnings": [], **GEOMETRY, **(meta or {})}, activation_table(seed=seed))
    return key


def put_paths(store: Store, spec: Spec, receivers: str = "logits") -> str:
    from patching import service
    from patching.methods.graph import Geometry
    from patching.methods.path_request import paths_spec

    geo = Geometry(GEOMETRY["n_layers"], GEOMETRY["n_heads"], GEOMETRY["n_kv_heads"])
    req = service.PathSweep(paths_spec(spec), receivers).canonical(geo)
    rows = [{"component": "embed", "layer": None, "head": None}]
    for l in range(geo.n_layers):
        rows += [{"component": "head", "layer": l, "head": h} for h in range(geo.n_heads)] + [{"component": "mlp", "layer": l, "head": None}]
    t = pd.DataFrame(rows)
    for c in ("layer", "head"):
        t[c] = t[c].astype("Int64")
    t["pos"] = pd.array([None] * len(t), dtype="Int64")
    t["pos_label"] = ""
    for m in METRICS:
        t[m] = np.linspace(-1, 1, len(t))
    meta = {"receivers": req.receivers, "senders": req.senders, "sender_positions": req.sender_positions, "by_pos": False,
            "warnings": [], **GEOMETRY}
    key = req.spec.cache_key(FP, **req.key_extra())
    store.put(key, "paths", req.spec.to_json(), "paths", req.spec.model, FP, ENGINE_VERSION, 1.0, {"clean_logit_diff": 1.0}, meta, t)
    return key


def put_hypothesis(store: Store, spec: Spec, hypothesis: dict | None = None) -> str:
    from patching import service
    from patching.methods.graph import Geometry
    from patching.methods.hypothesis_format import DELTAS, hypothesis_spec

    geo = Geometry(GEOMETRY["n_layers"], GEOMETRY["n_heads"], GEOMETRY["n_kv_heads"])
    hypothesis = hypothesis or {"name": "h", "paths": [{"sender": "embed", "receiver": "1.0:q"}, {"sender": "1.0", "receiver": "logits"}]}
    req = service.HypothesisEval(hypothesis_spec(spec), hypothesis).canonical(geo)
    t = pd.DataFrame([{"delta": d, "aue": 0.5, "ate": 1.0, "proportion_explained": 0.5, "max_unexplained": 0.9} for d in DELTAS])
    meta = {"hypothesis": req.parsed.to_dict(), "n_edges": len(req.parsed.edges), "warnings": [], **GEOMETRY}
    key = req.spec.cache_key(FP, **req.key_extra())
    store.put(key, "hypothesis", req.spec.to_json(), "hypothesis", req.spec.model, FP, ENGINE_VERSION, 1.0, {"clean_logit_diff": 1.0}, meta, t)
    return key


def members(data: bytes) -> dict[str, bytes]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return {i.filename: zf.read(i.filename) for i in zf.infolist()}


def rezip(data: bytes, edit) -> bytes:
    """``data`` with its members passed through ``edit(dict name -> bytes)``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, raw in edit(members(data)).items():
            zf.writestr(name, raw)
    return out.getvalue()


def row_edit(i: int, **changes):
    """An edit setting fields of result ``i``'s JSON member."""
    def edit(m):
        row = json.loads(m[f"results/{i}.json"])
        row.update(changes)
        m[f"results/{i}.json"] = json.dumps(row).encode()
        return m
    return edit


def meta_edit(i: int, **changes):
    """An edit setting keys of result ``i``'s meta (its key unchanged)."""
    def edit(m):
        row = json.loads(m[f"results/{i}.json"])
        meta = json.loads(row["meta_json"])
        meta.update(changes)
        row["meta_json"] = json.dumps(meta)
        m[f"results/{i}.json"] = json.dumps(row).encode()
        return m
    return edit


def table_edit(i: int, table: pd.DataFrame | bytes, member: str = "parquet"):
    """An edit replacing result ``i``'s table (a DataFrame written as the store does, or raw bytes)."""
    from patching.store import table_to_parquet

    raw = table if isinstance(table, bytes) else table_to_parquet(table)

    def edit(m):
        m[f"results/{i}.{member}"] = raw
        return m
    return edit
