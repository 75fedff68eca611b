"""The guided tour: one real result of the shipped demo in six steps, for
people who don't code (the Guided tour page, one step per link ``?step=N``).

Every number is read from the store (the demo's IOI head sweep and its
Disagreement grid's statistics) and formatted here once; the page draws
:class:`Step` as it is, and a browser test checks each step's numbers against
the store. The steps: the prompts and the swapped word; what one patched head
does to the answer; the heatmap; why two settings disagree here; what stays
the same; what a researcher would conclude.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from patching.analysis import inference
from patching.results import Result
from patching.studies.disagreement import consensus, layout
from patching.studies.disagreement.answer import fmt, pct, span
from patching.studies.disagreement.grid import setting_of
from patching.studies.disagreement.grid_stats import GridStats

N_STEPS = 6
#: Each step's name in the tour's navigation.
SHORT = ("The prompts", "One head", "The heatmap", "Disagreement", "What stays", "Conclusion")

#: Why settings that differ in one factor can rank components differently (the papers' mechanisms).
WHY = {
    "direction": ("Denoising copies one clean piece into the broken run: a big effect means the piece is **enough** to bring the answer "
                  "back. Noising breaks one piece in the clean run: a big effect means the piece is **needed**. A piece can be needed "
                  "without being enough on its own, and the other way round (Heimersheim & Nanda 2024)."),
    "metric": ("The probability of the right name cannot fall below zero, so a piece that works against the answer shows almost no "
               "probability effect when the broken run already gives the name little probability; the logit difference and KL have no "
               "such floor (Zhang & Nanda 2023, §4.2)."),
    "corruption": ("Gaussian noise blurs the swapped word into something the model never reads, so later pieces can behave unlike on "
                   "any real prompt; swapping in another name keeps the prompt natural (Zhang & Nanda 2023, §3.2)."),
    "variant": ("Swapping a different name removes different information: replacing the repeated name (s2), the two first names (s1_io) "
                "or all three (abc) breaks different steps of the model's reasoning, so different pieces matter."),
    "method": ("Attribution patching estimates every piece's effect from one forward and one backward pass, a straight-line "
               "approximation that can miss where the real effect is not linear."),
}


@dataclass
class Step:
    n: int
    title: str
    text: str  # markdown: plain text and bold; every number below appears in it or beside it
    numbers: list[tuple[str, str]] = field(default_factory=list)  # (label, value) drawn as metrics
    link: tuple[str, dict[str, str]] | None = None  # (page file, query) of the real view
    data: dict[str, Any] = field(default_factory=dict)  # what the page draws (tokens, the heatmap's setting ...)


def _tokens(meta: dict) -> tuple[list[str], list[str], list[int]]:
    clean, corrupt = list(meta.get("clean_tokens") or []), list(meta.get("corrupt_tokens") or [])
    return clean, corrupt, [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]


def main_setting(main: Result) -> str:
    return setting_of(main.spec)


def top_component(stats: GridStats, setting: str) -> pd.Series:
    """The measured component with the largest |effect| under ``setting``."""
    c = stats.cells[(stats.cells["setting"] == setting) & stats.cells["measured"]]
    return c.loc[c["effect"].abs().idxmax()]


def _twin(stats: GridStats, setting: str, factor: str) -> str | None:
    """The setting that differs from ``setting`` in ``factor`` only, with the
    lowest Spearman to it (the clearest disagreement)."""
    fp = stats.factor_pairs()
    mine = fp[(fp["factor"] == factor) & ((fp["setting_a"] == setting) | (fp["setting_b"] == setting))]
    if mine.empty:
        return None
    r = mine.loc[mine["spearman"].idxmin()]
    return r["setting_b"] if r["setting_a"] == setting else r["setting_a"]


def _pair_row(stats: GridStats, a: str, b: str) -> pd.Series:
    g = stats.agreement
    return g[((g.setting_a == a) & (g.setting_b == b)) | ((g.setting_a == b) & (g.setting_b == a))].iloc[0]


def _contrast(stats: GridStats, a: str, b: str, factor: str) -> pd.Series | None:
    """A component detected under exactly one of ``a``/``b``: the one whose
    detection across the whole grid follows ``factor`` most
    (:func:`patching.studies.disagreement.consensus.decided_by`), else the
    largest difference of z between them."""
    c = stats.cells[stats.cells["measured"] & stats.cells["setting"].isin([a, b])]
    w = c.pivot(index="component", columns="setting", values=["z", "detected", "effect"])
    one = (w["detected"][a] != 0) != (w["detected"][b] != 0)
    if not one.any():
        return None
    decided = consensus.decided_by(stats.cells, factor, min_gap=0.0)
    decided = decided[decided["component"].isin(one[one].index)] if len(decided) else decided
    comp = decided["component"].iloc[0] if len(decided) else (w["z"][a] - w["z"][b]).abs()[one].idxmax()
    out = {"component": comp, **{f"{k}_{s}": w[k][x][comp] for k in ("z", "detected", "effect") for s, x in (("a", a), ("b", b))}}
    if len(decided):
        out.update(decided.iloc[0][["best", "best_detected", "best_n", "worst", "worst_detected", "worst_n"]].to_dict())
    return pd.Series(out)


def steps(stats: GridStats, main: Result) -> list[Step]:
    """The six steps for ``main`` (the demo's IOI head sweep: str, denoise,
    s2) and its grid's ``stats``."""
    setting = main_setting(main)
    spec_q = main.spec.to_query()
    enough = inference.significance_allowed(int(stats.info["n_prompts"]), "effect")
    need = inference.MIN_PROMPTS["effect"]
    b = main.baselines
    n = int(main.meta.get("n_pairs") or main.spec.n_pairs)
    clean, corrupt, diff = _tokens(main.meta)
    swapped = ", ".join(f"“{clean[i].strip()}” → “{corrupt[i].strip()}”" for i in diff) or "nothing"
    out = [Step(1, "Two prompts that differ in one word",
                (f"The model reads a sentence and must name who receives the object. In the **clean** prompt the right name is the one "
                 f"mentioned once; in the **corrupted** prompt one word is swapped ({swapped}), which points the model to the other name. "
                 f"Over the demo's {n} prompt pairs, the model gives the right name a probability of **{fmt(b['clean_prob'], 3)}** on the "
                 f"clean prompts and **{fmt(b['corrupt_prob'], 4)}** on the corrupted ones; the logit difference (right name minus wrong "
                 f"name) goes from **{fmt(b['clean_logit_diff'])}** to **{fmt(b['corrupt_logit_diff'])}**."),
                [("prompt pairs", str(n)), ("P(right name), clean", fmt(b["clean_prob"], 3)), ("P(right name), corrupted", fmt(b["corrupt_prob"], 4)),
                 ("logit difference, clean", fmt(b["clean_logit_diff"])), ("logit difference, corrupted", fmt(b["corrupt_logit_diff"]))],
                ("pages/1_Patch.py", spec_q), {"clean": clean, "corrupt": corrupt, "diff": diff, "key_positions": main.meta.get("key_positions"),
                                               "labels": main.meta.get("position_labels")})]

    top = top_component(stats, setting)
    comp = str(top["component"])
    row = int(np.flatnonzero(stats.cells.loc[stats.cells["setting"] == setting, "component"].to_numpy() == comp)[0])
    pp = main.per_prompt[main.per_prompt["cell"] == row].sort_values("prompt") if main.per_prompt is not None else None
    patched = float(pp["ld_patched"].mean()) if pp is not None else float("nan")
    per = pp["logit_diff"].to_numpy(dtype=float) if pp is not None else np.array([np.nan])
    out.append(Step(2, f"What one patched head does: {comp}",
                    (f"Now run the model on the corrupted prompt, but copy the output of one attention head, **{comp}** (layer "
                     f"{comp[1:].split('H')[0]}, head {comp.split('H')[1]}), from the clean run. The logit difference comes back from "
                     f"**{fmt(b['corrupt_logit_diff'])}** to **{fmt(patched)}** on average: this one head restores **{pct(top['effect'])}** "
                     f"of the way to the clean prompt's **{fmt(b['clean_logit_diff'])}** (a bootstrap interval over resamples of the {n} prompts: "
                     f"{pct(top['lo'])} to {pct(top['hi'])}" + ("" if enough else f"; with only {n} prompts it is too narrow, so read it as rough")
                     + f"). Prompt by prompt it restores between {pct(np.nanmin(per))} and {pct(np.nanmax(per))}."),
                    [("head", comp), ("share of the gap restored", pct(top["effect"])), ("bootstrap interval", f"{pct(top['lo'])} to {pct(top['hi'])}"),
                     ("logit difference with the patch", fmt(patched))],
                    ("pages/1_Patch.py", spec_q | {"cell": comp}), {"component": comp, "per_prompt": per.tolist()}))

    c = stats.cells[(stats.cells["setting"] == setting) & stats.cells["measured"]]
    det = c[c["detected"] != 0].sort_values("z", key=lambda z: -z.abs())
    named = ", ".join(det["component"].head(5))
    out.append(Step(3, "The heatmap: every head at once",
                    (f"Do the same for every one of the {len(c)} heads: one coloured square each (layer × head), **blue** where the head "
                     f"carries the answer, **red** where it works against it. The 2-SD rule (an effect more than two standard deviations "
                     f"from the average head) picks out **{len(det)}** of them" + (f": {named}" + (" …" if len(det) > 5 else "") if len(det) else "")
                     + f". {comp} is the strongest."),
                    [("heads patched", str(len(c))), ("detected (2-SD rule)", str(len(det)))],
                    ("pages/1_Patch.py", spec_q), {"setting": setting}))

    factor = stats.factors.iloc[0]["factor"] if len(stats.factors) else None
    twin = _twin(stats, setting, factor) if factor else None
    if twin is not None:
        pr = _pair_row(stats, setting, twin)
        con = _contrast(stats, setting, twin, factor)
        fname = layout.FACTORS[factor]
        lvl_a, lvl_b = layout.level_name(factor, layout.parts(setting)[factor]), layout.level_name(factor, layout.parts(twin)[factor])
        text = (f"Patching has choices that should not matter but do. Of the choices in this grid, the **{fname}** changes the ranking of "
                f"the heads most (Spearman ρ = {fmt(stats.factors.iloc[0]['spearman'])} on average between settings that differ only in it). "
                f"Here, {lvl_a} and {lvl_b} (everything else equal) rank the heads with ρ = **{fmt(pr['spearman'])}**"
                + (f" (bootstrap interval {span(pr['spearman_lo'], pr['spearman_hi'])})" if "spearman_lo" in pr.index and pr["spearman_lo"] == pr["spearman_lo"] else "")
                + f", and the {stats.k} strongest heads of each overlap by **{pct(pr['topk_jaccard'])}**"
                + (f" ({span(pr['topk_jaccard_lo'], pr['topk_jaccard_hi'], True)})" if "topk_jaccard_lo" in pr.index and pr["topk_jaccard_lo"] == pr["topk_jaccard_lo"] else "")
                + (": the strongest heads agree more than the many small ones." if pr["topk_jaccard"] >= max(pr["spearman"], 0) + 0.2
                   else ": even the strongest heads differ." if pr["topk_jaccard"] < 0.5 else "."))
        nums = [("factor that matters most", fname), (f"ρ, {lvl_a} vs {lvl_b}", fmt(pr["spearman"])), (f"top-{stats.k} overlap", pct(pr["topk_jaccard"]))]
        if con is not None:
            def state(d: float) -> str:
                return "detected" if d != 0 else "not detected"

            text += (f" For example **{con['component']}** is {state(con['detected_a'])} under {lvl_a} (z = {fmt(con['z_a'], 1)}) but "
                     f"{state(con['detected_b'])} under {lvl_b} (z = {fmt(con['z_b'], 1)})")
            if "best" in con.index:
                text += (f"; across the whole grid it is detected under {int(con['best_detected'])} of {int(con['best_n'])} "
                         f"{layout.level_name(factor, con['best'])} settings and {int(con['worst_detected'])} of {int(con['worst_n'])} "
                         f"{layout.level_name(factor, con['worst'])} settings")
            text += "."
            nums.append((f"{con['component']}: z under {lvl_a} / {lvl_b}", f"{fmt(con['z_a'], 1)} / {fmt(con['z_b'], 1)}"))
        text += " Why: " + WHY[factor]
        out.append(Step(4, f"Why two settings disagree here: the {fname}", text, nums,
                        ("pages/3_Disagreement.py", spec_q | {"a": setting, "b": twin}), {"a": setting, "b": twin,
                                                                                         "component": con["component"] if con is not None else None}))
    else:
        out.append(Step(4, "Why two settings disagree here", "No two stored settings of this grid differ in a single choice.", []))

    comps = consensus.components(stats.cells)
    core = comps[comps["group"] == "core"]
    fringe = comps[comps["group"] == "fringe"]
    nset = len(stats.settings)
    if len(core):
        core_text = (f"**{len(core)}** head{'s are' if len(core) != 1 else ' is'} detected under at least {pct(consensus.CORE_SHARE)} of the "
                     f"{nset} settings: " + ", ".join(f"{r.component} ({r.n_detected} of {nset})" for r in core.head(5).itertuples()))
    else:
        best = comps.head(1)
        core_text = (f"no head is detected under at least {pct(consensus.CORE_SHARE)} of the {nset} settings; the most consistent, "
                     f"{best['component'].iloc[0]}, under {int(best['n_detected'].iloc[0])}") if len(comps) else "no head is detected anywhere"
    out.append(Step(5, "What stays the same",
                    (f"Repeat the whole experiment under all {nset} combinations of choices. Then {core_text}. That is the stable core: a "
                     f"conclusion about it does not depend on the choices. **{len(fringe)}** other heads are detected under some settings only "
                     "(the fringe): what they do depends on how you ask."),
                    [("settings", str(nset)), ("stable core", str(len(core))), ("fringe", str(len(fringe)))],
                    ("pages/3_Disagreement.py", spec_q), {}))

    top5 = c.reindex(c["effect"].abs().sort_values(ascending=False).index).head(5)
    width = float((top5["hi"] - top5["lo"]).median())
    size = float(top5["effect"].abs().median())
    core_names = ", ".join(core["component"].head(5)) if len(core) else (comps["component"].iloc[0] if len(comps) else "none")
    out.append(Step(6, "What a researcher would conclude",
                    (f"1. **{core_names}** matter{'s' if len(core) <= 1 else ''} for this behaviour whichever way it is measured: of all the "
                     f"claims here, that one depends least on the choices. 2. Which other heads matter depends on the choices, most of all on the {layout.FACTORS[factor] if factor else 'setting'}: "
                     "report the result under more than one setting, or say which one you chose and why. 3. With "
                     f"{n} prompt pairs the strongest effects' intervals are **{fmt(width, 2)}** wide (median of the top five, whose "
                     f"median effect is {fmt(size, 2)}), and " + ("they cover the truth as they claim." if enough else
                     f"below {need} prompts such intervals are too optimistic: nothing here can be called significant; compute with at "
                     f"least {need} pairs for claims you report (the intervals then narrow, about as 1/√n).")),
                    [("prompt pairs", str(n)), ("interval width, top five", fmt(width, 2)), ("their median effect", fmt(size, 2))],
                    ("pages/3_Disagreement.py", spec_q), {}))
    return out
