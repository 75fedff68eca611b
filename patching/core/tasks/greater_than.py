"""Greater-than: "The war lasted from the year 1745 to the year 17"."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import replace

from patching.core.errors import PatchboardError
from patching.core.data import tokenize
from patching.core.pairs import Pair
from patching.core.tasks.words import GT_CENTURIES, GT_NOUNS
from patching.core.tasks.common import _one_token, _single_token_words, _cached, _check_n, MAX_SAMPLED


# ---------------------------------------------------------------- greater-than


def gt_nouns(tokenizer) -> list[str]:
    return _cached(tokenizer, "gt_nouns", lambda: _single_token_words(tokenizer, GT_NOUNS))


GT_TEMPLATE = "The {noun} lasted from the year {xx}{yy} to the year {xx}"


def _gt_years() -> list[tuple[int, int]]:
    """YY = d u with tens digit d in 1..8 (so d-1 and d+1 are digits) and
    units digit u != 1 (so both YY tokens change under the "01" corruption)."""
    return [(d, u) for d in range(1, 9) for u in range(10) if u != 1]


def generate_greater_than(tokenizer, n_pairs: int, seed: int) -> list[Pair]:
    """Greater-than (Hanna et al. 2023), re-expressed for digit-split tokenizers.

    The original prompt "The war lasted from the year 1745 to the year 17"
    asks for the two-digit YY of the end year as one token. A tokenizer that
    splits digits (SmolLM: " 1745" -> ' ', '1', '7', '4', '5') makes the next
    token the end year's TENS digit instead. So, with start year XX d u:

      answer          = str(d + 1): the tens digit of a year in the next decade,
                        always strictly greater than XXdu;
      counter_answer  = str(d - 1): the tens digit of the previous decade,
                        always strictly smaller (an impossible end year).

    LD(answer, counter) is the one-token analogue of the paper's
    sum(logits > YY) - sum(logits < YY). d ranges over 1..8 so both are
    digits. STR corruption (Zhang & Nanda): YY -> "01" ("... from the year
    1701 to the year 17"); answer/counter stay the clean ones. units digit 1
    is excluded so both YY digit tokens differ. key_positions = the two YY
    digit tokens; roles YY1, YY2, END. Centuries XX = 12..19.
    """
    nouns = gt_nouns(tokenizer)
    if not nouns:
        raise PatchboardError("task", "no greater-than noun is a single token for this model; pick another task")
    years = _gt_years()
    maximum = min(MAX_SAMPLED, len(nouns) * len(GT_CENTURIES) * len(years))
    _check_n("greater_than", n_pairs, maximum)
    digits = {str(k): _one_token(tokenizer, str(k)) for k in range(10)}
    if any(v is None for v in digits.values()):
        raise PatchboardError("task", "this model's tokenizer does not have single-token digits; greater_than needs them, pick another task")
    # Locate YY from one reference prompt; every prompt must match its shape.
    ref = GT_TEMPLATE.format(noun=nouns[0], xx="17", yy="45")
    ref_toks = tokenize(tokenizer, ref)
    prefix_len = len(tokenize(tokenizer, f"The {nouns[0]} lasted from the year 17"))
    yy1, yy2 = prefix_len, prefix_len + 1
    if [tokenizer.decode([ref_toks[yy1]]), tokenizer.decode([ref_toks[yy2]])] != ["4", "5"]:
        raise PatchboardError("task", "this model's tokenizer does not split years into digits; greater_than needs digit tokens, pick another task")
    length = len(ref_toks)
    rng = random.Random(seed)
    combos = [(noun, xx, d, u) for noun in nouns for xx in GT_CENTURIES for d, u in years]
    pairs = []
    for noun, xx, d, u in rng.sample(combos, len(combos)):
        if len(pairs) == n_pairs:
            break
        clean = GT_TEMPLATE.format(noun=noun, xx=xx, yy=f"{d}{u}")
        corrupt = GT_TEMPLATE.format(noun=noun, xx=xx, yy="01")
        ct, kt = tokenize(tokenizer, clean), tokenize(tokenizer, corrupt)
        if len(ct) != length or len(kt) != length or ct[yy1] != digits[str(d)] or ct[yy2] != digits[str(u)]:
            continue
        pairs.append(Pair(clean, corrupt, str(d + 1), str(d - 1), key_positions=(yy1, yy2),
                          roles={"YY1": yy1, "YY2": yy2, "END": length - 1}))
    if len(pairs) < n_pairs:
        raise PatchboardError("n-pairs", f"greater_than found only {len(pairs)} prompts of one length for this tokenizer; ask for {len(pairs)} or fewer")
    return pairs


