"""Built-in example hypotheses, derived by the tool's own sweeps, and scored
on prompts they were not derived from.

:func:`derive_induction_hypothesis` finds induction and previous-token heads
with sender sweeps; :func:`derive_ioi_hypothesis` takes the heads the 2-SD
rule flags in the activation-patching head sweep. A hypothesis scored on the
prompts that chose it is flattered by their noise, so :func:`held_out`
evaluates it on another seed's prompts (at least :data:`EVAL_N_PAIRS`,
checked disjoint by prompt identity) beside its baselines at the same number
of paths (:mod:`patching.studies.baselines`), and records both in the file's
``derived.evaluation``. ``python -m patching derive-hypothesis induction|ioi
--out examples/NAME.json`` writes them (the command is in examples/README.md).
"""

from __future__ import annotations

import random
from typing import Callable

import pandas as pd

from patching.analysis import stats
from patching.core import tasks
from patching.core.data import build_dataset, tokenize
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.methods.activation import compute
from patching.methods.hypothesis_format import FORMAT
from patching.methods.path_runs import prepare_runs
from patching.methods.paths import sweep
from patching.service import dataset_for, run

#: Prompts a derived hypothesis is scored on by default (a seed other than the derivation's).
EVAL_N_PAIRS = 32


def _detected_heads(table: pd.DataFrame, metric: str = "logit_diff", signs: tuple[str, ...] = ("positive",)) -> list[dict]:
    """Heads the 2-SD rule (:func:`patching.analysis.stats.detect`) flags, strongest first."""

    t = table[table["component"] == "head"].reset_index(drop=True)
    s = stats.effect_series(t, metric).dropna()
    det = stats.detect(s)
    out = []
    for lab in s.index[det["detected"].to_numpy() & det["sign"].isin(signs).to_numpy()]:
        l, h = (int(x) for x in lab[1:].split("H"))
        out.append({"head": f"{l}.{h}", "effect": round(float(s[lab]), 6), "z": round(float(det.loc[lab, "z"]), 3)})
    return sorted(out, key=lambda d: -abs(d["effect"]))


def induction_prev_pairs(tokenizer, n_pairs: int, seed: int):
    """Repeated random words (the ``induction`` task's clean prompts) whose
    counterfactual replaces, in the first block, the word *before* A_LAST:
    the previous-token cue the induction heads' keys need is broken, the
    tokens at A_LAST and END are kept. answer = the task's answer (A_LAST's
    word), counter_answer = the task's counter word; roles add A_PREV."""

    base = tasks.generate("induction", tokenizer, n_pairs, seed)
    words = tasks.induction_words(tokenizer)
    rng = random.Random(seed + 7919)
    out = []
    for p in base:
        ids = tokenize(tokenizer, p.clean)
        n = p.roles["A_LAST"]
        pieces = [tokenizer.decode([i]) for i in ids[1:]]
        used = set(pieces)
        y = rng.choice([w for w in words if w not in used])
        pieces[n - 2] = y  # pieces[0] is position 1
        corrupt = "".join(pieces)
        if len(tokenize(tokenizer, corrupt)) != len(ids):
            raise PatchboardError("task", "induction: a replacement word merged with its neighbours for this tokenizer")
        out.append(Pair(p.clean, corrupt, p.answer, p.counter_answer, key_positions=(n - 1,), roles={**p.roles, "A_PREV": n - 1}))
    return out


