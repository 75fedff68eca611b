"""Reading a run out at the final position: the per-row statistics every
metric is built from (logit difference, P(answer), log P(answer), KL from the
clean run, under noising KL from the corrupted run, and P(answer) -
P(counter-answer))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

#: The read-out statistics, in :class:`RowStats`'s field order (``kl_corrupt``:
#: the signed noising KL's reference; ``pd``: P(answer) - P(counter-answer),
#: summed over answer sets: greater-than's P(after) - P(before)).
STATS = ("ld", "prob", "logprob", "kl", "kl_corrupt", "pd")


@dataclass
class RowStats:
    """Per-row readouts at the final position; the metrics are built from these."""

    ld: torch.Tensor  # logit(answer) - logit(counter_answer)
    prob: torch.Tensor  # P(answer)
    logprob: torch.Tensor  # log P(answer)
    kl: torch.Tensor  # KL(clean || this run)
    # KL(corrupt || this run): read only by the signed KL effect under noising,
    # so only computed where the corrupted run's log-probs are given.
    kl_corrupt: torch.Tensor | None = None
    # P(answer) - P(counter-answer) (each summed over its set): Hanna et al.'s
    # greater-than score. Every run computes it; None only where a caller
    # builds stats by hand without it.
    pd: torch.Tensor | None = None

    FIELDS = STATS

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "RowStats":
        """Apply ``fn`` to every field (``kl_corrupt`` stays None when absent)."""
        return RowStats(*(None if getattr(self, f) is None else fn(getattr(self, f)) for f in self.FIELDS))

    @staticmethod
    def combine(items: Sequence["RowStats"], fn: Callable[[list[torch.Tensor]], torch.Tensor]) -> "RowStats":
        """``fn`` over the items' values of each field (torch.cat, torch.stack)."""
        out = []
        for f in RowStats.FIELDS:
            vals = [getattr(s, f) for s in items]
            out.append(None if any(v is None for v in vals) else fn(vals))
        return RowStats(*out)

    @staticmethod
    def cat(items: Sequence["RowStats"]) -> "RowStats":
        return RowStats.combine(items, torch.cat)

    def view(self, *shape) -> "RowStats":
        return self.map(lambda t: t.reshape(*shape))

    def __getitem__(self, idx) -> "RowStats":
        return self.map(lambda t: t[idx])


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [..., rows, V] at idx [rows, A] (padding -1 reads index 0) -> [..., rows, A]."""
    idx = idx.clamp(min=0).expand(*x.shape[:-2], *idx.shape)
    return x.gather(-1, idx)


def answer_scores(logits: torch.Tensor, lp: torch.Tensor, answer: torch.Tensor, counter: torch.Tensor,
                  with_counter: bool = False):
    """(LD, log P(answer)) per row of [..., rows, V] logits / log-probs
    (``with_counter``: and log P(counter-answer), the third).

    ``answer``/``counter`` are [rows] token ids, or answer *sets* [rows, A]
    padded with -1. With sets, P(answer) is the summed probability of the
    set (the greater-than paper's "probability of every year after YY") and
    LD is the logit-sum difference: sum of the answer set's logits minus sum
    of the counter set's (years after minus years before). With one token
    each, both reduce exactly to logit(a) - logit(c) and P(a)."""
    if answer.dim() == 1 and counter.dim() == 1:
        ld = _gather(logits, answer[:, None])[..., 0] - _gather(logits, counter[:, None])[..., 0]
        if with_counter:
            return ld, _gather(lp, answer[:, None])[..., 0], _gather(lp, counter[:, None])[..., 0]
        return ld, _gather(lp, answer[:, None])[..., 0]
    a = answer if answer.dim() == 2 else answer[:, None]
    c = counter if counter.dim() == 2 else counter[:, None]
    am, cm = a >= 0, c >= 0
    ld = (_gather(logits, a) * am).sum(-1) - (_gather(logits, c) * cm).sum(-1)
    logprob = _gather(lp, a).masked_fill(~am, float("-inf")).logsumexp(-1)
    if with_counter:
        return ld, logprob, _gather(lp, c).masked_fill(~cm, float("-inf")).logsumexp(-1)
    return ld, logprob


def _kl_from(ref_logprobs: torch.Tensor | None, lp: torch.Tensor) -> torch.Tensor | None:
    if ref_logprobs is None:
        return None
    return (ref_logprobs.exp() * (ref_logprobs - lp)).sum(-1)


def row_stats(logits: torch.Tensor, answer: torch.Tensor, counter: torch.Tensor, clean_logprobs: torch.Tensor,
              corrupt_logprobs: torch.Tensor | None = None) -> RowStats:
    logits = logits.float()
    lp = torch.log_softmax(logits, dim=-1)
    ld, lpa, lpc = answer_scores(logits, lp, answer, counter, with_counter=True)
    return RowStats(ld=ld, prob=lpa.exp(), logprob=lpa, kl=_kl_from(clean_logprobs, lp), kl_corrupt=_kl_from(corrupt_logprobs, lp),
                    pd=lpa.exp() - lpc.exp())


class _Dist:
    """A reference distribution p per row: KL(p || x) = sum p log p - sum p log_softmax(x)."""

    def __init__(self, logprobs: torch.Tensor):
        lp = logprobs.float()
        self.p = lp.exp()  # [rows, vocab]
        self.neg_entropy = (self.p * lp).sum(-1)  # [rows]

    def kl(self, lp: torch.Tensor) -> torch.Tensor:
        return self.neg_entropy - (lp * self.p).sum(-1)


class Reference:
    """``row_stats`` for [patches, rows, vocab] logits against the rows' clean
    (and, under noising, corrupted) distribution, without tiling them over the
    patches: p and sum p log p are computed once. (Plain sums, not a matrix
    product: over 49k terms a float32 GEMV's accumulation is off by ~1e-4.)"""

    def __init__(self, answer: torch.Tensor, counter: torch.Tensor, clean_logprobs: torch.Tensor,
                 corrupt_logprobs: torch.Tensor | None = None):
        self.answer, self.counter = answer, counter  # [rows], or answer sets [rows, A]
        self.clean = _Dist(clean_logprobs)
        self.corrupt = _Dist(corrupt_logprobs) if corrupt_logprobs is not None else None

    def stats(self, logits: torch.Tensor) -> RowStats:
        lp = torch.log_softmax(logits, -1)
        ld, logprob, lpc = answer_scores(logits, lp, self.answer, self.counter, with_counter=True)
        kl = self.clean.kl(lp)
        klc = self.corrupt.kl(lp).reshape(-1) if self.corrupt is not None else None
        return RowStats(ld=ld.reshape(-1), prob=logprob.exp().reshape(-1), logprob=logprob.reshape(-1), kl=kl.reshape(-1), kl_corrupt=klc,
                        pd=(logprob.exp() - lpc.exp()).reshape(-1))
