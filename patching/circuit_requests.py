"""The circuit requests, every parameter declared once (as in :mod:`patching.requests`).

:class:`CircuitEval` evaluates one circuit: a set of edges of the path graph
(the circuit grammar of :mod:`patching.methods.circuit_graph`, a hypothesis
of :mod:`patching.methods.hypothesis_format` without positions, or an
EAP-IG / MIB graph JSON, :mod:`patching.methods.graph_json`) and the spec's
corruption as the ablation of every other edge. :class:`CircuitCurve` grows
circuits by score and evaluates each (:func:`patching.methods.circuit_curve.grow`).
Both declare their fields with :func:`patching.core.params.param`; the CLI
(``python -m patching circuit eval|curve``), the Circuits page's link and
widgets, the notebook and the key read those declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from patching.core.errors import PatchboardError
from patching.core.fields import table
from patching.core.params import Param, in_key, link_query, param
from patching.core.progress import ProgressFn
from patching.core.spec import ABLATIONS, DIRECTIONS, IG_RULE, IG_RULES, IG_STEPS, MAX_IG_STEPS, METRICS, Spec
from patching.methods.circuit_graph import GRIDS, RANKS, SCORINGS
from patching.methods.graph import Geometry
from patching.methods.hypothesis_format import hypothesis_spec
from patching.methods.path_request import data_label
from patching.results import Result

#: Bumped when circuit numbers change for the same inputs.
CIRCUITS_VERSION = "1"

__all__ = ["CircuitEval", "CircuitCurve", "CircuitsView", "CIRCUIT_FIELDS", "CURVE_FIELDS", "CIRCUITS_VIEW_FIELDS", "CIRCUITS_VERSION",
           "circuit_spec", "resolve_edges"]

#: Spec fields a circuit does not use: every metric is computed, the circuit
#: is always read as clean on its edges and ablated elsewhere.
SPEC_UNUSED = ("metric", "component", "window", "method", "ig_steps", "ig_rule", "direction")


def circuit_spec(spec: Spec) -> Spec:
    """The spec fields a circuit uses (a hypothesis' canonical spec: clean
    prompts on the circuit, the corruption everywhere else)."""
    return hypothesis_spec(spec)


def resolve_edges(text: Any, geo: Geometry, field_name: str = "edges"):
    """A circuit's text -> sorted edge indices: circuit grammar
    (``embed->5.1:q, 5.1->logits``), a hypothesis object or JSON (``paths``),
    or a graph JSON (``cfg``/``nodes``/``edges``: its in-graph edges)."""
    import numpy as np

    from patching.methods.circuit_graph import hypothesis_edges, parse_edges

    if isinstance(text, dict) or (isinstance(text, str) and text.lstrip()[:1] == "{"):
        obj = text
        if isinstance(text, str):
            if '"cfg"' in text[:4096] and '"edges"' in text:
                from patching.methods.graph_json import parse_graph

                return np.flatnonzero(parse_graph(text, geo).in_graph)
            from patching.methods.hypothesis_format import parse_text

            obj = parse_text(text, field_name)
        if isinstance(obj, dict) and "cfg" in obj:
            import json

            from patching.methods.graph_json import parse_graph

            return np.flatnonzero(parse_graph(json.dumps(obj), geo).in_graph)
        from patching.methods.hypothesis_format import parse

        return hypothesis_edges(parse(obj, geo, field_name), field_name)
    return parse_edges(text if text is not None else "", geo, field_name)


# ---------------------------------------------------------------- one circuit


@dataclass(frozen=True)
class CircuitEval:
    """One circuit's faithfulness and every metric, exactly (every edge
    outside it carries the ablated value; :mod:`patching.methods.circuit`)."""

    spec: Spec
    edges: Any = param(
        "", kind="circuit", label="Circuit: the edges kept",
        cli="the circuit's edges: SENDER->RECEIVER items (embed->5.1:q, 9.*->logits, *->* ...), comma or newline separated",
        explain="Edges SENDER->RECEIVER in the Paths grammar (embed, L.H, mlpL -> L.H:q|k|v, mlpL, logits; wildcards and ranges allowed), "
                "or a hypothesis JSON without positions, or an EAP-IG / MIB graph JSON. Every other edge carries the corrupted value.")
    parsed: Any = field(default=None, compare=False)  # sorted edge indices for the model's geometry
    digest: str = field(default="", compare=False)
    kind = "circuit"
    mode = "circuit"
    needs_geometry = True
    spec_unused = SPEC_UNUSED

    def canonical(self, geo: Geometry) -> "CircuitEval":
        from patching.methods.circuit_graph import canonical_text, digest

        ids = resolve_edges(self.edges, geo)
        plain = isinstance(self.edges, str) and self.edges.lstrip()[:1] != "{"
        text = self.edges if plain else canonical_text(ids, geo)
        return CircuitEval(circuit_spec(self.spec), text, tuple(int(e) for e in ids), digest(ids, geo))

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> "CircuitEval":
        spec = Spec.from_query({k: v for k, v in params.items() if k not in CIRCUIT_NAMES + CURVE_NAMES + VIEW_NAMES})
        raw = CIRCUIT_FIELDS["edges"].raw(params)
        return cls(spec, CIRCUIT_FIELDS["edges"].parse(raw) if raw is not None else "")

    @classmethod
    def from_meta(cls, spec: Spec, meta: Mapping[str, Any]) -> "CircuitEval":
        """The evaluation a stored row answers (parsed with the geometry by
        ``canonical``); KeyError when its meta lacks the edges."""
        return cls(circuit_spec(spec), meta["edges"])

    def key_extra(self) -> dict[str, Any]:
        return {"kind": self.kind, "edges": self.digest, "circuits": CIRCUITS_VERSION}

    def label(self, res: Result) -> str:
        f = float(res.table["logit_diff"].iloc[0])
        return f"circuit of {len(self.parsed)} edges (faithfulness {f:.2f}) · {data_label(self.spec, False)}"

    def query(self) -> dict[str, str]:
        return {"mode": self.mode, **link_query(CIRCUIT_FIELDS, self)}

    def cli_args(self, file: str = "circuit.txt") -> list[str]:
        """``python -m patching circuit eval`` flags besides the spec's (the edges saved as ``file``)."""
        return ["--edges-file", file]

    def params(self) -> dict[str, Any]:
        return {"edges": self.digest, "n_edges": len(self.parsed or ())}

    def compute(self, lm, ds, progress: ProgressFn | None) -> Result:
        from patching.methods.circuit_curve import evaluate_circuit

        return evaluate_circuit(self.spec, lm, ds, list(self.parsed), progress)


