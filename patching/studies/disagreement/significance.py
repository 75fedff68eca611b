"""The disagreements a grid shows, each as a paired test over prompts, with
Benjamini–Hochberg across the family.

The settings share their prompts, so each claim is tested on per-prompt
differences (:func:`patching.analysis.inference.sign_flip_pvalues`:
TransformerLens 4.3's sign-flip permutation test, exact for n <= 12):

* **"detected here, missed there"** (the 2-SD rule detects component c under
  setting A, not under B; both measure it): the claim is that c stands out
  more under A. Per prompt i, d_i = s_A·z_A,i − s_B·z_B,i where z_S,i =
  (x_S,c,i − mean over components of x_S,·,i) / SD_S (SD_S: the population SD
  of S's effects over its measured components, as the rule uses) and s_S the
  sign of c's z under S, so mean_i d_i = |z_A| − |z_B| exactly (the
  ``difference`` column); two-sided test of mean 0.
* **sign flip** (c's effect is above +:data:`patching.analysis.stats.FLIP_MIN_SD`·SD_A
  under A and below −FLIP_MIN_SD·SD_B under B): the claim is that both signs are real.
  An intersection–union test: p = max(p of mean x_A,c > 0, p of mean
  x_B,c < 0), each one-sided on the per-prompt effects; ``difference`` =
  min(x_A / SD_A, −x_B / SD_B), the weaker side in SDs.

Per-prompt values are the effects whose mean is the point estimate (for the
normalised logit difference, the numerator over the mean denominator, which
keeps its sign). Each kind is one family, fixed before looking at which way
a component went (choosing the tests by their outcome would bias them: on
synthetic grids with no real disagreement, testing only the disagreements
shown finds one in ~10 % of grids, the fixed family in ~1 %):
detected/missed tests every component detected under at least one setting
of a pair, sign flips every component beyond FLIP_MIN_SD SDs under both
(p = 1 when the signs agree). Benjamini–Hochberg q-values
(``q``) control the false discovery rate across it (``fdr``, 0.05 by
default), and a disagreement is ``significant`` when q <= fdr *and* the grid
has enough prompts for its intervals to cover
(:func:`patching.analysis.inference.significance_allowed`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from patching.analysis import inference
from patching.analysis.stats import FLIP_MIN_SD
from patching.grid_stats_request import TEST_KINDS as KINDS
from patching.studies.disagreement.robust import GridSamples

COLUMNS = ["kind", "component", "setting_a", "setting_b", "effect_a", "effect_b", "difference", "disagreement", "p", "q", "significant"]


def _scale(gs: GridSamples, s: str) -> tuple[float, float, np.ndarray]:
    """(mean, population SD) of setting ``s``'s measured effects, and each
    prompt's mean over those components."""
    live = gs.measured[s]
    v = gs.point[s][live]
    return float(v.mean()) if len(v) else np.nan, float(v.std()) if len(v) else np.nan, gs.per_prompt[s][live].mean(axis=0)


