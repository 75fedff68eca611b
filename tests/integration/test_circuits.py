"""Circuits on the embedded model (grouped-query SmolLM2), small n: a curve
through the CLI, its ends exact, and its circuit exported as EAP-IG / MIB graph
JSON and evaluated again from the file gives the curve's own number."""

from __future__ import annotations

import json

from tests.helpers.cli import run_cli


def test_curve_export_and_eval_agree(cli_env, tmp_path):
    common = ["--task", "ioi", "--n-pairs", "2", "--seed", "0"]
    graph = tmp_path / "knee.json"
    out = run_cli(cli_env, "circuit", "curve", *common, "--points", "3", "--random", "1", "--format", "json", "--export-graph", str(graph))
    assert out.returncode == 0, out.stderr[-2000:]
    curve = json.loads(out.stdout)
    f = {row["n_edges"]: row["faithfulness"] for row in curve["curve"]}
    assert abs(f[max(f)] - 1.0) < 1e-5 and f[min(f)] == 0.0  # every edge: the clean run; one edge: nothing reaches the output
    assert curve["random_cpr"] < curve["cpr"]
    d = json.loads(graph.read_text())
    assert d["cfg"]["n_key_value_heads"] == 3 and len(d["edges"]) == 123_211  # EAP-IG's ungrouped edges of a 30 x 9 model
    n = curve["n"]
    assert sum(e["in_graph"] for e in d["edges"].values()) >= n  # k/v group edges appear once per query head
    again = run_cli(cli_env, "circuit", "eval", *common, "--graph", str(graph), "--format", "json")
    assert again.returncode == 0, again.stderr[-2000:]
    one = json.loads(again.stdout)
    assert one["n_edges"] == n and abs(one["faithfulness"] - f[n]) < 1e-5
