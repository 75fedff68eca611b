"""Task generators (patching/core/tasks/) without the embedded tokenizer: the
IOI ABBA template swap, and greater-than on a GPT-2-style tokenizer with
two-digit year tokens (the tasks on the embedded tokenizer:
tests/integration/test_tasks.py)."""

from __future__ import annotations

from patching.core import tasks
from patching.core.data import tokenize
from patching.core.tasks import words


def test_abba_swaps_first_names():
    assert words._abba("Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to") == (
        "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to"
    )


class TwoDigitTokenizer:
    """A GPT-2-style stand-in: words with their leading space, numbers in
    two-digit chunks (" 1745" -> " 17", "45"); ids assigned on first sight."""

    bos_token_id = 0

    def __init__(self):
        import re

        self.re = re.compile(r" ?[A-Za-z]+| \d\d|\d\d| ?\d|[^\sA-Za-z\d]| ")
        self.vocab: dict[str, int] = {"<bos>": 0}
        self.inv = {0: "<bos>"}

    def __call__(self, text, add_special_tokens=False):
        ids = []
        for piece in self.re.findall(text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.vocab)
                self.inv[self.vocab[piece]] = piece
            ids.append(self.vocab[piece])
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join(self.inv[int(i)] for i in ids)


def test_greater_than_on_two_digit_year_tokens():
    """GPT-2's form: the next token is YY itself; answer = every two-digit
    year token after YY, counter = every one before it (the paper's sets)."""
    from patching.core.data import build_dataset

    tt = TwoDigitTokenizer()
    pairs = tasks.generate("greater_than", tt, 6, 0)
    for p in pairs:
        c, k = tokenize(tt, p.clean), tokenize(tt, p.corrupt)
        yy = int(tt.decode([c[p.roles["YY"]]]))
        assert p.key_positions == (p.roles["YY"],) and tt.decode([k[p.roles["YY"]]]) == "01"
        assert p.answers == tuple(f"{y:02d}" for y in range(yy + 1, 100))
        assert p.counter_answers == tuple(f"{y:02d}" for y in range(0, yy))
        assert p.clean.endswith(" to the year " + p.clean.split(" from the year ")[1][:2])
    ds = build_dataset(pairs, tt)
    assert ds.answer_sets is not None and ds.answer_sets.shape[0] == 6
    row = ds.answer_sets[0][ds.answer_sets[0] >= 0]
    assert [tt.decode([int(t)]) for t in row] == list(pairs[0].answers)
