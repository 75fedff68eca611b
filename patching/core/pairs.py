"""Prompt pairs as text: the ``Pair`` record and its CSV/JSONL readers.

A pair is ``clean, corrupt, answer, counter_answer`` (and optionally the key
positions Gaussian noise perturbs). No torch here: a pair file or link is read
and checked before any model is loaded.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from patching.core.errors import PatchboardError, shown
from patching.core.limits import (
    MAX_INT_DIGITS,
    MAX_PAIRS,
    MAX_POSITIONS,
    MAX_PROMPT_CHARS,
    MAX_TEXT_CHARS,
    check_int_text,
    check_text,
    max_prompt_tokens,
    read_user_file,
)

PAIR_COLUMNS = ("clean", "corrupt", "answer", "counter_answer")
#: Separates the alternatives of an answer set: " 46| 47| 48" (each one token).
ANSWER_SEP = "|"


def split_answers(text: str) -> tuple[str, ...]:
    """An answer (set) as its alternatives: "a|b|c" -> ("a", "b", "c"); a
    lone "|" stays the one token "|"."""
    if ANSWER_SEP not in text or text.strip() == ANSWER_SEP:
        return (text,)
    return tuple(text.split(ANSWER_SEP))


@dataclass(frozen=True)
class Pair:
    clean: str
    corrupt: str
    answer: str
    counter_answer: str
    # Token indices (BOS = 0) that Gaussian noising perturbs; None = the
    # positions where clean and corrupt differ.
    key_positions: tuple[int, ...] | None = None
    # Named positions (e.g. {"S1": 2, "IO": 4, "S2": 10, "END": 14}).
    roles: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    def to_row(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in PAIR_COLUMNS}

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer set: ``answer`` may hold several single-token
        alternatives joined by "|" (e.g. every year after YY)."""
        return split_answers(self.answer)

    @property
    def counter_answers(self) -> tuple[str, ...]:
        return split_answers(self.counter_answer)


# ---------------------------------------------------------------- reading


def parse_pairs_text(text: str, fmt: str, source: str = "pairs") -> list[Pair]:
    """Parse CSV or JSONL text whose columns are exactly PAIR_COLUMNS
    (an optional ``key_positions`` column, "3 4" or [3, 4], is accepted).
    Bounded before parsing: the text's size, MAX_PAIRS rows, each line's JSON
    depth, each prompt's length; any failure is one error naming ``source``."""
    from patching.core.codec import loads_bounded

    if not isinstance(text, str):
        raise PatchboardError(source, "expected text (CSV or JSONL)")
    check_text(text, source, MAX_TEXT_CHARS, "pairs text", "MAX_TEXT_CHARS")
    rows: list[dict[str, Any]] = []
    if fmt == "jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if len(rows) >= MAX_PAIRS:
                raise _too_many(source)
            try:
                obj = loads_bounded(line, source)
            except PatchboardError as e:
                raise PatchboardError(source, f"line {i}: {e.message}; write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise PatchboardError(source, f"line {i} is not a JSON object; write one object per line")
            rows.append(obj)
    elif fmt == "csv":
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if reader.fieldnames is None:
                raise PatchboardError(source, "the CSV file is empty; give a header row clean,corrupt,answer,counter_answer")
            for row in reader:
                if len(rows) >= MAX_PAIRS:
                    raise _too_many(source)
                rows.append(row)
        except csv.Error as e:
            raise PatchboardError(source, f"not readable as CSV (line {reader.line_num}: {str(e)[:80]}); quote fields that hold commas, quotes or line breaks") from None
        for i, row in enumerate(rows, 1):
            if None in row:
                raise PatchboardError(source, f"row {i} has more fields than the header; quote fields that hold commas")
            if any(v is None for v in row.values()):
                raise PatchboardError(source, f"row {i} has fewer fields than the header; give clean,corrupt,answer,counter_answer")
    else:
        raise PatchboardError(source, f"unknown format {shown(fmt, 20)}; use a .csv or .jsonl file")
    if not rows:
        raise PatchboardError(source, "no pairs found; give at least one row clean,corrupt,answer,counter_answer")
    pairs = []
    for i, row in enumerate(rows, 1):
        missing = [c for c in PAIR_COLUMNS if c not in row]
        if missing:
            raise PatchboardError(source, f"row {i} lacks the column(s) {', '.join(missing)}; the columns are exactly {','.join(PAIR_COLUMNS)}")
        extra = [c for c in row if c not in PAIR_COLUMNS and c != "key_positions"]
        if extra:
            names = ", ".join(repr(str(c)[:30]) for c in extra[:3])
            raise PatchboardError(source, f"row {i} has unknown column(s) {names}; the columns are exactly {','.join(PAIR_COLUMNS)}")
        for c in ("answer", "counter_answer"):  # JSONL: an answer set as a list of alternatives
            if isinstance(row[c], list) and row[c] and all(isinstance(x, str) for x in row[c]):
                row[c] = ANSWER_SEP.join(row[c])
        pairs.append(_pair(row, i, source))
    return pairs


def _too_many(source: str) -> PatchboardError:
    return PatchboardError(source, f"more than {MAX_PAIRS} pairs (MAX_PAIRS); split them into several datasets")


def _pair(row: dict, i: int, source: str) -> Pair:
    vals = [row[c] for c in PAIR_COLUMNS]
    if not all(isinstance(v, str) for v in vals):
        raise PatchboardError(source, f"row {i}: every column must be a string")
    for c, v in zip(PAIR_COLUMNS, vals):
        check_text(v, source, MAX_PROMPT_CHARS, f"row {i} {c}", "MAX_PROMPT_CHARS")
    kp = row.get("key_positions")
    key_positions = parse_positions(kp, source) if kp not in (None, "", []) else None
    return Pair(*vals, key_positions=key_positions)


def parse_positions(value: Any, field_name: str = "key-positions") -> tuple[int, ...]:
    """ "3,4" / "3 4" / [3, 4] -> (3, 4). Bounded: at most MAX_POSITIONS
    items, each a whole number from 0 to the prompt-token limit."""
    limit = max_prompt_tokens()
    bad = PatchboardError(field_name, f"{_short(value)} is not a list of token positions; write whole numbers such as 3,4")
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        if len(value) > MAX_POSITIONS * (MAX_INT_DIGITS + 2):
            raise PatchboardError(field_name, f"more than {MAX_POSITIONS} positions (MAX_POSITIONS); list fewer")
        items = value.replace(",", " ").split()
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise bad
    if len(items) > MAX_POSITIONS:
        raise PatchboardError(field_name, f"{len(items)} positions; the limit is {MAX_POSITIONS} (MAX_POSITIONS)")
    vals = set()
    for x in items:
        if isinstance(x, bool):
            raise bad
        if isinstance(x, int):
            v = x
        elif isinstance(x, str):
            v = check_int_text(x, field_name)
        else:  # floats (Infinity, NaN, 1.5), objects
            raise bad
        if not 0 <= v < limit:
            raise PatchboardError(field_name, f"position {v} is out of range; positions are whole numbers from 0 (BOS) to {limit - 1} (MAX_PROMPT_TOKENS)")
        vals.add(v)
    if not vals:
        raise PatchboardError(field_name, f"{_short(value)}: give at least one position (0 is BOS)")
    return tuple(sorted(vals))


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:60] + "…"


