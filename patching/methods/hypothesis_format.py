"""Hypotheses made of paths (Goldowsky-Dill et al., "Localizing Model Behavior
with Path Patching", 2023): the file format and its resolution into edges.

The hypothesis file
-------------------
A small JSON (or YAML) object::

    {
      "format": "patchboard.hypothesis/1",
      "name": "induction",                      # optional
      "description": "free text",               # optional
      "paths": [
        {"sender": "embed", "receiver": "4.3:v"},
        {"sender": "2.1", "receiver": "4.3", "input": "k", "positions": ["A_LAST"]},
        {"sender": ["embed", "2.1"], "receiver": ["4.3:q", "4.3:v"], "positions": "all"},
        {"path": ["embed", "2.1:*", "4.3:k", "logits"]},
        {"sender": "4.3", "receiver": "logits", "positions": "END"}
      ]
    }

Each entry is an **edge** (or several): a sender node (``embed``, ``L.H``,
``mlpL``) writing through the residual skip into one receiver input
(``L.H:q|k|v``, ``mlpL``, ``logits``; see :mod:`patching.methods.graph`, including
what ``k``/``v`` mean under grouped-query attention), at ``positions`` of the
residual stream (``"all"``, the default; token indices, BOS = 0, negative from
the end; or role names of the task such as ``END``, ``S2``, ``A_LAST``, looked up
per pair). ``receiver`` plus ``input`` is the same as ``"L.H:input"``.
``sender``/``receiver`` may be lists and use wildcards (``*``, ``3.*``,
``2-4.*:k``, ``mlp*``); a list or wildcard entry means every (sender,
receiver) pair in which the receiver comes after the sender (others are
skipped). A ``path`` entry is a chain ``node, receiver, receiver, ...``:
each receiver's node sends to the next (``"2.1:*"`` receives on q, k and v
and then sends as ``2.1``); ``positions`` applies to each of its edges.
Naming a single sender and receiver where the receiver does not come after
the sender, or a head or layer the model does not have, is an error naming
the entry.

No torch here: a hypothesis from a link or a file is parsed and resolved
(for the cache key) from the model's geometry alone. G_H is in
:mod:`patching.methods.hypothesis`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import pandas as pd

from patching.core.codec import json_depth, loads_bounded
from patching.core.errors import PatchboardError, shown
from patching.core.limits import MAX_EDGES, MAX_JSON_DEPTH, MAX_LIST_ITEMS, MAX_NODES, MAX_TEXT_CHARS, check_text, read_user_file
from patching.core.spec import ABLATIONS, Spec
from patching.methods.graph import (
    EMBED,
    Geometry,
    Node,
    Receiver,
    node_ports,
    parse_nodes,
    parse_position_spec,
    parse_receivers,
    position_text,
)

FORMAT = "patchboard.hypothesis/1"
DELTAS = ("kl", "loss", "logit_diff", "token_loss")
_ENTRY_KEYS = {"sender", "receiver", "input", "positions", "path", "note"}
_TOP_KEYS = {"format", "name", "description", "paths", "model", "derived", "notes"}


# ---------------------------------------------------------------- the format


@dataclass(frozen=True)
class Edge:
    sender: Node
    receiver: Receiver
    positions: tuple[int | str, ...] | None = None  # None = every position


@dataclass
class Hypothesis:
    """A parsed hypothesis: the file's entries (kept for display and for
    saving) and the resolved, de-duplicated edges for one model geometry."""

    name: str
    description: str
    entries: list[dict]
    edges: list[Edge]
    geo: Geometry
    warnings: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "name": self.name, "description": self.description, "paths": self.entries}
        d.update(self.extra)
        return d

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def canonical(self) -> str:
        """The resolved edge set, sorted: equal computations, equal strings."""
        return ";".join(f"{e.sender}>{e.receiver.label(self.geo)}@{position_text(e.positions)}" for e in self.edges)

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def edges_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"sender": str(e.sender), "receiver": e.receiver.label(self.geo), "positions": position_text(e.positions)} for e in self.edges],
            columns=["sender", "receiver", "positions"],
        )


def parse_text(text: str, field_name: str = "hypothesis") -> dict:
    """JSON (or YAML) text -> the hypothesis object."""
    if not isinstance(text, str) or not text.strip():
        raise PatchboardError(field_name, "empty; give a JSON object with a \"paths\" list")
    check_text(text, field_name, MAX_TEXT_CHARS, "hypothesis text", "MAX_TEXT_CHARS")
    if json_depth(text) > MAX_JSON_DEPTH:  # YAML nests too; bounded before either parser runs
        raise PatchboardError(field_name, f"nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH); flatten it")
    try:
        obj = loads_bounded(text, field_name) if text.lstrip()[:1] in "[{" else json.loads(text)
    except PatchboardError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, or Python's integer-digit limit
        try:
            obj = yaml_load(text)
        except PatchboardError as refused:
            raise PatchboardError(field_name, refused.message) from None
        except Exception:  # noqa: BLE001 - any other YAML failure is "not a mapping"
            obj = None
        if not isinstance(obj, dict):
            where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
            raise PatchboardError(field_name, f"not valid JSON ({where}) nor a YAML mapping; see the format in patching/methods/hypothesis_format.py") from None
    if not isinstance(obj, dict):
        raise PatchboardError(field_name, "expected a JSON object with a \"paths\" list")
    check_nodes(obj, field_name)
    return obj


def yaml_load(text: str) -> Any:
    """YAML text -> plain values, with PyYAML's safe constructors and three
    refusals (PatchboardError): anchors and aliases (``&a`` / ``*a``: an alias
    shares a node, so 275 bytes of nested aliases stood for 783 MB once
    printed or serialised), a key given twice in one mapping, and more than
    MAX_NODES values (counted while composing, before any value is built)."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        nodes = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                mark = getattr(event, "start_mark", None)
                where = f" (line {mark.line + 1})" if mark is not None else ""
                raise PatchboardError("hypothesis", f"YAML anchors and aliases (&name, *name) are not allowed{where}; write each value out")
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise PatchboardError("hypothesis", f"more than {MAX_NODES} values (MAX_NODES); shorten it")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: set = set()
                for key_node, _ in node.value:
                    k = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                    if k in seen:
                        raise PatchboardError("hypothesis", f"the key {shown(k, 40)} appears twice in one mapping; keep one")
                    seen.add(k)
            return super().construct_mapping(node, deep)

    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_nodes(obj: Any, field_name: str = "hypothesis") -> int:
    """The number of values in a parsed document, refusing more than
    MAX_NODES (walked iteratively, stopping at the bound)."""
    stack, n = [obj], 0
    while stack:
        x = stack.pop()
        n += 1
        if n > MAX_NODES:
            raise PatchboardError(field_name, f"more than {MAX_NODES} values (MAX_NODES); shorten it")
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return n


