"""Metrics, all computed from the same patched runs (Zhang & Nanda §2).

Means are over every row (pairs x noise samples). With B = the patched run,
cl = clean, * = corrupt:

denoise (clean activation into the corrupted run; sufficiency):
  logit_diff = (mean LD_B - mean LD_*) / (mean LD_cl - mean LD_*)   1 = fully restored, 0 = corrupt
  prob       = mean P_B(answer) - mean P_*(answer)
  logprob    = mean log P_B(answer) - mean log P_*(answer)
  kl         = mean KL(cl || *) - mean KL(cl || B)

noise (corrupted activation into the clean run; necessity). Signs are flipped
so that, in both directions, a positive value means "this component carries
the behaviour":
  logit_diff = (mean LD_cl - mean LD_B) / (mean LD_cl - mean LD_*)  1 = fully destroyed, 0 = unaffected
  prob       = mean P_cl(answer) - mean P_B(answer)
  logprob    = mean log P_cl(answer) - mean log P_B(answer)
  kl         = mean KL(cl || B)
"""

from __future__ import annotations

import math

import torch

from patching.engine.readout import RowStats

METRICS = ("logit_diff", "prob", "logprob", "kl")


def means(st: RowStats) -> dict[str, torch.Tensor]:
    """Average over the last axis (rows)."""
    return {"ld": st.ld.mean(-1), "prob": st.prob.mean(-1), "logprob": st.logprob.mean(-1), "kl": st.kl.mean(-1)}


def effects(patched: RowStats, clean: RowStats, corrupt: RowStats, direction: str) -> dict[str, torch.Tensor]:
    """Every metric's effect for each patch ([n_patches] tensors)."""
    b, cl, co = means(patched), means(clean), means(corrupt)
    gap = cl["ld"] - co["ld"]
    gap = torch.where(gap.abs() > 1e-12, gap, torch.full_like(gap, math.nan))  # any shape (per prompt too)
    if direction == "denoise":
        return {
            "logit_diff": (b["ld"] - co["ld"]) / gap,
            "prob": b["prob"] - co["prob"],
            "logprob": b["logprob"] - co["logprob"],
            "kl": co["kl"] - b["kl"],
        }
    return {
        "logit_diff": (cl["ld"] - b["ld"]) / gap,
        "prob": cl["prob"] - b["prob"],
        "logprob": cl["logprob"] - b["logprob"],
        "kl": b["kl"] - cl["kl"],
    }


def per_prompt(patched: RowStats, clean: RowStats, corrupt: RowStats, direction: str, n: int) -> dict[str, torch.Tensor]:
    """Every metric's effect per prompt ([n_patches, n] tensors; noise
    samples averaged within a prompt), by the same formulas as :func:`effects`,
    plus the raw per-prompt logit differences ``ld_patched`` [n_patches, n],
    ``ld_clean`` and ``ld_corrupt`` [n]: the normalised logit difference is a
    ratio of means, so intervals recompute it from these, never from the
    per-prompt ratios (which blow up on prompts with a small gap)."""
    P = patched.ld.shape[0]
    K = patched.ld.shape[-1] // n
    b, cl, co = patched.view(P, n, K), clean.view(n, K), corrupt.view(n, K)
    out = effects(b, cl, co, direction)
    out["ld_patched"] = b.ld.mean(-1)
    out["ld_clean"] = cl.ld.mean(-1)
    out["ld_corrupt"] = co.ld.mean(-1)
    return out


def baselines(clean: RowStats, corrupt: RowStats) -> dict[str, float]:
    cl, co = means(clean), means(corrupt)
    return {
        "clean_logit_diff": float(cl["ld"]),
        "corrupt_logit_diff": float(co["ld"]),
        "clean_prob": float(cl["prob"]),
        "corrupt_prob": float(co["prob"]),
        "clean_logprob": float(cl["logprob"]),
        "corrupt_logprob": float(co["logprob"]),
        "corrupt_kl": float(co["kl"]),
        "clean_accuracy": float((clean.ld > 0).float().mean()),
    }
