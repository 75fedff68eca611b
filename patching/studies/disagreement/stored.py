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

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from patching.analysis import inference
from patching.analysis.stats import parse_setting
from patching.core.errors import PatchboardError
from patching.core.schema import TEXT, Limits, TableSchema
from patching.core.spec import ENGINE_VERSION, IOI_CORRUPT, Spec
from patching.store import Store
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import layout
from patching.studies.disagreement.grid_stats import PART_STATS, STATS_VERSION, TABLE_DTYPES, GridStats, compute
from patching.analysis.uncertainty import DEFAULT_BOOT

KIND = "grid_stats"
#: The stored table's schema (the kind's declaration in :mod:`patching.kinds`; bundles check it from the Parquet metadata).
TABLE = TableSchema((("part", TEXT), ("a", TEXT), ("b", TEXT), ("component", TEXT), ("stat", TEXT), ("value", "float64")),
                    {"part": tuple(PART_STATS), "stat": tuple(dict.fromkeys(s for stats in PART_STATS.values() for s in stats))},
                    Limits(rows=8_000_000, row_groups=64, uncompressed=512 << 20, decoded=1 << 30, text=120))
#: Most settings one stored grid may name (the method grid has 72).
MAX_SETTINGS = 1000
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: A setting as the grid writes it (names of choices only: nothing a page could render as markup).
_SETTING = re.compile(r"[a-z0-9_]+(/[a-z0-9_]+){2,3}(@[a-z_]+)?")
#: A component label (L9H6, L3P5, mlp_out:L3P5, embed ...).
_LABEL = re.compile(r"[A-Za-z0-9_:.]{1,64}")
_INFO = {"k": int, "n_boot": int, "resampled": int, "level": float, "fdr": float, "seed": int, "n_prompts": int, "n_noop": int, "n_components": int, "n_measured": int,
         "stats_version": str}


def sweep_keys(base: Spec, settings: Sequence[str], fingerprint: str) -> dict[str, str]:
    """setting -> the store key of the sweep that computes it."""
    from patching.service import key_of

    specs = disagreement_grid.grid_specs(base, list(settings))
    out: dict[str, str] = {}
    for sets in disagreement_grid.sweeps_of(specs).values():
        key = key_of(specs[sets[0]], fingerprint)
        out.update({s: key for s in sets})
    return {s: out[s] for s in specs}


@dataclass(frozen=True)
class GridStatsRequest:
    """What a grid's statistics answer: the grid's base spec and, as their own
    parameters, every setting's sweep key and its row's ``created_at``, k,
    resamples, level, seed and the statistics' version. Shaped like the
    service's requests (``spec``, ``canonical``, ``key_extra``), so its key is
    ``spec.cache_key(fingerprint, **key_extra())`` like every stored result's."""

    spec: Spec
    sweeps: tuple[tuple[str, str, float], ...]  # (setting, sweep key, created_at), sorted
    k: int
    n_boot: int = DEFAULT_BOOT
    level: float = 0.95
    seed: int = 0
    version: str = STATS_VERSION
    fdr: float = inference.DEFAULT_FDR
    kind = KIND
    needs_geometry = False

    @classmethod
    def of(cls, base: Spec, keys: Mapping[str, str], stamps: Mapping[str, float], k: int, n_boot: int = DEFAULT_BOOT,
           level: float = 0.95, seed: int = 0, version: str = STATS_VERSION, fdr: float = inference.DEFAULT_FDR) -> "GridStatsRequest":
        sweeps = tuple(sorted((str(s), str(key), float(stamps[key])) for s, key in keys.items()))
        return cls(disagreement_grid.grid_base(base), sweeps, int(k), int(n_boot), round(float(level), 12), int(seed), str(version),
                   round(float(fdr), 12))

    @classmethod
    def from_meta(cls, spec: Spec, meta: Mapping[str, Any]) -> "GridStatsRequest":
        """The request a stored row answers (its meta checked first: :func:`check_meta`)."""
        info = meta["info"]
        return cls.of(spec, meta["sweep_keys"], meta["sweep_stamps"], info["k"], info["n_boot"], info["level"], info["seed"],
                      info["stats_version"], info["fdr"])

    def canonical(self, geometry: Any = None) -> "GridStatsRequest":
        return self

    def key_extra(self) -> dict[str, Any]:
        return {"grid_stats": {"version": self.version, "sweeps": [[s, key, repr(t)] for s, key, t in self.sweeps], "k": self.k,
                               "n_boot": self.n_boot, "level": self.level, "seed": self.seed, "fdr": self.fdr}}

    def key(self, fingerprint: str, **engine: str) -> str:
        return self.spec.cache_key(fingerprint, **engine, **self.key_extra())

    def query(self) -> dict[str, str]:
        """The Disagreement page's link parameters besides the spec's (the
        Library rebuilds a stored row's link from them; rows carry no page URL)."""
        return page_query(self.spec, [s for s, _, _ in self.sweeps], self.k)


def request_of(spec: Spec, meta: Mapping[str, Any]) -> GridStatsRequest:
    """The request a stored row answers, from its spec and meta (the kind's
    declaration); PatchboardError naming what is wrong with the meta."""
    try:
        check_meta(meta)
    except ValueError as e:
        raise PatchboardError("bundle", f"a grid's statistics: {e}") from None
    return GridStatsRequest.from_meta(spec, meta)