# ---------------------------------------------------------------- curves


@dataclass(frozen=True)
class CircuitCurve:
    """Circuits grown by score: the top-n edges for a grid of n and random
    circuits of each size, each evaluated exactly on held-out prompts
    (:func:`patching.methods.circuit_curve.grow`)."""

    spec: Spec
    scoring: str = param(
        "eap", choices=SCORINGS, label="Edge scores",
        cli="how every edge is scored: eap (edge attribution patching), eap_ig (EAP-IG), exact (each edge's direct path; small models only)",
        explain="EAP scores every edge from one forward and one backward pass; EAP-IG averages the gradients along the way from the "
                "corrupted to the clean input; exact runs one patched pass per edge (small models only).",
        options={"eap": "EAP (gradients)", "eap_ig": "EAP-IG (integrated gradients)", "exact": "exact (one run per edge)"})
    score_direction: str = param(
        "noise", choices=DIRECTIONS, label="Scored at",
        cli="noise (default): the edge's effect of being corrupted in the clean run (EAP's gradient at the clean run, as EAP-IG's "
            "reference scores); denoise: of being restored in the corrupted run",
        options={"noise": "the clean run (EAP-IG's reference)", "denoise": "the corrupted run"})
    ig_steps: int = param(IG_STEPS, lo=1, hi=MAX_IG_STEPS, label="IG steps", reset=True, applies=lambda r: r.scoring == "eap_ig",
                          cli=f"eap_ig: interpolation steps (default {IG_STEPS})")
    ig_rule: str = param(IG_RULE, choices=IG_RULES, label="IG rule", reset=True, applies=lambda r: r.scoring == "eap_ig",
                         cli="eap_ig: left = k/m, k = 0..m-1 (hannamw/EAP-IG's get_scores_eap_ig, the default); midpoint = (k + 1/2)/m",
                         options={"left": "left · as EAP-IG's code", "midpoint": "midpoint"})
    score_seed: int = param(
        -1, lo=-1, hi=2**31 - 1, label="Scoring seed",
        cli="seed of the prompts the edges are scored on: -1 (default) the evaluation seed + 1 (held out; prompts shared with the "
            "evaluation set are left out); the evaluation seed itself scores in-sample",
        explain="The edges are ranked on other prompts than the ones the circuits are measured on, so the curve is not in-sample.")
    grid: str = param("log", choices=GRIDS, label="Circuit sizes",
                      cli="log: --points sizes log-spaced from 1 edge to all; mib: MIB's 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 percent",
                      options={"log": "log-spaced", "mib": "MIB's percentages"})
    points: int = param(20, lo=2, hi=64, label="Sizes", reset=True, applies=lambda r: r.grid == "log",
                        cli="log grid: how many circuit sizes (default 20)")
    random: int = param(20, lo=0, hi=200, label="Random circuits per size",
                        cli="random circuits of each size, the baseline band (default 20)")
    rank: str = param("abs", choices=RANKS, label="Rank edges by",
                      cli="abs: |score| (EAP-IG's topn default, MIB's CMD); signed: the score, edges that carry the behaviour first (MIB's CPR)",
                      options={"abs": "|score|", "signed": "score (signed)"})
    score_metric: str = param("logit_diff", choices=METRICS, label="Score by",
                              cli="the metric each edge's score estimates (default logit_diff, as MIB)")
    kind = "circuit_curve"
    mode = "curve"
    needs_geometry = False
    spec_unused = SPEC_UNUSED

    def canonical(self, geo: Geometry | None) -> "CircuitCurve":
        changes: dict[str, Any] = {}
        for name, s in CURVE_FIELDS.items():
            if s.kind in ("choice", "int"):
                changes[name] = s.check(getattr(self, name)) if s.applies_to(self) else s.default
        spec = circuit_spec(self.spec)
        seed = changes["score_seed"]
        if spec.pairs is not None:
            seed = spec.seed
        elif seed == -1:
            seed = (spec.seed + 1) % 2**31
        changes["score_seed"] = seed
        if changes["scoring"] == "eap_ig" and spec.corruption in ABLATIONS:
            raise PatchboardError("scoring", "eap_ig interpolates between the corrupted and the clean input; mean and zero ablation have "
                                  "no corrupted input: use eap or exact")
        if changes["score_direction"] == "denoise" and spec.corruption in ABLATIONS:
            raise PatchboardError("score-direction", f"{spec.corruption} ablation is a noising intervention: edges are scored at the "
                                  "clean run (--score-direction noise)")
        return replace(self, spec=spec, **changes)

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> "CircuitCurve":
        spec = Spec.from_query({k: v for k, v in params.items() if k not in CIRCUIT_NAMES + CURVE_NAMES + VIEW_NAMES})
        vals = {}
        for name, s in CURVE_FIELDS.items():
            raw = s.raw(params)
            if raw is not None:
                vals[name] = s.check(s.parse(raw))
        return cls(spec, **vals)

    @classmethod
    def from_meta(cls, spec: Spec, meta: Mapping[str, Any]) -> "CircuitCurve":
        return cls(circuit_spec(spec), **{name: meta["request"][name] for name in CURVE_FIELDS})

    def params(self) -> dict[str, Any]:
        return in_key(CURVE_FIELDS, self)

    def key_extra(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params(), "circuits": CIRCUITS_VERSION}

    def label(self, res: Result) -> str:
        how = {"eap": "EAP", "eap_ig": f"EAP-IG {self.ig_steps} steps, {self.ig_rule} rule", "exact": "exact"}[self.scoring]
        return f"circuit curve ({how}, {len(res.meta.get('sizes', []))} sizes x {self.random} random) · {data_label(self.spec, False)}"

    def query(self) -> dict[str, str]:
        return {"mode": self.mode, **link_query(CURVE_FIELDS, self)}

    def cli_args(self) -> list[str]:
        out = []
        for name, v in self.params().items():
            out += [f"--{CURVE_FIELDS[name].flag}", CURVE_FIELDS[name].format(v)]
        return out

    def compute(self, lm, ds, progress: ProgressFn | None) -> Result:
        from patching.methods.circuit_curve import grow

        res = grow(self.spec, lm, ds, scoring=self.scoring, direction=self.score_direction, ig_steps=self.ig_steps,
                   score_seed=self.score_seed, points=self.points, grid=self.grid, draws=self.random, rank=self.rank,
                   metric=self.score_metric, progress=progress, ig_rule=self.ig_rule)
        res.meta["request"] = {name: getattr(self, name) for name in CURVE_FIELDS}
        return res


