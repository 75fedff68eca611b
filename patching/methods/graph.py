"""The path-patching graph: nodes, receivers, positions, and their grammar.

What a sweep asks for besides these (its canonical request, the methods and
forms, the spec fields it uses) is in :mod:`patching.methods.path_request`.

Nodes and receivers
-------------------
A **node** writes into the residual stream: ``embed`` (the token, plus
positional, embedding), a head ``L.H`` (its write is ``z_H @ W_O[H]``, through the post-attention norm where there is one: patching/engine/head_write.py) or an
MLP ``mlpL`` (its ``hook_mlp_out``). A **receiver** is one input that reads the
residual stream through its own copy of it:

=============  ================================================================
``L.H:q``      head H's query input at layer L (``blocks.L.attn.hook_q_input``
               with ``use_split_qkv_input``: each head's own pre-norm copy)
``L.H:k``      its key input; ``L.H:v`` its value input (see GQA below)
``L.H:*``      shorthand for the three
``mlpL``       MLP L's input (``blocks.L.hook_resid_mid``, i.e. ``ln2``'s
               input, before the norm; the residual skip is untouched)
``logits``     the final residual stream, before ``ln_final``
=============  ================================================================

Layers and heads may be ``*`` or a range ``a-b`` (``3-5.*:k``, ``mlp*``), and
``*`` alone means every receiver. A receiver reads a sender only if it comes
after it: embed < layer L's heads < MLP L < layer L+1's heads < ... < logits.
Norms belong to the receiver (each copy is normalised on its own).

Grouped-query attention
-----------------------
On a GQA model (the embedded SmolLM2 has 9 query heads and 3 key/value
heads) there is no per-query-head key or value: the model computes one key and
one value per KV group and every query head of the group reads them. The
receiver ``L.H:k`` (or ``:v``) therefore means **the key (value) input of H's
KV group**, shared by the group's query heads; it is written with the group's
first head (``10.4:k`` -> ``10.3:k`` when heads 3-5 share a group) and
:meth:`Receiver.describe` says so. TransformerLens's
``get_act_patch_direct_path`` refuses k/v on GQA for that reason; patching
the group's input is the exact intervention the model admits. Queries stay
per head.

No torch here: a link's receivers and senders are parsed and canonicalised
(for the cache key) from the model's config, before any model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from patching.core.errors import PatchboardError, shown
from patching.core.limits import MAX_INT_DIGITS, MAX_POSITIONS, bounded_items, check_int_text, max_prompt_tokens

PORTS = ("q", "k", "v", "mlp", "logits")


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    n_heads: int
    n_kv: int

    @staticmethod
    def of(lm) -> "Geometry":
        cfg = lm.cfg
        n_heads = int(cfg.n_heads)
        kv = getattr(cfg, "n_key_value_heads", None) or n_heads
        return Geometry(int(cfg.n_layers), n_heads, int(kv))

    @property
    def gqa(self) -> bool:
        return self.n_kv != self.n_heads

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv

    def group(self, head: int) -> int:
        return head // self.group_size

    def group_heads(self, group: int) -> range:
        return range(group * self.group_size, (group + 1) * self.group_size)


@dataclass(frozen=True, order=True)
class Node:
    """A writer into the residual stream."""

    kind: str  # "embed" | "head" | "mlp"
    layer: int = -1
    head: int = -1

    def order(self) -> tuple[int, int]:
        return (-1, 0) if self.kind == "embed" else (self.layer, 0 if self.kind == "head" else 1)

    def __str__(self) -> str:
        return "embed" if self.kind == "embed" else f"{self.layer}.{self.head}" if self.kind == "head" else f"mlp{self.layer}"

    def sort_key(self) -> tuple[int, int, int]:
        return (*self.order(), self.head)


EMBED = Node("embed")


@dataclass(frozen=True)
class Receiver:
    """One input that reads the residual stream. ``index`` is the head for
    ``q``, the KV group for ``k``/``v`` (= the head without GQA), -1 otherwise."""

    port: str  # q | k | v | mlp | logits
    layer: int
    index: int = -1

    def order(self, n_layers: int) -> tuple[int, int]:
        if self.port == "logits":
            return (n_layers, 0)
        return (self.layer, 1 if self.port == "mlp" else 0)

    def reads(self, node: Node, n_layers: int) -> bool:
        return node.order() < self.order(n_layers)

    def label(self, geo: Geometry) -> str:
        if self.port == "logits":
            return "logits"
        if self.port == "mlp":
            return f"mlp{self.layer}"
        head = self.index * geo.group_size if self.port in ("k", "v") else self.index
        return f"{self.layer}.{head}:{self.port}"

    def describe(self, geo: Geometry) -> str:
        lab = self.label(geo)
        if self.port in ("k", "v") and geo.gqa:
            hs = geo.group_heads(self.index)
            return f"{lab} (the {'key' if self.port == 'k' else 'value'} input of KV group {self.index}, shared by query heads {self.layer}.{hs[0]}-{self.layer}.{hs[-1]})"
        return lab

    def sort_key(self, n_layers: int) -> tuple:
        return (*self.order(n_layers), PORTS.index(self.port), self.index)

    def heads(self, geo: Geometry) -> list[int]:
        """The query heads whose computation reads this input."""
        if self.port == "q":
            return [self.index]
        if self.port in ("k", "v"):
            return list(geo.group_heads(self.index))
        return []


# ---------------------------------------------------------------- parsing

_RANGE = r"(\*|\d+(?:-\d+)?)"
_HEAD_RE = re.compile(rf"^{_RANGE}\.{_RANGE}$")
_MLP_RE = re.compile(rf"^mlp{_RANGE}$")
_RECV_RE = re.compile(rf"^{_RANGE}\.{_RANGE}:(q|k|v|\*)$")


def _expand(part: str, n: int, what: str, field: str, where: str) -> list[int]:
    if part == "*":
        return list(range(n))
    # Bounds before work: the digits, then both ends against the model's
    # size, and only then the range (at most n values) is built.
    a_text, _, b_text = part.partition("-")
    a = check_int_text(a_text, field)
    b = check_int_text(b_text, field) if b_text else a
    if a > b:
        raise PatchboardError(field, f"{where}: the {what} range {shown(part)} is empty; write low-high")
    if b >= n:
        raise PatchboardError(field, f"{where}: {what} {a if a >= n else b} does not exist; this model has {what}s 0-{n - 1}")
    return list(range(a, b + 1))


def _layers_heads(m: re.Match, geo: Geometry, field: str, where: str, not_this: str) -> tuple[list[int], list[int]]:
    """The layers and heads of an ``L.H`` match (groups 1 and 2); a range
    outside the model says so, with the model's shape and ``not_this``."""
    try:
        layers = _expand(m.group(1), geo.n_layers, "layer", field, where)
        heads = _expand(m.group(2), geo.n_heads, "head", field, where)
    except PatchboardError as e:
        raise PatchboardError(field, f"{e.message} ({geo.n_layers} layers x {geo.n_heads} heads); {not_this}") from None
    return layers, heads


