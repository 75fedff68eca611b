"""``python -m patching pairs``: the exact dataset a spec averages over."""

import csv
import io
import json

import pytest

from patching.core import tasks
from patching.core.spec import Spec

from tests.helpers.cli import run_cli

pytestmark = pytest.mark.integration  # the embedded tokenizer, in a subprocess


def test_pairs_writes_the_specs_dataset_and_reads_back(cli_env, tmp_path, embedded_tokenizer):
    args = ["--task", "ioi", "--ioi-corrupt", "abc", "--n-pairs", "5", "--seed", "3"]
    r = run_cli(cli_env, "pairs", *args, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == ["clean", "corrupt", "answer", "counter_answer", "key_positions"]
    want = tasks.generate("ioi", embedded_tokenizer, 5, 3, "abc")
    assert [(x["clean"], x["corrupt"], x["answer"], x["counter_answer"]) for x in rows] == [
        (p.clean, p.corrupt, p.answer, p.counter_answer) for p in want]
    assert [x["key_positions"] for x in rows] == [" ".join(map(str, p.key_positions)) for p in want]
    # The same list as the library's (what the app shows), and JSONL reads back as --pairs.
    assert rows == tasks.pairs_table(Spec(task="ioi", ioi_corrupt="abc", n_pairs=5, seed=3), embedded_tokenizer)
    out = tmp_path / "p.jsonl"
    r = run_cli(cli_env, "pairs", *args, "--corruption", "gn", "--out", str(out), timeout=300)
    assert r.returncode == 0 and out.exists(), r.stderr
    first = json.loads(out.read_text().splitlines()[0])
    assert first["clean"] == want[0].clean and first["key_positions"] == list(want[0].key_positions)
    again = run_cli(cli_env, "pairs", "--pairs", str(out), timeout=300)
    assert again.returncode == 0, again.stderr
    assert [x["clean"] for x in csv.DictReader(io.StringIO(again.stdout))] == [p.clean for p in want]


@pytest.mark.parametrize("args,field", [(["--out", "x.txt"], "out"), (["--n-pairs", "0"], "n-pairs"),
                                         (["--task", "nope"], "task")])
def test_pairs_bad_input_is_one_line(cli_env, args, field):
    r = run_cli(cli_env, "pairs", *args, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), r.stderr