# ---------------------------------------------------------------- how the Circuits page shows them


@dataclass(frozen=True)
class CircuitsView:
    """How the Circuits page (and ``python -m patching circuit``) shows a
    result: none of these enters a key."""

    mode: str = param("curve", choices=("curve", "circuit"), in_key=False, label="What to do",
                      options={"curve": "Grow circuits by edge score", "circuit": "Evaluate a circuit"})
    n: int = param(0, lo=0, hi=10_000_000, in_key=False, label="Circuit shown (edges)",
                   cli="the top-n circuit to draw and export (0: the knee of the curve)")
    edge: str = param("", kind="text", in_key=False, label="Edge", cli="an edge of the drawn circuit, SENDER->RECEIVER, to show on its own")
    check: Any = param("", kind="circuit", in_key=False, label="Your circuit or hypothesis, on the curve",
                       explain="Edges in the circuit grammar or a hypothesis JSON without positions: it is evaluated on the same "
                               "prompts and drawn as a point on the curve.")


#: name -> Param, in declaration order.
CIRCUIT_FIELDS: dict[str, Param] = table(CircuitEval)
CURVE_FIELDS: dict[str, Param] = table(CircuitCurve)
CIRCUITS_VIEW_FIELDS: dict[str, Param] = table(CircuitsView)
CIRCUIT_NAMES: tuple[str, ...] = tuple(n for s in CIRCUIT_FIELDS.values() for n in s.names)
CURVE_NAMES: tuple[str, ...] = tuple(n for s in CURVE_FIELDS.values() for n in s.names)
VIEW_NAMES: tuple[str, ...] = tuple(n for s in CIRCUITS_VIEW_FIELDS.values() for n in s.names)