def parse_nodes(text: Any, geo: Geometry, field: str = "sender", where: str = "sender") -> list[Node]:
    """``embed``, ``L.H``, ``mlpL`` (layers/heads may be ``*`` or ``a-b``) or
    ``*`` (every node) -> nodes."""
    if not isinstance(text, str) or not text.strip():
        raise PatchboardError(field, f"{where}: expected a node such as embed, 5.1 or mlp3, got {shown(text)}")
    t = text.strip().replace(" ", "")
    if t == "*":
        return [EMBED] + [Node("head", l, h) for l in range(geo.n_layers) for h in range(geo.n_heads)] + [Node("mlp", l) for l in range(geo.n_layers)]
    if t == "embed":
        return [EMBED]
    m = _HEAD_RE.match(t)
    if m:
        layers, heads = _layers_heads(m, geo, field, where, f"{shown(t)} is not a head")
        return [Node("head", l, h) for l in layers for h in heads]
    m = _MLP_RE.match(t)
    if m:
        return [Node("mlp", l) for l in _expand(m.group(1), geo.n_layers, "layer", field, where)]
    if ":" in t or t == "logits":
        raise PatchboardError(field, f"{where}: {shown(t)} is a receiver, not a node; a sender is embed, L.H (a head) or mlpL")
    raise PatchboardError(field, f"{where}: {shown(t)} is not a node; write embed, L.H (a head, e.g. 5.1), mlpL (e.g. mlp3) or *")