def load_file(path: str) -> dict:
    """CLI only: the app never reads a path named by a user."""
    return parse_text(read_user_file(path, "hypothesis"))


def _is_wild(s: Any) -> bool:
    return not isinstance(s, str) or "*" in s or "-" in s.split(":")[0]


def parse(obj: dict | str, geo: Geometry, field_name: str = "hypothesis") -> Hypothesis:
    """Validate and resolve a hypothesis for a model geometry. Errors are one
    line naming the entry: unknown heads/layers, a receiver not after its
    sender, unknown keys or inputs, bad positions."""
    if isinstance(obj, str):
        obj = parse_text(obj, field_name)
    elif isinstance(obj, dict):
        check_nodes(obj, field_name)  # an object from a stored row or a bundle: bounded the same way
    if not isinstance(obj, dict):
        raise PatchboardError(field_name, "expected a JSON object with a \"paths\" list")
    unknown = [k for k in obj if k not in _TOP_KEYS]
    if unknown:
        raise PatchboardError(field_name, f"unknown key {shown(unknown[0], 40)}; the keys are {', '.join(sorted(_TOP_KEYS))}")
    fmt = obj.get("format", FORMAT)
    if fmt != FORMAT:
        raise PatchboardError(field_name, f"format {shown(fmt, 40)} is not {FORMAT!r}")
    paths = obj.get("paths")
    if not isinstance(paths, list):
        raise PatchboardError(field_name, "\"paths\" must be a list of entries such as {\"sender\": \"embed\", \"receiver\": \"5.1:q\"} (it may be empty)")
    name = obj.get("name") or "hypothesis"
    desc = obj.get("description") or ""
    if not isinstance(name, str) or not isinstance(desc, str):
        raise PatchboardError(field_name, "\"name\" and \"description\" must be strings")
    check_text(name, field_name, 200, "name", "200 characters")
    check_text(desc, field_name, 10_000, "description", "10,000 characters")
    if len(paths) > MAX_LIST_ITEMS:
        raise PatchboardError(field_name, f"{len(paths)} path entries; the limit is {MAX_LIST_ITEMS} (MAX_LIST_ITEMS); use wildcards")
    edges: dict[tuple[Node, Receiver], tuple | None] = {}
    entries: list[dict] = []
    work = 0
    for i, entry in enumerate(paths, 1):
        where = f"path {i}"
        if not isinstance(entry, dict):
            raise PatchboardError(field_name, f"{where}: expected an object such as {{\"sender\": \"embed\", \"receiver\": \"5.1:q\"}}, got {shown(entry)}")
        bad = [k for k in entry if k not in _ENTRY_KEYS]
        if bad:
            raise PatchboardError(field_name, f"{where}: unknown key {shown(bad[0], 40)}; an entry has sender, receiver, input, positions (or path, positions)")
        pos = parse_position_spec(entry.get("positions"), field_name, where)
        for s_nodes, recvs, explicit, pair_text in _entry_edges(entry, geo, field_name, where):
            work += len(s_nodes) * len(recvs)
            if work > 10 * MAX_EDGES:  # bounds before work: the pairs to check, not only the edges kept
                raise PatchboardError(field_name, f"{where}: the entries name more than {10 * MAX_EDGES} sender-receiver pairs (10 x MAX_EDGES); use fewer wildcards")
            valid = 0
            for s in s_nodes:
                for r in recvs:
                    if r.reads(s, geo.n_layers):
                        key = (s, r)
                        edges[key] = _union(edges[key], pos) if key in edges else pos
                        valid += 1
                    elif explicit:
                        raise PatchboardError(field_name, f"{where}: receiver {r.label(geo)} is not after sender {s} (an input reads only what earlier layers wrote: embed < layer L heads < mlpL < layer L+1 < logits)")
            if not valid:
                raise PatchboardError(field_name, f"{where}: no receiver in {pair_text[1]} comes after any sender in {pair_text[0]}; a receiver reads only earlier layers")
        entries.append({k: entry[k] for k in entry})
        if len(edges) > MAX_EDGES:
            raise PatchboardError(field_name, f"{where}: the hypothesis has more than {MAX_EDGES} edges; use fewer wildcards")
    resolved = sorted(
        (Edge(s, r, p) for (s, r), p in edges.items()),
        key=lambda e: (e.receiver.sort_key(geo.n_layers), e.sender.sort_key()),
    )
    hyp = Hypothesis(name=name, description=desc, entries=entries, edges=resolved, geo=geo,
                     extra={k: obj[k] for k in ("model", "derived", "notes") if k in obj})
    hyp.warnings = _graph_warnings(hyp)
    return hyp


