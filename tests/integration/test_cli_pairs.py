"""``python -m patching pairs``: the exact dataset a spec averages over."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from patching.core import tasks
from patching.core.config import cache_dir
from patching.core.models import embedded_folder
from patching.core.spec import Spec

from tests.helpers import ROOT

pytestmark = pytest.mark.integration  # the embedded tokenizer, in a subprocess


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    embedded_folder()
    root = tmp_path_factory.mktemp("cli-pairs-cache")
    (root / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    e = dict(os.environ, PATCHBOARD_CACHE_DIR=str(root), PYTHONPATH=str(ROOT))
    e.pop("PATCHBOARD_DEBUG", None)
    return e


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "patching", *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_pairs_writes_the_specs_dataset_and_reads_back(env, tmp_path, embedded_tokenizer):
    args = ["--task", "ioi", "--ioi-corrupt", "abc", "--n-pairs", "5", "--seed", "3"]
    r = cli(env, "pairs", *args)
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
    r = cli(env, "pairs", *args, "--corruption", "gn", "--out", str(out))
    assert r.returncode == 0 and out.exists(), r.stderr
    first = json.loads(out.read_text().splitlines()[0])
    assert first["clean"] == want[0].clean and first["key_positions"] == list(want[0].key_positions)
    again = cli(env, "pairs", "--pairs", str(out))
    assert again.returncode == 0, again.stderr
    assert [x["clean"] for x in csv.DictReader(io.StringIO(again.stdout))] == [p.clean for p in want]


@pytest.mark.parametrize("args,field", [(["--out", "x.txt"], "out"), (["--n-pairs", "0"], "n-pairs"),
                                         (["--task", "nope"], "task")])
def test_pairs_bad_input_is_one_line(env, args, field):
    r = cli(env, "pairs", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), r.stderr
