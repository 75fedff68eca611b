"""Prompt pairs and datasets: loading, tokenizing and validating.

A pair is ``clean, corrupt, answer, counter_answer``. Tokenization always
prepends the model's BOS token (TransformerLens's default), so position 0 is
BOS and every position index in Patchboard counts it.

A dataset keeps one token length for all of its prompts: by-position results
then mean the same thing on every row (positions are named per task, e.g. IOI's
S1/IO/S2/END, where the roles sit at the same index in every prompt).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .errors import PatchboardError

PAIR_COLUMNS = ("clean", "corrupt", "answer", "counter_answer")


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


@dataclass
class Dataset:
    """Tokenized, validated pairs, ready for the engine."""

    pairs: list[Pair]
    clean_tokens: torch.Tensor  # [n, seq]
    corrupt_tokens: torch.Tensor  # [n, seq]
    answer_ids: torch.Tensor  # [n]
    counter_ids: torch.Tensor  # [n]
    key_positions: list[list[int]]  # per pair
    position_labels: list[str]  # one per position
    clean_strs: list[str]  # tokens of the first clean prompt
    corrupt_strs: list[str]  # tokens of the first corrupt prompt
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.clean_tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_tokens.shape[1])


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


# ---------------------------------------------------------------- tokenizing


def tokenize(tokenizer, text: str) -> list[int]:
    """BOS + the text's tokens (no EOS), as TransformerLens's to_tokens does."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(ids)


def single_token(tokenizer, text: str, field_name: str, row: int) -> int:
    if text == "":
        raise PatchboardError(field_name, f"row {row}: the answer is empty; give a single-token answer such as ' Mary'")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tokenizer.decode([t]) for t in ids]
        raise PatchboardError(
            field_name,
            f"row {row}: {text!r} is {len(ids)} tokens {pieces} for this model; use a single-token answer (often with a leading space)",
        )
    return int(ids[0])


def token_strs(tokenizer, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in ids]


def build_dataset(pairs: Sequence[Pair], tokenizer, corruption: str = "str", key_positions: Sequence[int] | None = None) -> Dataset:
    """Tokenize and validate. Raises PatchboardError naming the field at fault."""
    if not pairs:
        raise PatchboardError("pairs", "no pairs given; give at least one clean/corrupt pair")
    clean, corrupt, ans, cnt, keys = [], [], [], [], []
    for i, p in enumerate(pairs, 1):
        if not p.clean.strip():
            raise PatchboardError("clean", f"row {i}: the clean prompt is empty; type a prompt")
        if not p.corrupt.strip():
            raise PatchboardError("corrupt", f"row {i}: the corrupted prompt is empty; type a prompt of the same token length")
        c, k = tokenize(tokenizer, p.clean), tokenize(tokenizer, p.corrupt)
        if len(c) != len(k):
            raise PatchboardError(
                "corrupt",
                f"row {i}: the clean prompt has {len(c)} tokens and the corrupted one {len(k)}; symmetric token replacement needs equal lengths (swap words that are one token each)",
            )
        a = single_token(tokenizer, p.answer, "answer", i)
        b = single_token(tokenizer, p.counter_answer, "counter_answer", i)
        if a == b:
            raise PatchboardError("counter_answer", f"row {i}: the answer and counter-answer are the same token; give two different answers")
        kp = list(key_positions or p.key_positions or [j for j in range(len(c)) if c[j] != k[j]])
        if corruption == "gn" and not kp:
            raise PatchboardError("key-positions", f"row {i}: no key positions (clean and corrupt are identical); set --key-positions for Gaussian noise")
        bad = [j for j in kp if j >= len(c)]
        if bad:
            raise PatchboardError("key-positions", f"row {i}: position {bad[0]} is past the prompt's end ({len(c)} tokens, BOS = 0)")
        clean.append(c)
        corrupt.append(k)
        ans.append(a)
        cnt.append(b)
        keys.append(kp)
    lengths = {len(c) for c in clean}
    if len(lengths) > 1:
        first = len(clean[0])
        row = next(i for i, c in enumerate(clean, 1) if len(c) != first)
        raise PatchboardError(
            "pairs",
            f"row {row} has {len(clean[row - 1])} tokens but row 1 has {first}; a dataset keeps one token length so positions line up (split it by length)",
        )
    labels = position_labels(pairs, clean, tokenizer)
    return Dataset(
        pairs=list(pairs),
        clean_tokens=torch.tensor(clean, dtype=torch.long),
        corrupt_tokens=torch.tensor(corrupt, dtype=torch.long),
        answer_ids=torch.tensor(ans, dtype=torch.long),
        counter_ids=torch.tensor(cnt, dtype=torch.long),
        key_positions=keys,
        position_labels=labels,
        clean_strs=token_strs(tokenizer, clean[0]),
        corrupt_strs=token_strs(tokenizer, corrupt[0]),
    )


def position_labels(pairs: Sequence[Pair], clean: list[list[int]], tokenizer) -> list[str]:
    """A label per position: a task's role name where every pair puts that role
    at the same index, else the first prompt's token (with its index)."""
    seq = len(clean[0])
    labels = [f"{j}:{tokenizer.decode([clean[0][j]])}" for j in range(seq)]
    labels[0] = "0:BOS"
    roles = pairs[0].roles
    for name, idx in roles.items():
        if 0 <= idx < seq and all(p.roles.get(name) == idx for p in pairs):
            labels[idx] = f"{idx}:{name}"
    return labels
