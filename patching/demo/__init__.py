"""The shipped demo: the results behind every page's default link on the
embedded model, in one bundle (``patching/demo/demo.zip``), so a fresh
machine opens on results instead of a Run button.

    python -m patching demo build     # compute what is missing (real engine), write the bundle
    python -m patching demo import    # add it to this machine's store (``make run`` does this)

What it holds (:func:`requests`): the Patch page's default (IOI, 8 pairs,
str, denoise) for every component; the Disagreement page's default grid
(every corruption, direction and IOI variant: 12 sweeps, all metrics) and its
statistics at the page's defaults (:func:`grid_statistics`: computed from the
sweeps, no model, so the page and the guided tour open without recomputing);
the Paths page's default sweep (every sender → logits) and its two built-in
hypotheses on the default data, the IOI one also on its held-out prompts
beside its baselines; factual recall with a sliding window; the Circuits
page's default: the IOI faithfulness curve (EAP scores on held-out prompts,
20 sizes x 20 random circuits), which holds the circuit at its knee.

Importing is idempotent and never overwrites: results already stored are
kept, and nothing is read beyond the manifest when every key is there.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

from patching.core.config import EMBEDDED

HERE = Path(__file__).resolve().parent
DEMO_PATH = HERE / "demo.zip"
EXAMPLES = HERE.parent.parent / "examples"

#: Factual recall with a sliding window (Meng et al.'s setting, w = 5; Zhang & Nanda G.1).
FACTS_WINDOW = 5


def patch_specs() -> list:
    """The Patch page's default link for every component, and factual recall
    with a sliding window (MLP and attention outputs)."""
    from patching.core.spec import COMPONENTS, Spec

    out = [Spec(model=EMBEDDED, component=c) for c in COMPONENTS]
    out += [Spec(model=EMBEDDED, task="facts", component=c, window=FACTS_WINDOW) for c in ("mlp_out", "attn_out")]
    return out


def grid_specs() -> list:
    """The Disagreement page's default grid: one spec per sweep (a sweep holds every metric)."""
    from patching.core.spec import Spec
    from patching.studies.disagreement import grid as disagreement_grid

    specs = disagreement_grid.grid_specs(Spec(model=EMBEDDED))
    return [specs[sets[0]] for sets in disagreement_grid.sweeps_of(specs).values()]


#: The Disagreement page's default top-k (its statistics are stored at it).
GRID_K = 10


def grid_statistics(store, fingerprint: str) -> str | None:
    """The store key of the default grid's statistics at the page's defaults,
    computed from its stored sweeps (and stored) when missing; None when the
    grid is not stored."""
    from patching.core.spec import Spec
    from patching.studies.disagreement import grid as disagreement_grid
    from patching.studies.disagreement import stored

    base = disagreement_grid.grid_base(Spec(model=EMBEDDED))
    settings = disagreement_grid.default_settings(base)
    available, _ = stored.stored_sweeps(store, stored.sweep_keys(base, settings, fingerprint))
    if len(available) != len(settings):
        return None
    _, key, _ = stored.load_or_compute(store, base, settings, fingerprint, GRID_K)
    return key


def hypothesis_text(name: str) -> str:
    return (EXAMPLES / f"{name}.json").read_text(encoding="utf-8")


def path_requests() -> list:
    """The Paths page's default sweep and its built-in hypotheses (IOI, and
    the page's default example) on the default data."""
    from patching import service
    from patching.core.spec import Spec

    spec = Spec(model=EMBEDDED)
    return [service.PathSweep(spec, "logits", "*", None, False, "direct"),
            service.HypothesisEval(spec, hypothesis_text("ioi")),
            service.HypothesisEval(spec, hypothesis_text("induction"))] + held_out_requests()


def held_out_requests() -> list:
    """The IOI example scored on held-out prompts (its file's
    ``derived.evaluation``: another seed, 32 pairs) with its baselines at the
    same number of paths, as the Paths page's held-out link opens it."""
    from patching import service
    from patching.core.spec import Spec
    from patching.methods.graph import Geometry
    from patching.studies import baselines

    hyp = json.loads(hypothesis_text("ioi"))
    ev = (hyp.get("derived") or {}).get("evaluation")
    if not ev:
        return []
    spec = Spec(model=EMBEDDED, task="ioi", seed=int(ev["seed"]), n_pairs=int(ev["n_pairs"]))
    n_random = int(ev["baselines"]["kl"]["n_random"])
    geo = service.geometry_for(EMBEDDED) or Geometry(30, 9, 3)  # SmolLM2-135M's shape when its config is not at hand
    return [service.HypothesisEval(spec, hyp)] + [service.HypothesisEval(spec, h) for _, h in
                                                   baselines.baseline_hypotheses(hyp, geo.n_layers, geo.n_heads, n_random)]


def circuit_requests() -> list:
    """The Circuits page's default link: the IOI curve on the default data
    (the circuit at its knee is drawn from it)."""
    from patching import service
    from patching.core.spec import Spec

    return [service.CircuitCurve(Spec(model=EMBEDDED))]