def load_pairs_file(path: str) -> list[Pair]:
    """CLI only: the app never reads a path named by a user. A regular UTF-8
    file of at most MAX_FILE_BYTES, checked before it is read."""
    lower = path.lower()
    fmt = "jsonl" if lower.endswith((".jsonl", ".json")) else "csv" if lower.endswith(".csv") else None
    if fmt is None:
        raise PatchboardError("pairs", f"{path!r} is neither .csv nor .jsonl; give a CSV or JSONL file")
    return parse_pairs_text(read_user_file(path, "pairs"), fmt)


def pair_row(p: Pair) -> dict[str, Any]:
    """A pair as a JSON row (key positions only when set)."""
    return p.to_row() | ({"key_positions": list(p.key_positions)} if p.key_positions else {})


def pairs_from_rows(rows: Any, field_name: str = "pairs") -> tuple[Pair, ...]:
    """JSON rows (as stored in a spec or carried by a link) -> pairs."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise PatchboardError(field_name, "expected a non-empty list of {clean, corrupt, answer, counter_answer}")
    if len(rows) > MAX_PAIRS:
        raise _too_many(field_name)
    out = []
    for i, r in enumerate(rows, 1):
        if isinstance(r, Pair):
            out.append(r)
            continue
        if not isinstance(r, dict) or any(c not in r or not isinstance(r[c], str) for c in PAIR_COLUMNS):
            raise PatchboardError(field_name, f"row {i} needs the string fields {', '.join(PAIR_COLUMNS)}")
        out.append(_pair(r, i, field_name))
    return tuple(out)


def encode_pairs(pairs) -> str:
    """Pairs inline in a link, through the one link codec."""
    from patching.core.codec import encode_json

    return encode_json([pair_row(p) for p in pairs])


def decode_pairs(blob: str) -> tuple[Pair, ...]:
    """The pairs a link carries (bounded by the codec: length, inflated size, depth)."""
    from patching.core.codec import decode_text, loads_bounded

    text = decode_text(blob, "pairs")
    try:
        rows = loads_bounded(text, "pairs")
    except PatchboardError:
        raise PatchboardError("pairs", "the link's pairs are not readable (truncated or edited?); copy the link again") from None
    return pairs_from_rows(rows)
