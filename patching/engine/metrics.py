"""Metrics, all computed from the same patched runs (Zhang & Nanda §2).

Means are over every row (pairs x noise samples). With B = the patched run,
cl = clean, * = corrupt:

denoise (clean activation into the corrupted run; sufficiency):
  logit_diff = (mean LD_B - mean LD_*) / (mean LD_cl - mean LD_*)   1 = fully restored, 0 = corrupt
  prob       = mean P_B(answer) - mean P_*(answer)
  logprob    = mean log P_B(answer) - mean log P_*(answer)
  kl         = mean KL(cl || *) - mean KL(cl || B)
  prob_diff  = mean PD_B - mean PD_*      PD = P(answer) - P(counter-answer)

noise (corrupted activation into the clean run; necessity). Signs are flipped
so that, in both directions, a positive value means "this component carries
the behaviour":
  logit_diff = (mean LD_cl - mean LD_B) / (mean LD_cl - mean LD_*)  1 = fully destroyed, 0 = unaffected
  prob       = mean P_cl(answer) - mean P_B(answer)
  logprob    = mean log P_cl(answer) - mean log P_B(answer)
  kl         = mean KL(* || cl) - mean KL(* || B)
  prob_diff  = mean PD_cl - mean PD_B

With answer *sets* (greater-than: the years after YY against the years before)
P is the set's summed probability, so PD = P(after) - P(before) is Hanna et
al.'s score; LD is then the logit-sum difference, which a shift of every
answer logit by c moves by (|answer set| - |counter set|) c although the
prediction does not change (the dataset warns when the sizes differ).

Under mean and zero ablation (noising only) * is the ablated reference: the
readout of the final residual stream replaced by its mean over the reference
set (mean) or by zeros (zero), i.e. the prediction with every write ablated
at once (:mod:`patching.engine.reference`).

KL is signed in both directions and read the same way: the patch's *source*
run is the reference, and the effect is how much closer the patch moves the
patched run's whole prediction to it -- KL(source || unpatched) -
KL(source || patched). Under denoising the source is the clean run; under
noising it is the corrupted run, so a positive value means "the patch moves
the clean run's prediction towards the corrupted one" and a negative value
means noising it moves the prediction *further from* the corrupted one than
the clean run is. That says where the prediction went, not why: a component
that works against the behaviour (a negative name mover) does it, and so
does damage that takes the run off the data's manifold, away from both runs
(read the answer metrics beside it). Plain KL(cl || B), never negative,
could not show either.
1 nat of KL effect under noising equals KL(* || cl) when the patch makes the
clean run exactly the corrupted one. (Engine version 2; version 1 reported
KL(cl || B) under noising.) Under Gaussian noise each row (pair x sample)
has its own corrupted distribution.
"""

from __future__ import annotations

import math

import torch

from patching.core.spec import METRICS  # noqa: F401 (the Spec's metric choices, declared once there)
from patching.engine.readout import RowStats


#: Every metric's formula per direction, as docs/definitions.md prints it
#: (that table is generated from this one, :func:`formulas_markdown`; a test
#: evaluates each formula against :func:`effects`). Means over rows; r the
#: answer (set), r' the counter-answer (set); LD = logit(r) - logit(r'),
#: PD = P(r) - P(r'); "corrupt" is the corrupted run, or the ablated run
#: under mean and zero ablation.
FORMULAS: dict[str, tuple[str, str]] = {
    "logit_diff": ("(LD_patched − LD_corrupt) / (LD_clean − LD_corrupt)", "(LD_clean − LD_patched) / (LD_clean − LD_corrupt)"),
    "prob": ("P_patched(r) − P_corrupt(r)", "P_clean(r) − P_patched(r)"),
    "logprob": ("log P_patched(r) − log P_corrupt(r)", "log P_clean(r) − log P_patched(r)"),
    "kl": ("KL(clean‖corrupt) − KL(clean‖patched)", "KL(corrupt‖clean) − KL(corrupt‖patched)"),
    "prob_diff": ("PD_patched − PD_corrupt", "PD_clean − PD_patched"),
}


def formulas_markdown() -> str:
    """The metrics table of docs/definitions.md, from :data:`FORMULAS`."""
    lines = ["| metric | `denoise` (clean → corrupted run) | `noise` (corrupted → clean run) |", "|---|---|---|"]
    lines += [f"| `{m}` | {d} | {n} |" for m, (d, n) in FORMULAS.items()]
    return "\n".join(lines)


