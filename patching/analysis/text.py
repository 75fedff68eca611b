"""Plain-language findings for the disagreement page.

:func:`summarize` turns the tables of :mod:`patching.analysis.tables` into
sentences: the least- and most-agreeing pairs, components detected under only
some settings, sign flips, and a known mechanism (probability floor, GN off
distribution, denoise vs noise) only when the data show its pattern. The
English lives here, apart from the numbers in :mod:`patching.analysis.stats`
and :mod:`patching.analysis.tables`, which it imports (never the reverse), so
the wording can change without touching a statistic.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from patching.analysis.stats import (
    DEFAULT_REL_EPS,
    SETTING_PARTS,
    WEAK_SPEARMAN,
    _differs_in,
    _natural_sorted,
    parse_setting,
)
from patching.analysis.tables import _split

__all__ = ["summarize"]

# Metrics whose effects are not floored near zero for negative components
# (logprob and LD are unbounded below; the KL effect is signed in both
# directions -- KL(source || unpatched) - KL(source || patched) -- and not
# floored at -P_corrupt either).
_UNFLOORED_METRICS = ("logit_diff", "kl", "logprob")

_MINUS = "\u2212"


def _num(x: Any, digits: int = 2) -> str:
    """Fixed decimals with a true minus sign; "n/a" for NaN."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    s = f"{v:.{digits}f}"
    if s.startswith("-"):
        s = _MINUS + s[1:] if float(s) != 0 else s[1:]
    return s


def _eff(x: Any) -> str:
    """An effect with 3 significant digits and an explicit sign."""
    v = float(x)
    if not math.isfinite(v):
        return "n/a"
    s = f"{abs(v):.3g}"
    return (_MINUS if v < 0 else "+") + s if v != 0 else "0"


def _sig(x: float) -> str:
    return f"{x:.2g}"


def _only_detail(*parts) -> str:
    """'; detected only under X: a, b; only under Y: c' from (label, nodes[, suffix]) parts, empty ones left out."""
    only = [f"{p[0]}: {_names(p[1])}{p[2] if len(p) > 2 else ''}" for p in parts if p[1]]
    return f"; detected {'; '.join(only)}" if only else ""


def _names(items: Sequence[str], limit: int = 3) -> str:
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one}" if n == 1 else f"{n} {many or one + 's'}"


_BASELINE_KEYS = ("p_corrupt", "P_corrupt", "prob_corrupt", "corrupt_prob", "p_corrupt_answer")


_CLEAN_KEYS = ("p_clean", "P_clean", "prob_clean", "clean_prob")


def _p_corrupt(
    baselines: Mapping[str, Any] | None, setting: str, keys: Sequence[str] = _BASELINE_KEYS
) -> float | None:
    """P_corrupt(answer) (or, with ``keys``, another baseline probability) for a
    setting from ``baselines``, looked up as baselines[setting] (a number, used
    only for the default keys, or a dict with a key like "p_corrupt"), then
    baselines[corruption] (same forms), then a top-level key."""
    if not baselines:
        return None
    parsed = parse_setting(setting)
    candidates = [baselines.get(setting)]
    if parsed is not None:
        candidates.append(baselines.get(parsed["corruption"]))
    candidates.append(baselines)
    for c in candidates:
        if c is None:
            continue
        if isinstance(c, (int, float, np.floating)) and c is not baselines:
            if keys is _BASELINE_KEYS:
                return float(c)
            continue
        if isinstance(c, Mapping):
            for key in keys:
                v = c.get(key)
                if isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)):
                    return float(v)
    return None


def _pair_text(row: pd.Series, k_label: str) -> str:
    return (
        f"{row['setting_a']} vs {row['setting_b']} (Spearman {_num(row['spearman'])}, "
        f"{k_label} Jaccard {_num(row['topk_jaccard'])})"
    )


def _differs_text(row: pd.Series) -> str:
    d = row.get("differs_in", None)
    if d is None or (isinstance(d, float) and math.isnan(d)):
        d = _differs_in(row["setting_a"], row["setting_b"])
    parts = [p for p in str(d).split(",") if p]
    if not parts:
        return ""
    return "; they differ in " + " and ".join(parts)


