"""The settings of a grid arranged by factor: which factors vary, the pairs of
settings that differ in exactly one of them, and the order, blocks and short
labels the page's matrices are drawn with.

A setting (``"str/logit_diff/denoise/s2@atp"``) is a value for each *factor*
(:data:`FACTORS`: corruption, metric, direction, prompt variant, method).
Settings are nested outermost → innermost as :data:`NESTING` (variant,
method, corruption, direction, metric); the two innermost factors that vary
give a setting its short label (``"LD · den"``, innermost first), the others name its block
(``"s2 · str"``), so a 36-setting matrix reads as 6 × 6 blocks and a
72-setting one (with the method) as 12 × 12. Names only; no statistics.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from patching.analysis.stats import parse_setting
from patching.grid_stats_request import FACTORS

#: Outermost first: blocks are made of the outer factors, short labels of the two innermost that vary.
NESTING = ("variant", "method", "corruption", "direction", "metric")
#: Short names of factor values inside a block (anything else is written as it is).
SHORT = {"logit_diff": "LD", "prob": "prob", "kl": "KL", "logprob": "logP", "denoise": "den", "noise": "noi",
         "atp_star": "AtP*", "atp": "AtP", "ig": "IG"}


def parts(setting: str) -> dict[str, str]:
    """A setting's factor values (``variant`` "" when the task has none);
    raises ValueError for a label that is not corruption/metric/direction."""
    p = parse_setting(setting)
    if p is None:
        raise ValueError(f"{setting!r} is not corruption/metric/direction[/variant][@method]")
    return p


def varying(settings: Sequence[str]) -> list[str]:
    """The factors that take more than one value among ``settings``, in
    :data:`FACTORS` order."""
    ps = [parts(s) for s in settings]
    return [f for f in FACTORS if len({p[f] for p in ps}) > 1]


def differs_only_in(a: str, b: str) -> str | None:
    """The one factor settings ``a`` and ``b`` differ in, or None (equal, or
    two or more factors differ)."""
    pa, pb = parts(a), parts(b)
    diff = [f for f in FACTORS if pa[f] != pb[f]]
    return diff[0] if len(diff) == 1 else None


def factor_pairs(settings: Sequence[str]) -> pd.DataFrame:
    """Every unordered pair of ``settings`` (in their order) that differs in
    exactly one factor: ``factor, setting_a, setting_b, level_a, level_b``."""
    settings = list(settings)
    rows = []
    for i, a in enumerate(settings):
        for b in settings[i + 1:]:
            f = differs_only_in(a, b)
            if f is not None:
                rows.append({"factor": f, "setting_a": a, "setting_b": b, "level_a": parts(a)[f], "level_b": parts(b)[f]})
    return pd.DataFrame(rows, columns=["factor", "setting_a", "setting_b", "level_a", "level_b"])


def _level_order(settings: Sequence[str]) -> dict[str, dict[str, int]]:
    """Each factor's values in order of first appearance (the grid's order)."""
    out: dict[str, dict[str, int]] = {f: {} for f in FACTORS}
    for s in settings:
        for f, v in parts(s).items():
            out[f].setdefault(v, len(out[f]))
    return out


def layout(settings: Sequence[str]) -> pd.DataFrame:
    """One row per setting, in drawing order (grouped by :data:`NESTING`):
    ``setting, order, block, short, block_start`` and each factor's value.
    ``block`` is the outer factors' values ("s2 · str"; "" when only the
    inner ones vary), ``short`` the inner ones' ("LD · den"), unique within
    a block; ``block_start`` marks a block's first setting."""
    settings = list(dict.fromkeys(settings))
    if not settings:
        return pd.DataFrame(columns=["setting", "order", "block", "short", "block_start", *FACTORS])
    levels = _level_order(settings)
    vary = varying(settings)
    nested = [f for f in NESTING if f in vary]
    inner = nested[-2:] if nested else []
    outer = [f for f in nested if f not in inner]
    rows = []
    for s in settings:
        p = parts(s)
        rows.append({"setting": s, "block": " · ".join(_short(p[f]) for f in outer),
                     "short": " · ".join(_short(p[f]) for f in reversed(inner)) or s, **p,
                     "_key": tuple(levels[f][p[f]] for f in NESTING)})
    df = pd.DataFrame(rows).sort_values("_key", kind="stable").drop(columns="_key").reset_index(drop=True)
    df.insert(1, "order", range(len(df)))
    df["block_start"] = df["block"].ne(df["block"].shift())
    return df[["setting", "order", "block", "short", "block_start", *FACTORS]]


def ordered(settings: Sequence[str]) -> list[str]:
    """``settings`` in drawing order (:func:`layout`)."""
    return list(layout(settings)["setting"])


def level_name(factor: str, value: str) -> str:
    """A factor value as a sentence names it (``logit_diff`` → "logit difference")."""
    names = {"logit_diff": "logit difference", "prob": "probability", "kl": "KL", "logprob": "log-probability",
             "denoise": "denoising", "noise": "noising", "str": "STR", "gn": "Gaussian noise", "exact": "exact patching",
             "atp": "AtP", "atp_star": "AtP*", "ig": "integrated gradients"}
    if factor == "variant":
        return f"the {value} variant"
    return names.get(value, value)


def _short(value: str) -> str:
    return SHORT.get(value, value)