def means(st: RowStats) -> dict[str, torch.Tensor]:
    """Average over the last axis (rows)."""
    out = {"ld": st.ld.mean(-1), "prob": st.prob.mean(-1), "logprob": st.logprob.mean(-1), "kl": st.kl.mean(-1)}
    if st.kl_corrupt is not None:
        out["kl_corrupt"] = st.kl_corrupt.mean(-1)
    out["pd"] = st.pd.mean(-1) if st.pd is not None else torch.full_like(out["ld"], math.nan)
    return out


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
            "prob_diff": b["pd"] - co["pd"],
        }
    return {
        "logit_diff": (cl["ld"] - b["ld"]) / gap,
        "prob": cl["prob"] - b["prob"],
        "logprob": cl["logprob"] - b["logprob"],
        "kl": cl["kl_corrupt"] - b["kl_corrupt"],
        "prob_diff": cl["pd"] - b["pd"],
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


#: Warn when |LD_clean - LD_corrupt| is under this fraction of |LD_clean|.
SMALL_GAP = 0.25


def _per_pair(x: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Rows (pair-major, K noise samples per pair) averaged per pair."""
    return x.reshape(n_pairs, -1).mean(1) if n_pairs and x.numel() % n_pairs == 0 else x


def flipped_fraction(clean: RowStats, corrupt: RowStats, n_pairs: int) -> float:
    """Fraction of pairs whose corruption flips the preferred answer: the sign
    of LD (answer vs counter-answer) differs between the clean and corrupted
    run (under GN, the corrupted LD averaged over the pair's samples)."""
    cl, co = _per_pair(clean.ld, n_pairs), _per_pair(corrupt.ld, n_pairs)
    return float(((cl > 0) != (co > 0)).float().mean())


def baseline_warnings(clean: RowStats, corrupt: RowStats, n_pairs: int) -> list[str]:
    """Guard rails on the baseline gap every normalised logit difference divides by."""
    out = []
    cl, co = float(clean.ld.mean()), float(corrupt.ld.mean())
    gap = cl - co
    if abs(gap) < SMALL_GAP * abs(cl) or abs(gap) < 1e-6:
        out.append(f"the corruption barely moves the logit difference: LD_clean {cl:.3f}, LD_corrupt {co:.3f}, "
                   f"gap {gap:.3f} is {abs(gap) / max(abs(cl), 1e-12):.0%} of |LD_clean| (under {SMALL_GAP:.0%}); "
                   "the normalised logit_diff divides by this gap and blows up -- use a stronger corruption, "
                   "or read prob/logprob/kl")
    flipped = flipped_fraction(clean, corrupt, n_pairs)
    if flipped < 1.0:
        n_not = round((1.0 - flipped) * n_pairs)
        out.append(f"the corruption does not flip the preferred answer on {n_not} of {n_pairs} pair(s) "
                   f"(flipped on {flipped:.0%}): on those the corrupted run still prefers the same answer as the clean run")
    return out


def baselines(clean: RowStats, corrupt: RowStats, n_pairs: int | None = None) -> dict[str, float]:
    """The clean and corrupted runs' means. ``clean_accuracy`` is the fraction
    of rows with LD_clean > 0 (the clean run prefers the answer over the
    counter-answer), not top-1 accuracy; ``flipped_fraction`` the fraction of
    pairs whose corruption flips the preferred answer."""
    cl, co = means(clean), means(corrupt)
    extra = {"corrupt_clean_kl": float(cl["kl_corrupt"])} if "kl_corrupt" in cl else {}
    if n_pairs:
        extra["flipped_fraction"] = flipped_fraction(clean, corrupt, n_pairs)
    return {
        "clean_logit_diff": float(cl["ld"]),
        "corrupt_logit_diff": float(co["ld"]),
        "clean_prob": float(cl["prob"]),
        "corrupt_prob": float(co["prob"]),
        "clean_logprob": float(cl["logprob"]),
        "corrupt_logprob": float(co["logprob"]),
        "corrupt_kl": float(co["kl"]),
        "clean_prob_diff": float(cl["pd"]),
        "corrupt_prob_diff": float(co["pd"]),
        "clean_accuracy": float((clean.ld > 0).float().mean()),
        **extra,
    }
