"""The disagreement grid (patching.studies.disagreement), its CLI and its page.

Two kinds of tests:

* fast ones on a store filled with synthetic sweeps (no model): settings
  parsing, caching (stored sweeps are never recomputed), the aggregated
  progress, and the tables;
* on the embedded model with the IOI task (n-pairs 2, heads, gn with 2 noise
  samples, ioi_corrupt s2: 4 real sweeps, computed once per module): every
  statistic the CLI and the page show is recomputed here with scipy from the
  rows in the store, never compared with a constant; a perturbed stored table
  changes the CLI output accordingly.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from patching.studies.disagreement import tables as A
from patching.studies.disagreement import grid as C
from patching.studies.disagreement import text as CT
from patching.analysis import text as T
from patching.core.errors import PatchboardError
from patching.core.spec import ENGINE_VERSION, Spec
from patching.store import Store

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "3_Disagreement.py")
AGREEMENT_COLUMNS = ["setting_a", "setting_b", "spearman", "kendall", "topk_jaccard", "sign_flips"]

# The real grid: small enough for 2 busy cores (4 sweeps of 270 heads).
BASE = Spec(model="smollm2-135m", task="ioi", n_pairs=2, seed=0, component="head", noise_samples=2)
S2 = "*/*/*/s2"
K = 5


# ================================================================ helpers


def scipy_stats(x: pd.Series, y: pd.Series, k: int) -> dict:
    """Every CLI statistic recomputed from two effect vectors, with scipy and
    by hand (independently of patching.stats)."""
    common = [c for c in x.index if c in y.index]
    xa, ya = x[common].to_numpy(float), y[common].to_numpy(float)
    ta = set(np.array(common)[np.argsort(-np.abs(xa), kind="stable")[:k]])
    tb = set(np.array(common)[np.argsort(-np.abs(ya), kind="stable")[:k]])
    ex, ey = 1e-4 * np.abs(xa).max(), 1e-4 * np.abs(ya).max()
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
    rows = con.execute("SELECT spec_json, table_json, table_parquet FROM results").fetchall()
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
    return subprocess.run([sys.executable, "-m", "patching", "compare", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def cli_args(base: Spec = BASE) -> list[str]:
    return ["--model", base.model, "--task", base.task, "--n-pairs", str(base.n_pairs), "--seed", str(base.seed),
            "--component", base.component, "--noise-samples", str(base.noise_samples)]


def make_cache(tmp: Path) -> Path:
    """A cache folder with the converted embedded model linked in."""
    from patching.core.models import embedded_folder

    tmp.mkdir(parents=True, exist_ok=True)
    src = embedded_folder().parent.resolve()  # converts the embedded model once if needed
    (tmp / "models").symlink_to(src, target_is_directory=True)
    return tmp


def env_for(cache: Path) -> dict:
    e = dict(os.environ, PATCHBOARD_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    e.pop("PATCHBOARD_DEBUG", None)
    return e


# ================================================================ settings (no model)


def test_full_grid_sizes():
    assert len(C.default_settings(BASE)) == 36
    assert len(C.sweeps_of(C.grid_specs(BASE))) == 12
    facts = Spec(task="facts", component="head")
    assert len(C.grid_specs(facts)) == 12 and len(C.sweeps_of(C.grid_specs(facts))) == 4
    assert all(len(s.split("/")) == 3 for s in C.grid_specs(facts))


def test_metric_is_not_part_of_a_sweep():
    specs = C.grid_specs(BASE, S2)
    assert len(specs) == 12
    groups = C.sweeps_of(specs)
    assert len(groups) == 4
    for sets in groups.values():
        assert sorted(s.split("/")[1] for s in sets) == ["kl", "logit_diff", "prob"]
        keys = {specs[s].cache_key("fp") for s in sets}
        assert len(keys) == 1


def test_noise_settings_reach_gn_cells_only():
    specs = C.grid_specs(Spec(task="ioi", n_pairs=2, noise_samples=3, noise_scale=2.0), S2)
    for s, sp in specs.items():
        if s.startswith("gn/"):
            assert (sp.noise_samples, sp.noise_scale) == (3, 2.0)
        else:  # str: canonical defaults, so the cache key does not depend on them
            assert (sp.noise_samples, sp.noise_scale) == (10, 3.0)


def test_parse_settings_wildcards_and_defaults():
    assert C.parse_settings("str/logit_diff/denoise, gn/prob/noise", BASE) == ["str/logit_diff/denoise/s2", "gn/prob/noise/s2"]
    assert C.parse_settings("str/*/denoise/abc", BASE) == [f"str/{m}/denoise/abc" for m in ("logit_diff", "prob", "kl")]
    assert C.parse_settings(["STR/prob/noise", "str/prob/noise/s2"], BASE) == ["str/prob/noise/s2"]
    assert C.parse_settings("str/logit_diff/denoise", Spec(task="facts")) == ["str/logit_diff/denoise"]
    assert C.parse_settings("str/logit_diff/denoise", replace_variant(BASE, "abc")) == ["str/logit_diff/denoise/abc"]
    assert C.parse_settings(None, BASE) == C.parse_settings("", BASE) == C.default_settings(BASE)


def replace_variant(spec: Spec, v: str) -> Spec:
    from dataclasses import replace

    return replace(spec, ioi_corrupt=v)


@pytest.mark.parametrize("text,needle", [
    ("str/bogus/denoise", "metric 'bogus'"),
    ("xyz/prob/denoise", "corruption 'xyz'"),
    ("str/prob/sideways", "direction 'sideways'"),
    ("str/prob/noise/s3", "ioi_corrupt 's3'"),
    ("str/prob", "is not corruption/metric/direction"),
])
def test_parse_settings_errors_name_the_field(text, needle):
    with pytest.raises(PatchboardError) as e:
        C.parse_settings(text, BASE)
    assert e.value.field == "settings" and needle in str(e.value) and "\n" not in str(e.value)


def test_fourth_part_only_for_ioi():
    with pytest.raises(PatchboardError, match="ioi task only"):
        C.parse_settings("str/prob/noise/s2", Spec(task="facts"))


def test_cli_command_round_trips_the_settings():
    assert "--settings" not in CT.cli_command(BASE, C.default_settings(BASE))
    cmd = CT.cli_command(BASE, C.default_settings(BASE, ["s2", "abc"]), 7)
    assert "--settings '*/*/*/s2,*/*/*/abc'" in cmd and "--k 7" in cmd and "--noise-samples 2" in cmd
    assert C.parse_settings("*/*/*/s2,*/*/*/abc", BASE) == C.default_settings(BASE, ["s2", "abc"])


# ================================================================ synthetic store (no model)


def fake_table(seed: int, n_layers=4, n_heads=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for l in range(n_layers):
        for h in range(n_heads):
            v = rng.normal(0, 0.05)
            rows.append({"component": "head", "layer": l, "head": h, "pos": None, "pos_label": "",
                         "logit_diff": v, "prob": 0.1 * v + rng.normal(0, 0.001), "logprob": v, "kl": abs(v) + rng.normal(0, 0.01)})
    t = pd.DataFrame(rows)
    t.loc[5, ["logit_diff", "prob", "kl"]] = [0.9, 0.05, 0.7]  # a clear head everywhere
    for c in ("head", "pos"):
        t[c] = t[c].astype("Int64")
    return t


def put_sweep(store: Store, spec: Spec, fp: str, seed: int, corrupt_prob: float = 0.01) -> None:
    base = {"clean_logit_diff": 2.0, "corrupt_logit_diff": -1.0, "clean_prob": 0.3, "corrupt_prob": corrupt_prob,
            "clean_logprob": -1.2, "corrupt_logprob": -4.6, "corrupt_kl": 1.1, "clean_accuracy": 1.0}
    store.put(spec.cache_key(fp), "activation", spec.to_json(), spec.label(), spec.model, fp, ENGINE_VERSION, 0.5, base,
              {"compute_seconds": 0.5}, fake_table(seed))


def fill(store: Store, base: Spec, settings, fp="fp-test", skip=()):
    specs = C.grid_specs(base, settings)
    for i, sets in enumerate(C.sweeps_of(specs).values()):
        if i in skip:
            continue
        put_sweep(store, specs[sets[0]], fp, seed=i, corrupt_prob=0.01 * (i + 1))
    return specs


def test_lookup_grid_reads_only_what_is_stored(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    fill(store, BASE, S2, skip=(1,))
    grid = C.lookup_grid(BASE, store, "fp-test", S2)
    assert len(grid.settings) == 12 and len(grid.available) == 9 and len(grid.missing) == 3
    assert grid.n_sweeps == 4 and grid.n_missing_sweeps == 1 and not grid.complete
    # Other fingerprints (other weights) see nothing.
    assert C.lookup_grid(BASE, store, "other", S2).available == []
    # Each setting reads its own metric from the shared table.
    eff = grid.effects()
    s = grid.available[0]
    col = s.split("/")[1]
    assert np.allclose(eff[s].to_numpy(), grid.results[s].table[col].to_numpy())


def test_stored_sweeps_are_not_recomputed_and_progress_is_one_bar(tmp_path, monkeypatch):
    from patching import service as api

    store = Store(tmp_path / "r.sqlite")
    specs = fill(store, BASE, S2, skip=(1, 3))  # sweeps 1 and 3 missing: str/noise and gn/noise
    calls, progress = [], []

    def fake_run(spec, store=None, progress=None, lm=None, use_store=True):
        hit = api.lookup(spec, store, lm.fingerprint)
        assert hit is None, "run() must only be called for sweeps that are not stored"
        calls.append(spec)
        for d in (1, 2, 3):
            progress(d, 3)
        put_sweep(store, spec, lm.fingerprint, seed=100 + len(calls))
        return api.lookup(spec, store, lm.fingerprint)

    monkeypatch.setattr(api, "run", fake_run)
    lm = SimpleNamespace(fingerprint="fp-test")
    grid = C.load_or_compute_grid(BASE, store, lm, progress=lambda d, t: progress.append((d, t)), settings=S2)
    assert grid.complete and grid.computed == 0  # fake_run returns from_store results
    assert [(s.corruption, s.direction) for s in calls] == [("str", "noise"), ("gn", "noise")]
    # One bar for the grid: same total throughout, monotone, ends full; a gn
    # sweep (2 rows x 2 noise samples) weighs twice a str sweep (2 rows).
    totals = {t for _, t in progress}
    assert totals == {2 + 4}
    done = [d for d, _ in progress]
    assert done[0] == 0 and done[-1] == 6 and done == sorted(done)
    # Everything stored now: nothing is called again.
    calls.clear()
    C.load_or_compute_grid(BASE, store, lm, settings=S2)
    assert calls == []
    assert len(specs) == 12


def test_tables_from_synthetic_store(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    fill(store, BASE, S2)
    grid = C.lookup_grid(BASE, store, "fp-test", S2)
    eff = grid.effects()
    long = A.agreement(grid, k=3)
    assert list(long.columns[:6]) == AGREEMENT_COLUMNS and (long["k"] == 3).all()
    check_against_scipy(long, eff, 3)
    mats = A.matrices(long, grid.settings)
    for stat, m in mats.items():
        assert list(m.index) == grid.settings and np.allclose(m.to_numpy(), m.to_numpy().T, equal_nan=True)
    row = long.iloc[4]
    assert mats["kendall"].loc[row["setting_b"], row["setting_a"]] == row["kendall"]
    # detection sets = the 2-SD rule recomputed with numpy
    ds = A.detection_sets(grid).set_index("setting")
    for s, v in eff.items():
        z = (v - v.mean()) / v.std(ddof=0)
        want = set(v.index[np.abs(z) > 2])
        got = {c for c in (ds.at[s, "positive"] + ", " + ds.at[s, "negative"]).split(", ") if c}
        assert got == want and ds.at[s, "n_detected"] == len(want)
    # scatter
    a, b = grid.settings[0], grid.settings[7]
    sc = A.scatter_data(grid, a, b).set_index("component")
    assert np.allclose(sc["a"], eff[a][sc.index]) and np.allclose(sc["b"], eff[b][sc.index])
    with pytest.raises(PatchboardError, match="not an available setting"):
        A.scatter_data(grid, a, "str/prob/noise/abc")
    # rank chart: ranks by |effect| under each setting
    rk = A.rank_data(grid, top=4, reference=a)
    assert set(rk["component"]) == set(eff[a].abs().sort_values(ascending=False).index[:4])
    for _, r in rk.iterrows():
        assert r["rank"] == int((eff[r["setting"]].abs() > abs(r["effect"])).sum()) + 1
    # effects export
    et = A.effects_table(grid).set_index("component")
    assert list(et.columns) == grid.settings and np.allclose(et[a], eff[a][et.index])
    # mechanisms quote the stored baselines
    mech = " ".join(m["text"] for m in CT.mechanisms(grid))
    for sets in C.sweeps_of(grid.specs).values():
        b0 = grid.results[sets[0]].baselines
        if grid.specs[sets[0]].direction == "denoise":
            assert f"P_corrupt(answer) = {b0['corrupt_prob']:.3g}" in mech


def test_k_must_be_positive():
    with pytest.raises(PatchboardError) as e:
        A.agreement({"a/b/c": pd.Series([1.0, 2.0], index=["x", "y"]), "a/b/d": pd.Series([1.0, 3.0], index=["x", "y"])}, 0)
    assert e.value.field == "k"


# ================================================================ the embedded model


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The s2 grid on the embedded model, computed once into its own store."""
    from patching.service import get_model

    cache = make_cache(tmp_path_factory.mktemp("compare-real"))
    store = Store(cache / "results.sqlite")
    lm = get_model(BASE.model)
    progress = []
    t0 = time.time()
    grid = C.load_or_compute_grid(BASE, store, lm, progress=lambda d, t: progress.append((d, t)), settings=S2)
    seconds = time.time() - t0
    print(f"\n[compare] s2 grid (4 sweeps, n-pairs 2, gn x2 samples) computed in {seconds:.0f} s")
    return SimpleNamespace(cache=cache, store=store, lm=lm, grid=grid, progress=progress, seconds=seconds,
                           settings=C.parse_settings(S2, BASE))