def parse_receivers(text: Any, geo: Geometry, field: str = "receivers", where: str = "receiver") -> list[Receiver]:
    """One receiver spec (``L.H:q``, ``L.H:*``, ``mlpL``, ``logits``, ``*``) ->
    receivers, GQA keys/values mapped to their KV group."""
    if not isinstance(text, str) or not text.strip():
        raise PatchboardError(field, f"{where}: expected a receiver such as 5.1:q, mlp3 or logits, got {shown(text)}")
    t = text.strip().replace(" ", "")
    if t == "logits":
        return [Receiver("logits", geo.n_layers)]
    if t == "*":
        return all_receivers(geo)
    m = _RECV_RE.match(t)
    if m:
        layers, heads = _layers_heads(m, geo, field, where, f"{shown(t)} is not a receiver")
        ports = ("q", "k", "v") if m.group(3) == "*" else (m.group(3),)
        out: list[Receiver] = []
        for l in layers:
            for p in ports:
                for h in heads:
                    r = Receiver(p, l, h if p == "q" else geo.group(h))
                    if r not in out:
                        out.append(r)
        return out
    m = _MLP_RE.match(t)
    if m:
        return [Receiver("mlp", l) for l in _expand(m.group(1), geo.n_layers, "layer", field, where)]
    if _HEAD_RE.match(t):
        raise PatchboardError(field, f"{where}: {shown(t)} names a head but not which input; write {t}:q, {t}:k, {t}:v or {t}:*")
    raise PatchboardError(field, f"{where}: {shown(t)} is not a receiver; write L.H:q|k|v|* (e.g. 5.1:q), mlpL (e.g. mlp3), logits or *")


def all_receivers(geo: Geometry) -> list[Receiver]:
    """Every receiver of the model, layer by layer (q per head, k and v per
    KV group, the MLP), then the logits: the order ``*`` expands to and the
    circuit graph indexes its receivers by."""
    out = []
    for l in range(geo.n_layers):
        out += [Receiver("q", l, h) for h in range(geo.n_heads)]
        out += [Receiver(p, l, g) for p in ("k", "v") for g in range(geo.n_kv)]
        out.append(Receiver("mlp", l))
    return out + [Receiver("logits", geo.n_layers)]


def node_ports(node: Node, geo: Geometry) -> list[Receiver]:
    """The inputs a node reads through (a head's q, and its group's k and v)."""
    if node.kind == "head":
        g = geo.group(node.head)
        return [Receiver("q", node.layer, node.head), Receiver("k", node.layer, g), Receiver("v", node.layer, g)]
    if node.kind == "mlp":
        return [Receiver("mlp", node.layer)]
    return []


def _parse_items(items, geo: Geometry, field: str, parse_one: Callable[..., list], what: str, none_given: str) -> set:
    """The union of ``parse_one`` over a bounded list of specs, each error
    naming its item ("{what} 2 (5.1:q): ..."); no item at all is ``none_given``."""
    items = bounded_items(items, field)
    if not items:
        raise PatchboardError(field, none_given)
    out: set = set()
    for i, s in enumerate(items, 1):
        out.update(parse_one(s, geo, field, f"{what} {i} ({s})"))
    return out


def parse_receiver_list(text: Any, geo: Geometry, field: str = "receivers") -> list[Receiver]:
    """A comma-separated list (the CLI's ``--receivers``) or a list of specs."""
    items = text if isinstance(text, (list, tuple)) else str(text or "").split(",")
    out = _parse_items(items, geo, field, parse_receivers, "receiver", "no receivers given; write e.g. 5.1:q,5.1:k or logits")
    return sorted(out, key=lambda r: r.sort_key(geo.n_layers))


