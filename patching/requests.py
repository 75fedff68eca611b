"""The requests the service answers, every parameter declared once.

A request is a :class:`~patching.core.spec.Spec` plus a method's own
parameters: :class:`Activation` (the spec alone), :class:`PathSweep` (senders
into receivers), :class:`HypothesisEval` (a hypothesis made of paths), and
the circuit kinds declared in :mod:`patching.circuit_requests`
(:class:`CircuitEval`, :class:`CircuitCurve`). Each
parameter is a dataclass field declared as the Spec's are
(:mod:`patching.core.params`): ``name: type = param(default, ...)`` with its
kind, bounds or choices, help texts, whether it enters the cache key and the
old names a link may still use. Everything else reads that declaration: the
CLI's flags (``--sender-positions``), the URL's parameters
(``?sender-positions=``: the flag without its dashes), the Paths page's
widgets, the notebook export, validation (:meth:`PathSweep.canonical`) and
the key (:meth:`PathSweep.key_extra`).

Each request also knows its canonical form, its label, how to compute
itself and how to rebuild itself from a stored row (``from_meta``), so a
stored result links back to the view that shows it. The service
(:mod:`patching.service`) does lookup, compute and store the same way for all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from patching.core.fields import table
from patching.core.params import Param, in_key, link_query, param
from patching.core.limits import MAX_PAIRS
from patching.core.progress import ProgressFn
from patching.core.spec import DEFINITIONS_VERSION, IG_RULE, IG_RULES, IG_STEPS, MAX_IG_STEPS, Spec
from patching.methods.graph import ALL, Geometry
from patching.methods.hypothesis_format import DELTAS, hypothesis_spec
from patching.methods.path_request import FORMS, PATH_METHODS, SweepRequest, check_edge_runs, check_method, data_label, paths_spec
from patching.results import Result

#: Bumped when path-patching numbers change for the same inputs (for the
#: definitions of issue 20 see :func:`definitions_extra`: they re-key only the
#: results they changed, so the direct form's keys stay).
PATHS_VERSION = "1"

__all__ = ["Activation", "PathSweep", "HypothesisEval", "CircuitEval", "CircuitCurve", "PathsView", "Request", "as_request", "request_of",
           "PATH_FIELDS", "PATH_NAMES", "HYPOTHESIS_FIELDS", "VIEW_FIELDS", "PATHS_VERSION"]


# ---------------------------------------------------------------- activation sweeps


@dataclass(frozen=True)
class Activation:
    """An activation-patching sweep: the spec says everything."""

    spec: Spec
    kind = "activation"
    mode = None
    spec_unused = ()

    def canonical(self, geo: Geometry | None) -> "Activation":
        return replace(self, spec=self.spec.validated())

    def key_extra(self) -> dict[str, Any]:
        return {}

    def label(self, res: Result) -> str:
        return self.spec.label()

    def query(self) -> dict[str, str]:
        """The link's parameters besides the spec's: none."""
        return {}

    def params(self) -> dict[str, Any]:
        return {}

    @property
    def splittable(self) -> bool:
        """Whether an executor may farm slices of the cells (exact, unwindowed sweeps)."""
        return self.spec.method == "exact" and self.spec.window == 1

    def compute(self, lm, ds, progress: ProgressFn | None, part: tuple[int, int] | None = None) -> Result:
        if self.spec.method != "exact":
            from patching.methods.attribution import compute as attribute

            return attribute(self.spec, lm, ds, progress)
        from patching.methods.activation import compute

        return compute(self.spec, lm, ds, progress, part=part)


# ---------------------------------------------------------------- path sweeps

RECEIVERS_HELP = (
    "comma list of receivers: LAYER.HEAD:q|k|v|* (a head's query/key/value input; on grouped-query models "
    "k/v is the input of the head's KV group), mlpLAYER (an MLP's input), logits (the final residual stream), "
    "* (every input); layers/heads may be * or a range a-b, e.g. 9-11.*:q"
)


@dataclass(frozen=True)
class PathSweep:
    """Every sender reaching the output only through ``receivers``
    (:mod:`patching.methods.paths`), or its estimate from gradients
    (``method`` eap / eap_ig: :mod:`patching.methods.edges`)."""

    spec: Spec
    receivers: str = param(
        "logits", kind="text", label="Receivers", cli=RECEIVERS_HELP,
        explain="Comma list: LAYER.HEAD:q|k|v|* (a head's query/key/value input), mlpLAYER (an MLP's input), "
                "logits (the final residual stream), * (every input). Layers and heads may be * or a range a-b, "
                "e.g. 9-11.*:q. On grouped-query models, :k and :v are the input of the head's KV group.")
    senders: str = param(
        "*", kind="text", label="Senders", cli="comma list of senders: embed, LAYER.HEAD, mlpLAYER, * (default: all)",
        explain="embed, LAYER.HEAD, mlpLAYER or * (every node); comma list, ranges allowed.")
    sender_positions: str = param(
        ALL, kind="text", label="Sender positions", aliases=("sender-pos",),
        cli="positions of the senders' writes: all, token indices (BOS = 0) or role names such as END, S2",
        explain="Where the senders' writes are patched: all, token indices (BOS = 0) or the task's roles (END, S2, IO...).")
    by_pos: bool = param(False, in_link=False, cli="one row per sender and position")
    form: str = param(
        "direct", choices=FORMS, omit_default=True, label="Form",  # direct keys stay as they were before the Wang form
        cli="direct: Patchboard's joint direct paths, the sender's write difference into every receiver's own input in one run; "
            "tl_direct: TransformerLens's get_act_patch_direct_path, one receiver per run (a row per sender -> receiver edge); "
            "wang: Wang et al.'s three steps (every other head frozen, MLPs recomputed; each receiver set to its base input "
            "plus that difference)",
        explain="direct: the sender's change is added to every receiver's own input at once. tl_direct: to one receiver at a "
                "time (TransformerLens's get_act_patch_direct_path; one row per sender and receiver). wang: Wang et al.'s "
                "recipe, where the change also travels through the MLPs before reaching the receivers.",
        options={"direct": "direct · all receivers at once", "tl_direct": "tl_direct · one receiver per run (TransformerLens)",
                 "wang": "wang · Wang et al. (through the MLPs)"})
    method: str = param(
        "exact", choices=PATH_METHODS, omit_default=True, label="Method", aliases=("path-method",),  # exact keys stay as they were
        cli="exact: one patched run per sender (default); eap: edge attribution patching, every sender estimated from one "
            "forward and backward pass (Syed et al.); eap_ig: its integrated-gradients form (Hanna et al.). Direct form only",
        explain="exact: one patched run per sender. EAP (Syed et al.): every sender → receiver edge estimated to first order "
                "from one forward and one backward pass. EAP-IG (Hanna et al.): the gradients averaged along the path from "
                "the base run's input embeddings to the source run's. Both estimate the direct form.",
        options={"exact": "exact", "eap": "EAP (gradients)", "eap_ig": "EAP-IG (gradients)"})
    ig_steps: int = param(
        IG_STEPS, lo=1, hi=MAX_IG_STEPS, label="IG steps", aliases=("eap-steps",), reset=True,
        applies=lambda r: r.method == "eap_ig",
        cli=f"eap_ig: interpolation steps (default {IG_STEPS}, as hannamw/EAP-IG's README calls it; get_scores_eap_ig defaults to 30)")
    ig_rule: str = param(
        IG_RULE, choices=IG_RULES, omit_default=True, label="IG rule", reset=True, applies=lambda r: r.method == "eap_ig",
        cli="eap_ig: the points between the corrupted input (0) and the clean one (1): left = k/m, k = 0..m-1, "
            "hannamw/EAP-IG's left Riemann sum (default); midpoint = (k + 1/2)/m",
        options={"left": "left · as EAP-IG's code", "midpoint": "midpoint"})
    kind = "paths"
    mode = "sweep"
    needs_geometry = True
    #: Spec fields a path sweep does not use (``paths_spec`` resets them; its command takes no flag for them).
    spec_unused = ("component", "window", "method", "ig_steps", "ig_rule")

    def canonical(self, geo: Geometry) -> "PathSweep":
        """Every parameter checked against its declaration and the model's
        geometry, in canonical form (so equal sweeps hash equally)."""
        where = SweepRequest.make(geo, self.receivers, self.senders, self.sender_positions, self.by_pos)
        changes: dict[str, Any] = {}
        for name, s in PATH_FIELDS.items():
            if s.kind in ("choice", "int"):
                changes[name] = s.check(getattr(self, name)) if s.applies_to(self) else s.default
        check_method(changes["method"], changes["form"], changes["ig_steps"], self.spec.corruption)  # an estimate needs the direct form
        check_edge_runs(geo, changes["form"], where.receivers, where.senders)
        return replace(self, spec=paths_spec(self.spec), receivers=where.receivers, senders=where.senders,
                       sender_positions=where.sender_positions, by_pos=where.by_pos, **changes)

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> "PathSweep":
        """The sweep a Paths page link opens: its spec from the spec's
        parameters, each declared parameter from its URL name (an old name
        wins: a link written before the rename also carried the spec's own
        ``method`` and ``ig-steps``). Raises PatchboardError naming the first
        bad parameter."""
        spec = Spec.from_query({k: v for k, v in params.items() if k not in PATH_NAMES})
        vals = {}
        for name, s in PATH_FIELDS.items():
            raw = s.raw(params) if s.in_link else None
            if raw is not None:
                vals[name] = s.check(s.parse(raw))
        return cls(spec, **vals)

    @classmethod
    def from_meta(cls, spec: Spec, meta: Mapping[str, Any]) -> "PathSweep":
        """The (canonical) sweep a stored row answers, from its spec and meta;
        KeyError when the meta lacks a parameter every sweep records."""
        vals = {name: meta.get(name, s.default) if (s.omit_default or s.reset) else meta[name] for name, s in PATH_FIELDS.items()}
        return cls(paths_spec(spec), **(vals | {"by_pos": bool(vals["by_pos"])}))

    def params(self) -> dict[str, Any]:
        """The parameters that change what is computed (the key's, by name)."""
        return in_key(PATH_FIELDS, self)

    def key_extra(self) -> dict[str, Any]:
        return {"kind": "paths", **self.params(), "paths": PATHS_VERSION, **definitions_extra(self)}

    def label(self, res: Result) -> str:
        how = {"eap": " (EAP)", "eap_ig": f" (EAP-IG, {self.ig_steps} steps, {self.ig_rule})"}.get(
            self.method, {"wang": " (Wang form)", "tl_direct": " (TransformerLens form, per edge)"}.get(self.form, ""))
        return f"paths{how} {self.senders} → {self.receivers} · {data_label(self.spec)}"

    def query(self) -> dict[str, str]:
        """The Paths page's link parameters besides the spec's."""
        return {"mode": self.mode, **link_query(PATH_FIELDS, self)}

    def cli_args(self) -> list[str]:
        """``python -m patching paths`` flags besides the spec's: the ones
        that change what is computed, and the receivers always."""
        out = []
        for name, v in ({"receivers": self.receivers} | self.params()).items():
            s = PATH_FIELDS[name]
            if s.kind == "bool":
                out += [f"--{s.flag}"] if v else []
            else:
                out += [f"--{s.flag}", s.format(v)]
        return out

    def compute(self, lm, ds, progress: ProgressFn | None) -> Result:
        pos = None if self.sender_positions == ALL else self.sender_positions
        if self.method != "exact":
            from patching.methods.edges import sweep as estimate

            return estimate(self.spec, lm, ds, self.receivers, pos, self.by_pos, progress, senders=self.senders, method=self.method,
                            ig_steps=self.ig_steps, ig_rule=self.ig_rule)
        from patching.methods.paths import sweep

        return sweep(self.spec, lm, ds, self.receivers, pos, self.by_pos, progress, senders=self.senders, form=self.form)

    def exact(self) -> "PathSweep":
        """The exact sweep this one estimates."""
        return replace(self, method="exact", ig_steps=IG_STEPS, ig_rule=IG_RULE)


def definitions_extra(req: PathSweep) -> dict[str, str]:
    """The key's definitions entry of a path sweep whose numbers issue 20's
    definitions changed: the Wang form (step 3 reads base inputs) and EAP-IG
    (its Riemann rule). Mean and zero ablation re-key through the spec
    (:func:`patching.core.spec.definitions_key`); the direct form's keys, and
    the shipped demo's, stay."""
    return {"definitions": DEFINITIONS_VERSION} if req.form == "wang" or req.method == "eap_ig" else {}


# ---------------------------------------------------------------- hypotheses


@dataclass(frozen=True)
class HypothesisEval:
    """AUE, ATE and proportion explained of a hypothesis made of paths
    (:mod:`patching.methods.hypothesis`). ``hypothesis``: its JSON text or
    object, or a parsed :class:`~patching.methods.hypothesis_format.Hypothesis`."""

    spec: Spec
    hypothesis: Any = param(
        None, kind="hypothesis", label="Hypothesis (JSON): the important paths",
        cli="a hypothesis JSON (or YAML) file, e.g. examples/induction.json",
        explain="Entries {\"sender\", \"receiver\", \"input\", \"positions\"} or {\"path\": [...]}; see the format in "
                "patching/methods/hypothesis_format.py. Wildcards: *, 3.*, 2-4.*:k, mlp*.")
    parsed: Any = field(default=None, compare=False)
    kind = "hypothesis"
    mode = "hypothesis"
    needs_geometry = True
    #: Spec fields an evaluation does not use (its command takes no flag for them).
    spec_unused = ("metric", "component", "window", "method", "ig_steps", "ig_rule")

    def canonical(self, geo: Geometry) -> "HypothesisEval":
        from patching.methods.hypothesis_format import Hypothesis, parse

        h = self.hypothesis if isinstance(self.hypothesis, Hypothesis) else parse(self.hypothesis, geo)
        return HypothesisEval(hypothesis_spec(self.spec), self.hypothesis, h)

    @classmethod
    def from_meta(cls, spec: Spec, meta: Mapping[str, Any]) -> "HypothesisEval":
        """The evaluation a stored row answers (not yet parsed: that needs the
        model's geometry); KeyError when the meta lacks its hypothesis."""
        return cls(hypothesis_spec(spec), meta["hypothesis"])

    def key_extra(self) -> dict[str, Any]:
        # The hypothesis enters the key as its canonical edges, not its text.
        return {"kind": "hypothesis", "edges": self.parsed.canonical(), "paths": PATHS_VERSION}

    def label(self, res: Result) -> str:
        k = res.row("kl")
        return f"hypothesis {self.parsed.name} ({len(self.parsed.edges)} edges, {k['proportion_explained']:.0%} of KL) · {data_label(self.spec, False)}"

    def text(self) -> Any:
        """The hypothesis as a link or a notebook carries it: the text as
        given, else the parsed hypothesis' object."""
        if isinstance(self.hypothesis, (str, dict)):
            return self.hypothesis
        return self.parsed.to_dict() if self.parsed is not None else self.hypothesis.to_dict()

    def cli_args(self, file: str = "hypothesis.json") -> list[str]:
        """``python -m patching hypothesis`` flags besides the spec's (the
        hypothesis saved as ``file``)."""
        return [f"--{HYPOTHESIS_FIELDS['hypothesis'].flag}", file]

    def query(self) -> dict[str, str]:
        """The Paths page's link parameters besides the spec's."""
        h = self.parsed.to_dict() if self.parsed is not None else self.text()
        return {"mode": self.mode, "example": "custom", "hypothesis": HYPOTHESIS_FIELDS["hypothesis"].format(h)}

    def compute(self, lm, ds, progress: ProgressFn | None) -> Result:
        from patching.methods.hypothesis import evaluate

        return evaluate(self.spec, lm, ds, self.parsed, progress=progress)

    def params(self) -> dict[str, Any]:
        return {"edges": self.parsed.canonical(), "hypothesis": self.parsed.to_dict()}


# ---------------------------------------------------------------- how the Paths page shows them


@dataclass(frozen=True)
class PathsView:
    """How the Paths page (and ``python -m patching hypothesis``) shows a
    result: none of these enters a key."""

    mode: str = param("sweep", choices=("sweep", "hypothesis"), in_key=False, label="What to do",
                      options={"sweep": "Sweep senders → receivers", "hypothesis": "Test a hypothesis"})
    example: str = param("induction", choices=("induction", "ioi", "custom"), in_key=False, label="Start from",
                         options={"induction": "Induction (derived example)", "ioi": "IOI (derived example)", "custom": "My own (edit below)"},
                         explain="The examples were derived by the tool's own sweeps on the embedded model (see each one's description).")
    delta: str = param("kl", choices=DELTAS, in_key=False, label="δ (how far G_H is from the model)",
                       cli="δ: mean KL (default), |Δ loss| of the answer, |Δ logit difference|, or token_loss: mean |Δ per-token loss| over every position",
                       options={"kl": "mean KL (recommended)", "loss": "|Δ loss| of the answer", "logit_diff": "|Δ logit difference|",
                                "token_loss": "mean |Δ per-token loss| (every position)"})
    pair: int = param(0, lo=0, hi=MAX_PAIRS - 1, in_key=False, label="Pair for the attribution", aliases=("attribution",),
                      cli="also print the signed per-token attribution for this pair index")


#: name -> Param, in declaration order: the one table of each request.
PATH_FIELDS: dict[str, Param] = table(PathSweep)
HYPOTHESIS_FIELDS: dict[str, Param] = table(HypothesisEval)
VIEW_FIELDS: dict[str, Param] = table(PathsView)
#: Every URL name a path sweep's parameters take (old names too): on a
#: Paths link the ``method`` and ``ig-steps`` are the sweep's, not the Spec's.
PATH_NAMES: tuple[str, ...] = tuple(n for s in PATH_FIELDS.values() for n in s.names)

from patching.circuit_requests import CircuitCurve, CircuitEval  # noqa: E402 (the circuit kinds, declared in their own module)

Request = Activation | PathSweep | HypothesisEval | CircuitEval | CircuitCurve


def as_request(x: Any) -> Request:
    return Activation(x) if isinstance(x, Spec) else x


def request_of(kind: str, spec: Spec, meta: Mapping[str, Any]) -> Request:
    """The request a stored row (its kind, spec and meta) answers; KeyError
    when its meta lacks what that kind records."""
    if kind == "paths":
        return PathSweep.from_meta(spec, meta)
    if kind == "hypothesis":
        return HypothesisEval.from_meta(spec, meta)
    if kind == "circuit":
        return CircuitEval.from_meta(spec, meta)
    if kind == "circuit_curve":
        return CircuitCurve.from_meta(spec, meta)
    return Activation(spec)
