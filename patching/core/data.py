"""Prompt pairs and datasets: loading, tokenizing and validating.

A pair is ``clean, corrupt, answer, counter_answer``. Tokenization always
prepends the model's BOS token (TransformerLens's default), so position 0 is
BOS and every position index in Patchboard counts it.

A dataset keeps one token length for all of its prompts: by-position results
then mean the same thing on every row (positions are named per task, e.g. IOI's
S1/IO/S2/END, where the roles sit at the same index in every prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from patching.core.errors import PatchboardError, shown
from patching.core.limits import MAX_PROMPT_CHARS, max_prompt_tokens
from patching.core.pairs import Pair

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
    # Answer sets [n, A] / [n, C], padded with -1; None when every answer
    # and counter-answer is one token (then answer_ids/counter_ids say it all;
    # with sets they hold each set's first alternative).
    answer_sets: torch.Tensor | None = None
    counter_sets: torch.Tensor | None = None

    def answers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer, counter) as the readout takes them: [n] ids, or [n, A]
        sets padded with -1 where any pair has a set."""
        if self.answer_sets is None:
            return self.answer_ids, self.counter_ids
        return self.answer_sets, self.counter_sets

    @property
    def n(self) -> int:
        return int(self.clean_tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_tokens.shape[1])


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
            f"row {row}: {shown(text)} is {len(ids)} tokens {pieces} for this model; use a single-token answer (often with a leading space)",
        )
    return int(ids[0])


def token_strs(tokenizer, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in ids]


def build_dataset(pairs: Sequence[Pair], tokenizer, corruption: str = "str", key_positions: Sequence[int] | None = None) -> Dataset:
    """Tokenize and validate. Raises PatchboardError naming the field at fault."""
    if not pairs:
        raise PatchboardError("pairs", "no pairs given; give at least one clean/corrupt pair")
    clean, corrupt, ans, cnt, keys = [], [], [], [], []
    limit = max_prompt_tokens()
    for i, p in enumerate(pairs, 1):
        if max(len(p.clean), len(p.corrupt)) > MAX_PROMPT_CHARS:  # before tokenizing
            raise PatchboardError("pairs", f"row {i}: a prompt is over {MAX_PROMPT_CHARS} characters (MAX_PROMPT_CHARS); shorten it")
        if not p.clean.strip():
            raise PatchboardError("clean", f"row {i}: the clean prompt is empty; type a prompt")
        if not p.corrupt.strip():
            raise PatchboardError("corrupt", f"row {i}: the corrupted prompt is empty; type a prompt of the same token length")
        c, k = tokenize(tokenizer, p.clean), tokenize(tokenizer, p.corrupt)
        if max(len(c), len(k)) > limit:
            raise PatchboardError(
                "pairs", f"row {i}: the prompt is {max(len(c), len(k))} tokens; this server's limit is {limit} (MAX_PROMPT_TOKENS, set by PATCHBOARD_MAX_PROMPT_TOKENS); shorten it")
        if len(c) != len(k):
            raise PatchboardError(
                "corrupt",
                f"row {i}: the clean prompt has {len(c)} tokens and the corrupted one {len(k)}; symmetric token replacement needs equal lengths (swap words that are one token each)",
            )
        a = [single_token(tokenizer, x, "answer", i) for x in p.answers]
        b = [single_token(tokenizer, x, "counter_answer", i) for x in p.counter_answers]
        if set(a) & set(b):
            what = "are the same token" if len(a) == len(b) == 1 else "share a token (answer sets must not overlap)"
            raise PatchboardError("counter_answer", f"row {i}: the answer and counter-answer {what}; give two different answers")
        if len(set(a)) != len(a) or len(set(b)) != len(b):
            raise PatchboardError("answer", f"row {i}: an answer set repeats a token; list each alternative once")
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
    sets = any(len(x) > 1 for x in ans + cnt)
    warnings = []
    unequal = sum(len(a) != len(b) for a, b in zip(ans, cnt))
    if unequal:
        warnings.append(
            f"on {unequal} of {len(pairs)} pair(s) the answer and counter-answer sets differ in size, so logit_diff (the logit-sum "
            "difference) moves by (|answer set| - |counter set|) x c when every logit shifts by c, although the prediction does "
            "not change; prob_diff (P(answer set) - P(counter set), Hanna et al.'s greater-than score) does not")
    return Dataset(
        pairs=list(pairs),
        clean_tokens=torch.tensor(clean, dtype=torch.long),
        corrupt_tokens=torch.tensor(corrupt, dtype=torch.long),
        answer_ids=torch.tensor([x[0] for x in ans], dtype=torch.long),
        counter_ids=torch.tensor([x[0] for x in cnt], dtype=torch.long),
        answer_sets=_padded(ans) if sets else None,
        counter_sets=_padded(cnt) if sets else None,
        key_positions=keys,
        position_labels=labels,
        clean_strs=token_strs(tokenizer, clean[0]),
        corrupt_strs=token_strs(tokenizer, corrupt[0]),
        warnings=warnings,
    )


def _padded(sets: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in sets)
    return torch.tensor([s + [-1] * (width - len(s)) for s in sets], dtype=torch.long)


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