def _detected_sets(detections: pd.DataFrame | None) -> dict[str, set[str]]:
    """setting -> labels detected under it, among the rows of ``detections``."""
    out: dict[str, set[str]] = {}
    if detections is None or len(detections) == 0:
        return out
    for lab, cell in zip(detections["component"], detections["detected_in"]):
        for s in _split(cell):
            out.setdefault(s, set()).add(str(lab))
    return out


def _measured_sets(detections: pd.DataFrame | None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    if detections is None or len(detections) == 0:
        return out
    for lab, d, m in zip(detections["component"], detections["detected_in"], detections["missed_in"]):
        for s in _split(d) + _split(m):
            out.setdefault(s, set()).add(str(lab))
    return out


def _only_in(detections: pd.DataFrame | None, a: str, b: str) -> tuple[list[str], list[str]]:
    """Labels detected under a but measured-and-missed under b, and vice versa."""
    det, meas = _detected_sets(detections), _measured_sets(detections)
    da, db = det.get(a, set()), det.get(b, set())
    ma, mb = meas.get(a, set()), meas.get(b, set())
    only_a = _natural_sorted([c for c in da - db if c in mb])
    only_b = _natural_sorted([c for c in db - da if c in ma])
    return only_a, only_b


def _single_factor_pairs(long_df: pd.DataFrame, factor: str) -> pd.DataFrame:
    if "differs_in" in long_df.columns:
        d = long_df["differs_in"].astype(object)
    else:
        d = pd.Series([_differs_in(a, b) for a, b in zip(long_df["setting_a"], long_df["setting_b"])], index=long_df.index)
    return long_df[d == factor]


def _factor_sentence(
    long_df: pd.DataFrame,
    detections: pd.DataFrame | None,
    factor: str,
    values: tuple[str, str],
) -> tuple[pd.Series, list[str], list[str]] | None:
    """Worst disagreeing pair that differs only in ``factor`` between the two
    ``values``; with the labels detected only under values[0] / values[1]
    (over all such pairs). None if no such pair disagrees."""
    pairs = _single_factor_pairs(long_df, factor)
    hits = []
    only = {values[0]: set(), values[1]: set()}
    for _, row in pairs.iterrows():
        pa, pb = parse_setting(row["setting_a"]), parse_setting(row["setting_b"])
        if {pa[factor], pb[factor]} != set(values):
            continue
        only_a, only_b = _only_in(detections, row["setting_a"], row["setting_b"])
        only[pa[factor]].update(only_a)
        only[pb[factor]].update(only_b)
        rho = row["spearman"]
        weak = bool(np.isfinite(rho) and rho < WEAK_SPEARMAN)
        if only_a or only_b or int(row["sign_flips_detected"]) > 0 or weak:
            hits.append(row)
    if not hits:
        return None
    worst = min(hits, key=lambda r: (r["spearman"] if np.isfinite(r["spearman"]) else math.inf))
    return worst, _natural_sorted(only[values[0]]), _natural_sorted(only[values[1]])


def _prob_floor_sentence(detections: pd.DataFrame | None, baselines: Mapping[str, Any] | None) -> str | None:
    """Pattern (a): detected negative under LD/KL/logprob, missed under prob in
    a setting that differs only in the metric, with a prob effect that is not
    positive (it sits on the floor, not on the other side)."""
    if detections is None or len(detections) == 0:
        return None
    prob_cols = [c for c in detections.columns if (parse_setting(c) or {}).get("metric") == "prob"]
    tol = {}
    for c in prob_cols:
        v = pd.to_numeric(detections[c], errors="coerce").to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        tol[c] = DEFAULT_REL_EPS * float(np.max(np.abs(v))) if len(v) else 0.0
    found: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for _, row in detections.iterrows():
        for s_neg in _split(row["negative_in"]):
            pn = parse_setting(s_neg)
            if pn is None or pn["metric"] not in _UNFLOORED_METRICS:
                continue
            for s_prob in _split(row["missed_in"]):
                pp = parse_setting(s_prob)
                if pp is None or pp["metric"] != "prob" or s_prob not in detections.columns:
                    continue
                if any(pn[p] != pp[p] for p in SETTING_PARTS if p != "metric"):
                    continue
                v = float(row[s_prob])
                if np.isfinite(v) and v <= tol.get(s_prob, 0.0):
                    found.setdefault((s_neg, s_prob), []).append((str(row["component"]), v))
    if not found:
        return None
    # The pair with the most such components; list them.
    (s_neg, s_prob), comps = max(found.items(), key=lambda kv: (len(kv[1]), -list(found).index(kv[0])))
    labels = [c for c, _ in comps]
    first, first_v = comps[0]
    if parse_setting(s_prob)["direction"] == "noise":
        # Noising: effect = P_clean - P_patched >= P_clean - 1 (P_patched <= 1),
        # so the floor is -(1 - P_clean(answer)), not -P_clean.
        pc = _p_corrupt(baselines, s_prob, _CLEAN_KEYS)
        p = 1.0 - pc if pc is not None else None
        name = "(1 \u2212 P_clean(answer))"
    else:
        p = _p_corrupt(baselines, s_prob)
        name = "P_corrupt(answer)"
    floor = f"{_MINUS}{name} (here {_MINUS}{_sig(p)})" if p is not None else f"{_MINUS}{name}"
    verb = "is" if len(labels) == 1 else "are"
    return (
        f"{_names(labels)} {verb} detected as negative under {s_neg} but missed under {s_prob} "
        f"(probability effect of {first}: {_eff(first_v)}): probability cannot fall below {floor}, "
        "so negative components are squeezed towards zero and stay inside the 2-SD band "
        "(Zhang & Nanda \u00a74.2); read negative components from logit_diff (a negative noising KL also "
        "counts a patch that pushes the run away from both runs)."
    )


def summarize(
    long_df: pd.DataFrame,
    detections: pd.DataFrame | None,
    flips: pd.DataFrame | None,
    baselines: Mapping[str, Any] | None = None,
    *,
    max_items: int = 3,
) -> list[str]:
    """Plain-language findings for the disagreement page, built from the tables.

    ``long_df`` from :func:`~patching.analysis.tables.settings_matrix`,
    ``detections`` from :func:`~patching.analysis.tables.detection_table`,
    ``flips`` from :func:`~patching.analysis.tables.sign_flip_table`.
    ``baselines`` (optional) gives P_corrupt(answer) for the probability
    floor: ``{"str/prob/denoise": {"p_corrupt": 0.03}}``, ``{"str/prob/denoise":
    0.03}``, ``{"str": {"p_corrupt": 0.03}}`` or ``{"p_corrupt": 0.03}``.

    Sentences, in order: the least- and most-agreeing pairs (Spearman, top-k
    Jaccard, which label parts differ); how many components are detected under
    only some settings; the biggest sign flips; then a known mechanism only
    when its pattern is in the data: (a) negative under LD/KL but missed under
    probability in otherwise equal settings -> the -P_corrupt floor; (b) pairs
    differing only in gn vs str that disagree -> GN is off-distribution; (c)
    pairs differing only in denoise vs noise that disagree -> sufficiency vs
    necessity.
    """
    out: list[str] = []
    k = long_df.attrs.get("k") if long_df is not None else None
    k_label = f"top-{k}" if k is not None else "top-k"

    # 1. Least / most agreeing pair.
    if long_df is None or len(long_df) == 0:
        out.append("Fewer than two settings, so there is nothing to compare.")
    else:
        df = long_df.reset_index(drop=True)
        rho = df["spearman"].astype(float)
        jac = df["topk_jaccard"].astype(float)
        if len(df) == 1:
            row = df.iloc[0]
            out.append(f"One pair of settings: {_pair_text(row, k_label)}{_differs_text(row)}.")
        else:
            key_lo = pd.DataFrame({"r": rho.fillna(math.inf), "j": jac.fillna(math.inf), "i": range(len(df))})
            lo = df.loc[key_lo.sort_values(["r", "j", "i"]).index[0]]
            key_hi = pd.DataFrame({"r": rho.fillna(-math.inf), "j": jac.fillna(-math.inf), "i": range(len(df))})
            hi = df.loc[key_hi.sort_values(["r", "j", "i"], ascending=[False, False, True]).index[0]]
            if rho.notna().any() or jac.notna().any():
                out.append(f"Least agreement: {_pair_text(lo, k_label)}{_differs_text(lo)}.")
                out.append(f"Most agreement: {_pair_text(hi, k_label)}{_differs_text(hi)}.")
        undefined = df[rho.isna()]
        if len(undefined):
            names = [f"{a} vs {b}" for a, b in zip(undefined["setting_a"], undefined["setting_b"])]
            out.append(
                f"Rank correlation is undefined for {_names(names, max_items)} "
                "(an effect vector is constant or has fewer than two measured components)."
            )

    # 2. Detected under some settings only.
    if detections is None or len(detections) == 0:
        out.append("No component is detected (2-SD rule) under some settings but missed under others.")
    else:
        items = []
        for _, row in detections.head(max_items).iterrows():
            items.append(f"{row['component']} (detected in {row['detected_in']}; missed in {row['missed_in']})")
        n = len(detections)
        verb = "is" if n == 1 else "are"
        more = f"; {n - max_items} more in the table" if n > max_items else ""
        out.append(
            f"{_plural(n, 'component')} {verb} detected (2-SD rule) under some settings but missed under others: "
            + "; ".join(items)
            + more
            + "."
        )

    # 3. Sign flips.
    if flips is None or len(flips) == 0:
        out.append("No component changes sign between settings (beyond float noise).")
    else:
        n = len(flips)
        verb = "changes" if n == 1 else "change"
        # Flips of components detected nowhere are small effects jittering
        # around zero; lead with the detected ones.
        if "detected_in" in flips.columns:
            det_mask = np.array([bool(_split(c)) for c in flips["detected_in"]], dtype=bool)
        else:
            det_mask = np.ones(n, dtype=bool)
        n_det = int(det_mask.sum())
        if n_det == 0:
            out.append(
                f"{_plural(n, 'component')} {verb} sign between settings, but none of them is detected "
                "(2-SD rule) under any setting: small effects around zero."
            )
        else:
            items = []
            for _, row in flips[det_mask].head(max_items).iterrows():
                sp, sn = row["strongest_positive"], row["strongest_negative"]
                items.append(f"{row['component']} is {_eff(row[sp])} under {sp} but {_eff(row[sn])} under {sn}")
            out.append(
                f"{_plural(n, 'component')} {verb} sign between settings ({n_det} of them detected under at least "
                "one setting). Biggest: " + "; ".join(items) + "."
            )

    # 4. Mechanisms, only when the data show the pattern.
    s = _prob_floor_sentence(detections, baselines)
    if s:
        out.append(s)
    if long_df is not None and len(long_df):
        hit = _factor_sentence(long_df, detections, "corruption", ("gn", "str"))
        if hit:
            row, only_gn, only_str = hit
            detail = _only_detail(("only under gn", only_gn), ("only under str", only_str))
            out.append(
                f"GN vs STR disagree: {row['setting_a']} vs {row['setting_b']} differ only in corruption, "
                f"yet Spearman is {_num(row['spearman'])} with {int(row['sign_flips_detected'])} detected sign flips{detail}. "
                "Gaussian noise can push activations off-distribution (Zhang & Nanda \u00a73.2), so components found "
                "only under GN may be artefacts; prefer STR where it applies."
            )
        hit = _factor_sentence(long_df, detections, "direction", ("denoise", "noise"))
        if hit:
            row, only_den, only_noi = hit
            detail = _only_detail(("only when denoising", only_den, " (sufficient, not necessary)"),
                                  ("only when noising", only_noi, " (necessary, not sufficient alone)"))
            out.append(
                f"Denoise vs noise disagree: {row['setting_a']} vs {row['setting_b']} differ only in direction "
                f"(Spearman {_num(row['spearman'])}){detail}. Denoising finds what is sufficient to restore the "
                "behaviour, noising what is necessary for it (Heimersheim & Nanda), so they can legitimately differ: "
                "for an AND of components only noising finds each part, for an OR only denoising does."
            )
        for m in ("atp", "atp_star", "ig"):
            hit = _factor_sentence(long_df, detections, "method", ("exact", m))
            if hit:
                row, only_ex, only_m = hit
                detail = _only_detail(("only by exact patching", only_ex), (f"only by {m}", only_m))
                out.append(
                    f"Exact vs {m} disagree: {row['setting_a']} vs {row['setting_b']} differ only in method "
                    f"(Spearman {_num(row['spearman'])}){detail}. Attribution patching is a first-order estimate around the "
                    "run being patched (Nanda 2023; Kramár et al. 2024): it misses where the metric saturates or paths cancel, "
                    "so read such components from the exact setting."
                )
    return out