def _union(a, b):
    if a is None or b is None:
        return None
    return tuple(sorted(set(a) | set(b), key=lambda x: (isinstance(x, str), x if isinstance(x, int) else 0, str(x))))


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _entry_edges(entry: dict, geo: Geometry, field_name: str, where: str):
    """Yield (sender nodes, receivers, explicit?, (sender text, receiver text))."""
    if "path" in entry:
        if "sender" in entry or "receiver" in entry or "input" in entry:
            raise PatchboardError(field_name, f"{where}: give either \"path\" or \"sender\"/\"receiver\", not both")
        chain = entry["path"]
        if not isinstance(chain, list) or not 2 <= len(chain) <= MAX_LIST_ITEMS or not all(isinstance(x, str) for x in chain):
            raise PatchboardError(field_name, f"{where}: \"path\" must be a list of at least two strings, e.g. [\"embed\", \"2.1:*\", \"4.3:k\", \"logits\"]")
        senders = parse_nodes(chain[0].split(":")[0], geo, field_name, f"{where}, item 1")
        sender_text = chain[0]
        for j, item in enumerate(chain[1:], 2):
            recvs = parse_receivers(item, geo, field_name, f"{where}, item {j}")
            yield senders, recvs, not (_is_wild(sender_text) or _is_wild(item)), (sender_text, item)
            if j < len(chain):
                if item.strip() == "logits":
                    raise PatchboardError(field_name, f"{where}: logits must be the last item of a path")
                senders = parse_nodes(item.split(":")[0], geo, field_name, f"{where}, item {j}")
                sender_text = item
        return
    if "sender" not in entry or "receiver" not in entry:
        raise PatchboardError(field_name, f"{where}: needs \"sender\" and \"receiver\" (or \"path\")")
    s_items, r_items = _as_list(entry["sender"]), _as_list(entry["receiver"])
    if len(s_items) > MAX_LIST_ITEMS or len(r_items) > MAX_LIST_ITEMS:
        raise PatchboardError(field_name, f"{where}: more than {MAX_LIST_ITEMS} senders or receivers (MAX_LIST_ITEMS); use wildcards")
    if not s_items or not r_items:
        raise PatchboardError(field_name, f"{where}: empty sender or receiver list")
    inp = entry.get("input")
    if inp is not None and inp not in ("q", "k", "v", "*"):
        raise PatchboardError(field_name, f"{where}: input {shown(inp, 20)} is not q, k, v or *")
    found: dict[Node, None] = {}
    for s in s_items:
        found.update(dict.fromkeys(parse_nodes(s, geo, field_name, where)))
    senders = list(found)
    recvs_found: dict[Receiver, None] = {}
    for r in r_items:
        if not isinstance(r, str):
            raise PatchboardError(field_name, f"{where}: receiver {shown(r)} is not a string such as 5.1:q")
        text = r.strip()
        if inp is not None:
            if ":" in text:
                raise PatchboardError(field_name, f"{where}: receiver {shown(text)} already names its input; drop \"input\" or write {shown(text.split(':')[0])[1:-1]}")
            if text.startswith("mlp") or text in ("logits", "*"):
                raise PatchboardError(field_name, f"{where}: \"input\" applies to head receivers (L.H), not {shown(text)}")
            text = f"{text}:{inp}"
        recvs_found.update(dict.fromkeys(parse_receivers(text, geo, field_name, where)))
    recvs = list(recvs_found)
    explicit = len(s_items) == 1 and len(r_items) == 1 and not _is_wild(s_items[0]) and not _is_wild(r_items[0])
    yield senders, recvs, explicit, (", ".join(map(str, s_items)), ", ".join(map(str, r_items)))


