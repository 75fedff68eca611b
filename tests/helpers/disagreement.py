"""The Disagreement grid's test helpers: the small real grid's base spec, and
every statistic recomputed with scipy from the store's SQLite rows
(independently of patching.analysis), the CLI in a subprocess and the page
under AppTest. The real grid itself is the ``real_grid`` fixture in
tests/conftest.py (computed once per run)."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from patching.core.spec import Spec
from tests.helpers import ROOT
from tests.helpers.cli import run_cli

PAGE = str(ROOT / "pages" / "3_Disagreement.py")
AGREEMENT_COLUMNS = ["setting_a", "setting_b", "spearman", "kendall", "topk_jaccard", "sign_flips"]


# The real grid: small enough for 2 busy cores (4 sweeps of 270 heads).
BASE = Spec(model="smollm2-135m", task="ioi", n_pairs=2, seed=0, component="head", noise_samples=2)
S2 = "*/*/*/s2"
K = 5


def scipy_stats(x: pd.Series, y: pd.Series, k: int) -> dict:
    """Every CLI statistic recomputed from two effect vectors, with scipy and
    by hand (independently of patching.analysis.stats)."""
    common = [c for c in x.index if c in y.index]
    xa, ya = x[common].to_numpy(float), y[common].to_numpy(float)
    ta = set(np.array(common)[np.argsort(-np.abs(xa), kind="stable")[:k]])
    tb = set(np.array(common)[np.argsort(-np.abs(ya), kind="stable")[:k]])
    # A flip: each side beyond max(1e-4 x max|effect|, 1 SD of that setting's effects) from zero.
    fx, fy = x.to_numpy(float), y.to_numpy(float)
    fx, fy = fx[np.isfinite(fx)], fy[np.isfinite(fy)]
    ex, ey = max(1e-4 * np.abs(fx).max(), fx.std()), max(1e-4 * np.abs(fy).max(), fy.std())
    flips = int((((xa > ex) & (ya < -ey)) | ((xa < -ex) & (ya > ey))).sum())
    return {
        "spearman": sps.spearmanr(xa, ya).statistic,
        "kendall": sps.kendalltau(xa, ya).statistic,
        "topk_jaccard": len(ta & tb) / len(ta | tb),
        "sign_flips": flips,
    }


def effects_from_sqlite(path: Path, settings: list[str]) -> dict[str, pd.Series]:
    """setting -> effect vector, read straight from the store's SQLite rows
    (the stored spec JSON and Parquet table), not through patching.*."""
    con = sqlite3.connect(path)
    rows = con.execute("SELECT spec_json, table_json, table_parquet FROM results WHERE kind='activation'").fetchall()
    con.close()
    tables = {}
    for spec_json, table_json, table_parquet in rows:
        sp = json.loads(spec_json)
        t = pd.read_parquet(io.BytesIO(table_parquet)) if table_parquet else pd.read_json(io.StringIO(table_json), orient="split")
        t.index = [f"L{int(l)}H{int(h)}" for l, h in zip(t["layer"], t["head"])]
        tables[(sp["corruption"], sp["direction"], sp["ioi_corrupt"])] = t
    out = {}
    for s in settings:
        c, m, d, v = s.split("/")
        if (c, d, v) in tables:
            out[s] = tables[(c, d, v)][m]
    return out


def check_against_scipy(df: pd.DataFrame, effects: dict[str, pd.Series], k: int) -> None:
    assert len(df) == len(effects) * (len(effects) - 1) // 2
    for _, row in df.iterrows():
        want = scipy_stats(effects[row["setting_a"]], effects[row["setting_b"]], k)
        for col in ("spearman", "kendall", "topk_jaccard"):
            assert row[col] == pytest.approx(want[col], abs=1e-9), (row["setting_a"], row["setting_b"], col)
        assert int(row["sign_flips"]) == want["sign_flips"], (row["setting_a"], row["setting_b"])


def cli(env, *args, timeout=900):
    """``python -m patching compare *args`` in a subprocess."""
    return run_cli(env, "compare", *args, timeout=timeout)


def cli_args(base: Spec = BASE) -> list[str]:
    return ["--model", base.model, "--task", base.task, "--n-pairs", str(base.n_pairs), "--seed", str(base.seed),
            "--component", base.component, "--noise-samples", str(base.noise_samples)]


def copy_store(src_cache: Path, dst_cache: Path) -> None:
    """``src_cache``'s store into ``dst_cache`` by SQLite's backup (whole, even
    with a write-ahead log not yet checkpointed)."""
    src, dst = sqlite3.connect(src_cache / "results.sqlite"), sqlite3.connect(dst_cache / "results.sqlite")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def page_query(**extra) -> dict:
    q = {k: v for k, v in BASE.to_query().items()}
    q.update({"variants": "s2", "k": str(K)})
    q.update(extra)
    return q


def run_page(cache: Path, query: dict, monkeypatch):
    from tests.helpers.apptest import open_page

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(cache))
    at = open_page(PAGE, query, timeout=600)
    assert not at.exception, at.exception
    return at


def synthetic_grid(base: Spec = BASE, settings=S2, n_layers: int = 4, n_heads: int = 3, n_prompts: int = 6, seed: int = 0,
                   noop: tuple[int, ...] = ()):
    """A disagreement Grid of synthetic but consistent sweeps (no model, no
    store): per-prompt values for every metric (a shared signal, a
    sweep-specific one and per-prompt noise), each sweep's table their
    means (the normalised logit difference a ratio of means, as the engine
    computes it), ``noop`` cells zero by construction in every sweep."""
    from patching.analysis import uncertainty
    from patching.results import Result
    from patching.studies.disagreement import grid as disagreement_grid

    rng = np.random.default_rng(seed)
    specs = disagreement_grid.grid_specs(base, settings)
    grid = disagreement_grid.Grid(base=disagreement_grid.grid_base(base), settings=list(specs), specs=specs)
    n_cells = n_layers * n_heads
    shared = rng.normal(0, 0.05, n_cells)
    shared[rng.choice(n_cells, 3, replace=False)] += [0.6, -0.4, 0.3]
    for i, sets in enumerate(disagreement_grid.sweeps_of(specs).values()):
        sp = specs[sets[0]]
        own = shared + rng.normal(0, 0.08, n_cells)
        eff = own[:, None] + rng.normal(0, 0.05, (n_cells, n_prompts))  # [cells, prompts]
        eff[list(noop)] = 0.0
        ld_clean = 2.0 + rng.normal(0, 0.3, n_prompts)
        ld_corrupt = -2.0 + rng.normal(0, 0.3, n_prompts)
        gap = ld_clean - ld_corrupt
        ld_patched = ld_corrupt + eff * gap if sp.direction == "denoise" else ld_clean - eff * gap
        cols = {"logit_diff": eff, "prob": 0.2 * eff + rng.normal(0, 0.01, eff.shape), "logprob": 1.5 * eff,
                "kl": 0.8 * eff + rng.normal(0, 0.03, eff.shape), "ld_patched": ld_patched}
        for m in ("prob", "logprob", "kl"):
            cols[m][list(noop)] = 0.0
        pp = pd.DataFrame({"cell": np.repeat(np.arange(n_cells), n_prompts), "prompt": np.tile(np.arange(n_prompts), n_cells),
                           **{c: v.reshape(-1) for c, v in cols.items()}})
        ref = {"ld_clean": ld_clean.tolist(), "ld_corrupt": ld_corrupt.tolist()}
        mats, _ = uncertainty.matrices(pp, n_cells)
        one = np.full((1, n_prompts), 1.0 / n_prompts)
        table = pd.DataFrame({"component": "head", "layer": np.repeat(np.arange(n_layers), n_heads), "head": np.tile(np.arange(n_heads), n_layers),
                              "pos": pd.array([pd.NA] * n_cells, dtype="Int64"), "pos_label": ""})
        table["head"] = table["head"].astype("Int64")
        for m in ("logit_diff", "prob", "logprob", "kl"):
            table[m] = uncertainty.samples(mats, ref, m, sp.direction, one)[:, 0]
        meta = {"per_prompt_ref": ref, "noop_cells": list(noop), "n_pairs": n_prompts}
        baselines = {"clean_prob": 0.3, "corrupt_prob": 0.01 * (i + 1), "clean_logit_diff": 2.0, "corrupt_logit_diff": -2.0}
        res = Result(spec=sp, table=table, baselines=baselines, meta=meta, per_prompt=pp, key=f"{i:064x}")
        for s in sets:
            grid.results[s] = disagreement_grid._with_spec(res, specs[s])
    return grid
