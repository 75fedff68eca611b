"""Built-in prompt-pair generators: IOI, factual recall, greater-than, induction.

``generate(task, tokenizer, n_pairs, seed, ioi_corrupt)`` returns a list of
:class:`~patching.data.Pair` that ``build_dataset`` accepts as is:

* every clean and corrupt prompt of one returned list tokenizes (BOS + text,
  as :func:`patching.data.tokenize`) to the same length;
* ``answer`` and ``counter_answer`` are single, different tokens;
* ``roles`` names token indices (BOS = 0) in the clean prompt and
  ``key_positions`` lists the indices that Gaussian noising perturbs.

Everything is filtered to the tokenizer it is given (names, places, answers...
must be one token, prompts must land in the chosen length bucket), and each
task's length bucket depends only on the tokenizer, never on ``n_pairs`` or
``seed``. Randomness comes from ``random.Random(seed)`` alone, so a given
(task, tokenizer, n_pairs, seed, ioi_corrupt) always gives the same list.

Tasks (details in each generator's docstring):

``ioi``           Wang et al.'s indirect-object-identification templates
                  (BABA and ABBA). Corruptions: ``s2`` (S2 -> IO),
                  ``s1_io`` (S1 and IO -> two other names), ``abc`` (all
                  three names -> three other names).
``facts``         hand-written factual-recall facts (capitals, official
                  languages, currencies, landmarks' cities, cities' countries),
                  paired subject-for-subject within a relation, both ways.
``greater_than``  "The war lasted from the year 1745 to the year 17",
                  re-expressed for tokenizers that split digits; STR "01".
``induction``     repeated random words; the corrupt prompt changes the
                  first occurrence of the last word of the block.
"""

from __future__ import annotations

import random
import re
import weakref
from collections import defaultdict
from dataclasses import replace
from typing import Callable

from patching.core.pairs import Pair
from patching.core.data import tokenize
from patching.core.errors import PatchboardError

TASKS = ("ioi", "facts", "greater_than", "induction")
IOI_CORRUPT = ("s2", "s1_io", "abc")

#: Upper bound on n_pairs for the sampled tasks (ioi, greater_than, induction);
#: their combinatorial supply is far larger. ``facts`` is bounded by its list.
MAX_SAMPLED = 10_000

# ---------------------------------------------------------------- word lists

#: Wang et al.'s first names (Easy-Transformer ``NAMES``); filtered to the
#: ones that are a single token with a leading space.
NAMES = (
    "Aaron Adam Alan Alex Alice Amy Anderson Andre Andrew Andy Anna Anthony Arthur Austin Blake Brandon Brian "
    "Carter Charles Charlie Christian Christopher Clark Cole Collins Connor Crew Crystal Daniel David Dean Edward "
    "Elizabeth Emily Eric Eva Ford Frank George Georgia Graham Grant Henry Ian Jack Jacob Jake James Jamie Jane "
    "Jason Jay Jennifer Jeremy Jessica John Jonathan Jordan Joseph Joshua Justin Kate Kelly Kevin Kyle Laura Leon "
    "Lewis Lisa Louis Luke Madison Marco Marcus Maria Mark Martin Mary Matthew Max Michael Michelle Morgan Patrick "
    "Paul Peter Prince Rachel Richard River Robert Roman Rose Ruby Russell Ryan Sarah Scott Sean Simon Stephen "
    "Steven Sullivan Taylor Thomas Tyler Victoria Warren William"
).split()

#: Wang et al.'s 8 places and 8 objects, plus ordinary additions.
PLACES = (
    "store garden restaurant school hospital office house station "
    "park library museum beach market church airport hotel bank theater farm"
).split()
OBJECTS = (
    "ring kiss bone basketball computer necklace drink snack "
    "book gift letter ball flower key apple pen cake phone hat watch"
).split()

#: Wang et al.'s 15 BABA templates (Easy-Transformer ``BABA_TEMPLATES``, the
#: final " [A]" -- the answer -- removed). [B] is the subject S, [A] the
#: indirect object IO.
WANG_BABA_TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
)

