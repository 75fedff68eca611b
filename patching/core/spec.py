"""The one typed spec that flows from widgets to URL to cache key to engine to
stored result.

Each field is declared once, below, with its type, default, bounds, choices,
texts and whether it enters the cache key (:mod:`patching.core.fields`). Field
names are the CLI flags with underscores (``n_pairs`` <-> ``--n-pairs`` <->
``?n-pairs=``), so a URL query string, a command line and a stored result's
spec are three spellings of the same object.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from patching.core.config import EMBEDDED
from patching.core.errors import PatchboardError
from patching.core.fields import Setting, setting, table
from patching.core.limits import MAX_PAIRS
from patching.core.pairs import Pair, pair_row, pairs_from_rows, parse_positions

#: Bumped whenever the same spec would give different numbers.
ENGINE_VERSION = "2"
#: The definitions of issue 20 (mean and zero ablation, EAP-IG's Riemann rule,
#: Wang et al.'s step 3): it enters the key only of the results whose numbers
#: they changed (:func:`definitions_key`), so every other key -- exact
#: activation sweeps under str, gn and resample, the shipped demo's -- stays.
DEFINITIONS_VERSION = "1"

TASKS = ("ioi", "facts", "greater_than", "induction")
CORRUPTIONS = ("str", "gn", "resample", "mean", "zero")
#: Corruptions with K seeded samples per prompt (rows = pairs x samples).
SAMPLED_CORRUPTIONS = ("gn", "resample")
#: Ablations: noising interventions that replace an activation by a value
#: (its mean over a reference set, or zeros) rather than by another run's.
ABLATIONS = ("mean", "zero")
#: What ``mean`` averages over: the other prompts of the dataset
#: (leave-one-out), or the dataset's corrupted prompts (IOI with
#: ``--ioi-corrupt abc``: Wang et al.'s p_ABC).
MEAN_SETS = ("others", "corrupt")
METRICS = ("logit_diff", "prob", "logprob", "kl", "prob_diff")
#: A task's own default metric (the others default to logit_diff):
#: greater-than is scored as Hanna et al. score it, P(after) - P(before).
TASK_METRICS = {"greater_than": "prob_diff"}
DIRECTIONS = ("denoise", "noise")
COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "head", "head_by_pos",
              "head_q", "head_k", "head_v", "head_pattern",
              "head_q_by_pos", "head_k_by_pos", "head_v_by_pos", "head_pattern_by_pos")
#: Components with one patch per layer x head at all positions, and per layer x head x position.
HEAD_COMPONENTS = ("head", "head_q", "head_k", "head_v", "head_pattern")
HEAD_BY_POS_COMPONENTS = ("head_by_pos", "head_q_by_pos", "head_k_by_pos", "head_v_by_pos", "head_pattern_by_pos")
WINDOW_COMPONENTS = ("attn_out", "mlp_out")
METHODS = ("exact", "atp", "atp_star", "ig")
#: Components the attribution methods estimate (all of them; atp_star applies AtP*'s QK fix to q/k).
ATTRIBUTION_COMPONENTS = COMPONENTS
#: Integrated-gradient steps: 5, as the EAP-IG reference's README calls it
#: (``attribute(..., method='EAP-IG-inputs', ig_steps=5)``, hannamw/EAP-IG;
#: Hanna et al. 2024 find a few steps enough); the reference function
#: ``get_scores_eap_ig`` itself defaults to 30.
IG_STEPS = 5
#: Where the IG steps sit on the line from the corrupted input (alpha = 0) to
#: the clean one (alpha = 1): ``left`` alpha = k/m, k = 0..m-1, the left
#: Riemann sum hannamw/EAP-IG's ``get_scores_eap_ig`` computes (the default:
#: it reproduces the reference); ``midpoint`` alpha = (k + 1/2)/m.
IG_RULES = ("left", "midpoint")
IG_RULE = "left"
MAX_IG_STEPS = 256
IOI_CORRUPT = ("s2", "s1_io", "abc")
#: Floating-point types a model can be loaded in; float32 is the default and the reference.
DTYPES = ("float32", "bfloat16", "float16")
MAX_NOISE_SAMPLES = 64
MAX_WINDOW = 32


def _gn(s) -> bool:
    return s.corruption == "gn"


def _sampled(s) -> bool:
    return s.corruption in SAMPLED_CORRUPTIONS


def default_metric(task: str | None) -> str:
    """The metric a spec reads when none is given: the task's own
    (:data:`TASK_METRICS`), else ``logit_diff``."""
    return TASK_METRICS.get(task or "", "logit_diff")


def ig_alphas(steps: int, rule: str) -> list[float]:
    """The IG points, as fractions of the way from the corrupted input
    (alpha = 0) to the clean one (alpha = 1): ``left`` k/m for k = 0..m-1
    (hannamw/EAP-IG's ``get_scores_eap_ig``: the corrupted end included, the
    clean end not), ``midpoint`` (k + 1/2)/m."""
    if rule not in IG_RULES:
        raise PatchboardError("ig-rule", f"{str(rule)[:20]!r} is not one of {', '.join(IG_RULES)}")
    return [(k + (0.5 if rule == "midpoint" else 0.0)) / steps for k in range(steps)]


def ablation_text(corruption: str, mean_set: str = "others") -> str:
    """What an ablation writes in place of an activation, in words."""
    if corruption == "zero":
        return "zeros"
    return ("its mean at the same position over the other prompts of the dataset (leave-one-out)" if mean_set == "others"
            else "its mean at the same position over the dataset's corrupted prompts")


@dataclass(frozen=True)
class Spec:
    model: str = setting(
        EMBEDDED, kind="text", label="Model", widget="select",
        cli="smollm2-135m (embedded), a hub id or a local folder",
        explain="The language model to look inside. smollm2-135m is a small model that ships with Patchboard.")
    task: str | None = setting(
        "ioi", choices=TASKS, label="Task", group="Prompts", widget="select",
        applies=lambda s: s.pairs is None, cli="built-in task (default ioi)",
        explain="The behaviour to study: each task is a set of prompts the model completes in a predictable way.",
        options={"ioi": "ioi · who gets the object", "facts": "facts · recall a fact",
                 "greater_than": "greater_than · a later year", "induction": "induction · repeat a pattern"},
        option_help={
            "ioi": "Who receives the object? \"When Mary and John went to the store, John gave a drink to\" → \" Mary\".",
            "facts": "Recall a fact: \"The capital city of France is\" → \" Paris\".",
            "greater_than": "Guess a later year: \"The war lasted from the year 1745 to the year 17\" → a number above 45.",
            "induction": "Continue a pattern seen earlier in the text: after \"… apple tree … apple\" comes \" tree\".",
        })
    ioi_corrupt: str = setting(
        "s2", choices=IOI_CORRUPT, label="IOI corruption", widget="select", reset=True,
        applies=lambda s: s.task == "ioi", cli="IOI: which names the corruption replaces",
        explain="Which names the broken prompt changes.",
        options={"s2": "s2 · change the giver's 2nd mention", "s1_io": "s1_io · change both first names",
                 "abc": "abc · three new names"},
        option_help={"s2": "The giver's second mention becomes the other name, so the sentence points to the wrong person.",
                     "s1_io": "Both names of the first clause are replaced by other names.",
                     "abc": "All three names are replaced by three new names (no name repeats)."})
    n_pairs: int = setting(
        8, lo=1, hi=MAX_PAIRS, label="Number of pairs", group="Prompts", widget="number",
        applies=lambda s: s.pairs is None, cli="prompt pairs drawn from the task",
        explain="How many prompt pairs to average over: more pairs give steadier numbers but take longer.")
    seed: int = setting(
        0, lo=0, hi=2**31 - 1, label="Seed", widget="number", reset=True,
        applies=lambda s: s.pairs is None or s.corruption in SAMPLED_CORRUPTIONS, cli="draws the task's prompts, the noise and the resampled prompts",
        explain="Picks which random prompts (and which noise) are drawn; the same number always gives the same result.")
    pairs: tuple[Pair, ...] | None = setting(
        None, kind="pairs", label="Prompt pairs (JSONL or CSV)", group="Prompts", widget="area",
        cli="CSV or JSONL with columns clean,corrupt,answer,counter_answer",
        explain="One pair per line: a clean prompt, a broken prompt with the same number of tokens, the right answer and "
                "the wrong answer (one token each, usually starting with a space).")
    corruption: str = setting(
        "str", choices=CORRUPTIONS, label="Corruption", group="Corruption", widget="radio",
        cli="str: swap the key tokens; gn: Gaussian noise on their embeddings; resample: another prompt of the dataset; "
            "mean: mean ablation (the activation's mean over the other prompts, --mean-set); zero: zero ablation "
            "(mean and zero are noising only: --direction noise)",
        explain="How the prompt is broken: swap the key words for other words, blur them with random noise, run "
                "another prompt of the same dataset instead, or replace the piece by its average or by zeros.",
        options={"str": "str · swap words", "gn": "gn · add noise", "resample": "resample · another prompt",
                 "mean": "mean · average (noise only)", "zero": "zero · zeros (noise only)"},
        option_help={"str": "Swap the key words for similar words (e.g. one name for another): the text stays natural.",
                     "gn": "Keep the words but blur the key ones with random noise (as in the ROME paper).",
                     "resample": "Each prompt's broken run reads another, randomly drawn prompt of the same dataset "
                                 "(Goldowsky-Dill et al.'s resampling ablation), averaged over several draws.",
                     "mean": "Mean ablation: replace the piece, in the clean run, by its average at the same position over the "
                             "other prompts of the dataset (or over the corrupted prompts: Mean over). Breaks the clean run "
                             "only (direction noise).",
                     "zero": "Zero ablation: replace the piece, in the clean run, by zeros. Breaks the clean run only "
                             "(direction noise)."})
    mean_set: str = setting(
        "others", choices=MEAN_SETS, label="Mean over", widget="select", reset=True, omit_default=True,
        applies=lambda s: s.corruption == "mean",
        cli="mean: the reference set the mean is taken over: others (the other prompts of the dataset, leave-one-out; "
            "the default) or corrupt (the dataset's corrupted prompts; --task ioi --ioi-corrupt abc: Wang et al.'s p_ABC)",
        explain="Which prompts the average is taken over: the other prompts of the dataset (never the prompt itself), "
                "or the broken prompts (for IOI with abc: sentences with three unrelated names, as Wang et al.).",
        options={"others": "others · the other prompts", "corrupt": "corrupt · the corrupted prompts"},
        option_help={"others": "The average over every other prompt of the dataset at the same position (leave-one-out).",
                     "corrupt": "The average over the dataset's corrupted prompts (IOI abc: Wang et al.'s p_ABC)."})
    noise_scale: float = setting(
        3.0, lo=0, hi=100, lo_open=True, step=0.5, label="Noise scale (× embedding std)", widget="number", reset=True,
        applies=_gn, cli="GN: noise std in units of the key embeddings' std; the papers use 3",
        explain="How strong the noise is, in multiples of a typical word-vector size (the papers use 3).")
    noise_samples: int = setting(
        10, lo=1, hi=MAX_NOISE_SAMPLES, label="Samples per prompt", widget="number", reset=True,
        applies=_sampled, cli="GN: noise samples per prompt; resample: resampled prompts per prompt (K)",
        explain="How many noisy copies (gn) or resampled other prompts (resample) of each prompt to average over.")
    key_positions: tuple[int, ...] | None = setting(
        None, kind="positions", label="Key positions", widget="text",
        applies=lambda s: s.pairs is not None and s.corruption == "gn",
        cli="GN, custom pairs: token positions to noise (BOS = 0), e.g. 3,4",
        explain="Which token positions to blur (0 is the start token). Empty: the positions where the two prompts differ.")
    # None: the task's default (default_metric: prob_diff for greater_than, else logit_diff), set on construction.
    metric: str = setting(
        None, kind="choice", choices=METRICS, in_key=False, label="Metric", group="Measurement", widget="select",
        cli="how a patch is scored (every metric is stored; this picks the value column); default: the task's "
            "(greater_than: prob_diff, Hanna et al.'s P(after) - P(before); the others: logit_diff)",
        explain="How the effect of a patch is scored.",
        options={"logit_diff": "logit_diff · preference", "prob": "prob · probability",
                 "logprob": "logprob · log-probability", "kl": "kl · whole prediction",
                 "prob_diff": "prob_diff · P(answer) − P(wrong)"},
        option_help={
            "logit_diff": "How strongly the right answer beats the wrong one, rescaled: 1 = as on the clean prompt, 0 = as on the broken one.",
            "prob": "The change in the probability of the right answer (0.05 = five percentage points).",
            "logprob": "The change in the log-probability of the right answer.",
            "kl": "How much closer the whole prediction moves to the run the patch comes from (KL divergence): to the clean one "
                  "under denoise, to the corrupted (or ablated) one under noise; negative = further from it. Not just the two answers.",
            "prob_diff": "The change in P(right answers) − P(wrong answers): for greater-than, P(a later year) − P(an earlier "
                         "year), the score of Hanna et al.",
        })
    direction: str = setting(
        "denoise", choices=DIRECTIONS, label="Direction", widget="radio",
        cli="denoise: clean activation into the corrupted run; noise: the reverse",
        explain="Fix the broken run with one clean piece, or break the clean run with one broken piece.",
        options={"denoise": "denoise · is it enough?", "noise": "noise · is it needed?"},
        option_help={
            "denoise": "Put one clean piece into the broken run: a big effect means the piece is enough (sufficient) to restore the answer.",
            "noise": "Put one broken piece into the clean run: a big effect means the piece is needed (necessary) for the answer.",
        })
    component: str = setting(
        "head", choices=COMPONENTS, label="Component", group="What to patch", widget="select",
        cli="which activations are patched, one at a time",
        explain="Which parts of the model are swapped, one at a time.",
        options={"head": "head · attention heads", "head_by_pos": "head_by_pos · heads × positions",
                 "resid_pre": "resid_pre · residual stream", "attn_out": "attn_out · attention output",
                 "mlp_out": "mlp_out · MLP output",
                 "head_q": "head_q · each head's queries", "head_k": "head_k · keys (per key/value group)",
                 "head_v": "head_v · values (per key/value group)", "head_pattern": "head_pattern · attention pattern",
                 "head_q_by_pos": "head_q_by_pos · queries × positions", "head_k_by_pos": "head_k_by_pos · keys × positions",
                 "head_v_by_pos": "head_v_by_pos · values × positions",
                 "head_pattern_by_pos": "head_pattern_by_pos · pattern × query position"},
        option_help={
            "head": "Each attention head, swapped at every position at once (layer × head map).",
            "head_by_pos": "Each attention head at each position separately (pick a position or a head to view).",
            "resid_pre": "The model's running state entering each layer, at each word (layer × position map).",
            "attn_out": "What each layer's attention adds, at each word (layer × position map).",
            "mlp_out": "What each layer's MLP adds, at each word (layer × position map).",
            "head_q": "Each head's queries (what it looks for), swapped at every position at once (layer × head map).",
            "head_k": "The keys (what each word offers to be found by) of each key/value group, at every position. On models "
                      "with grouped-query attention several heads share one group: the head axis counts groups.",
            "head_v": "The values (what each word passes on when attended to) of each key/value group, at every position; "
                      "the head axis counts key/value groups on grouped-query models.",
            "head_pattern": "Each head's attention pattern (where it looks), swapped whole (layer × head map).",
            "head_q_by_pos": "Each head's query at each position separately.",
            "head_k_by_pos": "Each key/value group's key at each position separately.",
            "head_v_by_pos": "Each key/value group's value at each position separately.",
            "head_pattern_by_pos": "Each head's attention pattern row of one query (destination) position.",
        })
    window: int = setting(
        1, lo=1, hi=MAX_WINDOW, label="Window (layers)", widget="number",
        applies=lambda s: s.component in WINDOW_COMPONENTS, cli="sliding window over layers (attn_out/mlp_out)",
        explain="Swap this many neighbouring layers together (1 = one layer at a time).")
    method: str = setting(
        "exact", choices=METHODS, label="Method", group="Method", widget="select", omit_default=True,
        cli="exact: one patched run per component; atp: attribution patching (one backward pass); "
            "atp_star: AtP* (GradDrop, exact softmax for q/k); ig: integrated gradients (--ig-steps)",
        explain="Patch every component for real (exact), or estimate every effect at once from gradients (fast, approximate).",
        options={"exact": "exact · patch each one", "atp": "atp · gradient estimate",
                 "atp_star": "atp_star · AtP* (GradDrop)", "ig": "ig · integrated gradients"},
        option_help={
            "exact": "One patched run per component: the true effect, slow for many components.",
            "atp": "Attribution patching (Nanda 2023): (source - base activation) x gradient, every component from one forward and one backward pass. First-order: poor where the model saturates.",
            "atp_star": "AtP* (Kramar et al. 2024): attribution patching with GradDrop (gradient through each layer dropped in turn) against cancellation, and for queries and keys the attention softmax recomputed exactly (saturation); the magnitude is GradDrop's, the sign AtP's.",
            "ig": "Integrated gradients along the path from the base run's input embeddings to the source run's (EAP-IG, Hanna et al. 2024): closer to exact, one pass per step.",
        })
    ig_steps: int = setting(
        IG_STEPS, lo=1, hi=MAX_IG_STEPS, label="IG steps", widget="number", reset=True, omit_default=True,
        applies=lambda s: s.method == "ig",
        cli=f"ig: interpolation steps (default {IG_STEPS}, as hannamw/EAP-IG's README calls it; its get_scores_eap_ig defaults to 30)",
        explain="How many points between the two prompts the gradient is averaged over: more steps, closer to exact, slower.")
    ig_rule: str = setting(
        IG_RULE, choices=IG_RULES, label="IG rule", widget="select", reset=True, omit_default=True,
        applies=lambda s: s.method == "ig",
        cli="ig: where the steps sit between the corrupted input (0) and the clean one (1): left = k/m, k = 0..m-1, "
            "hannamw/EAP-IG's left Riemann sum (default); midpoint = (k + 1/2)/m",
        explain="Where the points between the two prompts are taken: left reproduces the EAP-IG reference code; midpoint "
                "centres each step (a little closer to exact for the same number of steps).",
        options={"left": "left · as EAP-IG's code", "midpoint": "midpoint"})
    dtype: str = setting(
        "float32", choices=DTYPES, label="Precision", widget="select", omit_default=True,
        cli="the model's number format: float32 (the reference), bfloat16 or float16 (GPUs: half the memory, faster; "
            "numbers agree with float32 to the tolerance docs/scale-out.md states)",
        explain="How precisely the model computes: float32 is exact; bfloat16 and float16 halve the memory on a GPU and "
                "change the numbers slightly.",
        options={"float32": "float32 · reference", "bfloat16": "bfloat16 · half memory", "float16": "float16 · half memory"},
        option_help={"float32": "32-bit floats: the reference numbers (CPU and GPU).",
                     "bfloat16": "16-bit brain floats: float32's range, fewer digits; the usual choice on recent GPUs.",
                     "float16": "16-bit floats: more digits than bfloat16, a smaller range; for GPUs without bfloat16."})

    def __post_init__(self) -> None:
        if self.metric is None:  # the task's own default
            object.__setattr__(self, "metric", default_metric(self.task if self.pairs is None else None))

    # ------------------------------------------------------------ validation

    def validated(self) -> "Spec":
        """Check every field and return the canonical spec: fields that do not
        affect the computation are reset to their defaults, so equal
        computations hash equally. Idempotent, and free on a canonical spec."""
        if self.__dict__.get("_canonical"):
            return self
        if not isinstance(self.model, str) or not self.model.strip():
            raise PatchboardError("model", f"empty; use {EMBEDDED} or a hub id / local folder")
        if self.pairs is None and self.task is None:
            raise PatchboardError("task", f"give a task ({', '.join(TASKS)}) or custom pairs")
        if self.pairs is not None and self.task is not None:
            raise PatchboardError("pairs", "give either a task or custom pairs, not both")
        if self.pairs is not None and not 1 <= len(self.pairs) <= MAX_PAIRS:
            raise PatchboardError("pairs", f"{len(self.pairs)} pairs; give 1 to {MAX_PAIRS} (MAX_PAIRS)")
        if self.key_positions is not None:
            parse_positions(self.key_positions)  # bounded, whole numbers, in range
        changes: dict[str, Any] = {}
        for name, s in FIELDS.items():
            value = getattr(self, name)
            if s.kind in ("choice", "int", "float") and not (name == "task" and value is None):
                if name == "n_pairs" and self.pairs is not None:
                    changes[name] = len(self.pairs)  # the pairs' count, checked above
                    continue
                checked = s.check(value)
                if s.reset and not s.applies_to(self):
                    checked = s.default
                if checked is not value:
                    changes[name] = checked
        if self.method != "exact" and self.component not in ATTRIBUTION_COMPONENTS:
            raise PatchboardError("method", f"{self.method} estimates {', '.join(ATTRIBUTION_COMPONENTS)} so far; use method exact for {self.component}")
        if self.window > 1 and self.component not in WINDOW_COMPONENTS:
            raise PatchboardError("window", f"sliding windows apply to {' and '.join(WINDOW_COMPONENTS)}; set window=1 or pick one of those components")
        n = len(self.pairs) if self.pairs is not None else changes.get("n_pairs", self.n_pairs)
        mean_set = changes.get("mean_set", self.mean_set)
        if (self.corruption == "resample" or (self.corruption == "mean" and mean_set == "others")) and n < 2:
            what = ("each prompt's corrupted input is another prompt of the dataset" if self.corruption == "resample"
                    else "the mean over the other prompts of the dataset; or --mean-set corrupt")
            raise PatchboardError("n-pairs", f"{self.corruption} needs at least 2 pairs ({what}); ask for more pairs")
        if self.corruption in ABLATIONS and changes.get("direction", self.direction) == "denoise":
            raise PatchboardError("direction", f"{self.corruption} ablation is a noising intervention (a component's activation in the "
                                  f"clean run replaced by {'its mean' if self.corruption == 'mean' else 'zeros'}); there is no ablated run "
                                  "to restore clean activations into: use --direction noise, or a corruption with a second input "
                                  "(str, resample, gn) to denoise")
        if self.corruption in ABLATIONS and changes.get("method", self.method) == "ig":
            raise PatchboardError("method", f"ig integrates along the line between two inputs' embeddings; {self.corruption} ablation has no "
                                  "second input (EAP-IG's reference code refuses it too): use atp, atp_star or exact")
        if self.pairs is None and self.key_positions is not None:
            raise PatchboardError("key-positions", "key positions are set by the task; use them with custom pairs only")
        s = replace(self, **changes) if changes else self
        object.__setattr__(s, "_canonical", True)
        return s

    # ------------------------------------------------------------ identity

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = [pair_row(p) for p in self.pairs] if self.pairs is not None else None
        d["key_positions"] = list(self.key_positions) if self.key_positions is not None else None
        return d

    def compute_dict(self) -> dict[str, Any]:
        """The fields that change what is computed (``in_key``)."""
        d = self.to_dict()
        # Fields added later leave their default out, so older keys stay valid.
        return {k: v for k, v in d.items() if FIELDS[k].in_key and not (FIELDS[k].omit_default and v == FIELDS[k].default)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Spec":
        unknown = [k for k in d if k not in FIELDS]
        if unknown:
            raise PatchboardError(unknown[0].replace("_", "-"), "unknown setting; remove it")
        d = dict(d)
        if d.get("pairs") is not None:
            d["pairs"] = pairs_from_rows(d["pairs"])
        if d.get("key_positions") is not None:
            d["key_positions"] = parse_positions(d["key_positions"])
        return cls(**d)

    def cache_key(self, model_fingerprint: str, **extra: Any) -> str:
        """Canonical hash of what is computed, the weights and the engine;
        ``extra`` (a method's own request, e.g. receivers) joins the payload."""
        spec = self.validated()
        payload = {"spec": spec.compute_dict(), "model": model_fingerprint, "engine": ENGINE_VERSION, **definitions_key(spec), **extra}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def label(self) -> str:
        """Short human summary for lists and chart titles."""
        data = self.task if self.task else f"{len(self.pairs or ())} custom pair(s)"
        extra = f" ({self.ioi_corrupt})" if self.task == "ioi" else ""
        win = f", window {self.window}" if self.window > 1 else ""
        gn = (f" ×{self.noise_scale:g}σ, {self.noise_samples} samples" if self.corruption == "gn"
              else f" ×{self.noise_samples}" if self.corruption == "resample"
              else " over the corrupted prompts" if self.corruption == "mean" and self.mean_set == "corrupt" else "")
        method = "" if self.method == "exact" else f" · {self.method}" + (
            f" ({self.ig_steps} steps, {self.ig_rule})" if self.method == "ig" else "")
        dtype = "" if self.dtype == "float32" else f" · {self.dtype}"
        return f"{self.model} · {data}{extra} · n={self.n_pairs} · {self.corruption}{gn} · {self.direction} · {self.component}{win}{method}{dtype}"

    # ------------------------------------------------------------ URL / CLI

    def to_query(self) -> dict[str, str]:
        """URL query parameters (CLI flag names without dashes); defaults are
        written too, so a link pins the exact view even if defaults change."""
        q: dict[str, str] = {}
        for name, s in FIELDS.items():
            text = s.format(getattr(self, name))
            if text is not None:
                q[s.flag] = text
        return q

    @classmethod
    def from_query(cls, params: Mapping[str, Any]) -> "Spec":
        """Parse a URL query (values may be lists, as some frameworks give).
        Other pages' parameters are ignored. Raises PatchboardError naming the
        first bad parameter."""
        d: dict[str, Any] = {}
        for raw_key, raw in params.items():
            s = FIELDS.get(str(raw_key).replace("-", "_"))
            if s is None:
                continue
            if isinstance(raw, (list, tuple)):
                raw = raw[-1] if raw else ""
            d[s.name] = s.parse(str(raw))
        if "pairs" in d and "task" not in d:
            d["task"] = None
        return cls(**d).validated()

    def to_cli(self, command: str = "run", pairs_file: str = "pairs.jsonl", extra: list[str] | None = None,
               only: tuple[str, ...] | None = None) -> str:
        """The command line that reproduces this spec's numbers (the same
        flags as the URL; custom pairs are written to ``pairs_file``)."""
        import shlex

        parts = [f"python -m patching {command}"]
        for k, v in self.to_query().items():
            if only is not None and k.replace("-", "_") not in only:
                continue
            parts.append(f"--pairs {pairs_file}" if k == "pairs" else f"--{k} {shlex.quote(v)}")
        return " ".join(parts + list(extra or []))

    def with_(self, **changes) -> "Spec":
        return replace(self, **changes)


#: name -> Setting, in declaration order: the one field table.
FIELDS: dict[str, Setting] = table(Spec)


def definitions_key(spec: Spec) -> dict[str, str]:
    """The key's definitions entry: only a result whose numbers issue 20's
    definitions changed carries it (mean and zero ablation, the ``ig``
    method's Riemann rule), so every other key -- str, gn and resample exact
    sweeps, the shipped demo's -- is what it was."""
    changed = spec.corruption in ABLATIONS or spec.method == "ig"
    return {"definitions": DEFINITIONS_VERSION} if changed else {}
