"""IOI: Wang et al.'s indirect-object-identification prompts (BABA and ABBA)."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import replace

from patching.core.errors import PatchboardError, shown
from patching.core.data import tokenize
from patching.core.pairs import Pair
from patching.core.tasks.words import BABA_TEMPLATES, NAMES, OBJECTS, PLACES, _abba
from patching.core.tasks.common import _one_token, _single_token_words, _cached, _check_n, _draw_distinct, _fill, IOI_CORRUPT, MAX_SAMPLED


# ---------------------------------------------------------------- IOI


def ioi_vocab(tokenizer) -> dict[str, list[str]]:
    """The IOI pools for this tokenizer: names, places and objects, each a
    single token with a leading space (returned with the leading space)."""

    def build():
        return {
            "names": [" " + w for w in _single_token_words(tokenizer, NAMES)],
            "places": [" " + w for w in _single_token_words(tokenizer, PLACES)],
            "objects": [" " + w for w in _single_token_words(tokenizer, OBJECTS)],
        }

    return {k: list(v) for k, v in _cached(tokenizer, "ioi_vocab", build).items()}


def _ioi_shape(tokenizer, template: str, a: str, b: str, place: str, obj: str):
    """(length, first two name slots, S2 index) of a BABA template, or None."""
    text = _fill(template, A=a.strip(), B=b.strip(), PLACE=place.strip(), OBJECT=obj.strip())
    toks = tokenize(tokenizer, text)
    ia, ib = _one_token(tokenizer, a), _one_token(tokenizer, b)
    pos_b = [i for i, t in enumerate(toks) if t == ib]
    pos_a = [i for i, t in enumerate(toks) if t == ia]
    if len(pos_b) != 2 or len(pos_a) != 1:
        return None
    return len(toks), tuple(sorted((pos_b[0], pos_a[0]))), pos_b[1]


def ioi_templates(tokenizer) -> dict:
    """The template bucket used for this tokenizer.

    Templates are grouped by token shape (prompt length, the two first-name
    slots, the S2 index) with single-token fillers; the largest group is used
    (ties: the group of the earliest template). Every pair then has the same
    length and the same S2/END indices, and S1/IO sit at the two name slots
    (which one depends on BABA vs ABBA order). Returns ``{"templates": [...],
    "length": L, "name_slots": (i, j), "s2": k}`` (BABA templates)."""

    def build():
        v = ioi_vocab(tokenizer)
        if len(v["names"]) < 3 or not v["places"] or not v["objects"]:
            raise PatchboardError("task", "this model's tokenizer has too few single-token names, places or objects for IOI; pick another task or model")
        a, b, place, obj = v["names"][0], v["names"][1], v["places"][0], v["objects"][0]
        groups: dict[tuple, list[str]] = defaultdict(list)
        for t in BABA_TEMPLATES:
            shape = _ioi_shape(tokenizer, t, a, b, place, obj)
            # The ABBA version must have the same shape (only S1/IO swap slots).
            if shape is not None and shape == _ioi_shape(tokenizer, _abba(t), a, b, place, obj):
                groups[shape].append(t)
        if not groups:
            raise PatchboardError("task", "no IOI template tokenizes cleanly for this model; pick another task or model")
        best = max(groups.items(), key=lambda kv: (len(kv[1]), -BABA_TEMPLATES.index(kv[1][0])))
        (length, slots, s2), temps = best
        return {"templates": temps, "length": length, "name_slots": slots, "s2": s2}

    out = dict(_cached(tokenizer, "ioi_templates", build))
    out["templates"] = list(out["templates"])
    return out


def generate_ioi(tokenizer, n_pairs: int, seed: int, ioi_corrupt: str = "s2") -> list[Pair]:
    """Indirect object identification (Wang et al. 2022).

    Clean: a BABA or ABBA template filled with two distinct names S and IO,
    a place and an object, e.g. "Then, John and Mary went to the store. John
    gave a ring to" (S = John, IO = Mary). answer = IO, counter_answer = S
    in every variant, so the logit difference is always LD(IO, S).

    Corruptions (STR):
      ``s2``     S2 -> IO ("... Mary gave a ring to"); key_positions (S2,).
      ``s1_io``  S1 and IO -> two other random names, S2 kept;
                 key_positions (S1, IO).
      ``abc``    S1, IO and S2 -> three distinct other random names;
                 key_positions (S1, IO, S2).

    The templates, names, places and objects come from ``random.Random(seed)``
    and the replacement names from a stream of their own (seeded by seed and
    the clean prompt), so for one seed every variant has the same clean
    prompts, in the same order: only the corruption differs.

    roles: S1, IO, S2, END (END = last position). All pairs share the length
    and the S2/END indices of the template bucket (see ``ioi_templates``).
    """
    if ioi_corrupt not in IOI_CORRUPT:
        raise PatchboardError("ioi-corrupt", f"unknown IOI corruption {shown(ioi_corrupt, 40)}; use one of {', '.join(IOI_CORRUPT)}")
    _check_n("ioi", n_pairs, MAX_SAMPLED)
    v = ioi_vocab(tokenizer)
    bucket = ioi_templates(tokenizer)
    names, places, objects = v["names"], v["places"], v["objects"]
    if len(names) < 5:
        raise PatchboardError("task", "this model's tokenizer has fewer than 5 single-token names; IOI needs more, pick another task")
    length, (slot1, slot2), s2 = bucket["length"], bucket["name_slots"], bucket["s2"]

    def draw(rng: random.Random, seen: set[str]) -> Pair | None:
        template = rng.choice(bucket["templates"])
        abba = rng.random() < 0.5
        s, io = rng.sample(names, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        t = _abba(template) if abba else template
        # BABA: [B]=S at slot1, [A]=IO at slot2; ABBA: IO at slot1, S at slot2.
        s1_pos, io_pos = (slot2, slot1) if abba else (slot1, slot2)
        fill = dict(PLACE=place.strip(), OBJECT=obj.strip())
        clean = _fill(t, A=io.strip(), B=s.strip(), **fill)
        if clean in seen:
            return None
        roles = {"S1": s1_pos, "IO": io_pos, "S2": s2, "END": length - 1}
        ct = tokenize(tokenizer, clean)
        ids = {x: _one_token(tokenizer, x) for x in (s, io)}
        if len(ct) != length or ct[s1_pos] != ids[s] or ct[io_pos] != ids[io] or ct[s2] != ids[s]:
            return None  # a filler merged with its neighbours for this tokenizer
        got = _corrupt(tokenizer, t, fill, ioi_corrupt, seed, clean, names, s, io, (s1_pos, io_pos, s2), (slot1, slot2), length)
        if got is None:
            return None
        corrupt, key = got
        return Pair(clean, corrupt, io, s, key_positions=key, roles=roles)

    return _draw_distinct(n_pairs, seed, "IOI prompts for this tokenizer", draw)


def _corrupt(tokenizer, t: str, fill: dict, ioi_corrupt: str, seed: int, clean: str, names: list[str], s: str, io: str,
             slots: tuple[int, int, int], name_slots: tuple[int, int], length: int) -> tuple[str, tuple[int, ...]] | None:
    """The corrupted prompt and key positions of one clean prompt.

    Replacement names come from a stream of their own, seeded by (seed, clean
    prompt), never from the stream that draws the templates: for one seed the
    variants ``s2``, ``s1_io`` and ``abc`` draw the same clean prompts, so a
    grid over them compares corruptions on one dataset."""
    s1_pos, io_pos, s2 = slots
    slot1, slot2 = name_slots
    rng = random.Random(f"ioi-replacements:{seed}:{clean}")
    others = [x for x in names if x not in (s, io)]
    for _ in range(20):
        if ioi_corrupt == "s2":
            new = {s1_pos: s, io_pos: io, s2: io}
            key: tuple[int, ...] = (s2,)
        elif ioi_corrupt == "s1_io":
            n1, n2 = rng.sample(others, 2)
            new = {s1_pos: n1, io_pos: n2, s2: s}
            key = tuple(sorted((s1_pos, io_pos)))
        else:  # abc
            n1, n2, n3 = rng.sample(others, 3)
            new = {s1_pos: n1, io_pos: n2, s2: n3}
            key = tuple(sorted((s1_pos, io_pos, s2)))
        corrupt = _fill_names(t, (new[slot1], new[slot2], new[s2]), fill)
        kt = tokenize(tokenizer, corrupt)
        if len(kt) == length and all(kt[p] == _one_token(tokenizer, nm) for p, nm in new.items()):
            return corrupt, key
        if ioi_corrupt == "s2":
            return None  # nothing to redraw
    return None


def _fill_names(template: str, names: tuple[str, str, str], fill: dict) -> str:
    """Fill a (BABA or ABBA) template's three name slots, in text order
    (first slot, second slot, S2), and its place/object."""
    it = iter(names)
    text = re.sub(r"\[A\]|\[B\]", lambda m: next(it).strip(), template)
    return _fill(text, **fill)


