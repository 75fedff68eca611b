"""Built-in task generators (patching.core.tasks) on the embedded model's tokenizer."""

from __future__ import annotations

import pytest

from patching.core import tasks
from patching.core.tasks import words
from patching.core.data import build_dataset, tokenize
from patching.core.errors import PatchboardError

VARIANTS = [("ioi", "s2"), ("ioi", "s1_io"), ("ioi", "abc"), ("facts", "s2"), ("greater_than", "s2"), ("induction", "s2")]
N = 60


@pytest.fixture(scope="module")
def tok():
    from patching.core.models import embedded_tokenizer

    return embedded_tokenizer()


def one_token(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (text, ids)
    return ids[0]


def dec(tok, i):
    return tok.decode([i])


@pytest.fixture(scope="module")
def generated(tok):
    return {(t, c): tasks.generate(t, tok, N, 0, c) for t, c in VARIANTS}


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("task,variant", VARIANTS)
def test_invariants(tok, generated, task, variant):
    pairs = generated[(task, variant)]
    assert len(pairs) == N
    assert len({(p.clean, p.corrupt) for p in pairs}) == N, "pairs are distinct"
    lengths = set()
    for p in pairs:
        c, k = tokenize(tok, p.clean), tokenize(tok, p.corrupt)
        assert len(c) == len(k)
        lengths.add(len(c))
        a = {one_token(tok, x) for x in p.answers}
        b = {one_token(tok, x) for x in p.counter_answers}
        assert a and b and not a & b
        # roles index the clean prompt; END is the last position
        assert set(p.roles) >= {"END"}
        assert p.roles["END"] == len(c) - 1
        assert all(0 < i < len(c) for i in p.roles.values())
        # STR changes exactly some of the key positions, nothing else
        assert p.key_positions and list(p.key_positions) == sorted(set(p.key_positions))
        assert all(0 < i < len(c) for i in p.key_positions)
        diff = {j for j in range(len(c)) if c[j] != k[j]}
        assert diff and diff <= set(p.key_positions)
    assert len(lengths) == 1, f"one token length per dataset, got {lengths}"
    ds = build_dataset(pairs, tok)
    assert ds.n == N and ds.seq_len == lengths.pop()
    build_dataset(pairs, tok, corruption="gn")  # key positions valid for Gaussian noise


EXPECTED_ROLES = {
    "ioi": {"S1", "IO", "S2", "END"},
    "facts": {"SUBJ_LAST", "END"},
    "greater_than": {"YY1", "YY2", "END"},
    "induction": {"A_LAST", "END"},
}


@pytest.mark.parametrize("task,variant", VARIANTS)
def test_role_names(generated, task, variant):
    for p in generated[(task, variant)]:
        assert set(p.roles) == EXPECTED_ROLES[task]


@pytest.mark.parametrize("task,variant", VARIANTS)
def test_deterministic(tok, generated, task, variant):
    a = generated[(task, variant)]
    b = tasks.generate(task, tok, N, 0, variant)
    assert a == b
    assert [p.roles for p in a] == [p.roles for p in b]
    assert tasks.generate(task, tok, N, 1, variant) != a
    # a prefix of a larger draw does not have to match, but a repeat must
    assert tasks.generate(task, tok, 5, 7, variant) == tasks.generate(task, tok, 5, 7, variant)


def test_does_not_touch_global_rng(tok):
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    for t, c in VARIANTS:
        tasks.generate(t, tok, 3, 0, c)
    assert random.random() == expected


# ---------------------------------------------------------------- IOI


@pytest.mark.parametrize("variant", tasks.IOI_CORRUPT)
def test_ioi_roles(tok, generated, variant):
    pairs = generated[("ioi", variant)]
    s2 = {p.roles["S2"] for p in pairs}
    assert len(s2) == 1, "S2 sits at one index in every prompt"
    assert {frozenset((p.roles["S1"], p.roles["IO"])) for p in pairs} == {frozenset(tasks.ioi_templates(tok)["name_slots"])}
    orders = set()
    for p in pairs:
        c, k = tokenize(tok, p.clean), tokenize(tok, p.corrupt)
        s, io = p.counter_answer, p.answer
        assert dec(tok, c[p.roles["S1"]]) == s
        assert dec(tok, c[p.roles["S2"]]) == s
        assert dec(tok, c[p.roles["IO"]]) == io
        assert p.clean.endswith(" to")
        orders.add(p.roles["S1"] < p.roles["IO"])
        cs1, cio, cs2 = (dec(tok, k[p.roles[r]]) for r in ("S1", "IO", "S2"))
        if variant == "s2":
            assert (cs1, cio, cs2) == (s, io, io)
            assert p.key_positions == (p.roles["S2"],)
        elif variant == "s1_io":
            assert cs2 == s
            assert len({cs1, cio, s, io}) == 4
            assert p.key_positions == tuple(sorted((p.roles["S1"], p.roles["IO"])))
        else:
            assert len({cs1, cio, cs2, s, io}) == 5
            assert p.key_positions == tuple(sorted(p.roles[r] for r in ("S1", "IO", "S2")))
    assert orders == {True, False}, "both BABA and ABBA orders occur"


@pytest.mark.parametrize("seed", [0, 5])
def test_ioi_variants_share_their_clean_prompts(tok, seed):
    """Replacement names come from their own stream: for one seed, s2, s1_io
    and abc average over the same clean prompts (prompt by prompt, in order),
    so a grid over them compares corruptions, not datasets."""
    by = {c: tasks.generate("ioi", tok, 8, seed, c) for c in tasks.IOI_CORRUPT}
    cleans = {c: [(p.clean, p.answer, p.counter_answer, tuple(sorted(p.roles.items()))) for p in ps] for c, ps in by.items()}
    assert cleans["s2"] == cleans["s1_io"] == cleans["abc"]
    assert len({p.clean for p in by["s2"]}) == 8
    # The corruptions themselves still differ, and are deterministic.
    assert [p.corrupt for p in by["s1_io"]] != [p.corrupt for p in by["abc"]]
    assert [p.corrupt for p in by["abc"]] == [p.corrupt for p in tasks.generate("ioi", tok, 8, seed, "abc")]
    # A longer draw starts with the shorter one.
    assert [p.clean for p in tasks.generate("ioi", tok, 12, seed, "abc")][:8] == [p.clean for p in by["abc"]]


def test_ioi_pools(tok):
    v = tasks.ioi_vocab(tok)
    assert len(v["names"]) >= 50
    assert len(v["places"]) >= 10
    assert len(v["objects"]) >= 10
    for pool in v.values():
        assert len(set(pool)) == len(pool)
        for w in pool:
            assert w.startswith(" ")
            one_token(tok, w)
    assert len(words.WANG_BABA_TEMPLATES) == 15
    assert len(words.ABBA_TEMPLATES) == len(words.BABA_TEMPLATES)
    bucket = tasks.ioi_templates(tok)
    assert len(bucket["templates"]) >= 5
    assert set(bucket["templates"]) <= set(words.BABA_TEMPLATES)


def test_ioi_uses_several_templates(tok):
    pairs = tasks.generate("ioi", tok, 200, 3)
    openers = {p.clean.split(" ")[0] for p in pairs}
    assert len(openers) >= 4


# ---------------------------------------------------------------- facts


def test_facts_roles(tok, generated):
    pairs = generated[("facts", "s2")]
    for p in pairs:
        kp = p.key_positions
        assert list(kp) == list(range(kp[0], kp[-1] + 1)), "subject tokens are contiguous"
        assert p.roles["SUBJ_LAST"] == kp[-1]
        c = tokenize(tok, p.clean)
        # everything after the subject is the relation's text, equal in both prompts
        assert p.clean.split()[-1] == p.corrupt.split()[-1]
        assert dec(tok, c[-1]).strip() == p.clean.split()[-1]


def test_facts_supply(tok):
    pool = tasks.fact_pairs(tok)
    assert tasks.max_pairs("facts", tok) == len(pool) >= 40
    # every pair is used both ways
    keys = {(p.clean, p.corrupt, p.answer, p.counter_answer) for p in pool}
    assert all((k[1], k[0], k[3], k[2]) in keys for k in keys)
    # the whole pool is one valid dataset
    ds = build_dataset(tasks.generate("facts", tok, len(pool), 0), tok)
    assert ds.n == len(pool)
    assert len(words.FACTS) >= 60


def test_facts_example_pair(tok):
    pool = tasks.fact_pairs(tok)
    texts = {p.clean: p.answer for p in pool}
    assert texts.get("The capital city of France is") == " Paris"


# ---------------------------------------------------------------- greater-than


def test_greater_than_roles(tok, generated):
    for p in generated[("greater_than", "s2")]:
        c, k = tokenize(tok, p.clean), tokenize(tok, p.corrupt)
        d, u = dec(tok, c[p.roles["YY1"]]), dec(tok, c[p.roles["YY2"]])
        assert d.isdigit() and u.isdigit()
        # The paper's answer sets: end years surely after YY (tens digit > d) and surely before (< d).
        assert p.answers == tuple(str(t) for t in range(int(d) + 1, 10))
        assert p.counter_answers == tuple(str(t) for t in range(0, int(d)))
        assert (dec(tok, k[p.roles["YY1"]]), dec(tok, k[p.roles["YY2"]])) == ("0", "1")
        assert p.key_positions == (p.roles["YY1"], p.roles["YY2"])
        assert " lasted from the year " in p.clean and f"{d}{u} to the year " in p.clean
        assert "01 to the year " in p.corrupt
    assert len(tasks.gt_nouns(tok)) >= 10


# ---------------------------------------------------------------- induction


def test_induction_roles(tok, generated):
    n = words.INDUCTION_LEN
    for p in generated[("induction", "s2")]:
        c, k = tokenize(tok, p.clean), tokenize(tok, p.corrupt)
        assert len(c) == 2 * n
        assert c[1:n] == c[n + 1 :], "the block repeats up to x(n-1)"
        assert len(set(c[1 : n + 1])) == n, "block tokens are distinct"
        assert p.roles["A_LAST"] == n and p.key_positions == (n,)
        assert dec(tok, c[n]) == p.answer and dec(tok, k[n]) == p.counter_answer
        assert one_token(tok, p.counter_answer) not in c
    assert len(tasks.induction_words(tok)) >= 100


# ---------------------------------------------------------------- errors


def err(fn, *a, **kw) -> PatchboardError:
    with pytest.raises(PatchboardError) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value)
    return e.value


def test_unknown_task(tok):
    e = err(tasks.generate, "sorting", tok, 5, 0)
    assert e.field == "task" and "ioi" in e.message


@pytest.mark.parametrize("task", tasks.TASKS)
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_n_pairs(tok, task, bad):
    e = err(tasks.generate, task, tok, bad, 0)
    assert e.field == "n-pairs"


@pytest.mark.parametrize("task", tasks.TASKS)
def test_too_many_pairs(tok, task):
    most = tasks.max_pairs(task, tok)
    e = err(tasks.generate, task, tok, most + 1, 0)
    assert e.field == "n-pairs" and str(most) in e.message


def test_bad_ioi_corrupt(tok):
    e = err(tasks.generate, "ioi", tok, 5, 0, "s3")
    assert e.field == "ioi-corrupt" and "s1_io" in e.message
    assert err(tasks.generate, "facts", tok, 5, 0, "nope").field == "ioi-corrupt"


def test_max_pairs_is_accepted(tok):
    most = tasks.max_pairs("greater_than", tok)
    assert len(tasks.generate("greater_than", tok, most, 0)) == most
