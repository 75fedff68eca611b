"""The plain-language side of the disagreement grid: the findings, the known
mechanisms behind disagreements (quoting the numbers the grid measured) and
the ``python -m patching compare`` command that reproduces the page.

Kept apart from :mod:`patching.studies.disagreement.grid` (the settings and
the grid) and :mod:`patching.studies.disagreement.tables` (its numbers) so the
English can change without touching a number; it imports from them, never the
reverse. Sentences about statistics come from :mod:`patching.analysis.text`. No streamlit.
"""

from __future__ import annotations

from typing import Sequence

from patching.analysis.tables import detection_table, sign_flip_table
from patching.analysis.text import summarize
from patching.core.spec import METHODS, Spec
from patching.studies.disagreement.tables import agreement
from patching.studies.disagreement.grid import (
    GRID_VARIANTS,
    Grid,
    default_settings,
    grid_base,
    has_variants,
    sweeps_of,
    with_method,
)

__all__ = ["summary", "settings_arg", "cli_command", "mechanisms"]


# ---------------------------------------------------------------- summary


def summary(grid: Grid, k: int = 10, eff=None, long=None) -> list[str]:
    """The plain-language findings (:func:`patching.analysis.text.summarize`), quoting the measured
    P_corrupt / P_clean from the stored baselines. ``eff``/``long``: the
    grid's effects and agreement table when already computed."""
    eff = grid.effects() if eff is None else eff
    long = agreement(eff, k) if long is None else long
    return summarize(long, detection_table(eff), sign_flip_table(eff), grid.baselines())


def settings_arg(base: Spec, settings: Sequence[str]) -> str | None:
    """The shortest ``--settings`` value for ``settings`` (None = the full
    grid): whole IOI variants are written ``*/*/*/s2``."""
    settings = list(settings)
    if settings == default_settings(base):
        return None
    if has_variants(grid_base(base)):
        vs = []
        for v in GRID_VARIANTS:
            block = default_settings(base, [v])
            if all(x in settings for x in block):
                vs.append(v)
        if settings == default_settings(base, vs):
            return ",".join(f"*/*/*/{v}" for v in vs)
    return ",".join(settings)


def cli_command(base: Spec, settings: Sequence[str], k: int = 10, out: str = "compare.csv") -> str:
    """The ``python -m patching compare`` command that prints this page's
    agreement table from the same store."""
    import shlex

    b = grid_base(base)
    args = ["python", "-m", "patching", "compare", "--model", b.model]
    if b.pairs is not None:
        args += ["--pairs", "PAIRS.csv"]
        if b.key_positions:
            args += ["--key-positions", ",".join(map(str, b.key_positions))]
    else:
        args += ["--task", str(b.task), "--n-pairs", str(b.n_pairs), "--seed", str(b.seed)]
    args += ["--component", b.component]
    if b.window > 1:
        args += ["--window", str(b.window)]
    args += ["--noise-scale", f"{b.noise_scale:g}", "--noise-samples", str(b.noise_samples)]
    for m in METHODS[1:]:
        plain = list(dict.fromkeys(s for s in settings if "@" not in s))
        if plain and list(settings) == with_method(plain, m):
            args += ["--method", m]
            settings = plain
            break
    sa = settings_arg(b, settings)
    if sa:
        args += ["--settings", sa]
    args += ["--k", str(int(k)), "--out", out]
    return " ".join(shlex.quote(a) for a in args)

# ---------------------------------------------------------------- mechanisms


def mechanisms(grid: Grid) -> list[dict[str, str]]:
    """The known mechanisms behind disagreements, each with the numbers this
    grid measured: ``title`` and ``text`` (the probability floor quotes the
    stored P_corrupt / P_clean of every sweep)."""
    out: list[dict[str, str]] = []
    # (1) The probability floor.
    floors = []
    for _, sets in sweeps_of({s: grid.specs[s] for s in grid.available}).items():
        sp = grid.specs[sets[0]]
        b = grid.results[sets[0]].baselines
        where = sp.corruption + (f"/{sp.ioi_corrupt}" if has_variants(sp) else "")
        if sp.direction == "denoise":
            floors.append((where, "denoise", f"P_corrupt(answer) = {b['corrupt_prob']:.3g}, so the prob effect is ≥ −{b['corrupt_prob']:.3g}",
                           float(b["corrupt_prob"])))
        else:
            floors.append((where, "noise", f"P_clean(answer) = {b['clean_prob']:.3g}, so the prob effect is ≥ −(1 − P_clean) = −{1 - b['clean_prob']:.3g}",
                           float(1 - b["clean_prob"])))
    if floors:
        lines = "\n".join(f"- {w} {d}: {t}" for w, d, t, _ in floors)
        tight = [f"{w} {d}" for w, d, _, f in floors if f < 0.1]
        note = (f" The floor is close to 0 (under 0.1) for {', '.join(tight)}: there a negative component's prob effect "
                "is squeezed towards 0 and can stay inside the 2-SD band, so read negative components from logit_diff or kl.") if tight else ""
    else:
        lines, note = "- nothing stored yet", ""
    out.append({
        "title": "Probability cannot fall below −P_corrupt(answer)",
        "text": ("Denoising: the prob effect is P_patched − P_corrupt ≥ −P_corrupt, so a component that hurts the answer "
                 "(a negative head) is squeezed towards 0 when the corrupted run already gives the answer little probability; "
                 "noising: P_clean − P_patched ≥ −(1 − P_clean) (Zhang & Nanda §4.2)." + note + "\n\nMeasured here:\n" + lines),
    })
    out.append({
        "title": "Gaussian noise can push activations off-distribution",
        "text": (f"GN adds noise with {grid.base.noise_scale:g}× the key embeddings' SD to the key tokens "
                 f"({grid.base.noise_samples} noisy copies per prompt); the corrupted run is then not a prompt the model "
                 "ever sees, so later components can behave in ways they never do on real inputs (Zhang & Nanda §3.2: GN "
                 "splits the name movers' attention). Components found only under gn may be artefacts; STR keeps the "
                 "corrupted prompt in-distribution."),
    })
    win = grid.base.window
    out.append({
        "title": "Windows inflate peaks compared with the sum of single layers",
        "text": ("Patching a window of adjacent layers at once blocks the corrupted information inside it and lets layers act "
                 "jointly, so a window's peak is typically ≥20% above the sum of single-layer effects over the same layers "
                 "(Zhang & Nanda §5). " + (f"This grid uses window {win}; compare the window with the single-layer sum on the sweep page." if win > 1
                                           else "This grid patches single components (window 1), so it is not affected.")),
    })
    return out