def derive_induction_hypothesis(lm: LoadedModel, seed: int = 0, n_pairs: int = 8, progress: Callable[[str], None] | None = None) -> dict:
    """An induction hypothesis found by the tool's own sweeps on repeated
    random words whose previous-token cue is corrupted (:func:`induction_prev_pairs`):

    1. induction heads (IH) = heads the 2-SD rule flags (positive) in the
       sender sweep into ``logits`` (each head's direct effect);
    2. previous-token heads (PTH) = heads the 2-SD rule flags (positive) in the
       sweep of every earlier head into the IHs' keys;
    3. the hypothesis (the paper's All-Initial, for a deep model): the IHs'
       queries and values read the tokens *directly* -- through the residual
       skip and the position-local MLPs (``embed``, ``mlp*`` -> ``mlp*``), no
       other attention head -- and so do the PTHs (all three inputs); the IHs'
       keys read only the PTHs; earlier IHs feed later ones (all inputs); the
       IHs write to ``logits`` directly.
    """

    say = progress or (lambda _m: None)
    pairs = induction_prev_pairs(lm.tokenizer, n_pairs, seed)
    spec = Spec(model=lm.name, task=None, pairs=tuple(pairs), metric="logit_diff", direction="denoise")
    ds = build_dataset(pairs, lm.tokenizer)
    runs = prepare_runs(lm, ds, spec)
    say("sweep: every head -> logits")
    direct = sweep(spec, lm, ds, "logits", runs=runs, senders="*.*")
    ih = _detected_heads(direct.table)
    if not ih:
        raise PatchboardError("model", "the direct-effect sweep flags no induction head (2-SD rule) on this model")
    ih_names = [d["head"] for d in ih]
    first = min(int(h.split(".")[0]) for h in ih_names)
    if first == 0:
        raise PatchboardError("model", "an induction head sits in layer 0; no earlier head can be its previous-token head")
    say(f"sweep: heads in layers 0-{first - 1} -> the induction heads' keys")
    keys = sweep(spec, lm, ds, ",".join(f"{h}:k" for h in ih_names), runs=runs, senders=f"0-{first - 1}.*")
    pth = _detected_heads(keys.table)
    if not pth:
        raise PatchboardError("model", "the key sweep flags no previous-token head (2-SD rule) on this model")
    pth_names = [d["head"] for d in pth]
    local = ["embed", "mlp*"]
    paths_ = [
        {"sender": local, "receiver": "mlp*", "note": "the position-local stream: embedding and MLPs"},
        {"sender": local, "receiver": [f"{h}:q" for h in ih_names] + [f"{h}:v" for h in ih_names], "note": "direct query and value"},
        {"sender": local, "receiver": [f"{h}:*" for h in pth_names], "note": "the previous-token heads read the tokens directly"},
        {"sender": pth_names, "receiver": [f"{h}:k" for h in ih_names], "note": "previous-token heads into the induction heads' keys"},
        {"sender": ih_names, "receiver": [f"{h}:*" for h in ih_names], "note": "earlier induction heads feed later ones"},
        {"sender": ih_names, "receiver": "logits", "note": "the induction heads write the answer"},
    ]
    return {
        "format": FORMAT,
        "name": "induction (derived)",
        "description": (
            f"Derived on {lm.name} by derive_induction_hypothesis(seed={seed}, n_pairs={n_pairs}): induction heads "
            f"{', '.join(ih_names)} (2-SD rule on the direct-effect sweep into logits), previous-token heads "
            f"{', '.join(pth_names)} (2-SD rule on the sweep into their keys), on repeated random words whose "
            "previous-token cue is corrupted. Direct = through the residual skip and the MLPs, no other head."
        ),
        "model": lm.name,
        "derived": {
            "function": "derive_induction_hypothesis", "seed": seed, "n_pairs": n_pairs, "model_fingerprint": lm.fingerprint,
            "dataset": "induction_prev_pairs", "induction_heads": ih, "previous_token_heads": pth,
            "sweep_seconds": round(direct.meta["compute_seconds"] + keys.meta["compute_seconds"], 1),
        },
        "paths": paths_,
    }


def derive_ioi_hypothesis(lm: LoadedModel, seed: int = 0, n_pairs: int = 8, store=None,
                          progress: Callable[[str], None] | None = None) -> dict:
    """An IOI hypothesis from the heads the activation-patching sweep finds:
    the head sweep (``component=head``, STR S2 corruption, logit difference,
    denoising) on the ``ioi`` task; the heads the 2-SD rule flags (both signs,
    :func:`patching.analysis.stats.detect`) are the circuit. Hypothesis: every path
    from the input to the logits that passes only through those heads and the
    MLPs (edges from embed, the MLPs and the circuit heads into the circuit
    heads' q/k/v, the MLPs and the logits)."""

    say = progress or (lambda _m: None)
    spec = Spec(model=lm.name, task="ioi", n_pairs=n_pairs, seed=seed, component="head", metric="logit_diff", direction="denoise")
    if store is not None:
        say("activation patching: every head (from the store if computed before)")
        res = run(spec, store=store, lm=lm)
    else:
        say("activation patching: every head")
        res = compute(spec, lm, dataset_for(spec, lm))
    heads = _detected_heads(res.table, "logit_diff", ("positive", "negative"))
    if not heads:
        raise PatchboardError("model", "the activation-patching head sweep flags no head (2-SD rule) on this model")
    names = [d["head"] for d in heads]
    nodes = ["embed", "mlp*"] + names
    paths_ = [{"sender": nodes, "receiver": [f"{h}:*" for h in names] + ["mlp*", "logits"],
               "note": "every path through the flagged heads and the MLPs only"}]
    pos = ", ".join(d["head"] for d in heads if d["effect"] > 0)
    neg = ", ".join(d["head"] for d in heads if d["effect"] < 0)
    return {
        "format": FORMAT,
        "name": "ioi (derived)",
        "description": (
            f"Derived on {lm.name} by derive_ioi_hypothesis(seed={seed}, n_pairs={n_pairs}): the heads the 2-SD rule flags in the "
            f"activation-patching head sweep (ioi, S2 corruption, logit difference, denoise): positive {pos or 'none'}; "
            f"negative {neg or 'none'}. Important paths: those through these heads and the MLPs only."
        ),
        "model": lm.name,
        "derived": {"function": "derive_ioi_hypothesis", "seed": seed, "n_pairs": n_pairs, "model_fingerprint": lm.fingerprint,
                    "sweep": "activation patching, component head", "heads": heads,
                    "sweep_seconds": res.meta.get("compute_seconds")},
        "paths": paths_,
    }


