"""A grid's statistics in the store, beside its sweeps (kind ``grid_stats``).

The key is the grid's base spec's key (:meth:`patching.core.spec.Spec.cache_key`)
with, as its own parameters (:class:`GridStatsRequest`), the statistics'
version, their parameters (k, resamples, level, seed) and, for every
available setting, the store key of the sweep it reads (which already names the spec, the weights and the engine)
with that row's ``created_at`` (so a sweep stored again, e.g. a computed row
replacing an imported one, gets new statistics), so a stored row is found
again exactly when the same sweeps are compared the same way, and never for
other sweeps or older definitions. The row carries
the grid's base spec, its settings and sweep keys in ``meta`` (the key is
recomputed from them on import: :func:`check_row`), and
:meth:`patching.studies.disagreement.grid_stats.GridStats.to_table` as its table.

:func:`load_or_compute` is what the page and ``python -m patching compare``
call: the stored statistics, or computed from the stored sweeps (no model) and
stored.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from patching.analysis import inference
from patching.analysis.uncertainty import DEFAULT_BOOT
from patching.core.errors import PatchboardError
from patching.core.spec import ENGINE_VERSION, Spec
from patching.grid_stats_request import KIND, STATS_VERSION, GridStatsRequest, check_meta, check_table, expected_key  # noqa: F401 (check_table: the tests' name)
from patching.store import Store
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement.grid_stats import GridStats, compute


def sweep_keys(base: Spec, settings: Sequence[str], fingerprint: str) -> dict[str, str]:
    """setting -> the store key of the sweep that computes it."""
    from patching.service import key_of

    specs = disagreement_grid.grid_specs(base, list(settings))
    out: dict[str, str] = {}
    for sets in disagreement_grid.sweeps_of(specs).values():
        key = key_of(specs[sets[0]], fingerprint)
        out.update({s: key for s in sets})
    return {s: out[s] for s in specs}


def stats_key(base: Spec, keys: Mapping[str, str], stamps: Mapping[str, float], fingerprint: str, k: int, n_boot: int = DEFAULT_BOOT,
              level: float = 0.95, seed: int = 0, version: str = STATS_VERSION, fdr: float = inference.DEFAULT_FDR) -> str:
    """The store key of the statistics of the settings ``keys`` (setting ->
    sweep key; ``stamps``: sweep key -> its row's created_at) of ``base``'s
    grid with these parameters."""
    return GridStatsRequest.of(base, keys, stamps, k, n_boot, level, seed, version, fdr).key(fingerprint)


def stored_sweeps(store: Store, keys: Mapping[str, str]) -> tuple[dict[str, str], dict[str, float]]:
    """The settings of ``keys`` whose sweep is stored (setting -> sweep key),
    and those sweeps' created_at (one query)."""
    stamps = store.stamps(list(dict.fromkeys(keys.values())))
    return {s: key for s, key in keys.items() if key in stamps}, stamps


# ---------------------------------------------------------------- reading and writing


def save(store: Store, base: Spec, stats: GridStats, keys: Mapping[str, str], stamps: Mapping[str, float], fingerprint: str) -> str:
    """Store ``stats`` (computed from the sweeps ``keys`` stored at
    ``stamps``); returns its key. A row already stored under that key is
    kept (the same numbers)."""
    info = stats.info
    keys = {s: keys[s] for s in stats.settings}
    stamps = {key: float(stamps[key]) for key in keys.values()}
    key = stats_key(base, keys, stamps, fingerprint, info["k"], info["n_boot"], info["level"], info["seed"], fdr=info["fdr"])
    base = disagreement_grid.grid_base(base)
    meta = {"settings": list(stats.settings), "sweep_keys": keys, "sweep_stamps": stamps, "info": dict(info),
            "compute_seconds": round(stats.seconds, 3)}
    label = (f"Disagreement statistics · {base.model} · {base.task or 'custom pairs'} · n={base.n_pairs} · {base.component}"
             + (f", window {base.window}" if base.window > 1 else "") + f" · {len(stats.settings)} settings · top-{info['k']}")
    store.put(key, KIND, base.to_json(), label, base.model, fingerprint, ENGINE_VERSION, stats.seconds, {}, meta, stats.to_table())
    return key


def load(store: Store, key: str) -> GridStats | None:
    """The stored statistics under ``key``; None when absent, of another
    kind or not well-formed (then they are recomputed, never shown)."""
    rec = store.get(key, kind=KIND)
    if rec is None or rec.get("kind") != KIND:
        return None
    try:
        check_meta(rec["meta"])
        if expected_key(Spec.from_dict(rec["spec"]), rec["meta"], rec["model_fingerprint"], rec["engine_version"]) != key:
            return None
        check_table(rec["table"], rec["meta"]["settings"])
    except (ValueError, TypeError, KeyError):
        return None
    meta = rec["meta"]
    stats = GridStats.from_table(rec["table"], meta["info"], meta["settings"])
    stats.seconds = float(meta.get("compute_seconds") or 0.0)
    return stats


def load_or_compute(store: Store, base: Spec, settings: Sequence[str], fingerprint: str, k: int = 10, n_boot: int = DEFAULT_BOOT,
                    level: float = 0.95, seed: int = 0, keep: bool = True,
                    fdr: float = inference.DEFAULT_FDR) -> tuple[GridStats | None, str | None, bool]:
    """The statistics of the stored settings among ``settings``: ``(stats,
    key, computed_now)``; ``(None, None, False)`` when fewer than two are
    stored. Computing reads the stored sweeps (no model) and stores the
    result (``keep=False``: not stored, e.g. on a read-only server)."""
    available, stamps = stored_sweeps(store, sweep_keys(base, settings, fingerprint))
    if len(available) < 2:
        return None, None, False
    key = stats_key(base, available, stamps, fingerprint, k, n_boot, level, seed, fdr=fdr)
    stats = load(store, key)
    if stats is not None:
        return stats, key, False
    grid = disagreement_grid.lookup_grid(base, store, fingerprint, list(available))
    if len(grid.available) < 2:
        return None, None, False
    stats = compute(grid, k, n_boot, level, seed, fdr)
    if not keep:
        return stats, key, True
    return stats, save(store, base, stats, available, stamps, fingerprint), True


def recompute_row(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], store: Store) -> Any:
    """A bundled row of statistics computed again from its sweeps (those among
    the bundle's ``rows``, else the ``store``'s), for ``import --verify``:
    an object with the row's ``key``, ``baselines`` and ``table`` as
    :func:`patching.bundles.differs` compares them. PatchboardError("verify")
    when a sweep is in neither or is not the one the statistics were computed from."""
    import json

    from patching.results import Result
    from patching.store import table_from_parquet

    meta = json.loads(row["meta_json"])
    spec = Spec.from_dict(json.loads(row["spec_json"]))
    check_meta(meta)
    bundled = {r["key"]: r for r in rows if r.get("kind") == "activation"}
    grid = disagreement_grid.Grid(base=disagreement_grid.grid_base(spec), settings=list(meta["settings"]),
                                  specs=disagreement_grid.grid_specs(spec, list(meta["settings"])))
    for s_, key in meta["sweep_keys"].items():
        r = bundled.get(key)
        if r is not None:
            rec = {"table": table_from_parquet(r["table_parquet"]), "meta": json.loads(r["meta_json"]), "baselines": json.loads(r["baselines_json"]),
                   "per_prompt": table_from_parquet(r["per_prompt_parquet"]) if r.get("per_prompt_parquet") is not None else None,
                   "created_at": float(r["created_at"])}
        else:
            rec = store.get(key, kind="activation")
        if rec is None or float(rec["created_at"]) != float(meta["sweep_stamps"][key]):
            raise PatchboardError("verify", f"the statistics of {row['key'][:12]} read sweep {key[:12]}, which is neither in the bundle nor stored here "
                                  "as it was; import the grid's sweeps with them")
        grid.results[s_] = Result(spec=grid.specs[s_], table=rec["table"], baselines=rec["baselines"], meta=rec["meta"], from_store=True,
                                  per_prompt=rec["per_prompt"], key=key)
    info = meta["info"]
    stats = compute(grid, info["k"], info["n_boot"], info["level"], info["seed"], info["fdr"])

    class Recomputed:
        key = row["key"]
        baselines: dict = {}
        table = stats.to_table()
        per_prompt = None

    return Recomputed()