#: Variants of Wang et al.'s first template (same shape: opener, names,
#: three-word verb phrase, place, S2, giving verb, object). Wang's 15
#: templates have 11 different token shapes, so a one-length dataset built
#: from them alone would use one or two templates; these give the canonical
#: shape enough variety.
EXTRA_BABA_TEMPLATES = (
    "Later, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] walked to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] arrived at the [PLACE]. [B] handed a [OBJECT] to",
    "Today, [B] and [A] went to the [PLACE]. [B] brought a [OBJECT] to",
    "Then, [B] and [A] met at the [PLACE]. [B] passed a [OBJECT] to",
    "Then, [B] and [A] ran to the [PLACE]. [B] threw a [OBJECT] to",
    "Afterwards [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Later, [B] and [A] stayed at the [PLACE]. [B] sent a [OBJECT] to",
    "Then, [B] and [A] worked at the [PLACE]. [B] showed a [OBJECT] to",
    "Soon, [B] and [A] drove to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were at the [PLACE]. [B] offered a [OBJECT] to",
    "Next, [B] and [A] went to the [PLACE]. [B] lent a [OBJECT] to",
    "Then, [B] and [A] got to the [PLACE]. [B] sold a [OBJECT] to",
    "Once, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Yesterday, [B] and [A] were at the [PLACE]. [B] gave a [OBJECT] to",
)

BABA_TEMPLATES = WANG_BABA_TEMPLATES + EXTRA_BABA_TEMPLATES


def _abba(template: str) -> str:
    """The ABBA version: swap the first [B] and the first [A]."""
    return template.replace("[B]", "[X]", 1).replace("[A]", "[B]", 1).replace("[X]", "[A]", 1)


ABBA_TEMPLATES = tuple(_abba(t) for t in BABA_TEMPLATES)

#: Greater-than nouns (Hanna et al. use ~120 event nouns; these are ordinary
#: ones), filtered to single tokens.
GT_NOUNS = (
    "war expedition project reign drought siege famine strike campaign journey voyage trial conflict "
    "occupation festival dynasty crisis rebellion revolution construction marriage partnership tour "
    "boom recession blockade epidemic"
).split()
GT_CENTURIES = tuple(range(12, 20))  # XX in 12..19

#: Factual-recall relations: template with "{}" for the subject.
FACT_RELATIONS = {
    "capital": "The capital city of {} is",
    "language": "The official language of {} is",
    "currency": "The official currency of {} is the",
    "landmark": "The {} is located in the city of",
    "city_country": "The city of {} is located in the country of",
}

