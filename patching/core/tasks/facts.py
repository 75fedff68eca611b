"""Factual recall: subject-for-subject pairs within a relation."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import replace

from patching.core.errors import PatchboardError
from patching.core.data import tokenize
from patching.core.pairs import Pair
from patching.core.tasks.words import FACTS, FACT_RELATIONS
from patching.core.tasks.common import _one_token, _cached, _check_n


# ---------------------------------------------------------------- facts


def _fact_prompts(tokenizer) -> list[dict]:
    """Every usable fact: answer single-token, prompt tokenizes as prefix +
    subject + suffix. Each entry has text, answer, relation, length, subject
    token indices."""
    out = []
    for relation, subject, answer in FACTS:
        template = FACT_RELATIONS[relation]
        ans = " " + answer
        if _one_token(tokenizer, ans) is None:
            continue
        text = template.format(subject)
        prefix = template.split("{}")[0]
        n_pre = len(tokenize(tokenizer, prefix.rstrip(" ")))
        n_subj = len(tokenize(tokenizer, prefix + subject))
        toks = tokenize(tokenizer, text)
        if (
            tokenize(tokenizer, prefix + subject) != toks[:n_subj]
            or tokenize(tokenizer, prefix.rstrip(" ")) != toks[:n_pre]
            or n_subj <= n_pre
        ):
            continue
        out.append({
            "relation": relation, "subject": subject, "text": text, "answer": ans,
            "length": len(toks), "subj": tuple(range(n_pre, n_subj)),
        })
    return out


def fact_buckets(tokenizer) -> dict[tuple[int, int], list[Pair]]:
    """All fact pairs, both directions, grouped by (token length, index of the
    last subject token). Two facts pair up when they share the relation, the
    prompt length and the subject indices, and their answers differ."""

    def build():
        facts = _fact_prompts(tokenizer)
        buckets: dict[tuple[int, int], list[Pair]] = defaultdict(list)
        for i, f in enumerate(facts):
            for j, g in enumerate(facts):
                if i == j or f["relation"] != g["relation"] or f["length"] != g["length"]:
                    continue
                if f["subj"] != g["subj"] or f["answer"] == g["answer"]:
                    continue
                roles = {"SUBJ_LAST": f["subj"][-1], "END": f["length"] - 1}
                buckets[(f["length"], f["subj"][-1])].append(
                    Pair(f["text"], g["text"], f["answer"], g["answer"], key_positions=f["subj"], roles=roles)
                )
        return dict(buckets)

    return _cached(tokenizer, "fact_buckets", build)


def fact_pairs(tokenizer) -> list[Pair]:
    """The pairs ``generate("facts", ...)`` draws from: the largest bucket
    (ties: the shorter prompts)."""
    buckets = fact_buckets(tokenizer)
    if not buckets:
        return []
    key = max(buckets, key=lambda k: (len(buckets[k]), -k[0], -k[1]))
    return list(buckets[key])


def generate_facts(tokenizer, n_pairs: int, seed: int) -> list[Pair]:
    """Factual recall, PairedFacts-style (Meng et al.; Zhang & Nanda App. B).

    Facts are (relation, subject, answer) triples, e.g. ("capital", "France",
    "Paris") -> "The capital of France is" -> " Paris". Two facts of the same
    relation with equal token length and different answers form a pair, used
    both ways: clean "The capital of France is" / corrupt "The capital of
    Japan is", answer " Paris", counter_answer " Tokyo" (the corrupt
    prompt's answer). Only the largest (length, subject-end) bucket is used,
    so every prompt has one length. key_positions = all subject tokens;
    roles SUBJ_LAST and END.
    """
    pool = fact_pairs(tokenizer)
    if not pool:
        raise PatchboardError("task", "no factual-recall pairs fit this model's tokenizer (answers must be single tokens); pick another task")
    _check_n("facts", n_pairs, len(pool))
    rng = random.Random(seed)
    return [replace(p, roles=dict(p.roles)) for p in rng.sample(pool, n_pairs)]


