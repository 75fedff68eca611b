"""Reading a run out at the final position: the per-row statistics every
metric is built from (logit difference, P(answer), log P(answer), KL from the
clean run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class RowStats:
    """Per-row readouts at the final position; the metrics are built from these."""

    ld: torch.Tensor  # logit(answer) - logit(counter_answer)
    prob: torch.Tensor  # P(answer)
    logprob: torch.Tensor  # log P(answer)
    kl: torch.Tensor  # KL(clean || this run)

    @staticmethod
    def cat(items: Sequence["RowStats"]) -> "RowStats":
        return RowStats(*(torch.cat([getattr(s, f) for s in items]) for f in ("ld", "prob", "logprob", "kl")))

    def view(self, *shape) -> "RowStats":
        return RowStats(*(getattr(self, f).reshape(*shape) for f in ("ld", "prob", "logprob", "kl")))


def row_stats(logits: torch.Tensor, answer: torch.Tensor, counter: torch.Tensor, clean_logprobs: torch.Tensor) -> RowStats:
    logits = logits.float()
    lp = torch.log_softmax(logits, dim=-1)
    a = answer[:, None]
    ld = (logits.gather(1, a) - logits.gather(1, counter[:, None]))[:, 0]
    lpa = lp.gather(1, a)[:, 0]
    kl = (clean_logprobs.exp() * (clean_logprobs - lp)).sum(-1)
    return RowStats(ld=ld, prob=lpa.exp(), logprob=lpa, kl=kl)



class Reference:
    """``row_stats`` for [patches, rows, vocab] logits against the rows' clean
    distribution p, without tiling the clean rows over the patches:
    KL(clean || x) = sum p log p - sum p log_softmax(x), p and the first sum
    computed once. (Plain sums, not a matrix product: over 49k terms a
    float32 GEMV's accumulation is off by ~1e-4.)"""

    def __init__(self, answer: torch.Tensor, counter: torch.Tensor, clean_logprobs: torch.Tensor):
        self.answer, self.counter = answer, counter  # [rows]
        lp = clean_logprobs.float()
        self.p = lp.exp()  # [rows, vocab]
        self.neg_entropy = (self.p * lp).sum(-1)  # [rows]

    def stats(self, logits: torch.Tensor) -> RowStats:
        n, rows, _ = logits.shape
        lp = torch.log_softmax(logits, -1)
        ld = logits.gather(-1, self.answer.expand(n, rows)[..., None])[..., 0] - logits.gather(-1, self.counter.expand(n, rows)[..., None])[..., 0]
        logprob = lp.gather(-1, self.answer.expand(n, rows)[..., None])[..., 0]
        kl = self.neg_entropy - (lp * self.p).sum(-1)
        return RowStats(ld=ld.reshape(-1), prob=logprob.exp().reshape(-1), logprob=logprob.reshape(-1), kl=kl.reshape(-1))