#: (relation, subject, answer). Answers are written without the leading space.
FACTS: tuple[tuple[str, str, str], ...] = tuple(
    [("capital", s, a) for s, a in (
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
        ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("England", "London"), ("Greece", "Athens"),
        ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Canada", "Ottawa"),
        ("Australia", "Canberra"), ("Thailand", "Bangkok"), ("Kenya", "Nairobi"), ("Norway", "Oslo"),
        ("Sweden", "Stockholm"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Hungary", "Budapest"),
        ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Peru", "Lima"), ("Cuba", "Havana"),
        ("Chile", "Santiago"), ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Scotland", "Edinburgh"),
        ("Wales", "Cardiff"), ("Afghanistan", "Kabul"), ("Syria", "Damascus"),
        ("Israel", "Jerusalem"), ("Ukraine", "Kyiv"), ("Korea", "Seoul"), ("Nepal", "Kathmandu"),
        ("Bulgaria", "Sofia"), ("Romania", "Bucharest"), ("Serbia", "Belgrade"), ("Indonesia", "Jakarta"),
        ("Vietnam", "Hanoi"), ("Argentina", "Buenos"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"),
        ("the Netherlands", "Amsterdam"), ("Lebanon", "Beirut"), ("Morocco", "Rabat"), ("Jordan", "Amman"),
        ("Tunisia", "Tunis"), ("Ghana", "Accra"), ("Ethiopia", "Addis"), ("Czechia", "Prague"),
    )]
    + [("language", s, a) for s, a in (
        ("France", "French"), ("Germany", "German"), ("Italy", "Italian"), ("Spain", "Spanish"),
        ("Japan", "Japanese"), ("China", "Chinese"), ("Russia", "Russian"), ("Portugal", "Portuguese"),
        ("Greece", "Greek"), ("Poland", "Polish"), ("Turkey", "Turkish"), ("Sweden", "Swedish"),
        ("the Netherlands", "Dutch"), ("Israel", "Hebrew"), ("Egypt", "Arabic"), ("Iran", "Persian"),
        ("Korea", "Korean"), ("Finland", "Finnish"), ("Hungary", "Hungarian"), ("Norway", "Norwegian"),
        ("Denmark", "Danish"), ("Thailand", "Thai"), ("Vietnam", "Vietnamese"), ("Brazil", "Portuguese"),
        ("Mexico", "Spanish"), ("Ukraine", "Ukrainian"), ("Indonesia", "Indonesian"), ("Romania", "Romanian"),
        ("Bulgaria", "Bulgarian"), ("Serbia", "Serbian"), ("Croatia", "Croatian"), ("Iceland", "Icelandic"),
        ("England", "English"), ("Australia", "English"), ("Argentina", "Spanish"), ("Chile", "Spanish"),
        ("Austria", "German"), ("Syria", "Arabic"), ("Iraq", "Arabic"), ("Morocco", "Arabic"),
    )]
    + [("currency", s, a) for s, a in (
        ("Japan", "yen"), ("Russia", "ruble"), ("India", "rupee"), ("China", "yuan"), ("Mexico", "peso"),
        ("Switzerland", "franc"), ("Sweden", "krona"), ("Britain", "pound"), ("England", "pound"),
        ("Canada", "dollar"), ("Australia", "dollar"), ("Germany", "euro"), ("France", "euro"),
        ("Italy", "euro"), ("Spain", "euro"), ("Poland", "zloty"), ("Turkey", "lira"), ("Israel", "shekel"),
        ("Brazil", "real"), ("Thailand", "baht"), ("Vietnam", "dong"), ("Hungary", "forint"),
    )]
    + [("landmark", s, a) for s, a in (
        ("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Kremlin", "Moscow"), ("Acropolis", "Athens"),
        ("Louvre", "Paris"), ("Parthenon", "Athens"), ("Brandenburg Gate", "Berlin"), ("Reichstag", "Berlin"),
        ("Sagrada Familia", "Barcelona"), ("Forbidden City", "Beijing"), ("Space Needle", "Seattle"),
        ("Burj Khalifa", "Dubai"), ("Hagia Sophia", "Istanbul"), ("Blue Mosque", "Istanbul"),
        ("Alhambra", "Granada"), ("Rialto Bridge", "Venice"), ("Charles Bridge", "Prague"),
        ("Tower Bridge", "London"), ("Prado Museum", "Madrid"), ("Uffizi Gallery", "Florence"),
        ("CN Tower", "Toronto"), ("Rijksmuseum", "Amsterdam"), ("Atomium", "Brussels"),
        ("Willis Tower", "Chicago"), ("White House", "Washington"), ("Taj Mahal", "Agra"),
        ("Western Wall", "Jerusalem"), ("Golden Pavilion", "Kyoto"),
        ("Tokyo Skytree", "Tokyo"), ("Little Mermaid statue", "Copenhagen"),
    )]
    + [("city_country", s, a) for s, a in (
        ("Toronto", "Canada"), ("Munich", "Germany"), ("Barcelona", "Spain"), ("Milan", "Italy"),
        ("Osaka", "Japan"), ("Shanghai", "China"), ("Sydney", "Australia"), ("Mumbai", "India"),
        ("Istanbul", "Turkey"), ("Marseille", "France"), ("Venice", "Italy"), ("Kyoto", "Japan"),
        ("Melbourne", "Australia"), ("Vancouver", "Canada"), ("Hamburg", "Germany"), ("Seville", "Spain"),
        ("Porto", "Portugal"), ("Krakow", "Poland"), ("Manchester", "England"), ("Glasgow", "Scotland"),
        ("Geneva", "Switzerland"), ("Zurich", "Switzerland"), ("Alexandria", "Egypt"), ("Casablanca", "Morocco"),
        ("Lagos", "Nigeria"), ("Bangalore", "India"), ("Dublin", "Ireland"), ("Stockholm", "Sweden"),
        ("Oslo", "Norway"), ("Helsinki", "Finland"), ("Athens", "Greece"), ("Lisbon", "Portugal"),
        ("Warsaw", "Poland"), ("Vienna", "Austria"), ("Budapest", "Hungary"), ("Prague", "Czechia"),
        ("Seoul", "Korea"), ("Beijing", "China"), ("Moscow", "Russia"), ("Cairo", "Egypt"), ("Tehran", "Iran"),
        ("Havana", "Cuba"), ("Lima", "Peru"), ("Nairobi", "Kenya"), 
    )]
)

#: Ordinary English words for the induction task; filtered to single tokens
#: (with a leading space) so prompts decode as clean text.
INDUCTION_WORDS = """
time year people way day man thing woman life child world school state family student group country problem hand
part place case week company system program question work government number night point home water room mother
area money story fact month lot right study book eye job word business issue side kind head house service friend
father power hour game line end member law car city community name president team minute idea kid body information
back parent face others level office door health person art war history party result change morning reason research
girl guy moment air teacher force education foot boy age policy music market sense nation plan college interest death
experience effect class control care field development role effort rate heart drug show leader light voice wife
police mind price report decision son view relationship town road arm difference value building action model season
society tax director position player record paper space ground form event official matter center couple site project
activity star table need court oil situation cost industry figure street image phone data picture practice piece land
product doctor wall patient worker news test movie north love support technology step baby computer type attention
film tree source organization hair window evidence population army garden river island forest mountain ocean
desert valley bridge castle village farm horse dog cat bird fish apple bread cheese coffee sugar salt butter honey
lemon orange banana tomato potato carrot onion pepper rice soup cake pie candy chair bed lamp clock mirror carpet
pencil brush bottle glass cup plate knife fork spoon basket bucket rope chain wheel engine rocket planet moon sun
cloud rain snow storm wind thunder fire smoke stone sand metal gold silver iron copper wood cotton silk wool
leather plastic rubber glue paint ink shoe hat coat shirt dress belt glove sock button pocket ring necklace watch
king queen prince soldier captain pilot farmer hunter sailor artist singer dancer writer judge nurse lawyer chef
tiger lion bear wolf fox rabbit mouse snake frog duck goose eagle owl whale shark dolphin monkey elephant camel
green blue yellow purple brown black white red pink happy angry quiet loud bright dark heavy quick
slow strong weak rich poor young old fresh clean dirty empty full deep wide narrow sharp smooth rough soft hard
""".split()

INDUCTION_LEN = 10  # n: the block x1..xn is repeated up to x(n-1)


# ---------------------------------------------------------------- helpers


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _one_token(tokenizer, text: str) -> int | None:
    ids = _ids(tokenizer, text)
    return int(ids[0]) if len(ids) == 1 else None


def _single_token_words(tokenizer, words) -> list[str]:
    """Words (without leading space) that are one token with a leading space,
    in the given order, without duplicates."""
    out, seen = [], set()
    for w in words:
        t = _one_token(tokenizer, " " + w)
        if t is not None and t not in seen:
            seen.add(t)
            out.append(w)
    return out


_CACHE: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _cached(tokenizer, key: str, build: Callable[[], object]):
    """Per-tokenizer memo of the tokenizer-derived pools (cheap to rebuild)."""
    try:
        store = _CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        return build()
    if key not in store:
        store[key] = build()
    return store[key]


def _check_n(task: str, n_pairs, maximum: int) -> None:
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int):
        raise PatchboardError("n-pairs", f"{n_pairs!r} is not a whole number; give an integer from 1 to {maximum}")
    if n_pairs < 1:
        raise PatchboardError("n-pairs", f"{n_pairs} is too few; give at least 1 pair (up to {maximum} for {task})")
    if n_pairs > maximum:
        raise PatchboardError("n-pairs", f"{task} can supply at most {maximum} pairs for this model's tokenizer; ask for {maximum} or fewer")


def _fill(template: str, **slots: str) -> str:
    text = template
    for k, v in slots.items():
        text = text.replace(f"[{k}]", v)
    return text


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

    roles: S1, IO, S2, END (END = last position). All pairs share the length
    and the S2/END indices of the template bucket (see ``ioi_templates``).
    """
    if ioi_corrupt not in IOI_CORRUPT:
        raise PatchboardError("ioi-corrupt", f"unknown IOI corruption {ioi_corrupt!r}; use one of {', '.join(IOI_CORRUPT)}")
    _check_n("ioi", n_pairs, MAX_SAMPLED)
    v = ioi_vocab(tokenizer)
    bucket = ioi_templates(tokenizer)
    names, places, objects = v["names"], v["places"], v["objects"]
    if len(names) < 5:
        raise PatchboardError("task", "this model's tokenizer has fewer than 5 single-token names; IOI needs more, pick another task")
    length, (slot1, slot2), s2 = bucket["length"], bucket["name_slots"], bucket["s2"]
    rng = random.Random(seed)
    pairs: list[Pair] = []
    seen: set[str] = set()
    tries = 0
    while len(pairs) < n_pairs:
        tries += 1
        if tries > 50 * n_pairs + 1000:
            raise PatchboardError("n-pairs", f"could not draw {n_pairs} distinct IOI prompts for this tokenizer; ask for fewer")
        template = rng.choice(bucket["templates"])
        abba = rng.random() < 0.5
        s, io = rng.sample(names, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        others = [x for x in names if x not in (s, io)]
        t = _abba(template) if abba else template
        # BABA: [B]=S at slot1, [A]=IO at slot2; ABBA: IO at slot1, S at slot2.
        s1_pos, io_pos = (slot2, slot1) if abba else (slot1, slot2)
        fill = dict(PLACE=place.strip(), OBJECT=obj.strip())
        clean = _fill(t, A=io.strip(), B=s.strip(), **fill)
        if clean in seen:
            continue
        if ioi_corrupt == "s2":
            new = {s1_pos: s, io_pos: io, s2: io}
            key = (s2,)
        elif ioi_corrupt == "s1_io":
            n1, n2 = rng.sample(others, 2)
            new = {s1_pos: n1, io_pos: n2, s2: s}
            key = tuple(sorted((s1_pos, io_pos)))
        else:  # abc
            n1, n2, n3 = rng.sample(others, 3)
            new = {s1_pos: n1, io_pos: n2, s2: n3}
            key = tuple(sorted((s1_pos, io_pos, s2)))
        corrupt = _fill_names(t, (new[slot1], new[slot2], new[s2]), fill)
        roles = {"S1": s1_pos, "IO": io_pos, "S2": s2, "END": length - 1}
        ct, kt = tokenize(tokenizer, clean), tokenize(tokenizer, corrupt)
        ids = {x: _one_token(tokenizer, x) for x in (s, io)}
        if (
            len(ct) != length
            or len(kt) != length
            or ct[s1_pos] != ids[s]
            or ct[io_pos] != ids[io]
            or ct[s2] != ids[s]
            or any(kt[p] != _one_token(tokenizer, nm) for p, nm in new.items())
        ):
            continue  # a filler merged with its neighbours for this tokenizer
        seen.add(clean)
        pairs.append(Pair(clean, corrupt, io, s, key_positions=key, roles=roles))
    return pairs


def _fill_names(template: str, names: tuple[str, str, str], fill: dict) -> str:
    """Fill a (BABA or ABBA) template's three name slots, in text order
    (first slot, second slot, S2), and its place/object."""
    it = iter(names)
    text = re.sub(r"\[A\]|\[B\]", lambda m: next(it).strip(), template)
    return _fill(text, **fill)


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


# ---------------------------------------------------------------- greater-than


def gt_nouns(tokenizer) -> list[str]:
    return _cached(tokenizer, "gt_nouns", lambda: _single_token_words(tokenizer, GT_NOUNS))


GT_TEMPLATE = "The {noun} lasted from the year {xx}{yy} to the year {xx}"


def _gt_years() -> list[tuple[int, int]]:
    """YY = d u with tens digit d in 1..8 (so d-1 and d+1 are digits) and
    units digit u != 1 (so both YY tokens change under the "01" corruption)."""
    return [(d, u) for d in range(1, 9) for u in range(10) if u != 1]


def generate_greater_than(tokenizer, n_pairs: int, seed: int) -> list[Pair]:
    """Greater-than (Hanna et al. 2023), re-expressed for digit-split tokenizers.

    The original prompt "The war lasted from the year 1745 to the year 17"
    asks for the two-digit YY of the end year as one token. A tokenizer that
    splits digits (SmolLM: " 1745" -> ' ', '1', '7', '4', '5') makes the next
    token the end year's TENS digit instead. So, with start year XX d u:

      answer          = str(d + 1): the tens digit of a year in the next decade,
                        always strictly greater than XXdu;
      counter_answer  = str(d - 1): the tens digit of the previous decade,
                        always strictly smaller (an impossible end year).

    LD(answer, counter) is the one-token analogue of the paper's
    sum(logits > YY) - sum(logits < YY). d ranges over 1..8 so both are
    digits. STR corruption (Zhang & Nanda): YY -> "01" ("... from the year
    1701 to the year 17"); answer/counter stay the clean ones. units digit 1
    is excluded so both YY digit tokens differ. key_positions = the two YY
    digit tokens; roles YY1, YY2, END. Centuries XX = 12..19.
    """
    nouns = gt_nouns(tokenizer)
    if not nouns:
        raise PatchboardError("task", "no greater-than noun is a single token for this model; pick another task")
    years = _gt_years()
    maximum = min(MAX_SAMPLED, len(nouns) * len(GT_CENTURIES) * len(years))
    _check_n("greater_than", n_pairs, maximum)
    digits = {str(k): _one_token(tokenizer, str(k)) for k in range(10)}
    if any(v is None for v in digits.values()):
        raise PatchboardError("task", "this model's tokenizer does not have single-token digits; greater_than needs them, pick another task")
    # Locate YY from one reference prompt; every prompt must match its shape.
    ref = GT_TEMPLATE.format(noun=nouns[0], xx="17", yy="45")
    ref_toks = tokenize(tokenizer, ref)
    prefix_len = len(tokenize(tokenizer, f"The {nouns[0]} lasted from the year 17"))
    yy1, yy2 = prefix_len, prefix_len + 1
    if [tokenizer.decode([ref_toks[yy1]]), tokenizer.decode([ref_toks[yy2]])] != ["4", "5"]:
        raise PatchboardError("task", "this model's tokenizer does not split years into digits; greater_than needs digit tokens, pick another task")
    length = len(ref_toks)
    rng = random.Random(seed)
    combos = [(noun, xx, d, u) for noun in nouns for xx in GT_CENTURIES for d, u in years]
    pairs = []
    for noun, xx, d, u in rng.sample(combos, len(combos)):
        if len(pairs) == n_pairs:
            break
        clean = GT_TEMPLATE.format(noun=noun, xx=xx, yy=f"{d}{u}")
        corrupt = GT_TEMPLATE.format(noun=noun, xx=xx, yy="01")
        ct, kt = tokenize(tokenizer, clean), tokenize(tokenizer, corrupt)
        if len(ct) != length or len(kt) != length or ct[yy1] != digits[str(d)] or ct[yy2] != digits[str(u)]:
            continue
        pairs.append(Pair(clean, corrupt, str(d + 1), str(d - 1), key_positions=(yy1, yy2),
                          roles={"YY1": yy1, "YY2": yy2, "END": length - 1}))
    if len(pairs) < n_pairs:
        raise PatchboardError("n-pairs", f"greater_than found only {len(pairs)} prompts of one length for this tokenizer; ask for {len(pairs)} or fewer")
    return pairs


# ---------------------------------------------------------------- induction


def induction_words(tokenizer) -> list[str]:
    """INDUCTION_WORDS that are single tokens for this tokenizer, with the
    leading space (" apple")."""
    return _cached(tokenizer, "induction_words", lambda: [" " + w for w in _single_token_words(tokenizer, INDUCTION_WORDS)])


def generate_induction(tokenizer, n_pairs: int, seed: int) -> list[Pair]:
    """Induction on repeated random words.

    Clean = x1..xn x1..x(n-1) (n = INDUCTION_LEN = 10 distinct random
    single-token words, e.g. " apple"); after BOS, the block sits at 1..n and
    the repeat at n+1..2n-1, so an induction head predicts answer = xn.
    Corrupt = the same with xn in the FIRST block replaced by another random
    word yn (not among the x's), so induction now predicts counter_answer = yn.
    key_positions = (n,) (xn's first occurrence); roles A_LAST = n, END = 2n-1.
    """
    words = induction_words(tokenizer)
    n = INDUCTION_LEN
    if len(words) < 4 * n:
        raise PatchboardError("task", "this model's tokenizer has too few single-token words for induction; pick another task")
    _check_n("induction", n_pairs, MAX_SAMPLED)
    length = 2 * n  # BOS + n + (n - 1)
    rng = random.Random(seed)
    pairs: list[Pair] = []
    seen: set[str] = set()
    tries = 0
    while len(pairs) < n_pairs:
        tries += 1
        if tries > 50 * n_pairs + 1000:
            raise PatchboardError("n-pairs", f"could not draw {n_pairs} distinct induction prompts; ask for fewer")
        drawn = rng.sample(words, n + 1)
        xs, yn = drawn[:n], drawn[n]
        clean = "".join(xs + xs[:-1])
        corrupt = "".join(xs[:-1] + [yn] + xs[:-1])
        if clean in seen:
            continue
        if len(tokenize(tokenizer, clean)) != length or len(tokenize(tokenizer, corrupt)) != length:
            continue
        seen.add(clean)
        pairs.append(Pair(clean, corrupt, xs[-1], yn, key_positions=(n,), roles={"A_LAST": n, "END": length - 1}))
    return pairs


# ---------------------------------------------------------------- entry points


def max_pairs(task: str, tokenizer, ioi_corrupt: str = "s2") -> int:
    """The largest n_pairs ``generate`` accepts for this task and tokenizer."""
    _check_task(task)
    if task == "facts":
        return len(fact_pairs(tokenizer))
    if task == "greater_than":
        return min(MAX_SAMPLED, len(gt_nouns(tokenizer)) * len(GT_CENTURIES) * len(_gt_years()))
    return MAX_SAMPLED


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise PatchboardError("task", f"unknown task {task!r}; use one of {', '.join(TASKS)}")


def generate(task: str, tokenizer, n_pairs: int, seed: int, ioi_corrupt: str = "s2") -> list[Pair]:
    """``n_pairs`` prompt pairs of a built-in task, deterministic in ``seed``.

    Raises PatchboardError("task") for an unknown task, ("n-pairs") for
    n_pairs < 1 or above what the task can supply, ("ioi-corrupt") for an
    unknown IOI corruption.
    """
    _check_task(task)
    if task == "ioi":
        return generate_ioi(tokenizer, n_pairs, seed, ioi_corrupt)
    if ioi_corrupt not in IOI_CORRUPT:
        raise PatchboardError("ioi-corrupt", f"unknown IOI corruption {ioi_corrupt!r}; use one of {', '.join(IOI_CORRUPT)}")
    if task == "facts":
        return generate_facts(tokenizer, n_pairs, seed)
    if task == "greater_than":
        return generate_greater_than(tokenizer, n_pairs, seed)
    return generate_induction(tokenizer, n_pairs, seed)
