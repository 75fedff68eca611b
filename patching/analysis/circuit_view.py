"""What the Circuits page draws of a circuit: the layered graph's nodes and
edges as tidy tables (positions, ports, scores), derived once from the edge
set. No model, no torch, no drawing (the chart is ``ui/circuit_charts.py``).

Layout: rows from top to bottom in the model's order -- ``embed``, then for
each layer its attention heads and, half a row lower, its MLP, then
``logits``; only rows holding a node of the (pruned) circuit are kept. Heads
sit at their index across, the MLPs to their right in two alternating
columns (so MLP-to-MLP edges stay visible), embed and logits in the middle. An edge runs from its sender to the node its receiver feeds: a q edge
to its head, a k or v edge to the middle of its key/value group (on
grouped-query models one input feeds the group's query heads), an MLP edge
to the MLP, a logits edge to logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from patching.methods.circuit_graph import EdgeIndex, prune
from patching.methods.graph import Geometry, Node

#: The most edges drawn (the strongest, by |score|); the rest are listed, not drawn.
MAX_DRAWN = 200


def graph_tables(ids: Sequence[int], geo: Geometry, scores: np.ndarray | None = None, max_drawn: int = MAX_DRAWN,
                 effects: dict[int, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(nodes, edges, info) of a circuit's drawing. ``edges`` has one row per
    drawn edge: edge (index), sender, receiver, port, score, weight (|score|
    over the largest, 1 without scores), x, y, x2, y2; ``nodes``: node, kind,
    x, y, row (its row's name). ``info``: edges asked, kept after pruning,
    drawn."""
    ix = EdgeIndex.of(geo)
    mask = np.zeros(ix.n_edges, dtype=bool)
    mask[np.asarray(list(ids), dtype=np.int64)] = True
    kept = np.flatnonzero(prune(mask, ix))
    if scores is not None and len(kept) > max_drawn:
        kept = kept[np.argsort(-np.abs(scores[kept]), kind="stable")[:max_drawn]]
    elif len(kept) > max_drawn:
        kept = kept[:max_drawn]
    info = {"asked": int(mask.sum()), "kept": int(prune(mask, ix).sum()), "drawn": int(len(kept))}
    H = geo.n_heads
    used_nodes = set(ix.sender[kept].tolist())
    recv_nodes: dict[int, list[int]] = {}
    for e in kept:
        r = ix.receivers[ix.receiver[e]]
        if r.port in ("q", "k", "v"):
            heads = r.heads(geo)
            recv_nodes[int(e)] = [ix.sender_of(Node("head", r.layer, h)) for h in heads]
        elif r.port == "mlp":
            recv_nodes[int(e)] = [ix.sender_of(Node("mlp", r.layer))]
        else:
            recv_nodes[int(e)] = [-1]
    for targets in recv_nodes.values():
        used_nodes.update(t for t in targets if t >= 0)
    # Rows: (layer order, 0 = heads / 1 = MLP); embed first, logits last; only used rows.
    def row_of(si: int) -> tuple[int, int]:
        n = ix.senders[si]
        return (-1, 0) if n.kind == "embed" else (n.layer, 0 if n.kind == "head" else 1)

    rows = sorted({row_of(s) for s in used_nodes} | ({(geo.n_layers, 0)} if any(t == [-1] for t in recv_nodes.values()) else set()))
    y_of = {r: i for i, r in enumerate(rows)}

    def xy(si: int) -> tuple[float, float]:
        if si < 0:
            return (H - 1) / 2, float(y_of[(geo.n_layers, 0)])
        n = ix.senders[si]
        if n.kind == "embed":
            return (H - 1) / 2, float(y_of[(-1, 0)])
        if n.kind == "mlp":
            # Alternate columns: an MLP's edges to the next MLPs stay apart instead of one vertical line.
            return float(H) + (0.9 if n.layer % 2 else 0.0), float(y_of[(n.layer, 1)])
        return float(n.head), float(y_of[(n.layer, 0)])

    names = {(-1, 0): "embed", (geo.n_layers, 0): "logits"}
    node_rows = [{"node": str(ix.senders[s]), "kind": ix.senders[s].kind, "x": xy(s)[0], "y": xy(s)[1],
                  "row": names.get(row_of(s), f"L{row_of(s)[0]} {'MLP' if row_of(s)[1] else 'heads'}")} for s in sorted(used_nodes)]
    if any(t == [-1] for t in recv_nodes.values()):
        lx, ly = xy(-1)
        node_rows.append({"node": "logits", "kind": "logits", "x": lx, "y": ly, "row": "logits"})
    top = float(np.abs(scores[kept]).max()) if scores is not None and len(kept) and np.abs(scores[kept]).max() > 0 else 0.0
    edge_rows = []
    for e in kept:
        r = ix.receivers[ix.receiver[e]]
        x1, y1 = xy(int(ix.sender[e]))
        ends = [xy(t) for t in recv_nodes[int(e)]]
        x2, y2 = float(np.mean([p[0] for p in ends])), ends[0][1]
        s = float(scores[e]) if scores is not None else float("nan")
        edge_rows.append({"edge": int(e), "label": ix.label(int(e)), "sender": str(ix.senders[ix.sender[e]]), "receiver": r.label(geo),
                          "port": r.port, "score": s, "weight": abs(s) / top if top > 0 else 1.0,
                          "effect": (effects or {}).get(int(e), float("nan")), "x": x1, "y": y1, "x2": x2, "y2": y2})
    nodes = pd.DataFrame(node_rows, columns=["node", "kind", "x", "y", "row"])
    edges = pd.DataFrame(edge_rows, columns=["edge", "label", "sender", "receiver", "port", "score", "weight", "effect", "x", "y", "x2", "y2"])
    return nodes, edges, info


def edge_of(label: str, geo: Geometry) -> int | None:
    """The edge index of a drawn edge's label (``s->r``), None if it is not one."""
    from patching.core.errors import PatchboardError
    from patching.methods.circuit_graph import parse_edges

    try:
        ids = parse_edges(str(label)[:200], geo)
    except PatchboardError:
        return None
    return int(ids[0]) if len(ids) == 1 else None
