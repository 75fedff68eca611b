"""Greater-than: "The war lasted from the year 1745 to the year 17"."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import replace

from patching.core.errors import PatchboardError
from patching.core.data import tokenize
from patching.core.pairs import ANSWER_SEP, Pair
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


def _yy_mode(tokenizer, noun: str) -> tuple[str, int, list[int]] | None:
    """("digits" | "two_digit", prompt length, YY token positions) from one
    reference prompt, or None when years tokenize neither way."""
    ref_toks = tokenize(tokenizer, GT_TEMPLATE.format(noun=noun, xx="17", yy="45"))
    prefix_len = len(tokenize(tokenizer, f"The {noun} lasted from the year 17"))
    dec = [tokenizer.decode([t]) for t in ref_toks[prefix_len:prefix_len + 2]]
    if dec == ["4", "5"]:
        return "digits", len(ref_toks), [prefix_len, prefix_len + 1]
    if dec[:1] == ["45"]:
        return "two_digit", len(ref_toks), [prefix_len]
    return None


def generate_greater_than(tokenizer, n_pairs: int, seed: int) -> list[Pair]:
    """Greater-than (Hanna et al. 2023), scored as in the paper with answer sets.

    Prompt: "The war lasted from the year 1745 to the year 17" (start year
    XX YY, the end year's century XX given). STR corruption (Zhang & Nanda):
    YY -> "01"; answers stay the clean ones. Centuries XX = 12..19, YY = d u
    with d in 1..8 and u != 1 (so every YY token changes under "01").

    The paper's metric is the probability of every year after YY summed, and
    the logit-sum difference, years after minus years before YY. Answers are
    therefore *sets* (``answer``/``counter_answer`` hold the alternatives
    joined by "|"):

    * two-digit year tokens (GPT-2 style: " 1745" -> "17", "45"): the next
      token is the end year's YY. answer = every two-digit token after YY
      (YY+1 .. 99), counter_answer = every one before it (00 .. YY-1), as in
      the paper (YY itself in neither). key_positions = (YY,).
    * digit tokenizers (SmolLM: " 1745" -> ' ', '1', '7', '4', '5'): the next
      token is the end year's tens digit t. A year is surely after XXdu when
      t > d and surely before when t < d (t = d depends on the units digit
      still to come), so answer = {d+1 .. 9}, counter_answer = {0 .. d-1}.
      key_positions = the two YY digits.

    roles: YY (two-digit) or YY1, YY2 (digits), and END.
    """
    nouns = gt_nouns(tokenizer)
    if not nouns:
        raise PatchboardError("task", "no greater-than noun is a single token for this model; pick another task")
    years = _gt_years()
    maximum = min(MAX_SAMPLED, len(nouns) * len(GT_CENTURIES) * len(years))
    _check_n("greater_than", n_pairs, maximum)
    shape = _yy_mode(tokenizer, nouns[0])
    if shape is None:
        raise PatchboardError("task", "this model's tokenizer writes years neither as digits nor as two-digit tokens; greater_than needs one of them, pick another task")
    mode, length, yy_pos = shape
    if mode == "digits":
        ids = {str(k): _one_token(tokenizer, str(k)) for k in range(10)}
    else:
        ids = {f"{k:02d}": _one_token(tokenizer, f"{k:02d}") for k in range(100)}
    if any(v is None for v in ids.values()):
        raise PatchboardError("task", "this model's tokenizer lacks some single-token year digits; greater_than needs them, pick another task")
    rng = random.Random(seed)
    combos = [(noun, xx, d, u) for noun in nouns for xx in GT_CENTURIES for d, u in years]
    roles_of = (lambda: {"YY1": yy_pos[0], "YY2": yy_pos[1]}) if mode == "digits" else (lambda: {"YY": yy_pos[0]})
    pairs = []
    for noun, xx, d, u in rng.sample(combos, len(combos)):
        if len(pairs) == n_pairs:
            break
        yy = 10 * d + u
        clean = GT_TEMPLATE.format(noun=noun, xx=xx, yy=f"{yy:02d}")
        corrupt = GT_TEMPLATE.format(noun=noun, xx=xx, yy="01")
        ct, kt = tokenize(tokenizer, clean), tokenize(tokenizer, corrupt)
        want = [ids[str(d)], ids[str(u)]] if mode == "digits" else [ids[f"{yy:02d}"]]
        if len(ct) != length or len(kt) != length or [ct[p] for p in yy_pos] != want:
            continue
        if mode == "digits":
            after, before = [str(t) for t in range(d + 1, 10)], [str(t) for t in range(0, d)]
        else:
            after, before = [f"{y:02d}" for y in range(yy + 1, 100)], [f"{y:02d}" for y in range(0, yy)]
        pairs.append(Pair(clean, corrupt, ANSWER_SEP.join(after), ANSWER_SEP.join(before), key_positions=tuple(yy_pos),
                          roles={**roles_of(), "END": length - 1}))
    if len(pairs) < n_pairs:
        raise PatchboardError("n-pairs", f"greater_than found only {len(pairs)} prompts of one length for this tokenizer; ask for {len(pairs)} or fewer")
    return pairs
