"""How numbers, tokens, custom pairs and a result's baselines read as text
(no streamlit import): the small tables and sentences the pages show. The
2-SD rule applied to a result's table is in :mod:`patching.analysis.detection`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import pandas as pd

from patching.core.pairs import Pair


# ---------------------------------------------------------------- custom pairs


def pairs_to_text(pairs: Sequence[Pair]) -> str:
    """JSONL, one pair per line (leading spaces of answers stay visible)."""
    lines = []
    for p in pairs:
        row: dict[str, Any] = p.to_row()
        if p.key_positions:
            row["key_positions"] = list(p.key_positions)
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines)


def guess_pairs_format(text: str, filename: str | None = None) -> str:
    """"jsonl" or "csv" from a file name, else from the first non-blank char."""
    if filename:
        low = filename.lower()
        if low.endswith((".jsonl", ".json")):
            return "jsonl"
        if low.endswith(".csv"):
            return "csv"
    stripped = text.lstrip()
    return "jsonl" if stripped.startswith("{") else "csv"


# ---------------------------------------------------------------- tokens


def show_token(tok: str) -> str:
    """A token as a reader sees it: spaces as '·', newlines as '⏎'."""
    return tok.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·") or "∅"


def token_alignment(clean: Sequence[str], corrupt: Sequence[str], key_positions: Sequence[int] | None = None,
                    labels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per position: pos, role (from labels like "11:S2"), clean,
    corrupt, differs, key."""
    keys = set(key_positions or [])
    rows = []
    for j in range(max(len(clean), len(corrupt))):
        c = clean[j] if j < len(clean) else ""
        k = corrupt[j] if j < len(corrupt) else ""
        role = ""
        if labels and j < len(labels):
            lab = str(labels[j]).split(":", 1)[-1]
            role = lab if lab.isupper() or lab == "BOS" else ""
        rows.append({"pos": j, "role": role, "clean": c, "corrupt": k, "differs": c != k, "key": j in keys})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- results


def fmt(x: Any, digits: int = 4) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def baseline_sentences(baselines: dict[str, float], spec: Any, meta: dict | None = None) -> list[str]:
    """Plain sentences about the clean and corrupt (or ablated) runs."""
    b = baselines
    ablated = getattr(spec, "corruption", None) in ("mean", "zero")
    other = ("In the ablated run (every write replaced by its " + ("mean" if spec.corruption == "mean" else "zero") + " at once)"
             if ablated else "On the corrupted prompts")
    out = [
        f"On the clean prompts the model prefers the right answer over the wrong one by {fmt(b.get('clean_logit_diff'), 3)} "
        f"logits on average (probability of the right answer {fmt(100 * b.get('clean_prob', float('nan')), 3)}%); "
        f"it prefers the answer over the counter-answer (LD > 0) on {fmt(100 * b.get('clean_accuracy', float('nan')), 3)}% of the pairs"
        + (f"; the corruption flips that preference on {fmt(100 * b['flipped_fraction'], 3)}% of them." if "flipped_fraction" in b else "."),
        f"{other} that preference is {fmt(b.get('corrupt_logit_diff'), 3)} logits "
        f"(probability {fmt(100 * b.get('corrupt_prob', float('nan')), 3)}%); the whole prediction differs from the clean "
        f"one by a KL divergence of {fmt(b.get('corrupt_kl'), 3)}.",
    ]
    return out


def effect_sentence(row: pd.Series, metric: str, direction: str, corruption: str = "str") -> str:
    """One sentence interpreting one cell's value."""
    v = float(row["value"])
    what = row["label"] if "label" in row.index else row.name
    ablated = corruption in ("mean", "zero")
    broken = f"{corruption}-ablated" if ablated else "corrupted"
    if metric == "logit_diff":
        pct = f"{100 * v:.0f}%"
        if direction == "denoise":
            return f"Putting the clean {what} into the corrupted run restores {pct} of the gap between corrupted and clean."
        return f"Putting the {broken} {what} into the clean run destroys {pct} of the gap between clean and {'the ablated run' if ablated else 'corrupted'}."
    if metric == "prob":
        verb = "raises" if (v >= 0) == (direction == "denoise") else "lowers"
        return f"Patching {what} {verb} the right answer's probability by {abs(100 * v):.2f} percentage points."
    if metric == "prob_diff":
        verb = "raises" if (v >= 0) == (direction == "denoise") else "lowers"
        return (f"Patching {what} {verb} P(right answers) − P(wrong answers) by {abs(100 * v):.2f} percentage points "
                "(positive = the component carries the behaviour).")
    if metric == "logprob":
        return f"Patching {what} changes the right answer's log-probability by {v:+.3f} (sign: positive = the component carries the behaviour)."
    if direction == "denoise":
        return f"Patching {what} moves the whole prediction {'towards' if v >= 0 else 'away from'} the clean one by {abs(v):.3f} nats of KL."
    ref = "the ablated run's" if ablated else "the corrupted one"
    if v >= 0:
        return f"Noising {what} moves the clean run's whole prediction towards {ref} by {abs(v):.3f} nats of KL."
    return (f"Noising {what} moves the clean run's whole prediction {abs(v):.3f} nats of KL further from {ref} than the clean "
            "prediction is: it may work against the behaviour, or only push the run off the data's manifold, away from both "
            "(read logit_diff beside it).")
