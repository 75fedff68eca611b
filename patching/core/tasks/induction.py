"""Induction: repeated random words."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import replace

from patching.core.errors import PatchboardError
from patching.core.data import tokenize
from patching.core.pairs import Pair
from patching.core.tasks.words import INDUCTION_LEN, INDUCTION_WORDS
from patching.core.tasks.common import _single_token_words, _cached, _check_n, _draw_distinct, MAX_SAMPLED


# ---------------------------------------------------------------- induction


def induction_words(tokenizer) -> list[str]:
    """INDUCTION_WORDS that are single tokens for this tokenizer, with the
    leading space (" apple")."""
    return _cached(tokenizer, "induction_words", lambda: [" " + w for w in _single_token_words(tokenizer, INDUCTION_WORDS)])


def generate_induction(tokenizer, n_pairs: int, seed: int) -> list[Pair]:
    """Induction on repeated random words.

    Clean = x1..xn x1..x(n-1) (n = INDUCTION_LEN = 10 distinct random
    single-token words, e.g. " apple"); after BOS, the block sits at 1..n and
    the repeat at n+1..2n-1, so an induction head predicts answer = xn.
    Corrupt = the same with xn in the FIRST block replaced by another random
    word yn (not among the x's), so induction now predicts counter_answer = yn.
    key_positions = (n,) (xn's first occurrence); roles A_LAST = n, END = 2n-1.
    """
    words = induction_words(tokenizer)
    n = INDUCTION_LEN
    if len(words) < 4 * n:
        raise PatchboardError("task", "this model's tokenizer has too few single-token words for induction; pick another task")
    _check_n("induction", n_pairs, MAX_SAMPLED)
    length = 2 * n  # BOS + n + (n - 1)

    def draw(rng: random.Random, seen: set[str]) -> Pair | None:
        drawn = rng.sample(words, n + 1)
        xs, yn = drawn[:n], drawn[n]
        clean = "".join(xs + xs[:-1])
        corrupt = "".join(xs[:-1] + [yn] + xs[:-1])
        if clean in seen:
            return None
        if len(tokenize(tokenizer, clean)) != length or len(tokenize(tokenizer, corrupt)) != length:
            return None
        return Pair(clean, corrupt, xs[-1], yn, key_positions=(n,), roles={"A_LAST": n, "END": length - 1})

    return _draw_distinct(n_pairs, seed, "induction prompts", draw)