def requests() -> list:
    """Everything the demo holds, in the order it is computed: the cheap
    views first, then the grid's str sweeps, the IOI main setting's gn sweeps,
    the head-by-position sweep, the other gn sweeps and the other by-position
    sweeps (a gn sweep costs about 25 str sweeps on a CPU: 10 noise samples,
    and noise at the names leaves almost no shared prefix)."""
    from patching.core.spec import HEAD_BY_POS_COMPONENTS

    patch = patch_specs()
    cheap = [s for s in patch if s.component not in HEAD_BY_POS_COMPONENTS]
    by_pos = [s for s in patch if s.component in HEAD_BY_POS_COMPONENTS]
    grid = grid_specs()
    gn_main = [s for s in grid if s.corruption == "gn" and s.ioi_corrupt == "s2"]
    return (cheap + path_requests() + circuit_requests() + [s for s in grid if s.corruption != "gn"] + gn_main + by_pos[:1]
            + [s for s in grid if s.corruption == "gn" and s not in gn_main] + by_pos[1:])


# ---------------------------------------------------------------- building


def build(out: Path = DEMO_PATH, store=None, say: Callable[[str], None] = print, compute: bool = True) -> tuple[int, int]:
    """Compute whatever of :func:`requests` is not stored (through the
    service, so the store is the cache), then write the bundle of exactly
    those results to ``out``. ``compute=False`` bundles the ones already
    stored and names the others. Returns (results, bytes)."""
    import time

    from patching import bundles, service
    from patching.core.errors import PatchboardError
    from patching.store import Store

    store = store if store is not None else Store()
    lm = service.get_model(EMBEDDED) if compute else None
    keys = []
    reqs = requests()
    for i, req in enumerate(reqs):
        t = time.time()
        if compute:
            res = service.run(req, store, lm=lm)
        else:
            res = service.lookup(req, store)
            if res is None:
                say(f"[{i + 1}/{len(reqs)}] not stored, left out: {_describe(req)}")
                continue
        say(f"[{i + 1}/{len(reqs)}] {'stored' if res.from_store else f'computed in {time.time() - t:.0f} s'}: {_describe(req)}")
        keys.append(res.key)
    if not keys:
        raise PatchboardError("demo", "none of the demo's results is stored; run `python -m patching demo build` without --no-compute")
    from patching.core.config import known_fingerprint

    fp = lm.fingerprint if lm is not None else known_fingerprint(EMBEDDED)
    stats_key = grid_statistics(store, fp) if fp else None
    if stats_key:
        keys.append(stats_key)
        say(f"the Disagreement grid's statistics: {stats_key[:12]}")
    else:
        say("the Disagreement grid is not complete: its statistics are left out")
    data = bundles.bundle_bytes(store, keys)
    tmp = Path(str(out) + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    say(f"wrote {out}: {len(keys)} of {len(reqs)} results, {len(data) / 1e6:.2f} MB")
    return len(keys), len(data)


def _describe(req: Any) -> str:
    from patching.core.spec import Spec

    if isinstance(req, Spec):
        return req.label()
    if type(req).__name__ == "PathSweep":
        return f"paths {req.senders} → {req.receivers} · {req.spec.label()}"
    if type(req).__name__ == "CircuitCurve":
        return f"circuit curve ({req.scoring}, {req.points} sizes x {req.random} random) · {req.spec.label()}"
    h = req.hypothesis if isinstance(req.hypothesis, dict) else json.loads(req.hypothesis)
    return f"hypothesis {h.get('name')} · {req.spec.label()}"


# ---------------------------------------------------------------- importing


def manifest(path: Path = DEMO_PATH) -> dict[str, Any]:
    """The demo bundle's manifest (only this member is read)."""
    from patching.core.codec import loads_bounded

    with zipfile.ZipFile(path) as zf:
        return loads_bounded(zf.read("manifest.json").decode("utf-8"), "bundle")


def ensure_imported(store=None, path: Path = DEMO_PATH) -> str:
    """Add the demo's results that are missing from ``store``; one line saying
    what happened. Fast when they are all there (reads the manifest and the
    store's keys only); never overwrites; refuses, in the returned line, when
    this machine's copy of the model has other weights than the demo's."""
    from patching.core.config import known_fingerprint
    from patching.core.errors import PatchboardError
    from patching.store import Store

    if not path.exists():
        return f"demo: {path} not found; nothing imported"
    store = store if store is not None else Store()
    wanted = [r["key"] for r in manifest(path)["results"]]
    have = set(store.keys())
    missing = [k for k in wanted if k not in have]
    if not missing:
        return f"demo: all {len(wanted)} results already stored"
    from patching import bundles

    data = path.read_bytes()
    bundle = bundles.read_bundle(data)  # validated once, imported below
    fps = {(r["model"], r["model_fingerprint"]) for r in bundle.rows}
    for model, fp in sorted(fps):
        # Each model's rows against this machine's copy of it (a known model
        # not installed here answers with its table's fingerprint).
        local = known_fingerprint(model)
        if local is None:
            return f"demo: the fingerprint of {model} is unknown until it is converted once (python -m patching.warmup); nothing imported"
        if fp != local:
            return (f"demo: not imported: it was computed on other weights of {model} ({fp[:12]}; here {local[:12]}); "
                    "rebuild it with `python -m patching demo build`")
    try:
        rep = bundles.import_rows(store, bundle, name="demo.zip (shipped with Patchboard)")
    except PatchboardError as e:
        return f"demo: not imported: {e}"
    return f"demo: imported {rep.added} result(s); {rep.already} were already stored"
