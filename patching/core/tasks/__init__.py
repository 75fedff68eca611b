"""Built-in prompt-pair generators: IOI, factual recall, greater-than, induction.

``generate(task, tokenizer, n_pairs, seed, ioi_corrupt)`` returns a list of
:class:`~patching.core.pairs.Pair` that ``build_dataset`` accepts as is:

* every clean and corrupt prompt of one returned list tokenizes (BOS + text,
  as :func:`patching.core.data.tokenize`) to the same length;
* ``answer`` and ``counter_answer`` are single, different tokens, or
  disjoint sets of single tokens joined by "|" (greater-than);
* ``roles`` names token indices (BOS = 0) in the clean prompt and
  ``key_positions`` lists the indices that Gaussian noising perturbs.

Everything is filtered to the tokenizer it is given (names, places, answers...
must be one token, prompts must land in the chosen length bucket), and each
task's length bucket depends only on the tokenizer, never on ``n_pairs`` or
``seed``. Randomness comes from ``random.Random(seed)`` (IOI's replacement
names from a stream of their own, seeded by seed and the clean prompt, so
its variants share their clean prompts), so a given
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
                  STR "01"; answer sets (years after / before YY) for
                  two-digit year tokens and for digit tokenizers.
``induction``     repeated random words; the corrupt prompt changes the
                  first occurrence of the last word of the block.
"""

from __future__ import annotations

from patching.core.errors import PatchboardError, shown
from patching.core.pairs import Pair
from patching.core.tasks.common import IOI_CORRUPT, MAX_SAMPLED, TASKS
from patching.core.tasks.ioi import ioi_vocab, ioi_templates, generate_ioi
from patching.core.tasks.facts import fact_buckets, fact_pairs, generate_facts
from patching.core.tasks.greater_than import _gt_years, gt_nouns, generate_greater_than
from patching.core.tasks.induction import induction_words, generate_induction
from patching.core.tasks.words import GT_CENTURIES


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
        raise PatchboardError("task", f"unknown task {shown(task, 40)}; use one of {', '.join(TASKS)}")


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
        raise PatchboardError("ioi-corrupt", f"unknown IOI corruption {shown(ioi_corrupt, 40)}; use one of {', '.join(IOI_CORRUPT)}")
    if task == "facts":
        return generate_facts(tokenizer, n_pairs, seed)
    if task == "greater_than":
        return generate_greater_than(tokenizer, n_pairs, seed)
    return generate_induction(tokenizer, n_pairs, seed)


def pairs_for(spec, tokenizer) -> list[Pair]:
    """The pairs a (validated) spec averages over: its custom pairs, or its
    task's generated pairs."""
    if spec.pairs is not None:
        return list(spec.pairs)
    return generate(spec.task, tokenizer, spec.n_pairs, spec.seed, ioi_corrupt=spec.ioi_corrupt)


def dataset_for(spec, tokenizer):
    """The tokenized, validated dataset of a spec (the one place it is built)."""
    from patching.core.data import build_dataset

    spec = spec.validated()
    return build_dataset(pairs_for(spec, tokenizer), tokenizer, spec.corruption, spec.key_positions)


PAIRS_TABLE_COLUMNS = ("clean", "corrupt", "answer", "counter_answer", "key_positions")


def pairs_table(spec, tokenizer) -> list[dict]:
    """The exact dataset a spec averages over, one row per pair: its prompts,
    answers and the key positions (BOS = 0) Gaussian noise perturbs, resolved
    as the engine resolves them (``key_positions`` as "3 4", so the rows can be
    read back with ``--pairs``). Built and checked like ``dataset_for``."""
    return pairs_rows(dataset_for(spec, tokenizer))


def pairs_rows(ds) -> list[dict]:
    """A built dataset's pairs as ``pairs_table`` rows."""
    return [
        {"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer, "counter_answer": p.counter_answer,
         "key_positions": " ".join(str(int(k)) for k in kp)}
        for p, kp in zip(ds.pairs, ds.key_positions)
    ]