def disagreement_tests(gs: GridSamples, k: float = 2.0, min_sd: float = FLIP_MIN_SD, fdr: float = inference.DEFAULT_FDR,
                       seed: int = 0) -> pd.DataFrame:
    """Every test of both families: :data:`COLUMNS`, one row per test;
    ``disagreement`` says whether the point estimates show it (detected under
    exactly one setting; opposite signs), the rows a page lists. ``setting_a``
    is where the component is detected (positive), ``setting_b`` where it is
    missed (negative). Sorted by kind, disagreements first, then q, then
    |difference|. ``significant``: a disagreement with q <= ``fdr``, when the
    prompts are enough (:func:`patching.analysis.inference.significance_allowed`).

    The family of each kind is fixed before looking at which way a component
    went, so that choosing what to test does not bias the tests: for
    detected/missed, every component detected under at least one setting of a
    pair (both measuring it); for sign flips, every component beyond
    ``min_sd`` SDs under both settings of a pair (same-sign ones have p = 1).
    A family's size is Benjamini–Hochberg's m (:func:`family_sizes`)."""
    if not 0 < fdr < 1:
        raise ValueError("fdr must be between 0 and 1")
    scale = {s: _scale(gs, s) for s in gs.settings}
    z = {}
    for s in gs.settings:
        mean, sd, _ = scale[s]
        with np.errstate(invalid="ignore", divide="ignore"):
            z[s] = np.where(gs.measured[s], (gs.point[s] - mean) / sd, np.nan) if sd > 0 else np.full(len(gs.labels), np.nan)
    det = {s: np.abs(z[s]) > k for s in gs.settings}
    labels = np.asarray(gs.labels, dtype=object)
    fam: dict[str, dict[str, list]] = {kind: {"a": [], "b": [], "c": [], "diff": [], "shown": [], "d": [], "d2": []} for kind in KINDS}
    for a, b in itertools.combinations(gs.settings, 2):
        both = gs.both(a, b)
        (ma, sa, pa), (mb, sb, pb) = scale[a], scale[b]
        c = np.flatnonzero(both & (det[a] | det[b]))
        if len(c):
            # Orient each test from the detecting side (a when both detect).
            first = np.where(det[a][c], 0, 1)
            za, zb = z[a][c], z[b][c]
            sign_a = np.sign(za)
            sign_b = np.where(zb != 0, np.sign(zb), sign_a)
            d = sign_a[:, None] * (gs.per_prompt[a][c] - pa) / sa - sign_b[:, None] * (gs.per_prompt[b][c] - pb) / sb
            f = fam["detected/missed"]
            f["a"] += [a if x == 0 else b for x in first]
            f["b"] += [b if x == 0 else a for x in first]
            f["c"].append(c)
            f["diff"].append(np.where(first == 0, 1, -1) * (np.abs(za) - np.abs(zb)))
            f["shown"].append(det[a][c] ^ det[b][c])
            f["d"].append(d)
        if gs.unsigned[a] or gs.unsigned[b]:
            continue  # a magnitude has no sign to flip
        c = np.flatnonzero(both & (np.abs(gs.point[a]) > min_sd * sa) & (np.abs(gs.point[b]) > min_sd * sb))
        if len(c):
            pos_a = gs.point[a][c] > 0
            f = fam["sign flip"]
            f["a"] += [a if x else b for x in pos_a]
            f["b"] += [b if x else a for x in pos_a]
            f["c"].append(c)
            xa, xb = gs.point[a][c] / sa, gs.point[b][c] / sb
            f["diff"].append(np.minimum(np.abs(xa), np.abs(xb)))
            f["shown"].append(np.sign(xa) != np.sign(xb))
            f["d"].append(np.where(pos_a[:, None], gs.per_prompt[a][c], gs.per_prompt[b][c]))  # the positive side
            f["d2"].append(np.where(pos_a[:, None], gs.per_prompt[b][c], gs.per_prompt[a][c]))  # the negative side
    frames = []
    col = {s: i for i, s in enumerate(gs.settings)}
    for kind, f in fam.items():
        if not f["c"]:
            continue
        c, shown = np.concatenate(f["c"]), np.concatenate(f["shown"])
        # One call per kind: every test shares the sign patterns (and their seeded draw above 12 prompts).
        if kind == "detected/missed":
            p = inference.sign_flip_pvalues(np.concatenate(f["d"]), "two-sided", seed=seed)
        else:
            p = np.maximum(inference.sign_flip_pvalues(np.concatenate(f["d"]), "greater", seed=seed),
                           inference.sign_flip_pvalues(np.concatenate(f["d2"]), "less", seed=seed))
            p = np.where(shown, p, 1.0)  # the same sign under both: no flip to claim
        q = inference.bh_qvalues(p)
        sa_, sb_ = np.array(f["a"], dtype=object), np.array(f["b"], dtype=object)
        pts = np.stack([gs.point[s] for s in gs.settings])
        frames.append(pd.DataFrame({"kind": kind, "component": labels[c], "setting_a": sa_, "setting_b": sb_,
                                    "effect_a": pts[[col[s] for s in sa_], c], "effect_b": pts[[col[s] for s in sb_], c],
                                    "difference": np.concatenate(f["diff"]), "disagreement": shown, "p": p, "q": q}))
    if not frames:
        out = pd.DataFrame({c: pd.Series(dtype=object if c in ("kind", "component", "setting_a", "setting_b") else
                                         (bool if c == "significant" else float)) for c in COLUMNS})
        return out
    out = pd.concat(frames, ignore_index=True)
    out["significant"] = out["disagreement"] & (out["q"] <= fdr) & inference.significance_allowed(gs.n_prompts, "effect")
    for c in ("effect_a", "effect_b", "difference", "p", "q"):
        out[c] = out[c].astype(float)
    out["_o"] = [KINDS.index(x) for x in out["kind"]]
    out["_s"] = ~out["disagreement"]
    out["_d"] = -out["difference"].abs()
    out = out.sort_values(["_o", "_s", "q", "_d"], kind="stable").drop(columns=["_o", "_s", "_d"])
    return out[COLUMNS].reset_index(drop=True)


