"""Helpers shared by the task generators: tokens, per-tokenizer memos, bounds."""

from __future__ import annotations

import random
import weakref
from typing import Callable

from patching.core.errors import PatchboardError, shown
from patching.core.pairs import Pair
from patching.core.spec import IOI_CORRUPT, TASKS  # noqa: F401 (Spec choices, declared once with the Spec)

#: Upper bound on n_pairs for the sampled tasks (ioi, greater_than, induction);
#: their combinatorial supply is far larger. ``facts`` is bounded by its list.
MAX_SAMPLED = 10_000


# ---------------------------------------------------------------- helpers


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _one_token(tokenizer, text: str) -> int | None:
    ids = _ids(tokenizer, text)
    return int(ids[0]) if len(ids) == 1 else None


def _single_token_words(tokenizer, words) -> list[str]:
    """Words (without leading space) that are one token with a leading space,
    in the given order, without duplicates."""
    out, seen = [], set()
    for w in words:
        t = _one_token(tokenizer, " " + w)
        if t is not None and t not in seen:
            seen.add(t)
            out.append(w)
    return out


_CACHE: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _cached(tokenizer, key: str, build: Callable[[], object]):
    """Per-tokenizer memo of the tokenizer-derived pools (cheap to rebuild)."""
    try:
        store = _CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        return build()
    if key not in store:
        store[key] = build()
    return store[key]


def _check_n(task: str, n_pairs, maximum: int) -> None:
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int):
        raise PatchboardError("n-pairs", f"{shown(n_pairs, 20)} is not a whole number; give an integer from 1 to {maximum}")
    if n_pairs < 1:
        raise PatchboardError("n-pairs", f"{n_pairs} is too few; give at least 1 pair (up to {maximum} for {task})")
    if n_pairs > maximum:
        raise PatchboardError("n-pairs", f"{task} can supply at most {maximum} pairs for this model's tokenizer; ask for {maximum} or fewer")


def _fill(template: str, **slots: str) -> str:
    text = template
    for k, v in slots.items():
        text = text.replace(f"[{k}]", v)
    return text




def _draw_distinct(n_pairs: int, seed: int, what: str, draw: Callable[[random.Random, set[str]], Pair | None]) -> list[Pair]:
    """Rejection sampling of ``n_pairs`` pairs with distinct clean prompts.

    ``draw(rng, seen)`` makes one attempt from the shared ``random.Random(seed)``
    and returns a Pair, or None to try again (its clean prompt is in ``seen``,
    or it does not tokenize as the task needs). After 50 * n_pairs + 1000
    attempts it gives up: "could not draw N distinct {what}; ask for fewer"."""
    rng = random.Random(seed)
    pairs: list[Pair] = []
    seen: set[str] = set()
    tries = 0
    while len(pairs) < n_pairs:
        tries += 1
        if tries > 50 * n_pairs + 1000:
            raise PatchboardError("n-pairs", f"could not draw {n_pairs} distinct {what}; ask for fewer")
        pair = draw(rng, seen)
        if pair is None:
            continue
        seen.add(pair.clean)
        pairs.append(pair)
    return pairs