@pytest.mark.integration
def test_real_grid_computed_once_and_cached(real):
    g = real.grid
    assert g.complete and g.computed == 4 and real.store.count() == 4
    totals = {t for _, t in real.progress}
    assert totals == {2 * 2 + 2 * 4}  # str: 2 rows per sweep; gn: 2 pairs x 2 samples
    done = [d for d, _ in real.progress]
    assert done == sorted(done) and done[-1] == 12
    again = C.load_or_compute_grid(BASE, real.store, real.lm, settings=S2)
    assert again.computed == 0 and real.store.count() == 4
    assert all(r.from_store for r in again.results.values())
    # the three metrics of one sweep come from one stored table
    e = again.effects()
    t = again.results["str/prob/denoise/s2"].table
    assert np.allclose(e["str/prob/denoise/s2"].to_numpy(), t["prob"].to_numpy())
    assert np.allclose(e["str/kl/denoise/s2"].to_numpy(), t["kl"].to_numpy())


@pytest.mark.integration
def test_real_statistics_match_scipy_on_stored_rows(real):
    grid = C.lookup_grid(BASE, real.store, real.lm.fingerprint, S2)
    from_db = effects_from_sqlite(real.cache / "results.sqlite", real.settings)
    assert set(from_db) == set(real.settings)
    long = A.agreement(grid, K)
    check_against_scipy(long, from_db, K)
    # the 2-SD sets and the disagreement table, from the stored rows
    ds = A.detection_sets(grid).set_index("setting")
    dets = {}
    for s, v in from_db.items():
        z = (v - v.mean()) / v.std(ddof=0)
        dets[s] = set(v.index[np.abs(z) > 2])
        got = {c for c in (ds.at[s, "positive"] + ", " + ds.at[s, "negative"]).split(", ") if c}
        assert got == dets[s], s
    dis = A.disagreements(grid)
    want = {c for c in set().union(*dets.values()) if any(c not in d for d in dets.values())}
    assert set(dis["component"]) == want
    for _, r in dis.iterrows():
        assert set(r["detected_in"].split(", ")) == {s for s in real.settings if r["component"] in dets[s]}
        for s in real.settings:
            assert r[s] == pytest.approx(from_db[s][r["component"]])
    flips = A.sign_flips(grid)
    for _, r in flips.head(10).iterrows():
        vals = {s: from_db[s][r["component"]] for s in real.settings}
        assert vals[r["strongest_positive"]] > 0 > vals[r["strongest_negative"]]


