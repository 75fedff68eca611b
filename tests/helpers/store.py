"""Stores for page tests without the model: the embedded model's converted
files linked into a test's cache folder (:func:`link_models`), and well-formed
results written under their real cache keys (:func:`populate_store`).

Used by the app and browser tiers, ``benchmarks/`` and ``docs/screenshots.py``.
"""

from __future__ import annotations

import os
import zlib
import functools
from pathlib import Path

from tests.helpers import env_restored


@functools.lru_cache(maxsize=1)
def _embedded_geometry():
    from patching.methods.path_request import geometry_for

    return geometry_for("smollm2-135m")


def embedded_key(req, fp: str) -> str:
    """The store key of request ``req`` (a Spec or a path request) on the
    embedded model with fingerprint ``fp``."""
    from patching import service

    return service.key_of(req, fp, _embedded_geometry())


def _spec_list():
    from patching.core.spec import Spec

    return [
        Spec(task="ioi", n_pairs=2, seed=0, component="head"),
        Spec(task="ioi", n_pairs=2, seed=0, component="resid_pre"),
        Spec(task="ioi", n_pairs=2, seed=0, component="mlp_out", window=3),
    ]


def default_models_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "patchboard" / "models"


def link_models(cache: Path) -> None:
    """``cache/models`` -> the default cache's converted models (conversion
    takes ~25 s; reuse it). Converts once into the default cache if missing."""
    src = default_models_dir()
    if not (src / "smollm2-135m" / "model.safetensors").exists():
        with env_restored("PATCHBOARD_CACHE_DIR"):
            os.environ.pop("PATCHBOARD_CACHE_DIR", None)  # convert into the default cache
            from patching.core.models import embedded_folder

            embedded_folder()
    (cache / "models").symlink_to(src, target_is_directory=True)


def embedded_fingerprint(cache: Path) -> str:
    """The embedded model's fingerprint (its sidecar file; written by loading
    the model once when missing)."""
    p = cache / "models" / "smollm2-135m" / "fingerprint.txt"
    if not p.exists():
        from patching.core.models import load_model

        load_model("smollm2-135m")
    return p.read_text().strip()


def populate_store(cache: Path, specs=None, compute: bool = False) -> list:
    """Write results for ``specs`` into ``cache``'s store.

    ``compute=True`` runs the real engine (``patching.service.run``; minutes on a
    busy CPU). By default the rows are *synthetic but well-formed*: the real
    prompts' tokens (the task generator on the real tokenizer), the model's
    real shape and fingerprint, and deterministic pseudo-random effects with a
    few strong cells, stored under the spec's real cache key. UI tests only
    need a stored result that the app finds and draws; the engine has its own
    tests.
    """
    import numpy as np
    import pandas as pd

    from patching.core.data import build_dataset
    from patching.core.models import embedded_tokenizer
    from patching.core.spec import ENGINE_VERSION
    from patching.store import Store
    from patching.methods.activation import cells_for
    from patching.core import tasks

    specs = [s.validated() for s in (specs or _spec_list())]
    os.environ["PATCHBOARD_CACHE_DIR"] = str(cache)
    store = Store(cache / "results.sqlite")
    if compute:
        from patching.service import run

        return [run(s, store) for s in specs]
    fp = embedded_fingerprint(cache)
    tok = embedded_tokenizer()
    import json

    cfg = json.loads((cache / "models" / "smollm2-135m" / "config.json").read_text())
    n_layers, n_heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    for s in specs:
        pairs = tasks.generate(s.task, tok, s.n_pairs, s.seed, ioi_corrupt=s.ioi_corrupt)
        ds = build_dataset(pairs, tok, s.corruption)
        cells = cells_for(s.component, n_layers, n_heads, ds.seq_len, s.window)
        rng = np.random.default_rng(zlib.crc32(s.component.encode()) + s.window)
        base = rng.normal(0, 0.02, len(cells))
        base[rng.choice(len(cells), 4, replace=False)] += [0.6, 0.35, -0.3, 0.25]
        rows = []
        for c, v in zip(cells, base):
            rows.append({"component": s.component, "layer": c.layer, "head": c.head, "pos": c.pos,
                         "pos_label": ds.position_labels[c.pos] if c.pos is not None else "",
                         "logit_diff": float(v), "prob": float(v) * 0.2, "logprob": float(v) * 1.5, "kl": float(v) * 0.8})
        table = pd.DataFrame(rows)
        if s.window > 1:
            for m in ("logit_diff", "prob", "logprob", "kl"):
                table[f"sum_{m}"] = table[m] * 0.7
                table[f"single_{m}"] = table[m] * 0.3
        for col in ("head", "pos"):
            table[col] = table[col].astype("Int64")
        baselines = {"clean_logit_diff": 2.5, "corrupt_logit_diff": -4.9, "clean_prob": 0.2, "corrupt_prob": 0.004,
                     "clean_logprob": -2.1, "corrupt_logprob": -6.7, "corrupt_kl": 1.4, "clean_accuracy": 1.0}
        meta = {"n_pairs": ds.n, "rows": ds.n, "seq_len": ds.seq_len, "n_layers": n_layers, "n_heads": n_heads,
                "position_labels": ds.position_labels, "clean_tokens": ds.clean_strs, "corrupt_tokens": ds.corrupt_strs,
                "key_positions": ds.key_positions[0], "sigma": None, "compute_seconds": 1.0, "warnings": [],
                "model": "smollm2-135m", "model_fingerprint": fp, "synthetic": True}
        store.put(s.cache_key(fp), "activation", s.to_json(), s.label(), s.model, fp, ENGINE_VERSION, 1.0, baselines, meta, table)
    return specs