def family_sizes(tests: pd.DataFrame) -> dict[str, int]:
    """The number of tests in each family (Benjamini–Hochberg's m, stated
    beside the counts): more than the disagreements listed, since a family is
    fixed before looking at which way each component went."""
    return {kind: int((tests["kind"] == kind).sum()) for kind in KINDS}


def shown(tests: pd.DataFrame) -> pd.DataFrame:
    """The tests of the disagreements the point estimates show (what a page lists)."""
    return tests[tests["disagreement"]].reset_index(drop=True)


def tests_summary(tests: pd.DataFrame, gs: GridSamples, fdr: float = inference.DEFAULT_FDR) -> list[str]:
    """Plain sentences: how many disagreements are significant at FDR q, of
    how many tested, which; or why none is labelled (too few prompts)."""
    out = []
    n = gs.n_prompts
    how = (f"exact sign-flip tests over the {n} prompts (all {2 ** n} sign patterns)" if n <= inference.EXACT_MAX_N
           else f"sign-flip tests over the {n} prompts ({inference.N_PERMUTATIONS} random sign patterns)")
    allowed = inference.significance_allowed(n, "effect")
    sizes = family_sizes(tests)
    families = {"detected/missed": ("“detected here, missed there” disagreements", "every component detected under at least one of two settings"),
                "sign flip": (f"sign flips (each side beyond {FLIP_MIN_SD:g} SD)", f"every component beyond {FLIP_MIN_SD:g} SD under both of two settings")}
    for kind, (what, family) in families.items():
        d = tests[(tests["kind"] == kind) & tests["disagreement"]]
        if d.empty:
            continue
        hit = d[d["q"] <= fdr]
        bh = f"Benjamini–Hochberg over a family of {sizes.get(kind, len(d))} tests: {family}; {how}"
        if allowed:
            names = ", ".join(f"{x.component} ({x.setting_a} vs {x.setting_b}, q = {x.q:.2g})" for x in hit.head(5).itertuples())
            out.append(f"{len(hit)} of {len(d)} {what} are significant at FDR q = {fdr:g} ({bh})"
                       + (f": {names}{' …' if len(hit) > 5 else ''}." if len(hit) else "; the others may be sampling noise."))
        else:
            out.append(f"{len(hit)} of {len(d)} {what} have q ≤ {fdr:g} ({bh}), "
                       f"but none is labelled significant: {n} prompts are too few (at least {inference.MIN_PROMPTS['effect']} needed).")
    note = inference.coverage_sentence(n, "effect")
    if note:
        out.append(note)
    if gs.n_unmeasured:
        out.append(f"{gs.n_unmeasured} component(s) are zero by construction under some setting (patched only where both prompts are "
                   "identical): they are not measurements and are left out of every statistic, interval and test.")
    return out
