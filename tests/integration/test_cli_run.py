"""The CLI contract, run as a user runs it (a subprocess), on the embedded model."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers.cli import run_cli

pytestmark = pytest.mark.integration  # the embedded model, in a subprocess

PAIRS_CSV = """clean,corrupt,answer,counter_answer
The capital of France is,The capital of Italy is, Paris, Rome
The capital of Spain is,The capital of Japan is, Madrid, Tokyo
"""


def store_rows(cli_env):
    import sqlite3

    p = Path(cli_env["PATCHBOARD_CACHE_DIR"]) / "results.sqlite"
    if not p.exists():
        return 0
    return sqlite3.connect(p).execute("SELECT COUNT(*) FROM results").fetchone()[0]


def test_run_on_custom_pairs_matches_transformer_lens_and_second_call_hits_store(cli_env, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(PAIRS_CSV)
    out = tmp_path / "resid.csv"
    r = run_cli(cli_env, "run", "--pairs", str(pairs), "--component", "resid_pre", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "computed" in r.stderr and "stored" in r.stderr
    df = pd.read_csv(out)
    assert list(df.columns[:5]) == ["component", "layer", "head", "pos", "value"]
    assert df["head"].isna().all() and (df["value"] == df["logit_diff"]).all()

    # TransformerLens's own patching on the same inputs.
    from transformer_lens import patching as tlp

    from patching.service import get_model
    from patching.core.pairs import parse_pairs_text
    from patching.core.data import build_dataset

    lm = get_model("smollm2-135m")
    ds = build_dataset(parse_pairs_text(PAIRS_CSV, "csv"), lm.tokenizer)
    clean_logits, clean_cache = lm.bridge.run_with_cache(ds.clean_tokens)
    corrupt_logits = lm.bridge(ds.corrupt_tokens)
    a, c = ds.answer_ids[:, None], ds.counter_ids[:, None]

    def ld(lg):
        return (lg[:, -1].gather(1, a) - lg[:, -1].gather(1, c)).mean()

    lc, lx = ld(clean_logits), ld(corrupt_logits)
    tl = tlp.get_act_patch_resid_pre(lm.bridge, ds.corrupt_tokens, clean_cache, lambda lg: (ld(lg) - lx) / (lc - lx))
    ours = torch.tensor(df.sort_values(["layer", "pos"])["logit_diff"].to_numpy()).reshape(tl.shape)
    assert (ours - tl.double()).abs().max() < 1e-4
    # Positions before the first differing token are exact no-ops.
    assert (df[df.pos < 4]["logit_diff"] == 0).all()

    rows = store_rows(cli_env)
    r2 = run_cli(cli_env, "run", "--pairs", str(pairs), "--component", "resid_pre", "--metric", "prob", "--format", "json", "--out", str(tmp_path / "p.json"))
    assert r2.returncode == 0, r2.stderr
    assert "from store" in r2.stderr
    assert store_rows(cli_env) == rows
    recs = json.loads((tmp_path / "p.json").read_text())
    assert len(recs) == len(df)
    assert all(rec["value"] == rec["prob"] for rec in recs)


@pytest.mark.parametrize("csv_text, field", [
    ("clean,corrupt,answer,counter_answer\nThe capital of France is,The capital city of Italy is, Paris, Rome\n", "corrupt"),
    ("clean,corrupt,answer,counter_answer\nThe capital of France is,The capital of Italy is, Parisian sunshine, Rome\n", "answer"),
    ("clean,corrupt,answer,counter_answer\n,The capital of Italy is, Paris, Rome\n", "clean"),
    ("clean,corrupt\nA,B\n", "pairs"),
])
def test_bad_inputs_exit_nonzero_with_one_line_and_store_nothing(cli_env, tmp_path, csv_text, field):
    pairs = tmp_path / "bad.csv"
    pairs.write_text(csv_text)
    before = store_rows(cli_env)
    r = run_cli(cli_env, "run", "--pairs", str(pairs), "--out", str(tmp_path / "x.csv"))
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "x.csv").exists()
    assert store_rows(cli_env) == before


@pytest.mark.parametrize("args, field", [
    (["--model", "no-such-model-xyz"], "model"),
    (["--component", "neuron"], "component"),
    (["--n-pairs", "0"], "n-pairs"),
    (["--window", "3"], "window"),
    (["--pairs", "/nonexistent/pairs.csv"], "pairs"),
])
def test_bad_arguments(cli_env, args, field):
    r = run_cli(cli_env, "run", *args)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {field}:"), r.stderr
    assert "Traceback" not in r.stderr