def live_nodes(edges: Sequence[Edge], geo: Geometry) -> set[Node]:
    """Nodes whose G_H value can differ from x_c: reached from embed by listed edges."""
    into: dict[Receiver, list[Node]] = {}
    for e in edges:
        into.setdefault(e.receiver, []).append(e.sender)
    live = {EMBED}
    for l in range(geo.n_layers):
        for n in [Node("head", l, h) for h in range(geo.n_heads)] + [Node("mlp", l)]:
            if any(s in live for p in node_ports(n, geo) for s in into.get(p, ())):
                live.add(n)
    return live


def _graph_warnings(h: Hypothesis) -> list[str]:
    geo = h.geo
    live = live_nodes(h.edges, geo)
    dead = sorted({e.sender for e in h.edges if e.sender not in live}, key=Node.sort_key)
    out = []
    if dead:
        names = ", ".join(map(str, dead[:6])) + (f" and {len(dead) - 6} more" if len(dead) > 6 else "")
        out.append(f"no listed path reaches {names} from embed, so their edges carry the counterfactual value (no effect); add edges into them, e.g. {{\"sender\": \"embed\", \"receiver\": \"{dead[0]}:*\"}}" if dead[0].kind == "head"
                   else f"no listed path reaches {names} from embed, so their edges carry the counterfactual value (no effect)")
    # Nodes that never reach the logits through listed edges.
    useful: set[Node] = set()
    readers: dict[Node, list[Receiver]] = {}
    for e in h.edges:
        readers.setdefault(e.sender, []).append(e.receiver)
    order = sorted(readers, key=Node.sort_key, reverse=True)
    for n in order:
        for r in readers[n]:
            if r.port == "logits" or any(Node("head", r.layer, hh) in useful for hh in r.heads(geo)) or (r.port == "mlp" and Node("mlp", r.layer) in useful):
                useful.add(n)
                break
    stuck = sorted({e.sender for e in h.edges if e.sender in live and e.sender not in useful}, key=Node.sort_key)
    if stuck:
        names = ", ".join(map(str, stuck[:6])) + (f" and {len(stuck) - 6} more" if len(stuck) > 6 else "")
        out.append(f"{names} reach no logits through listed edges, so the paths through them end nowhere; add e.g. {{\"sender\": \"{stuck[-1]}\", \"receiver\": \"logits\"}}")
    if h.edges and not any(e.receiver.port == "logits" for e in h.edges):
        out.append("no edge goes into logits, so every path is unimportant (G_H = G(x_c))")
    kv = sorted({e.receiver for e in h.edges if e.receiver.port in ("k", "v")}, key=lambda r: r.sort_key(geo.n_layers))
    if kv and geo.gqa:
        out.append(f"grouped-query attention: a k/v receiver is its KV group's input, shared by {geo.group_size} query heads ({', '.join(r.describe(geo) for r in kv[:3])}{' ...' if len(kv) > 3 else ''})")
    return out




def hypothesis_spec(spec: Spec) -> Spec:
    """x_r is the clean prompt and x_c its counterfactual in every case: the
    direction, component, window and metric do not apply. (The direction is
    kept canonical: ``denoise``, or ``noise`` under mean and zero ablation,
    which are noising only: x_c is then the ablated value of every node.)"""
    return replace(spec, component="head", window=1, direction="noise" if spec.corruption in ABLATIONS else "denoise",
                   method="exact").validated()