def canonical_receivers(receivers: Sequence[Receiver], geo: Geometry) -> str:
    return ",".join(r.label(geo) for r in sorted(set(receivers), key=lambda r: r.sort_key(geo.n_layers)))


# ---------------------------------------------------------------- positions

ALL = "all"


def parse_position_spec(value: Any, field: str, where: str, from_end: bool = True) -> tuple[int | str, ...] | None:
    """``"all"``/None -> None (every position); an int (negative counts from the
    end, where ``from_end``), a role name (``END``, ``S2``, ``A_LAST``...) or a
    list of them. A sweep's sender positions count from BOS = 0 only
    (``from_end=False``: -1 is refused before any model loads; END names the last token)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", ALL)):
        return None
    if isinstance(value, str) and len(value) > MAX_POSITIONS * (MAX_INT_DIGITS + 2):
        raise PatchboardError(field, f"{where}: more than {MAX_POSITIONS} positions (MAX_POSITIONS); list fewer")
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    if len(items) > MAX_POSITIONS:
        raise PatchboardError(field, f"{where}: {len(items)} positions; the limit is {MAX_POSITIONS} (MAX_POSITIONS)")
    limit = max_prompt_tokens()
    out: list[int | str] = []
    for it in items:
        if isinstance(it, bool):
            raise PatchboardError(field, f"{where}: {shown(it)} is not a position; write token indices (BOS = 0), role names such as END, or all")
        if isinstance(it, int) or (isinstance(it, str) and re.fullmatch(r"-?\d+", it.strip())):
            v = it if isinstance(it, int) else check_int_text(it, field)
            if v < 0 and not from_end:
                raise PatchboardError(field, f"{where}: position {v} is negative; positions count from BOS = 0 (END names the last token)")
            if not -limit <= v < limit:
                raise PatchboardError(field, f"{where}: position {v} is out of range; a prompt has at most {limit} tokens (MAX_PROMPT_TOKENS)")
            out.append(v)
        elif isinstance(it, str) and len(it) > 64:
            raise PatchboardError(field, f"{where}: a role name of {len(it)} characters; role names are short, such as END or S2")
        elif isinstance(it, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", it.strip()):
            if it.strip().lower() == ALL:
                return None
            out.append(it.strip())
        else:
            raise PatchboardError(field, f"{where}: {shown(it, 40)} is not a position; write token indices (BOS = 0), role names such as END, or all")
    if not out:
        raise PatchboardError(field, f"{where}: empty position list; write all, token indices or role names")
    # Canonical order: ints first, then names.
    return tuple(sorted(set(out), key=lambda x: (isinstance(x, str), x if isinstance(x, int) else 0, str(x))))


def position_text(spec: tuple[int | str, ...] | None) -> str:
    return ALL if spec is None else ",".join(map(str, spec))


# ---------------------------------------------------------------- senders


@dataclass
class Sender:
    node: Node
    pos: int | None  # a single position (by-position sweeps) or None


def parse_sender_list(text: Any, geo: Geometry, field: str = "senders") -> list[Node]:
    """``*`` (default) or a comma list / list of node specs, in graph order."""
    items = text if isinstance(text, (list, tuple)) else str("*" if text is None else text).split(",")
    out = _parse_items(items, geo, field, parse_nodes, "sender", "no senders given; write * or e.g. embed,0-5.*,mlp*")
    return sorted(out, key=Node.sort_key)


def canonical_senders(nodes: Sequence[Node], geo: Geometry) -> str:
    """``*`` for every node, else the sorted node list."""
    if len(set(nodes)) == 1 + geo.n_layers * (geo.n_heads + 1):
        return "*"
    return ",".join(str(n) for n in sorted(set(nodes), key=Node.sort_key))


def senders_for(geo: Geometry, seq: int, by_pos: bool, nodes: Sequence[Node] | None = None) -> list[Sender]:
    if nodes is None:
        nodes = parse_sender_list("*", geo)
    if not by_pos:
        return [Sender(n, None) for n in nodes]
    return [Sender(n, p) for n in nodes for p in range(seq)]
