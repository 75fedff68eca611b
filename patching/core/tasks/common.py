"""Helpers shared by the task generators: tokens, per-tokenizer memos, bounds."""

from __future__ import annotations

import weakref
from typing import Callable

from patching.core.errors import PatchboardError
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
        raise PatchboardError("n-pairs", f"{n_pairs!r} is not a whole number; give an integer from 1 to {maximum}")
    if n_pairs < 1:
        raise PatchboardError("n-pairs", f"{n_pairs} is too few; give at least 1 pair (up to {maximum} for {task})")
    if n_pairs > maximum:
        raise PatchboardError("n-pairs", f"{task} can supply at most {maximum} pairs for this model's tokenizer; ask for {maximum} or fewer")


def _fill(template: str, **slots: str) -> str:
    text = template
    for k, v in slots.items():
        text = text.replace(f"[{k}]", v)
    return text


