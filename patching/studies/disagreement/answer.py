"""The answer first: at most three sentences about a grid's statistics, each
with its numbers and their uncertainty and naming at most five components:

1. which factor changes the component ranking most (and whether it clearly
   does: the interval of the difference to the next factor);
2. what stays the same (the core detected under nearly every setting) and
   how large the setting-specific fringe is;
3. which components that factor decides.

Read from :class:`patching.studies.disagreement.grid_stats.GridStats` (the page
and ``python -m patching compare --summary`` print the same lines). Markdown
bold marks each sentence's claim; every other character is plain text (the
settings and components are the grid's own names).
"""

from __future__ import annotations

import math
import re

import pandas as pd

from patching.studies.disagreement import consensus, layout
from patching.studies.disagreement.grid_stats import GridStats

#: Most components a sentence names.
MAX_NAMED = 5


def fmt(x: float, digits: int = 2) -> str:
    """A number as the sentences write it (a true minus sign; "n/a" for NaN)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}".replace("-", "−")


def pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"


def unit(stats: GridStats, plural: bool = True) -> str:
    """"heads" when every component is a head, else "components"."""
    labels = stats.cells["component"].drop_duplicates().head(50)
    heads = len(labels) and all(re.fullmatch(r"L\d+H\d+", c) for c in labels)
    return ("heads" if plural else "head") if heads else ("components" if plural else "component")


def span(lo: float, hi: float, as_pct: bool = False) -> str:
    """An interval as the sentences write it: "0.34–0.44", "−0.02 to 0.11"."""
    if as_pct:
        return f"{pct(lo).removesuffix(' %')}–{pct(hi)}"
    return f"{fmt(lo)} to {fmt(hi)}" if (lo < 0 or hi < 0) else f"{fmt(lo)}–{fmt(hi)}"


def factor_sentence(stats: GridStats) -> str | None:
    """Which factor changes the ranking most, with its agreement and interval."""
    f = stats.factors
    if f.empty:
        return None
    top = f.iloc[0]
    name = layout.FACTORS[top["factor"]]
    iv = stats.has_intervals
    n = int(top["n_pairs"])
    agree = (f"agree at Spearman ρ = {fmt(top['spearman'])}" + (f" (bootstrap interval {span(top['spearman_lo'], top['spearman_hi'])})" if iv else "")
             + f" and share {pct(top['topk_jaccard'])}" + (f" ({span(top['topk_jaccard_lo'], top['topk_jaccard_hi'], True)})" if iv else "")
             + f" of their top {stats.k}, over {n} pair{'s' if n != 1 else ''}")
    if len(f) == 1:
        return f"**Only the {name} can be compared alone**: settings that differ in nothing else {agree}."
    head = f"**The {name} changes the ranking most**: settings that differ only in the {name} {agree}"
    nxt = f.iloc[1]
    gap, lo, hi = top["gap_to_next"], top["gap_lo"], top["gap_hi"]
    nname = layout.FACTORS[nxt["factor"]]
    if not iv or not math.isfinite(lo):
        return head + f"; next comes the {nname} (ρ = {fmt(nxt['spearman'])}; no intervals without per-prompt values)."
    if lo > 0:
        return head + f"; the {nname}, next, agrees more (ρ = {fmt(nxt['spearman'])}; the difference {fmt(gap)} has an interval of {span(lo, hi)})."
    return head + (f"; but not clearly more than the {nname} (ρ = {fmt(nxt['spearman'])}; the difference {fmt(gap)} has an interval of "
                   f"{span(lo, hi)}, which includes 0).")


def _names(rows: pd.DataFrame, level: float) -> str:
    parts = []
    for r in rows.head(MAX_NAMED).itertuples():
        sig = f"; in ≥ {pct(level)} of resamples under {r.n_stable}" if math.isfinite(float(r.n_stable)) else ""
        parts.append(f"{r.component} (under {r.n_detected} of {r.n_settings}{sig})")
    return ", ".join(parts)


def consensus_sentence(stats: GridStats) -> str | None:
    """What stays the same: the core, and the size of the fringe."""
    comps = consensus.components(stats.cells)
    n = len(stats.settings)
    level = float(stats.info["level"])
    if comps.empty:
        return f"**No {unit(stats, False)} is detected (2-SD rule) under any of the {n} settings.**"
    core, fringe = comps[comps["group"] == "core"], comps[comps["group"] == "fringe"]
    if not stats.has_intervals:
        comps = comps.assign(n_stable=float("nan"))
        core, fringe = comps[comps["group"] == "core"], comps[comps["group"] == "fringe"]
    nearly = f"at least {pct(consensus.CORE_SHARE)} of the {n} settings"
    more = f"; {len(fringe)} other{'s are' if len(fringe) != 1 else ' is'} detected under some settings only (the fringe)" if len(fringe) else ""
    if len(core):
        more_core = f" and {len(core) - MAX_NAMED} more" if len(core) > MAX_NAMED else ""
        return (f"**{len(core)} {unit(stats, len(core) != 1)} {'are' if len(core) != 1 else 'is'} detected (2-SD rule) under {nearly}**: "
                f"{_names(core, level)}{more_core}{more}.")
    best = fringe[fringe["n_detected"] == fringe["n_detected"].max()]
    return (f"**No {unit(stats, False)} is detected (2-SD rule) under {nearly}**; the most consistent: {_names(best, level)}"
            f"{more}.")


def decided_sentence(stats: GridStats) -> str | None:
    """Which components the top factor decides (detected under one of its
    values at least half as often again as under another)."""
    if stats.factors.empty:
        return None
    factor = stats.factors.iloc[0]["factor"]
    d = consensus.decided_by(stats.cells, factor)
    name = layout.FACTORS[factor]
    if d.empty:
        return f"**No {unit(stats, False)}'s detection follows the {name} alone** (none is detected under one {name} at least 50 points more often than under another)."
    shown = []
    for r in d.head(3).itertuples():
        shown.append(f"{r.component} is detected under {r.best_detected} of {r.best_n} {layout.level_name(factor, r.best)} settings"
                     + (f" (in {pct(r.best_stability)} of resamples on average)" if stats.has_intervals else "")
                     + f" but {r.worst_detected} of {r.worst_n} {layout.level_name(factor, r.worst)} settings"
                     + (f" ({pct(r.worst_stability)})" if stats.has_intervals else ""))
    more = f" ({len(d) - 3} more in the table)" if len(d) > 3 else ""
    return f"**The {name} decides {len(d)} {unit(stats, len(d) != 1)}**: " + "; ".join(shown) + more + "."


def sentences(stats: GridStats) -> list[str]:
    """The page's answer: at most three sentences."""
    return [s for s in (factor_sentence(stats), consensus_sentence(stats), decided_sentence(stats)) if s]


def test_lines(stats: GridStats) -> list[str]:
    """The disagreements as tests, counted (what the page's expanders say),
    and the coverage notes when the prompts are too few: ``compare --summary``
    prints them after the answer."""
    if not stats.has_intervals:
        return ["No tests and no intervals: some sweeps have no per-prompt values."]
    from patching.analysis import inference

    t, fdr, n = stats.tests, float(stats.info.get("fdr", 0.05)), int(stats.info["n_prompts"])
    out = []
    for kind, what in (("detected/missed", "“detected here, missed there” disagreements"), ("sign flip", "sign flips")):
        mine = t[t["kind"] == kind]
        if len(mine):
            out.append(f"{int(mine['significant'].sum())} of {int(mine['disagreement'].sum())} {what} are significant at FDR q = {fdr:g} "
                       f"(paired sign-flip tests over the {n} prompts; Benjamini–Hochberg over a family of {len(mine)} tests).")
    out += [x for x in (inference.coverage_sentence(n, "effect"), inference.coverage_sentence(n, "spearman")) if x]
    return out


def plain(sentence: str) -> str:
    """A sentence without its markdown bold (the CLI prints it so)."""
    return sentence.replace("**", "")
