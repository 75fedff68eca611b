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

from patching.core.errors import PatchboardError

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
    (an optional ``key_positions`` column, "3 4" or [3, 4], is accepted)."""
    rows: list[dict[str, Any]] = []
    if fmt == "jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PatchboardError(source, f"line {i} is not valid JSON ({e.msg}); write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise PatchboardError(source, f"line {i} is not a JSON object; write one object per line")
            rows.append(obj)
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            raise PatchboardError(source, "the CSV file is empty; give a header row clean,corrupt,answer,counter_answer")
        rows = list(reader)
    else:
        raise PatchboardError(source, f"unknown format {fmt!r}; use a .csv or .jsonl file")
    if not rows:
        raise PatchboardError(source, "no pairs found; give at least one row clean,corrupt,answer,counter_answer")
    pairs = []
    for i, row in enumerate(rows, 1):
        missing = [c for c in PAIR_COLUMNS if c not in row]
        if missing:
            raise PatchboardError(source, f"row {i} lacks the column(s) {', '.join(missing)}; the columns are exactly {','.join(PAIR_COLUMNS)}")
        extra = [c for c in row if c not in PAIR_COLUMNS and c != "key_positions"]
        if extra:
            raise PatchboardError(source, f"row {i} has unknown column(s) {', '.join(map(str, extra))}; the columns are exactly {','.join(PAIR_COLUMNS)}")
        kp = row.get("key_positions")
        key_positions = parse_positions(kp, source) if kp not in (None, "", []) else None
        for c in ("answer", "counter_answer"):  # JSONL: an answer set as a list of alternatives
            if isinstance(row[c], list) and row[c] and all(isinstance(x, str) for x in row[c]):
                row[c] = ANSWER_SEP.join(row[c])
        vals = [row[c] for c in PAIR_COLUMNS]
        if not all(isinstance(v, str) for v in vals):
            raise PatchboardError(source, f"row {i}: every column must be a string")
        pairs.append(Pair(*vals, key_positions=key_positions))
    return pairs


def parse_positions(value: Any, field_name: str = "key-positions") -> tuple[int, ...]:
    """ "3,4" / "3 4" / [3, 4] -> (3, 4)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = str(value).replace(",", " ").split()
    try:
        out = tuple(sorted({int(x) for x in items}))
    except (TypeError, ValueError):
        raise PatchboardError(field_name, f"{value!r} is not a list of token positions; write integers such as 3,4") from None
    if not out or min(out) < 0:
        raise PatchboardError(field_name, f"{value!r}: positions are integers >= 0 (0 is BOS)")
    return out


def load_pairs_file(path: str) -> list[Pair]:
    """CLI only: the app never reads a path named by a user."""
    lower = path.lower()
    fmt = "jsonl" if lower.endswith((".jsonl", ".json")) else "csv" if lower.endswith(".csv") else None
    if fmt is None:
        raise PatchboardError("pairs", f"{path!r} is neither .csv nor .jsonl; give a CSV or JSONL file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PatchboardError("pairs", f"cannot read {path!r} ({e.strerror}); check the path") from None
    return parse_pairs_text(text, fmt)




def pair_row(p: Pair) -> dict[str, Any]:
    """A pair as a JSON row (key positions only when set)."""
    return p.to_row() | ({"key_positions": list(p.key_positions)} if p.key_positions else {})


def pairs_from_rows(rows: Any, field_name: str = "pairs") -> tuple[Pair, ...]:
    """JSON rows (as stored in a spec or carried by a link) -> pairs."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise PatchboardError(field_name, "expected a non-empty list of {clean, corrupt, answer, counter_answer}")
    out = []
    for i, r in enumerate(rows, 1):
        if isinstance(r, Pair):
            out.append(r)
            continue
        if not isinstance(r, dict) or any(c not in r or not isinstance(r[c], str) for c in PAIR_COLUMNS):
            raise PatchboardError(field_name, f"row {i} needs the string fields {', '.join(PAIR_COLUMNS)}")
        kp = r.get("key_positions")
        out.append(Pair(*(r[c] for c in PAIR_COLUMNS), key_positions=parse_positions(kp) if kp else None))
    return tuple(out)
