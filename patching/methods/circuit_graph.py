"""Circuits as edge sets: the edge index of a model's graph, the circuit
grammar, pruning, and the circuits a path patch or a hypothesis stands for.

The graph is the Paths page's (:mod:`patching.methods.graph`): senders
``embed``, ``L.H``, ``mlpL``; receivers ``L.H:q``, ``L.H:k|v`` (the KV group's
input on grouped-query models), ``mlpL``, ``logits``; an edge ``s->r`` exists
when ``r`` reads ``s`` (it comes later). :class:`EdgeIndex` numbers every edge
of a geometry once, receiver by receiver in graph order and, within a
receiver, sender by sender (70,651 edges on the embedded SmolLM2). A circuit
is a set of those numbers.

The circuit grammar
-------------------
Comma- or newline-separated items ``SENDER->RECEIVER`` (``→`` also reads as
``->``), each side in the Paths grammar with its wildcards and ranges:
``embed->*`` (every edge out of embed), ``9.*->logits``, ``mlp*->10-11.*:q``,
``*->*`` (every edge). An item names every (sender, receiver) pair of its two
sides in which the receiver reads the sender; an item with one sender and one
receiver that cannot connect is an error naming the item. ``#`` starts a
comment. The canonical text lists every edge as ``s->r`` in index order.

Pruning
-------
:func:`prune` is EAP-IG's ``Graph.prune`` (Hanna et al.): a node is *reached*
when some circuit edge from a reached sender enters one of its inputs
(``embed`` is always reached); an edge whose sender is not reached carries
nothing -- the sender keeps its ablated value -- and is dropped; a node that
reaches ``logits`` through no circuit edge feeds nothing that is read, and the
edges into it are dropped too. :func:`patching.methods.circuit.evaluate`
evaluates the pruned circuit, so a circuit and its pruned form give the same
numbers (exactly the edges EAP-IG's ``evaluate_graph`` keeps).

No torch here: a link's circuit is parsed and canonicalised from the model's
geometry alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np

from patching.core.errors import PatchboardError
from patching.core.limits import MAX_EDGES, MAX_PARAM_CHARS, MAX_TEXT_CHARS, check_text
from patching.methods.graph import EMBED, Geometry, Node, Receiver, all_receivers, node_ports, parse_nodes, parse_receivers

_ARROW = re.compile(r"\s*(?:->|→)\s*")

#: How a curve scores edges: EAP, EAP-IG (gradients) or the exact direct path of every edge.
SCORINGS = ("eap", "eap_ig", "exact")
#: MIB's circuit sizes, as fractions of every edge (``evaluate_area_under_curve``).
MIB_PERCENTAGES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: A curve's sizes (log-spaced, or MIB's) and how edges are ranked.
GRIDS = ("log", "mib")
RANKS = ("abs", "signed")


@dataclass(frozen=True, eq=False)  # one per geometry (cached): hashed by identity
class EdgeIndex:
    """Every edge of one geometry, numbered: ``sender[e]``, ``receiver[e]``
    index :attr:`senders` (graph order: embed, then per layer its heads and
    its MLP) and :attr:`receivers` (per layer its q, k, v inputs and its MLP
    input, then logits). Edges are grouped by receiver, in receiver order."""

    geo: Geometry
    senders: tuple[Node, ...]
    receivers: tuple[Receiver, ...]
    sender: np.ndarray = field(repr=False)  # [E] int32
    receiver: np.ndarray = field(repr=False)  # [E] int32
    starts: np.ndarray = field(repr=False)  # [n_receivers + 1]: receiver r's edges are starts[r]:starts[r+1]

    @staticmethod
    def of(geo: Geometry) -> "EdgeIndex":
        return _index(geo)

    @property
    def n_edges(self) -> int:
        return int(self.sender.shape[0])

    def sender_of(self, node: Node) -> int:
        return self._s_pos[node]

    def receiver_of(self, r: Receiver) -> int:
        return self._r_pos[r]

    def receiver_of_port(self, port: str, layer: int, index: int = -1) -> int:
        return self._r_pos[Receiver(port, self.geo.n_layers if port == "logits" else layer, index)]

    def edge(self, s: Node, r: Receiver) -> int:
        """The index of edge s -> r; KeyError when r does not read s."""
        ri = self._r_pos[r]
        si = self._s_pos[s]
        if si >= self.n_readable(ri):
            raise KeyError((s, r))
        return int(self.starts[ri]) + si

    def n_readable(self, ri: int) -> int:
        """How many senders receiver ``ri`` reads (a prefix of the sender order)."""
        return int(self.starts[ri + 1] - self.starts[ri])

    def label(self, e: int) -> str:
        return f"{self.senders[self.sender[e]]}->{self.receivers[self.receiver[e]].label(self.geo)}"

    def labels(self, ids: Iterable[int]) -> list[str]:
        return [self.label(int(e)) for e in ids]

    @property
    def _s_pos(self) -> dict[Node, int]:
        return _positions(self)[0]

    @property
    def _r_pos(self) -> dict[Receiver, int]:
        return _positions(self)[1]

    def node_of_receiver(self) -> np.ndarray:
        """[n_receivers] the sender index of the node each receiver feeds (the
        first head of its group for k/v; -1 for logits)."""
        return _receiver_nodes(self)


def graph_senders(geo: Geometry) -> list[Node]:
    out = [EMBED]
    for l in range(geo.n_layers):
        out += [Node("head", l, h) for h in range(geo.n_heads)] + [Node("mlp", l)]
    return out


@lru_cache(maxsize=16)
def _index(geo: Geometry) -> EdgeIndex:
    senders = graph_senders(geo)
    receivers = all_receivers(geo)
    per_layer = geo.n_heads + 1
    counts = []
    for r in receivers:
        if r.port == "logits":
            counts.append(len(senders))
        elif r.port == "mlp":
            counts.append(1 + r.layer * per_layer + geo.n_heads)
        else:
            counts.append(1 + r.layer * per_layer)
    starts = np.zeros(len(receivers) + 1, dtype=np.int64)
    starts[1:] = np.cumsum(counts)
    sender = np.concatenate([np.arange(c, dtype=np.int32) for c in counts])
    receiver = np.repeat(np.arange(len(receivers), dtype=np.int32), counts)
    return EdgeIndex(geo, tuple(senders), tuple(receivers), sender, receiver, starts)


@lru_cache(maxsize=16)
def _positions(ix: EdgeIndex) -> tuple[dict[Node, int], dict[Receiver, int]]:
    return {n: i for i, n in enumerate(ix.senders)}, {r: i for i, r in enumerate(ix.receivers)}


@lru_cache(maxsize=16)
def _receiver_nodes(ix: EdgeIndex) -> np.ndarray:
    geo = ix.geo
    out = np.full(len(ix.receivers), -1, dtype=np.int64)
    for i, r in enumerate(ix.receivers):
        if r.port == "mlp":
            out[i] = ix.sender_of(Node("mlp", r.layer))
        elif r.port != "logits":
            out[i] = ix.sender_of(Node("head", r.layer, r.heads(geo)[0]))
    return out


# ---------------------------------------------------------------- the grammar


def parse_edges(text: Any, geo: Geometry, field: str = "edges") -> np.ndarray:
    """A circuit's text (see the module doc) -> sorted unique edge indices.
    Bounded before work: the text's size, each item's, and the pairs an item
    names; errors name the item."""
    ix = EdgeIndex.of(geo)
    if isinstance(text, (list, tuple)):
        items = [str(t) for t in text]
        if len(items) > MAX_EDGES:
            raise PatchboardError(field, f"{len(items)} items; the limit is {MAX_EDGES} (MAX_EDGES); use wildcards")
    else:
        if not isinstance(text, str):
            raise PatchboardError(field, f"expected edges such as embed->5.1:q, 5.1->logits; got {type(text).__name__}")
        check_text(text, field, MAX_TEXT_CHARS, "circuit text", "MAX_TEXT_CHARS")
        lines = [ln.split("#", 1)[0] for ln in text.splitlines()]
        items = [t for ln in lines for t in ln.replace(";", ",").split(",")]
    chosen = np.zeros(ix.n_edges, dtype=bool)
    n_items = 0
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        n_items += 1
        if n_items > MAX_EDGES:
            raise PatchboardError(field, f"more than {MAX_EDGES} items (MAX_EDGES); use wildcards such as 9.*->logits")
        if len(item) > MAX_PARAM_CHARS:
            raise PatchboardError(field, f"an item of {len(item)} characters; the limit is {MAX_PARAM_CHARS} (MAX_PARAM_CHARS)")
        where = f"edge {n_items} ({item[:60]})"
        parts = _ARROW.split(item)
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise PatchboardError(field, f"{where}: write SENDER->RECEIVER, e.g. embed->5.1:q, 5.1->logits or 9.*->logits")
        nodes = parse_nodes(parts[0], geo, field, where)
        recvs = parse_receivers(parts[1], geo, field, where)
        any_valid = False
        for r in recvs:
            ri = ix.receiver_of(r)
            n_read = ix.n_readable(ri)
            si = np.fromiter((ix.sender_of(n) for n in nodes), dtype=np.int64, count=len(nodes))
            ok = si[si < n_read]
            if len(ok):
                chosen[int(ix.starts[ri]) + ok] = True
                any_valid = True
        if not any_valid:
            if len(nodes) == 1 and len(recvs) == 1:
                raise PatchboardError(field, f"{where}: receiver {recvs[0].label(geo)} does not read sender {nodes[0]} (an input reads only what "
                                      "earlier layers wrote: embed < layer L heads < mlpL < layer L+1 < logits)")
            raise PatchboardError(field, f"{where}: no receiver in {parts[1]} reads any sender in {parts[0]}")
    return np.flatnonzero(chosen)


def canonical_text(ids: Iterable[int], geo: Geometry) -> str:
    """Every edge as ``s->r``, comma-separated, in index order."""
    ix = EdgeIndex.of(geo)
    return ",".join(ix.label(int(e)) for e in sorted(set(int(e) for e in ids)))


def digest(ids: Iterable[int], geo: Geometry) -> str:
    """A short fingerprint of an edge set on a geometry (its key)."""
    ix = EdgeIndex.of(geo)
    mask = np.zeros(ix.n_edges, dtype=bool)
    mask[np.asarray(list(ids), dtype=np.int64)] = True
    h = hashlib.sha256(f"{geo.n_layers}.{geo.n_heads}.{geo.n_kv}:".encode() + np.packbits(mask).tobytes())
    return h.hexdigest()[:24]


def as_mask(ids: Iterable[int], n_edges: int) -> np.ndarray:
    m = np.zeros(n_edges, dtype=bool)
    m[np.asarray(list(ids), dtype=np.int64)] = True
    return m


# ---------------------------------------------------------------- pruning


def node_inputs(ix: EdgeIndex) -> list[list[int]]:
    """Per sender, the receivers that feed it (a head: its q, its group's k
    and v; an MLP: its input; embed: none)."""
    return _node_inputs(ix)


@lru_cache(maxsize=16)
def _node_inputs(ix: EdgeIndex) -> list[list[int]]:
    geo = ix.geo
    out: list[list[int]] = [[] for _ in ix.senders]
    for ri, r in enumerate(ix.receivers):
        if r.port == "mlp":
            out[ix.sender_of(Node("mlp", r.layer))].append(ri)
        elif r.port in ("q", "k", "v"):
            for h in r.heads(geo):
                out[ix.sender_of(Node("head", r.layer, h))].append(ri)
    return out


def reached(masks: np.ndarray, ix: EdgeIndex) -> np.ndarray:
    """[C, n_senders] bool: the nodes each circuit reaches from embed (a node
    is reached when a circuit edge from a reached sender enters one of its
    inputs). ``masks``: [C, E] bool."""
    masks = np.atleast_2d(masks)
    C = masks.shape[0]
    live = np.zeros((C, len(ix.senders)), dtype=bool)
    live[:, 0] = True
    feeds = node_inputs(ix)
    # Senders come in graph order and a receiver reads only earlier senders,
    # so one pass in order settles every node.
    active = np.zeros((C, len(ix.receivers)), dtype=bool)
    done_r = np.zeros(len(ix.receivers), dtype=bool)
    for si in range(1, len(ix.senders)):
        for ri in feeds[si]:
            if not done_r[ri]:
                a, b = int(ix.starts[ri]), int(ix.starts[ri + 1])
                active[:, ri] = (masks[:, a:b] & live[:, : b - a]).any(1)
                done_r[ri] = True
            live[:, si] |= active[:, ri]
    return live


def useful(masks: np.ndarray, ix: EdgeIndex) -> tuple[np.ndarray, np.ndarray]:
    """([C, n_senders], [C, n_receivers]) bool: the nodes from which a path
    of circuit edges reaches logits, and the receivers that feed such a node
    (logits always counts). Read backwards: a node is useful when a circuit
    edge goes from it into a useful receiver."""
    masks = np.atleast_2d(masks)
    C = masks.shape[0]
    n_s = len(ix.senders)
    use = np.zeros((C, n_s), dtype=bool)
    recv_useful = np.zeros((C, len(ix.receivers)), dtype=bool)
    recv_useful[:, -1] = True
    n_read = np.diff(ix.starts)
    feeds = node_inputs(ix)
    # Every reader of sender s feeds a later node, settled before s.
    for si in range(n_s - 1, -1, -1):
        readers = np.flatnonzero(n_read > si)
        use[:, si] = (masks[:, ix.starts[readers] + si] & recv_useful[:, readers]).any(1)
        for ri in feeds[si]:
            recv_useful[:, ri] |= use[:, si]
    return use, recv_useful


def prune(masks: np.ndarray, ix: EdgeIndex) -> np.ndarray:
    """EAP-IG's prune, for each circuit (``masks`` [C, E] or [E] bool): keep
    an edge when its sender is reached from embed and the receiver feeds a
    node that reaches logits (or is logits). One pass settles it: both
    conditions are read on the circuit as given, and dropping an edge that
    fails either changes neither for the edges kept."""
    m = np.atleast_2d(masks)
    live = reached(m, ix)
    _, recv_ok = useful(m, ix)
    out = m & live[:, ix.sender] & recv_ok[:, ix.receiver]
    return out if np.ndim(masks) == 2 else out[0]


# ---------------------------------------------------------------- circuits of other things


def path_circuit(s: Node, r: Receiver, geo: Geometry) -> np.ndarray:
    """The circuit whose evaluation is the exact direct-path patch of the edge
    s -> r (:func:`patching.methods.paths.sweep` with that sender and
    receiver): the edge itself; every edge into the sender and into every
    earlier node, so the sender carries its clean value; and every edge out of
    the receiver's node and every later node, so the receiver's change
    propagates as in a normally continued run. For ``embed -> logits`` it is
    the edge alone."""
    ix = EdgeIndex.of(geo)
    e = ix.edge(s, r)
    recv_order = np.array([rr.order(geo.n_layers) for rr in ix.receivers])
    send_order = np.array([n.order() for n in ix.senders])
    m = np.zeros(ix.n_edges, dtype=bool)
    m[e] = True
    if s.kind != "embed":
        own = {ix.receiver_of(p) for p in node_ports(s, geo)}
        upstream = np.array([tuple(o) < s.order() or i in own for i, o in enumerate(recv_order)])
        m |= upstream[ix.receiver]
    if r.port != "logits":
        start = (r.layer, 1 if r.port == "mlp" else 0)
        later = np.array([tuple(o) >= start for o in send_order])
        m |= later[ix.sender]
    return m


def hypothesis_edges(hyp: Any, field: str = "hypothesis") -> np.ndarray:
    """A parsed hypothesis (:mod:`patching.methods.hypothesis_format`) as a
    circuit: its edges, which must hold at every position (circuits, like
    EAP-IG's and MIB's, are position-agnostic)."""
    ix = EdgeIndex.of(hyp.geo)
    at = [e for e in hyp.edges if e.positions is not None]
    if at:
        raise PatchboardError(field, f"edge {at[0].sender}->{at[0].receiver.label(hyp.geo)} holds only at some positions; a circuit's edges hold "
                              "at every position (as in EAP-IG and MIB): drop \"positions\", or evaluate it on the Paths page")
    return np.array(sorted(ix.edge(e.sender, e.receiver) for e in hyp.edges), dtype=np.int64)


def to_hypothesis(ids: Sequence[int], geo: Geometry, name: str = "circuit", description: str = "") -> dict:
    """A circuit as a hypothesis object (one entry per receiver, its senders
    listed), which the Paths page evaluates with the same G_H."""
    ix = EdgeIndex.of(geo)
    by_recv: dict[int, list[str]] = {}
    for e in sorted(int(x) for x in ids):
        by_recv.setdefault(int(ix.receiver[e]), []).append(str(ix.senders[ix.sender[e]]))
    paths = [{"sender": s if len(s) > 1 else s[0], "receiver": ix.receivers[r].label(geo)} for r, s in by_recv.items()]
    return {"format": "patchboard.hypothesis/1", "name": name, "description": description, "paths": paths}
