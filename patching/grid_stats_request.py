"""A Disagreement grid's statistics as a stored kind (``grid_stats``): what a
stored row answers (:class:`GridStatsRequest`: its key and link), its table's
schema, and the checks a stored or bundled row must pass. Declarations only:
the statistics are computed in :mod:`patching.studies.disagreement.grid_stats`
and stored by :mod:`patching.studies.disagreement.stored`, so
:mod:`patching.kinds` declares the kind without importing the studies above it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import pandas as pd

from patching.analysis import inference
from patching.analysis.stats import parse_setting
from patching.analysis.uncertainty import DEFAULT_BOOT
from patching.core.errors import PatchboardError
from patching.core.schema import TEXT, Limits, TableSchema
from patching.core.spec import IOI_CORRUPT, Spec

#: Each factor's name as the page and the CLI write it.
FACTORS = {"corruption": "corruption", "metric": "metric", "direction": "direction", "variant": "prompt variant", "method": "method"}
#: A noise floor's columns (:mod:`patching.studies.disagreement.floor`).
FLOOR_COLUMNS = ["floor_a", "floor_a_lo", "floor_a_hi", "floor_b", "floor_b_lo", "floor_b_hi", "cross", "floor_gap",
                 "floor_gap_lo", "floor_gap_hi", "floor_p", "floor_q"]
#: A factor's columns (:mod:`patching.studies.disagreement.factors`).
FACTOR_COLUMNS = ["factor", "n_pairs", "spearman", "spearman_lo", "spearman_hi", "spearman_min", "spearman_max",
                  "topk_jaccard", "topk_jaccard_lo", "topk_jaccard_hi", "topk_jaccard_min", "topk_jaccard_max",
                  "gap_to_next", "gap_lo", "gap_hi"]
#: The two families of tests (:mod:`patching.studies.disagreement.significance`).
TEST_KINDS = ("detected/missed", "sign flip")
#: Bumped whenever a definition behind a stored number changes (2: issue 19's
#: tests, expanded percentile intervals and noise floors).
STATS_VERSION = "2"
#: The stored table's columns and dtypes (exactly these; bundles check them).
TABLE_DTYPES = {"part": "str", "a": "str", "b": "str", "component": "str", "stat": "str", "value": "float64"}
#: A test row's numbers (significance.COLUMNS past its names), stored as ``<kind>|<column>``.
TEST_VALUES = ("effect_a", "effect_b", "difference", "disagreement", "p", "q", "significant")
#: Each part's statistics (a stored table with any other is refused).
PART_STATS = {
    "pair": ("n", "spearman", "kendall", "topk_jaccard", "sign_flips", "sign_flips_detected", "spearman_lo", "spearman_hi",
             "topk_jaccard_lo", "topk_jaccard_hi", *FLOOR_COLUMNS, "n_unmeasured"),
    "factor": tuple(c for c in FACTOR_COLUMNS if c != "factor"),
    "cell": ("effect", "lo", "hi", "z", "detected", "stability", "significant", "measured"),
    "test": tuple(f"{kind}|{c}" for kind in TEST_KINDS for c in TEST_VALUES),
}
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


def grid_base(spec: Spec) -> Spec:
    """The canonical base of a grid: ``spec`` validated as a gn spec, so its
    noise scale/samples (which only gn settings use) survive validation; its
    corruption, metric, direction (and ioi_corrupt) are overridden per setting.
    Note that a spec validated with corruption=str has already lost them."""
    return replace(spec, corruption="gn", method="exact").validated()


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
        return cls(grid_base(base), sweeps, int(k), int(n_boot), round(float(level), 12), int(seed), str(version),
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


def page_query(base: Spec, settings: Sequence[str], k: int) -> dict[str, str]:
    """The Disagreement page's link parameters for these settings (the
    Library opens a stored row with them)."""
    ps = [p for p in map(parse_setting, settings) if p is not None]
    q = {"noise-scale": f"{base.noise_scale:g}", "noise-samples": str(base.noise_samples), "k": str(int(k))}
    order = {v: i for i, v in enumerate(IOI_CORRUPT)}  # the page's own order, whatever order the settings come in
    variants = sorted(dict.fromkeys(p["variant"] for p in ps if p["variant"]), key=lambda v: order.get(v, len(order)))
    if variants:
        q["variants"] = ",".join(variants)
    methods = [m for m in dict.fromkeys(p["method"] for p in ps) if m != "exact"]
    if methods:
        q["grid-method"] = methods[0]
    return q


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
    if not table.loc[~on_settings, "a"].isin(set(FACTORS)).all():
        raise ValueError(f"a factor row names a factor that is not one of {', '.join(FACTORS)}")
    comps = table.loc[table["part"].isin(["cell", "test"]), "component"]
    if len(comps) and not comps.drop_duplicates().map(lambda c: bool(_LABEL.fullmatch(c))).all():
        raise ValueError("a component label is not a component label (letters, digits, _ : . only)")
    v = table["value"].to_numpy()
    if (abs(v[v == v]) == float("inf")).any():
        raise ValueError("a value is infinite")
