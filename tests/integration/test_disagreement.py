"""The Disagreement grid on the embedded model (patching/studies/disagreement/grid.py
and its CLI, ``python -m patching compare``): the IOI task, n-pairs 2, heads,
gn with 2 noise samples, ioi_corrupt s2 (4 real sweeps, the ``real_grid``
fixture, computed once per run). Every statistic the CLI shows is recomputed
here with scipy from the rows in the store, never compared with a constant; a
perturbed stored table changes the CLI output accordingly.
"""

from __future__ import annotations

import io
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from patching.analysis import text as analysis_text
from patching.store import Store
from patching.studies.disagreement import tables
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import text as disagreement_text
from tests.helpers.cli import env_for, make_cache
from tests.helpers.disagreement import (AGREEMENT_COLUMNS, BASE, K, S2, check_against_scipy, cli, cli_args,
                                        copy_store, effects_from_sqlite)


def test_real_grid_computed_once_and_cached(real_grid):
    g = real_grid.grid
    assert g.complete and g.computed == 4 and real_grid.store.count() == 4
    totals = {t for _, t in real_grid.progress}
    assert totals == {2 * 2 + 2 * 4}  # str: 2 rows per sweep; gn: 2 pairs x 2 samples
    done = [d for d, _ in real_grid.progress]
    assert done == sorted(done) and done[-1] == 12
    again = disagreement_grid.load_or_compute_grid(BASE, real_grid.store, real_grid.lm, settings=S2)
    assert again.computed == 0 and real_grid.store.count() == 4
    assert all(r.from_store for r in again.results.values())
    # the three metrics of one sweep come from one stored table
    e = again.effects()
    t = again.results["str/prob/denoise/s2"].table
    assert np.allclose(e["str/prob/denoise/s2"].to_numpy(), t["prob"].to_numpy())
    assert np.allclose(e["str/kl/denoise/s2"].to_numpy(), t["kl"].to_numpy())


def test_real_statistics_match_scipy_on_stored_rows(real_grid):
    grid = disagreement_grid.lookup_grid(BASE, real_grid.store, real_grid.lm.fingerprint, S2)
    from_db = effects_from_sqlite(real_grid.cache / "results.sqlite", real_grid.settings)
    assert set(from_db) == set(real_grid.settings)
    long = tables.agreement(grid, K)
    check_against_scipy(long, from_db, K)
    # the 2-SD sets and the disagreement table, from the stored rows
    ds = tables.detection_sets(grid).set_index("setting")
    dets = {}
    for s, v in from_db.items():
        z = (v - v.mean()) / v.std(ddof=0)
        dets[s] = set(v.index[np.abs(z) > 2])
        got = {c for c in (ds.at[s, "positive"] + ", " + ds.at[s, "negative"]).split(", ") if c}
        assert got == dets[s], s
    dis = tables.disagreements(grid)
    want = {c for c in set().union(*dets.values()) if any(c not in d for d in dets.values())}
    assert set(dis["component"]) == want
    for _, r in dis.iterrows():
        assert set(r["detected_in"].split(", ")) == {s for s in real_grid.settings if r["component"] in dets[s]}
        for s in real_grid.settings:
            assert r[s] == pytest.approx(from_db[s][r["component"]])
    flips = tables.sign_flips(grid)
    for _, r in flips.head(10).iterrows():
        vals = {s: from_db[s][r["component"]] for s in real_grid.settings}
        assert vals[r["strongest_positive"]] > 0 > vals[r["strongest_negative"]]


def test_real_summary_and_mechanisms_quote_stored_numbers(real_grid):
    grid = disagreement_grid.lookup_grid(BASE, real_grid.store, real_grid.lm.fingerprint, S2)
    lines = disagreement_text.summary(grid, K)
    text = "\n".join(lines)
    print("\n[compare] summary:\n- " + "\n- ".join(lines))
    long = tables.agreement(grid, K)
    lo = long.sort_values(["spearman", "topk_jaccard"]).iloc[0]
    assert lines[0].startswith(f"Least agreement: {lo['setting_a']} vs {lo['setting_b']}")
    assert analysis_text._num(lo["spearman"]) in lines[0]
    if "cannot fall below" in text:  # the probability floor quotes the measured P_corrupt
        p = grid.results["str/prob/denoise/s2"].baselines["corrupt_prob"]
        pg = grid.results["gn/prob/denoise/s2"].baselines["corrupt_prob"]
        assert f"here \u2212{p:.2g}" in text or f"here \u2212{pg:.2g}" in text or "1 \u2212 P_clean" in text
    mech = disagreement_text.mechanisms(grid)
    p = grid.results["str/prob/denoise/s2"].baselines["corrupt_prob"]
    assert f"P_corrupt(answer) = {p:.3g}" in mech[0]["text"]
    assert "(2 noisy copies per prompt)" in mech[1]["text"]