def check_bundled(spec: Spec, meta: Mapping[str, Any], table: pd.DataFrame) -> None:
    """What the table schema cannot say (the kind's ``check``): every row's
    part, statistic, settings and component as :func:`check_table` requires."""
    try:
        check_table(table, meta["settings"])
    except ValueError as e:
        raise PatchboardError("bundle", f"a grid's statistics table: {e}") from None


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


def page_query(base: Spec, settings: Sequence[str], k: int) -> dict[str, str]:
    """The Disagreement page's link parameters for these settings (the
    Library opens a stored row with them)."""
    ps = [layout.parts(s) for s in settings]
    q = {"noise-scale": f"{base.noise_scale:g}", "noise-samples": str(base.noise_samples), "k": str(int(k))}
    order = {v: i for i, v in enumerate(IOI_CORRUPT)}  # the page's own order, whatever order the settings come in
    variants = sorted(dict.fromkeys(p["variant"] for p in ps if p["variant"]), key=lambda v: order.get(v, len(order)))
    if variants:
        q["variants"] = ",".join(variants)
    methods = [m for m in dict.fromkeys(p["method"] for p in ps) if m != "exact"]
    if methods:
        q["grid-method"] = methods[0]
    return q


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


# ---------------------------------------------------------------- checking (bundles, reads)


def check_meta(meta: Any) -> None:
    """Raise ValueError naming the first problem of a stored row's meta."""
    if not isinstance(meta, dict):
        raise ValueError("meta must be a JSON object")
    settings, keys, info = meta.get("settings"), meta.get("sweep_keys"), meta.get("info")
    if not isinstance(settings, list) or not 2 <= len(settings) <= MAX_SETTINGS or not all(isinstance(s, str) and len(s) <= 120 for s in settings):
        raise ValueError(f"meta.settings must list 2 to {MAX_SETTINGS} settings")
    if len(set(settings)) != len(settings):
        raise ValueError("meta.settings repeats a setting")
    for s in settings:
        if not _SETTING.fullmatch(s) or parse_setting(s) is None:
            raise ValueError(f"meta.settings: {s[:60]!r} is not corruption/metric/direction[/variant][@method]")
    if not isinstance(keys, dict) or set(keys) != set(settings) or not all(isinstance(v, str) and _HEX64.match(v) for v in keys.values()):
        raise ValueError("meta.sweep_keys must give each setting's 64-hex sweep key")
    stamps = meta.get("sweep_stamps")
    if (not isinstance(stamps, dict) or set(stamps) != set(keys.values())
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in stamps.values())):
        raise ValueError("meta.sweep_stamps must give each sweep's created_at")
    if not isinstance(info, dict) or set(info) != set(_INFO):
        raise ValueError(f"meta.info must have exactly {', '.join(_INFO)}")
    for name, typ in _INFO.items():
        v = info[name]
        if typ is str:
            ok = isinstance(v, str) and len(v) <= 20
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (typ is float or float(v).is_integer())
        if not ok:
            raise ValueError(f"meta.info.{name} must be {'text' if typ is str else 'a number'}")
    if not 1 <= info["k"] <= 10_000 or not 0 <= info["n_boot"] <= 100_000 or not 0 < info["level"] < 1 or not 0 < info["fdr"] < 1:
        raise ValueError("meta.info: k, n_boot, level or fdr is out of range")


def expected_key(spec: Spec, meta: dict, fingerprint: str, engine_version: str) -> str:
    """The key a row with this spec and (checked) meta must have."""
    return GridStatsRequest.from_meta(spec, meta).key(fingerprint, engine=engine_version)


def check_table(table: pd.DataFrame, settings: Sequence[str]) -> None:
    """Raise ValueError naming the first way ``table`` is not a grid's
    statistics for ``settings``: exact columns and dtypes, known parts and
    statistics, settings and factors that exist, no infinities."""
    if list(table.columns) != list(TABLE_DTYPES):
        raise ValueError(f"columns must be exactly {', '.join(TABLE_DTYPES)}")
    for c, dt in TABLE_DTYPES.items():
        if dt == "float64" and str(table[c].dtype) != "float64":
            raise ValueError(f"column {c} must be float64")
        if dt == "str" and len(table) and pd.api.types.infer_dtype(table[c], skipna=False) != "string":
            raise ValueError(f"column {c} must be text")
    for part, stats in table.groupby("part", sort=False)["stat"]:
        if part not in PART_STATS:
            raise ValueError(f"part {str(part)[:30]!r} is not one of {', '.join(PART_STATS)}")
        odd = set(stats.unique()) - set(PART_STATS[part])
        if odd:
            raise ValueError(f"statistic {sorted(odd)[0][:30]!r} is not one of part {part!r}'s")
    known = set(settings)
    on_settings = table["part"] != "factor"
    if not table.loc[on_settings, "a"].isin(known).all() or not table.loc[table["part"].isin(["pair", "test"]), "b"].isin(known).all():
        raise ValueError("a row names a setting that is not in meta.settings")
    if not table.loc[~on_settings, "a"].isin(set(layout.FACTORS)).all():
        raise ValueError(f"a factor row names a factor that is not one of {', '.join(layout.FACTORS)}")
    comps = table.loc[table["part"].isin(["cell", "test"]), "component"]
    if len(comps) and not comps.drop_duplicates().map(lambda c: bool(_LABEL.fullmatch(c))).all():
        raise ValueError("a component label is not a component label (letters, digits, _ : . only)")
    v = table["value"].to_numpy()
    if (abs(v[v == v]) == float("inf")).any():
        raise ValueError("a value is infinite")