@pytest.mark.integration
def test_real_summary_and_mechanisms_quote_stored_numbers(real):
    grid = C.lookup_grid(BASE, real.store, real.lm.fingerprint, S2)
    lines = CT.summary(grid, K)
    text = "\n".join(lines)
    print("\n[compare] summary:\n- " + "\n- ".join(lines))
    long = A.agreement(grid, K)
    lo = long.sort_values(["spearman", "topk_jaccard"]).iloc[0]
    assert lines[0].startswith(f"Least agreement: {lo['setting_a']} vs {lo['setting_b']}")
    assert T._num(lo["spearman"]) in lines[0]
    if "cannot fall below" in text:  # the probability floor quotes the measured P_corrupt
        p = grid.results["str/prob/denoise/s2"].baselines["corrupt_prob"]
        pg = grid.results["gn/prob/denoise/s2"].baselines["corrupt_prob"]
        assert f"here \u2212{p:.2g}" in text or f"here \u2212{pg:.2g}" in text or "1 \u2212 P_clean" in text
    mech = CT.mechanisms(grid)
    p = grid.results["str/prob/denoise/s2"].baselines["corrupt_prob"]
    assert f"P_corrupt(answer) = {p:.3g}" in mech[0]["text"]
    assert "(2 noisy copies per prompt)" in mech[1]["text"]


