"""Pairing a grid's prompts by identity.

The settings of a grid are compared prompt by prompt (paired tests, joint
resamples), so prompt i of one sweep must be prompt i of every other. Each
stored sweep records its prompts' identities (``meta["prompt_ids"]``: a hash
of the clean prompt and its answer, :func:`patching.results.prompt_id`). The
grid is paired by those identities, not by count: the sweeps are put in one
common prompt order, and a sweep that lacks a prompt another has (an IOI
variant that could not corrupt it, say) is refused with the prompt named.
Sweeps stored before identities were recorded are paired by position, and
only when every sweep has the same number of prompts.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from patching.core.errors import PatchboardError


def _ids(res: Any) -> list[str] | None:
    ids = res.meta.get("prompt_ids")
    return [str(x) for x in ids] if isinstance(ids, (list, tuple)) else None


def _name(res: Any, i: int) -> str:
    texts = res.meta.get("prompt_texts") or []
    return repr(str(texts[i])[:80]) if i < len(texts) else f"prompt {i}"


def prompt_order(results: Mapping[str, Any], n_prompts: Mapping[str, int]) -> dict[str, np.ndarray]:
    """setting -> the index of each common prompt in that setting's
    per-prompt values (one common order: the first setting's). ``results``:
    setting -> Result; ``n_prompts``: setting -> its number of prompts.
    Raises a one-line PatchboardError naming a prompt one sweep has and
    another lacks, or, for sweeps without identities, the differing counts."""
    settings = list(results)
    if not settings:
        return {}
    ids = {s: _ids(results[s]) for s in settings}
    first = settings[0]
    if any(v is None for v in ids.values()):
        counts = {s: int(n_prompts[s]) for s in settings}
        if len(set(counts.values())) > 1:
            a, b = min(counts, key=counts.get), max(counts, key=counts.get)
            raise PatchboardError("settings", f"{a} has {counts[a]} prompts and {b} {counts[b]}; they cannot be paired "
                                              "(stored before prompts had identities: recompute them to pair by prompt)")
        return {s: np.arange(counts[s]) for s in settings}
    ref = ids[first]
    if len(set(ref)) != len(ref):
        raise PatchboardError("settings", f"{first} holds the same prompt twice; prompts cannot be paired by identity")
    for s in settings[1:]:
        have = ids[s]
        missing = [i for i, x in enumerate(ref) if x not in set(have)]
        if missing:
            raise PatchboardError("settings", f"{s} lacks the prompt {_name(results[first], missing[0])} that {first} has "
                                              f"({len(missing)} missing); settings are compared prompt by prompt, so this one is refused")
        extra = [i for i, x in enumerate(have) if x not in set(ref)]
        if extra:
            raise PatchboardError("settings", f"{first} lacks the prompt {_name(results[s], extra[0])} that {s} has "
                                              f"({len(extra)} missing); settings are compared prompt by prompt, so this one is refused")
        if len(set(have)) != len(have):
            raise PatchboardError("settings", f"{s} holds the same prompt twice; prompts cannot be paired by identity")
    return {s: np.array([ids[s].index(x) for x in ref]) if ids[s] != ref else np.arange(len(ref)) for s in settings}
