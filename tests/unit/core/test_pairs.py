"""Pairs files (patching/core/pairs.py): CSV and JSONL parse the same, and
every malformed file is a one-line error naming ``pairs`` (no tokenizer; the
tokenizing checks: tests/integration/test_data.py)."""

import pytest

from patching.core.errors import PatchboardError
from patching.core.pairs import parse_pairs_text


def test_csv_and_jsonl_parse_the_same():
    csv_text = 'clean,corrupt,answer,counter_answer\n"A b, c",X b c, d, e\n'
    jsonl = '{"clean": "A b, c", "corrupt": "X b c", "answer": " d", "counter_answer": " e"}\n'
    a = parse_pairs_text(csv_text, "csv")
    b = parse_pairs_text(jsonl, "jsonl")
    assert a == b and a[0].clean == "A b, c"


@pytest.mark.parametrize("text, fmt, words", [
    ("clean,corrupt,answer\nA,B,C\n", "csv", "lacks the column"),
    ("clean,corrupt,answer,counter_answer,extra\nA,B,C,D,E\n", "csv", "unknown column"),
    ("", "csv", "empty"),
    ("clean,corrupt,answer,counter_answer\n", "csv", "no pairs"),
    ("{not json}\n", "jsonl", "not valid JSON"),
    ("[1, 2]\n", "jsonl", "not a JSON object"),
])
def test_bad_files_give_one_line_errors(text, fmt, words):
    with pytest.raises(PatchboardError) as e:
        parse_pairs_text(text, fmt)
    assert e.value.field == "pairs" and words in str(e.value)