@pytest.mark.integration
def test_cli_reads_the_store_and_follows_a_perturbed_table(real, tmp_path):
    env = env_for(real.cache)
    out, eff_out = tmp_path / "compare.csv", tmp_path / "effects.csv"
    r = cli(env, *cli_args(), "--settings", S2, "--k", str(K), "--stored-only", "--out", str(out), "--effects", str(eff_out))
    assert r.returncode == 0, r.stderr
    assert "from the store" in r.stderr
    df = pd.read_csv(out)
    assert list(df.columns[:6]) == AGREEMENT_COLUMNS
    assert len(df) == 66 and set(df["setting_a"]) | set(df["setting_b"]) == set(real.settings)
    db = effects_from_sqlite(real.cache / "results.sqlite", real.settings)
    check_against_scipy(df, db, K)
    # the effects export holds exactly the stored effects, and recomputes the CSV
    et = pd.read_csv(eff_out).set_index("component")
    for s in real.settings:
        assert np.allclose(et[s].to_numpy(), db[s][et.index].to_numpy(), atol=1e-12)
    check_against_scipy(df, {s: et[s] for s in real.settings}, K)

    # Perturb one stored sweep (str/denoise: reverse its logit_diff column) in a copy of the store.
    cache2 = make_cache(tmp_path / "perturbed")
    shutil.copy(real.cache / "results.sqlite", cache2 / "results.sqlite")
    con = sqlite3.connect(cache2 / "results.sqlite")
    key, tp = next((k, t) for k, sj, t in con.execute("SELECT key, spec_json, table_parquet FROM results")
                   if json.loads(sj)["corruption"] == "str" and json.loads(sj)["direction"] == "denoise")
    t = pd.read_parquet(io.BytesIO(tp))
    t["logit_diff"] = t["logit_diff"].to_numpy()[::-1]
    buf = io.BytesIO()
    t.to_parquet(buf, index=False)
    con.execute("UPDATE results SET table_parquet=? WHERE key=?", (buf.getvalue(), key))
    con.commit()
    con.close()
    out2 = tmp_path / "compare2.csv"
    r = cli(env_for(cache2), *cli_args(), "--settings", S2, "--k", str(K), "--stored-only", "--out", str(out2))
    assert r.returncode == 0, r.stderr
    df2 = pd.read_csv(out2)
    check_against_scipy(df2, effects_from_sqlite(cache2 / "results.sqlite", real.settings), K)
    hit = (df2["setting_a"] == "str/logit_diff/denoise/s2") | (df2["setting_b"] == "str/logit_diff/denoise/s2")
    assert not np.allclose(df2.loc[hit, "spearman"], df.loc[hit, "spearman"])
    pd.testing.assert_frame_equal(df2.loc[~hit], df.loc[~hit])