# ---------------------------------------------------------------- held-out evaluation


def eval_spec(hypothesis: dict, lm: LoadedModel, eval_seed: int, eval_n: int = EVAL_N_PAIRS) -> Spec:
    """The spec a derived hypothesis is scored on: the derivation's kind of
    prompts drawn with ``eval_seed`` (IOI: the task; induction: the
    previous-token-cue pairs), ``eval_n`` of them."""
    d = hypothesis.get("derived") or {}
    if d.get("function") == "derive_induction_hypothesis":
        pairs = induction_prev_pairs(lm.tokenizer, eval_n, eval_seed)
        return Spec(model=lm.name, task=None, pairs=tuple(pairs), metric="kl")
    return Spec(model=lm.name, task="ioi", n_pairs=eval_n, seed=eval_seed, metric="kl")


def derivation_prompts(hypothesis: dict, lm: LoadedModel) -> set[str]:
    """The identities (:func:`patching.results.prompt_id`) of the prompts a derived hypothesis was chosen on."""
    from patching.results import prompt_id

    d = hypothesis.get("derived") or {}
    seed, n = int(d.get("seed", 0)), int(d.get("n_pairs", 8))
    if d.get("function") == "derive_induction_hypothesis":
        pairs = induction_prev_pairs(lm.tokenizer, n, seed)
    else:
        pairs = tasks.generate("ioi", lm.tokenizer, n, seed)
    return {prompt_id(p.clean, p.answer) for p in pairs}


def held_out(hypothesis: dict, lm: LoadedModel, eval_seed: int, eval_n: int = EVAL_N_PAIRS, n_random: int = 20, store=None,
             progress: Callable[[str], None] | None = None) -> dict:
    """``hypothesis`` scored on ``eval_n`` prompts of seed ``eval_seed``,
    refused (one line naming a prompt) when they share a prompt with the
    derivation's; with its baselines at the same number of paths. Returns
    the ``derived.evaluation`` record (proportion explained per δ, the
    baselines' summary per δ)."""
    from patching.core.data import build_dataset as _build
    from patching.results import prompt_id
    from patching.studies import baselines

    say = progress or (lambda _m: None)
    spec = eval_spec(hypothesis, lm, eval_seed, eval_n)
    seen = derivation_prompts(hypothesis, lm)
    pairs = spec.pairs if spec.pairs is not None else tuple(tasks.generate(spec.task, lm.tokenizer, eval_n, eval_seed))
    shared = [p for p in pairs if prompt_id(p.clean, p.answer) in seen]
    if shared:
        raise PatchboardError("eval-seed", f"seed {eval_seed} draws the prompt {shared[0].clean[:60]!r} the hypothesis was derived from "
                                           f"({len(shared)} shared); pick another --eval-seed")
    _build(list(pairs), lm.tokenizer)  # unusable prompts fail before the evaluations
    say(f"held-out evaluation: {eval_n} prompts of seed {eval_seed}, with {n_random} random head sets and the no-heads baseline")
    table = baselines.evaluate_with_baselines(spec, hypothesis, store=store, lm=lm, n_random=n_random, say=say)
    hyp_row = table[table["kind"] == "hypothesis"].iloc[0]
    deltas = [c[3:] for c in table.columns if c.startswith("pe_")]
    return {
        "seed": eval_seed, "n_pairs": eval_n, "prompts": "induction_prev_pairs" if spec.pairs is not None else "ioi",
        "disjoint_from_derivation": True,
        "proportion_explained": {d: round(float(hyp_row[f"pe_{d}"]), 6) for d in deltas},
        "baselines": {d: {k: (round(v, 6) if isinstance(v, float) else v) for k, v in baselines.baselines_summary(table, d).items()}
                      for d in deltas},
    }