def test_cli_reads_the_store_and_follows_a_perturbed_table(real_grid, tmp_path):
    cache1 = make_cache(tmp_path / "first")  # a copy: the CLI stores the grid's statistics beside the sweeps
    copy_store(real_grid.cache, cache1)
    env = env_for(cache1)
    out, eff_out, dis_out = tmp_path / "compare.csv", tmp_path / "effects.csv", tmp_path / "disagreements.csv"
    r = cli(env, *cli_args(), "--settings", S2, "--k", str(K), "--stored-only", "--out", str(out), "--effects", str(eff_out),
            "--disagreements", str(dis_out))
    assert r.returncode == 0, r.stderr
    assert "from the store" in r.stderr
    # every test of both families, with p and Benjamini-Hochberg q recomputable from the file
    dis = pd.read_csv(dis_out)
    assert list(dis.columns) == ["kind", "component", "setting_a", "setting_b", "effect_a", "effect_b", "difference", "disagreement",
                                 "p", "q", "significant"]
    for _, grp in dis.groupby("kind"):
        p, m = grp["p"].to_numpy(), len(grp)
        order = np.argsort(p)
        q = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
        np.testing.assert_allclose(grp["q"].to_numpy()[order], np.minimum(q, 1))
    assert not dis["significant"].any()  # 2 prompts: far too few for a label
    assert (dis["p"] >= 0.25 - 1e-12).all()  # with 2 prompts a sign-flip test cannot go below 1/4
    df = pd.read_csv(out)
    assert list(df.columns[:6]) == AGREEMENT_COLUMNS
    assert len(df) == 66 and set(df["setting_a"]) | set(df["setting_b"]) == set(real_grid.settings)
    db = effects_from_sqlite(cache1 / "results.sqlite", real_grid.settings)
    check_against_scipy(df, db, K)
    # the effects export holds exactly the stored effects, and recomputes the CSV
    et = pd.read_csv(eff_out).set_index("component")
    for s in real_grid.settings:
        assert np.allclose(et[s].to_numpy(), db[s][et.index].to_numpy(), atol=1e-12)
    check_against_scipy(df, {s: et[s] for s in real_grid.settings}, K)

    # Perturb one stored sweep (str/denoise: reverse its logit_diff column) in a copy of the store.
    cache2 = make_cache(tmp_path / "perturbed")
    copy_store(real_grid.cache, cache2)
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
    check_against_scipy(df2, effects_from_sqlite(cache2 / "results.sqlite", real_grid.settings), K)
    hit = (df2["setting_a"] == "str/logit_diff/denoise/s2") | (df2["setting_b"] == "str/logit_diff/denoise/s2")
    assert not np.allclose(df2.loc[hit, "spearman"], df.loc[hit, "spearman"])
    pd.testing.assert_frame_equal(df2.loc[~hit], df.loc[~hit])


def test_cli_stored_only_and_bad_settings(real_grid, capsys, monkeypatch):
    env = env_for(real_grid.cache)
    # as a user runs it: a sweep that is not stored (abc) is not computed under --stored-only
    r = cli(env, *cli_args(), "--settings", "str/prob/denoise/s2,str/prob/denoise/abc", "--stored-only")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: stored-only:") and len(r.stderr.strip().splitlines()) == 1
    # the same entry point in-process (no interpreter start per case)
    from patching.cli import main

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(real_grid.cache))
    for bad, field in (("str/prob/denoise,gn/bogus/noise", "settings"), ("str/prob", "settings"),
                       ("str/prob/denoise/zz", "settings"), ("str/prob/denoise", "settings"),
                       ("str/prob/denoise/s2,xx/kl/noise", "settings")):
        assert main(["compare", *cli_args(), "--settings", bad]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), lines
    assert main(["compare", *cli_args(), "--k", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: k:")
    assert Store(real_grid.cache / "results.sqlite").count() == 4  # nothing computed or written


def test_ioi_variants_in_one_grid(real_grid, tmp_path):
    """The IOI corruption variants: str/denoise under s2, s1_io and abc (s2 is
    stored already, so 2 sweeps are computed) compared across variants."""
    settings = "str/*/denoise/*"
    cache = make_cache(tmp_path / "variants")  # a copy: the shared grid's store stays as computed
    copy_store(real_grid.cache, cache)
    grid = disagreement_grid.load_or_compute_grid(BASE, Store(cache / "results.sqlite"), real_grid.lm, settings=settings)
    assert len(grid.settings) == 9 and grid.complete and grid.computed == 2
    long = tables.agreement(grid, K)
    assert set(long.loc[long["differs_in"] == "variant", "setting_a"]) <= set(grid.settings)
    assert (long["differs_in"] == "variant").sum() == 9  # 3 metrics x 3 pairs of variants
    db = effects_from_sqlite(cache / "results.sqlite", grid.settings)
    check_against_scipy(long, db, K)
    # each variant has its own corrupted run, hence its own P_corrupt
    ps = {grid.specs[s].ioi_corrupt: grid.results[s].baselines["corrupt_prob"] for s in grid.settings}
    assert len(ps) == 3
    mech = disagreement_text.mechanisms(grid)[0]["text"]
    for v, p in ps.items():
        assert f"str/{v} denoise: P_corrupt(answer) = {p:.3g}" in mech