@pytest.mark.integration
def test_cli_stored_only_and_bad_settings(real, capsys, monkeypatch):
    env = env_for(real.cache)
    # as a user runs it: a sweep that is not stored (abc) is not computed under --stored-only
    r = cli(env, *cli_args(), "--settings", "str/prob/denoise/s2,str/prob/denoise/abc", "--stored-only")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: stored-only:") and len(r.stderr.strip().splitlines()) == 1
    # the same entry point in-process (no interpreter start per case)
    from patching.cli import main

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(real.cache))
    for bad, field in (("str/prob/denoise,gn/bogus/noise", "settings"), ("str/prob", "settings"),
                       ("str/prob/denoise/zz", "settings"), ("str/prob/denoise", "settings"),
                       ("str/prob/denoise/s2,xx/kl/noise", "settings")):
        assert main(["compare", *cli_args(), "--settings", bad]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), lines
    assert main(["compare", *cli_args(), "--k", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: k:")
    assert Store(real.cache / "results.sqlite").count() == 4  # nothing computed or written


@pytest.mark.integration
def test_ioi_variants_in_one_grid(real):
    """The IOI corruption variants: str/denoise under s2, s1_io and abc (s2 is
    stored already, so 2 sweeps are computed) compared across variants."""
    settings = "str/*/denoise/*"
    grid = C.load_or_compute_grid(BASE, real.store, real.lm, settings=settings)
    assert len(grid.settings) == 9 and grid.complete and grid.computed == 2
    long = A.agreement(grid, K)
    assert set(long.loc[long["differs_in"] == "variant", "setting_a"]) <= set(grid.settings)
    assert (long["differs_in"] == "variant").sum() == 9  # 3 metrics x 3 pairs of variants
    db = effects_from_sqlite(real.cache / "results.sqlite", grid.settings)
    check_against_scipy(long, db, K)
    # each variant has its own corrupted run, hence its own P_corrupt
    ps = {grid.specs[s].ioi_corrupt: grid.results[s].baselines["corrupt_prob"] for s in grid.settings}
    assert len(ps) == 3
    mech = CT.mechanisms(grid)[0]["text"]
    for v, p in ps.items():
        assert f"str/{v} denoise: P_corrupt(answer) = {p:.3g}" in mech


# ================================================================ the page (AppTest)


def page_query(**extra) -> dict:
    q = {k: v for k, v in BASE.to_query().items()}
    q.update({"variants": "s2", "k": str(K)})
    q.update(extra)
    return q


def run_page(cache: Path, query: dict, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(cache))
    at = AppTest.from_file(PAGE, default_timeout=600)
    at.query_params.update(query)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.mark.app
def test_page_shows_stored_grid_from_a_link(real, monkeypatch):
    a, b = "str/logit_diff/denoise/s2", "gn/prob/noise/s2"
    at = run_page(real.cache, page_query(a=a, b=b), monkeypatch)
    assert not [x for x in at.button if x.label.startswith("Compute")]  # everything stored: nothing to compute
    grid = C.lookup_grid(BASE, real.store, real.lm.fingerprint, S2)
    long = A.agreement(grid, K)
    # the agreement table on the page = the library's = scipy on the stored rows
    shown = next(d.value for d in at.dataframe if "topk_jaccard" in d.value.columns)
    check_against_scipy(shown.reset_index(drop=True), effects_from_sqlite(real.cache / "results.sqlite", real.settings), K)
    pd.testing.assert_frame_equal(shown.reset_index(drop=True)[AGREEMENT_COLUMNS], long[AGREEMENT_COLUMNS])
    md = "\n".join(m.value for m in at.markdown)
    for line in CT.summary(grid, K):
        assert line in md
    p = grid.results["str/prob/denoise/s2"].baselines["corrupt_prob"]
    assert f"P_corrupt(answer) = {p:.3g}" in md
    # the scatter's settings and the page params come from the link, and the link is written back
    assert at.selectbox(key="pb_x_a").value == a and at.selectbox(key="pb_x_b").value == b
    q = at.query_params
    assert q["a"] == a and q["b"] == b and q["k"] == str(K) and q["variants"] == "s2" and q["noise-samples"] == "2"
    assert q["n-pairs"] == "2" and q["component"] == "head"
    assert "python -m patching compare" in next(c.value for c in at.code)


@pytest.mark.app
def test_page_link_reopens_the_same_view_and_bad_values_are_explained(real, monkeypatch):
    at = run_page(real.cache, page_query(a="str/kl/noise/s2", b="gn/logit_diff/denoise/s2", k="3", units="z"), monkeypatch)
    link = {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    at2 = run_page(real.cache, link, monkeypatch)
    assert at2.query_params == at.query_params
    t1 = next(d.value for d in at.dataframe if "topk_jaccard" in d.value.columns)
    t2 = next(d.value for d in at2.dataframe if "topk_jaccard" in d.value.columns)
    pd.testing.assert_frame_equal(t1, t2)
    assert (t1["k"] == 3).all() and at2.radio(key="pb_x_units").value == "z"
    # a bad page parameter: a warning and the default, never a traceback
    at3 = run_page(real.cache, page_query(k="999", a="nope"), monkeypatch)
    assert any("k" in w.value for w in at3.warning)
    assert at3.slider(key="pb_x_k").value == 10 and at3.selectbox(key="pb_x_a").value in real.settings


@pytest.mark.app
def test_page_computes_only_on_the_button(real, tmp_path, monkeypatch):
    """A grid with one sweep missing: shown at once without it; the button
    computes exactly that sweep (with the in-process model) and stores it."""
    cache = make_cache(tmp_path / "partial")
    shutil.copy(real.cache / "results.sqlite", cache / "results.sqlite")
    con = sqlite3.connect(cache / "results.sqlite")
    keep = C.grid_specs(BASE, S2)
    drop = keep["str/logit_diff/noise/s2"].cache_key(real.lm.fingerprint)
    con.execute("DELETE FROM results WHERE key=?", (drop,))
    con.commit()
    con.close()
    at = run_page(cache, page_query(), monkeypatch)
    assert Store(cache / "results.sqlite").get(drop) is None
    btn = [x for x in at.button if x.label.startswith("Compute")]
    assert len(btn) == 1 and btn[0].label == "Compute the 1 missing sweep"
    assert any("3 of 4 sweeps are stored" in i.value for i in at.info)
    n_before = Store(cache / "results.sqlite").count()
    btn[0].click()
    at.run()
    assert not at.exception, at.exception
    assert Store(cache / "results.sqlite").count() == n_before + 1
    rec = Store(cache / "results.sqlite").get(drop)
    assert rec is not None
    # the recomputed sweep equals the one computed before (same spec, same weights)
    orig = real.store.get(drop)["table"]
    assert np.allclose(rec["table"]["logit_diff"], orig["logit_diff"], atol=1e-6)
    assert not [x for x in at.button if x.label.startswith("Compute")]
    assert any("1 sweep(s) computed" in x.value for x in at.success)


# ================================================================ the page in a real browser


@pytest.mark.browser
def test_page_in_a_browser_with_its_link(real):
    bu = pytest.importorskip("tests.browser_util")
    if not os.path.exists(bu.CHROMIUM):
        pytest.skip(f"{bu.CHROMIUM} is missing (make chromium)")
    pw = pytest.importorskip("playwright.sync_api")
    from urllib.parse import urlencode

    srv = bu.start_server(real.cache)
    try:
        with pw.sync_playwright() as p:
            browser = bu.launch_browser(p)
            try:
                page = bu.new_page(browser)
                page.goto(srv.url + "Disagreement?" + urlencode(page_query(a="str/logit_diff/denoise/s2", b="str/prob/denoise/s2")))
                bu.wait_for_app(page, timeout=180_000)
                bu.wait_for_chart(page, timeout=120_000)
                grid = C.lookup_grid(BASE, real.store, real.lm.fingerprint, S2)
                first = CT.summary(grid, K)[0]
                page.get_by_text(first[:60]).first.wait_for(timeout=60_000)
                # the share link box holds the full view, and opening it in a fresh context shows the same findings
                link = bu.share_link(page, copy=True)  # what the Copy button put on the clipboard
                assert "variants=s2" in link and f"k={K}" in link and "noise-samples=2" in link and "Disagreement" in link
                page2 = bu.new_page(browser)
                page2.goto(link)
                bu.wait_for_app(page2, timeout=180_000)
                page2.get_by_text(first[:60]).first.wait_for(timeout=60_000)
                page2.locator("[data-testid='stVegaLiteChart']").nth(2).wait_for(state="attached", timeout=60_000)  # may come after the summary (some sit in tabs)
                assert page2.locator("[data-testid='stVegaLiteChart']").count() >= 3
            finally:
                browser.close()
    finally:
        bu.stop_server(srv)