def populate_paths(cache: Path) -> None:
    """Write a path sweep (``logits`` receivers) and an induction hypothesis
    evaluation for the embedded model into ``cache``'s store: synthetic,
    well-formed rows under their real keys (the engine has its own tests;
    this checks the Paths page and its link). Needs the embedded fingerprint
    sidecar, which :func:`populate_store` writes."""
    import json

    import numpy as np
    import pandas as pd

    from patching import service
    from patching.core.spec import ENGINE_VERSION, Spec
    from patching.methods import path_request
    from patching.methods import hypothesis_format
    from patching.store import Store
    from tests.helpers import ROOT

    fp = (cache / "models" / "smollm2-135m" / "fingerprint.txt").read_text().strip()
    geo = path_request.geometry_for("smollm2-135m")
    store = Store(cache / "results.sqlite")
    spec = path_request.paths_spec(Spec(task="ioi", n_pairs=2, seed=0))
    req = path_request.SweepRequest.make(geo, "logits")
    rng = np.random.default_rng(0)
    rows = [{"component": "embed", "layer": None, "head": None, "pos": None, "pos_label": ""}]
    for l in range(geo.n_layers):
        rows += [{"component": "head", "layer": l, "head": h, "pos": None, "pos_label": ""} for h in range(geo.n_heads)]
        rows.append({"component": "mlp", "layer": l, "head": None, "pos": None, "pos_label": ""})
    t = pd.DataFrame(rows)
    v = rng.normal(0, 0.02, len(t))
    v[[40, 200, 250]] = [0.5, 0.3, -0.25]
    for m, f in (("logit_diff", 1.0), ("prob", 0.1), ("logprob", 1.3), ("kl", 0.7)):
        t[m] = v * f
    for c in ("layer", "head", "pos"):
        t[c] = t[c].astype("Int64")
    meta = {"receivers": req.receivers, "receivers_described": ["logits"], "senders": "*", "sender_positions": "all", "by_pos": False,
            "n_kv_heads": geo.n_kv, "rows": 2,
            "n_layers": geo.n_layers, "n_heads": geo.n_heads, "compute_seconds": 1.0, "warnings": [], "synthetic": True}
    base = {"clean_logit_diff": 2.5, "corrupt_logit_diff": -4.9, "corrupt_kl": 1.4}
    store.put(service.key_of(service.PathSweep(spec, "logits"), fp, geo), "paths", spec.to_json(), "synthetic paths", "smollm2-135m", fp, ENGINE_VERSION, 1.0, base, meta, t)

    hyp = hypothesis_format.parse(json.loads((ROOT / "examples" / "induction.json").read_text()), geo)
    hspec = hypothesis_format.hypothesis_spec(Spec(task="induction", n_pairs=2, seed=0))
    toks = [["<|im_start|>", " a", " b", " a"], ["<|im_start|>", " c", " d", " c"]]
    att = {"tokens": toks, "targets": [["a", " b", " a", " b"], ["c", " d", " c", " d"]],
           "loss_clean": [[5.0, 4.0, 3.0, 1.0]] * 2, "loss_hypothesis": [[5.0, 4.0, 3.5, 2.5]] * 2,
           "loss_counterfactual": [[5.0, 4.0, 4.0, 6.0]] * 2}
    table = pd.DataFrame([{"delta": d, "aue": 0.8, "ate": 2.0, "proportion_explained": 0.6, "max_unexplained": 1.1} for d in hypothesis_format.DELTAS])
    store.put(service.key_of(service.HypothesisEval(hspec, hyp), fp, geo), "hypothesis", hspec.to_json(), "synthetic hypothesis", "smollm2-135m", fp,
              ENGINE_VERSION, 1.0, base, {"attribution": att, "rows": 2, "n_edges": len(hyp.edges), "warnings": [], "synthetic": True,
                                          "hypothesis": hyp.to_dict(), "n_kv_heads": geo.n_kv}, table)
