"""Path patching, part 2: hypotheses made of paths (Goldowsky-Dill et al.,
"Localizing Model Behavior with Path Patching", 2023).

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
(``L.H:q|k|v``, ``mlpL``, ``logits``; see :mod:`patching.paths`, including
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

What G_H computes
-----------------
The nodes are ``embed``, every head and every MLP, each at every position; an
edge lives at residual positions, so "sender at p -> receiver input at p"
(attention moves information between positions inside a head). The listed
edges E define the important paths: **every input-to-output path that starts
at embed and is made only of edges in E** (its closure: listing A→B and B→C
also makes embed…A→B→C important). Treeify (P2 §2) gives each path its own
copy of the input; G_H(x_r, x_c) feeds x_r to the important paths and one
shared counterfactual x_c (the pair's corrupted prompt, or its Gaussian-noised
clean prompt) to every other path. For an edge-closed path set this is exact
and needs one copy per node, computed in one pass over the layers:

* every node starts at its value on x_c (cached);
* a receiver's input = its x_c input + Σ over listed edges into it of
  (sender's G_H value − sender's x_c value) at the edge's positions;
  ``embed``'s G_H value is its value on x_r;
* a head's G_H value is the head recomputed from its own q, k and v inputs
  (each normalised by its own ln1 copy), an MLP's from its own input (its own
  ln2), and the output is ``ln_final`` + unembedding of the final residual
  stream built the same way.

So "all edges" gives G(x_r) (proportion explained 100 %), no edge gives
G(x_c) (0 %). A sender that no listed path reaches from embed keeps its x_c
value: its edges carry nothing (a warning says so).

Metrics (read at the final position, rows = pairs x noise samples)
------------------------------------------------------------------
For δ in ``kl`` (default: KL(G(x_r) ‖ G_H), the paper's non-cancelling
choice), ``loss`` (|Δ loss| of the clean answer, |log P_H(r) − log P(r)|) and
``logit_diff`` (|LD_H − LD| with LD = logit(r) − logit(r')):

* AUE = mean over rows of δ(G(x_r), G_H(x_r, x_c))
* ATE = mean over rows of δ(G(x_r), G(x_c))   (= the AUE of "no path")
* proportion explained = 1 − AUE / ATE (can be negative); max_unexplained is
  the worst row.

:func:`attribution` is the signed per-token attribution for one reference
input: E over that pair's counterfactuals (one under STR, the K noise samples
under GN) of L(G_H) − L(G(x_r)) at every position, the loss of predicting the
next prompt token (and the answer at the last position).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from patching.core.data import Dataset
from patching.engine.readout import RowStats, row_stats
from patching.engine.resources import path_rows, readout_rows
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.methods.paths import (
    EMBED,
    PATHS_VERSION,
    Geometry,
    Node,
    PathRuns,
    Receiver,
    mlp_in_hook,
    parse_nodes,
    parse_position_spec,
    parse_receivers,
    position_mask,
    position_text,
    prepare_runs,
    qkv_hook,
    split_qkv,
    Fired,
    data_label,
)
from patching.core.spec import ENGINE_VERSION, Spec

FORMAT = "patchboard.hypothesis/1"
DELTAS = ("kl", "loss", "logit_diff")
_ENTRY_KEYS = {"sender", "receiver", "input", "positions", "path", "note"}
_TOP_KEYS = {"format", "name", "description", "paths", "model", "derived", "notes"}
MAX_EDGES = 200_000


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
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        try:
            import yaml

            obj = yaml.safe_load(text)
        except Exception:
            obj = None
        if not isinstance(obj, dict):
            raise PatchboardError(field_name, f"not valid JSON (line {e.lineno}: {e.msg}) nor a YAML mapping; see the format in patching/hypothesis.py") from None
    if not isinstance(obj, dict):
        raise PatchboardError(field_name, "expected a JSON object with a \"paths\" list")
    return obj


def load_file(path: str) -> dict:
    """CLI only: the app never reads a path named by a user."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PatchboardError("hypothesis", f"cannot read {path!r} ({e.strerror}); check the path") from None
    return parse_text(text)


def _is_wild(s: Any) -> bool:
    return not isinstance(s, str) or "*" in s or "-" in s.split(":")[0]


def parse(obj: dict | str, geo: Geometry, field_name: str = "hypothesis") -> Hypothesis:
    """Validate and resolve a hypothesis for a model geometry. Errors are one
    line naming the entry: unknown heads/layers, a receiver not after its
    sender, unknown keys or inputs, bad positions."""
    if isinstance(obj, str):
        obj = parse_text(obj, field_name)
    if not isinstance(obj, dict):
        raise PatchboardError(field_name, "expected a JSON object with a \"paths\" list")
    unknown = [k for k in obj if k not in _TOP_KEYS]
    if unknown:
        raise PatchboardError(field_name, f"unknown key {unknown[0]!r}; the keys are {', '.join(sorted(_TOP_KEYS))}")
    fmt = obj.get("format", FORMAT)
    if fmt != FORMAT:
        raise PatchboardError(field_name, f"format {fmt!r} is not {FORMAT!r}")
    paths = obj.get("paths")
    if not isinstance(paths, list):
        raise PatchboardError(field_name, "\"paths\" must be a list of entries such as {\"sender\": \"embed\", \"receiver\": \"5.1:q\"} (it may be empty)")
    name = obj.get("name") or "hypothesis"
    desc = obj.get("description") or ""
    if not isinstance(name, str) or not isinstance(desc, str):
        raise PatchboardError(field_name, "\"name\" and \"description\" must be strings")
    edges: dict[tuple[Node, Receiver], tuple | None] = {}
    entries: list[dict] = []
    for i, entry in enumerate(paths, 1):
        where = f"path {i}"
        if not isinstance(entry, dict):
            raise PatchboardError(field_name, f"{where}: expected an object such as {{\"sender\": \"embed\", \"receiver\": \"5.1:q\"}}, got {entry!r}")
        bad = [k for k in entry if k not in _ENTRY_KEYS]
        if bad:
            raise PatchboardError(field_name, f"{where}: unknown key {bad[0]!r}; an entry has sender, receiver, input, positions (or path, positions)")
        pos = parse_position_spec(entry.get("positions"), field_name, where)
        for s_nodes, recvs, explicit, pair_text in _entry_edges(entry, geo, field_name, where):
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
        if not isinstance(chain, list) or len(chain) < 2 or not all(isinstance(x, str) for x in chain):
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
    if not s_items or not r_items:
        raise PatchboardError(field_name, f"{where}: empty sender or receiver list")
    inp = entry.get("input")
    if inp is not None and inp not in ("q", "k", "v", "*"):
        raise PatchboardError(field_name, f"{where}: input {inp!r} is not q, k, v or *")
    senders: list[Node] = []
    for s in s_items:
        for n in parse_nodes(s, geo, field_name, where):
            if n not in senders:
                senders.append(n)
    recvs: list[Receiver] = []
    for r in r_items:
        if not isinstance(r, str):
            raise PatchboardError(field_name, f"{where}: receiver {r!r} is not a string such as 5.1:q")
        text = r.strip()
        if inp is not None:
            if ":" in text:
                raise PatchboardError(field_name, f"{where}: receiver {text!r} already names its input; drop \"input\" or write {text.split(':')[0]}")
            if text.startswith("mlp") or text in ("logits", "*"):
                raise PatchboardError(field_name, f"{where}: \"input\" applies to head receivers (L.H), not {text!r}")
            text = f"{text}:{inp}"
        for x in parse_receivers(text, geo, field_name, where):
            if x not in recvs:
                recvs.append(x)
    explicit = len(s_items) == 1 and len(r_items) == 1 and not _is_wild(s_items[0]) and not _is_wild(r_items[0])
    yield senders, recvs, explicit, (", ".join(map(str, s_items)), ", ".join(map(str, r_items)))


def node_ports(node: Node, geo: Geometry) -> list[Receiver]:
    """The inputs a node reads through."""
    if node.kind == "head":
        g = geo.group(node.head)
        return [Receiver("q", node.layer, node.head), Receiver("k", node.layer, g), Receiver("v", node.layer, g)]
    if node.kind == "mlp":
        return [Receiver("mlp", node.layer)]
    return []


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


# ---------------------------------------------------------------- G_H


def _readout_all(runs: PathRuns, x: torch.Tensor) -> torch.Tensor:
    """[B, seq, d] final residual -> [B, seq, vocab] logits."""
    b = runs.runner.bridge
    logits = b.unembed(b.ln_final(x))
    if runs.runner.softcap is not None:
        logits = runs.runner.softcap * torch.tanh(logits / runs.runner.softcap)
    return logits


def gh_final_resid(runs: PathRuns, edges: Sequence[Edge], masks: dict, rows: slice) -> torch.Tensor:
    """The final residual stream [rows, seq, d] of G_H (see the module doc)."""
    geo = runs.geo
    L = geo.n_layers
    c = runs.corrupt
    live = live_nodes(edges, geo)
    into: dict[Receiver, list[Edge]] = {}
    for e in edges:
        if e.sender in live:
            into.setdefault(e.receiver, []).append(e)
    deltas: dict[Node, torch.Tensor] = {EMBED: runs.delta(EMBED, "clean", rows)}
    cache: dict[tuple, torch.Tensor] = {}

    def incoming(r: Receiver) -> torch.Tensor | None:
        es = into.get(r)
        if not es:
            return None
        key = tuple((e.sender, e.positions) for e in es)
        if key not in cache:
            acc = None
            for e in es:
                d = deltas[e.sender]
                if e.positions is not None:
                    d = d * masks[e.positions][rows][..., None]
                acc = d if acc is None else acc + d
            cache[key] = acc
        return cache[key]

    split = any(r.port in ("q", "k", "v") for r in into)
    bridge = runs.lm.bridge
    with split_qkv(bridge, split):
        for l in range(L):
            heads = [h for h in range(geo.n_heads) if Node("head", l, h) in live]
            mlp_live = Node("mlp", l) in live
            if not heads and not mlp_live:
                continue
            cache.clear()
            adds: dict[str, list[tuple[int, torch.Tensor]]] = {}
            for port in ("q", "k", "v"):
                idx = sorted({h if port == "q" else geo.group(h) for h in heads})
                for i in idx:
                    a = incoming(Receiver(port, l, i))
                    if a is not None:
                        adds.setdefault(qkv_hook(l, port), []).append((i, a))
            captured: dict[str, torch.Tensor] = {}
            fired = Fired()

            def add_hook(name, items):
                def hook(act, hook=None):
                    fired.names.add(name)
                    act = act.clone()
                    for i, a in items:
                        act[:, :, i] += a
                    return act

                return hook

            def z_hook(act, hook=None):
                captured["z"] = act.detach().clone()
                return act

            def mlp_in(act, hook=None, l=l):
                fired.names.add("mlp_in")
                # Same-layer heads are computed by now: their deltas can feed this MLP.
                z = captured["z"]
                for h in heads:
                    deltas[Node("head", l, h)] = (z[:, :, h] - c[f"blocks.{l}.attn.hook_z"][rows, :, h]) @ runs.W_O[l][h]
                base = c[f"blocks.{l}.hook_resid_mid"][rows]
                a = incoming(Receiver("mlp", l)) if mlp_live else None
                return base + a if a is not None else base

            def mlp_out(act, hook=None):
                captured["mlp_out"] = act.detach().clone()
                return act

            hooks = [(name, add_hook(name, items)) for name, items in adds.items()]
            hooks += [(f"blocks.{l}.attn.hook_z", z_hook), (mlp_in_hook(l), mlp_in), (f"blocks.{l}.hook_mlp_out", mlp_out)]
            x = c[f"blocks.{l}.hook_resid_pre"][rows]
            with bridge.hooks(fwd_hooks=hooks):
                runs.runner.run_from(l, x, stop=l + 1)
            fired.check(list(adds) + ["mlp_in"])
            if mlp_live:
                deltas[Node("mlp", l)] = captured["mlp_out"] - c[f"blocks.{l}.hook_mlp_out"][rows]
    final = c["ln_final.hook_in"][rows]
    cache.clear()
    a = incoming(Receiver("logits", L))
    return final + a if a is not None else final


def _masks(hyp_edges: Sequence[Edge], ds: Dataset, K: int, device) -> dict:
    out = {}
    for e in hyp_edges:
        if e.positions is not None and e.positions not in out:
            out[e.positions] = position_mask(e.positions, ds, K, "hypothesis", f"positions {position_text(e.positions)}").to(device)
    return out


@dataclass
class HypothesisResult:
    spec: Spec
    hypothesis: dict  # the file (as given, canonical JSON)
    table: pd.DataFrame  # one row per δ: delta, aue, ate, proportion_explained, max_unexplained
    baselines: dict[str, float]
    meta: dict[str, Any]
    from_store: bool = False

    def row(self, delta: str = "kl") -> dict:
        return self.table.set_index("delta").loc[delta].to_dict()


def hypothesis_spec(spec: Spec) -> Spec:
    """x_r is the clean prompt and x_c its counterfactual in every case: the
    direction, component, window and metric do not apply."""
    return replace(spec, component="head", window=1, direction="denoise").validated()


def _deltas(stats, ref) -> dict[str, torch.Tensor]:
    return {
        "kl": stats.kl,
        "loss": (stats.logprob - ref.logprob).abs(),
        "logit_diff": (stats.ld - ref.ld).abs(),
    }


def evaluate(
    spec: Spec,
    lm: LoadedModel,
    ds: Dataset,
    hypothesis: Hypothesis | dict | str,
    runs: PathRuns | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> HypothesisResult:
    """AUE, ATE and proportion explained over the dataset, for every δ; and,
    from the same G_H runs, the per-token attribution of every pair
    (``meta["attribution"]``, read with :func:`attribution_table`)."""
    spec = hypothesis_spec(spec)
    t0 = time.time()
    geo = Geometry.of(lm)
    hyp = hypothesis if isinstance(hypothesis, Hypothesis) else parse(hypothesis, geo)
    runs = runs or prepare_runs(lm, ds, spec)
    dev = runs.answer.device
    masks = _masks(hyp.edges, ds, runs.K, dev)
    R, K, seq = runs.rows, runs.K, ds.seq_len
    # Whole-sequence readouts dominate memory: a block of rows per pass.
    max_rows = max(K, min(path_rows(lm.cfg, seq, True), readout_rows(lm.cfg, seq)))
    max_rows -= max_rows % K  # whole pairs per block
    blocks = [slice(r, min(R, r + max_rows)) for r in range(0, R, max_rows)]
    targets = torch.cat([ds.clean_tokens[:, 1:], ds.answer_ids[:, None]], 1).to(dev).repeat_interleave(K, 0)  # [R, seq]
    gh, ref_r, ref_c = [], [], []
    losses: dict[str, list[torch.Tensor]] = {"hypothesis": [], "clean": [], "counterfactual": []}
    for i, rows in enumerate(blocks, 1):
        final = gh_final_resid(runs, hyp.edges, masks, rows)
        a, cn, lp = runs.answer[rows], runs.counter[rows], runs.clean_logprobs[rows]
        # Every output goes through the same readout, so "no path" is G(x_c) exactly.
        for name, x, acc in (("hypothesis", final, gh), ("clean", runs.clean["ln_final.hook_in"][rows], ref_r),
                             ("counterfactual", runs.corrupt["ln_final.hook_in"][rows], ref_c)):
            logits = _readout_all(runs, x).float()
            acc.append(row_stats(logits[:, -1], a, cn, lp))
            tl = -torch.log_softmax(logits, -1).gather(-1, targets[rows][..., None])[..., 0]  # [rows, seq]
            losses[name].append(tl.reshape(-1, K, seq).mean(1))  # E over the pair's counterfactuals
            del logits
        if progress:
            progress(i, len(blocks))

    gh_s, r_s, c_s = RowStats.cat(gh), RowStats.cat(ref_r), RowStats.cat(ref_c)
    un, te = _deltas(gh_s, r_s), _deltas(c_s, r_s)
    rows_out = []
    for d in DELTAS:
        aue, ate = float(un[d].mean()), float(te[d].mean())
        prop = 1.0 - aue / ate if ate > 1e-12 else float("nan")
        rows_out.append({"delta": d, "aue": aue, "ate": ate, "proportion_explained": prop, "max_unexplained": float(un[d].max())})
    table = pd.DataFrame(rows_out)
    from patching.engine.metrics import baselines

    tok = lm.tokenizer
    tgt = torch.cat([ds.clean_tokens[:, 1:], ds.answer_ids[:, None]], 1)
    meta = {
        "kind": "hypothesis",
        "name": hyp.name,
        "n_edges": len(hyp.edges),
        "n_live_nodes": len(live_nodes(hyp.edges, geo)) - 1,
        "hypothesis_digest": hyp.digest(),
        "hypothesis_warnings": hyp.warnings,
        "per_row": {d: [float(x) for x in un[d]] for d in DELTAS},
        "per_row_total": {d: [float(x) for x in te[d]] for d in DELTAS},
        "attribution": {
            "tokens": [[tok.decode([int(t)]) for t in row] for row in ds.clean_tokens],
            "targets": [[tok.decode([int(t)]) for t in row] for row in tgt],
            **{f"loss_{k}": torch.cat(v).cpu().tolist() for k, v in losses.items()},
        },
        "n_pairs": ds.n,
        "rows": R,
        "seq_len": seq,
        "n_layers": geo.n_layers,
        "n_heads": geo.n_heads,
        "n_kv_heads": geo.n_kv,
        "position_labels": ds.position_labels,
        "clean_tokens": ds.clean_strs,
        "corrupt_tokens": ds.corrupt_strs,
        "sigma": runs.sigma,
        "compute_seconds": round(time.time() - t0, 3),
        "warnings": list(ds.warnings),
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
    }
    return HypothesisResult(spec=spec, hypothesis=hyp.to_dict(), table=table,
                            baselines=baselines(runs.clean_stats, runs.corrupt_stats), meta=meta)


def attribution_table(meta: dict, pair: int = 0) -> pd.DataFrame:
    """The signed per-token attribution of one pair from an evaluation's meta:
    at each position t, E_{x_c}[L(G_H) − L(G(x_r))] for predicting the clean
    prompt's token t+1 (the answer at the last position); positive = the
    hypothesis raises the loss there. ``counterfactual`` is the same for
    G(x_c) (what "no path" gives)."""
    att = meta.get("attribution") or {}
    n = len(att.get("tokens") or [])
    if not isinstance(pair, int) or isinstance(pair, bool) or not 0 <= pair < n:
        raise PatchboardError("pair", f"{pair!r} is not a pair index; use 0-{n - 1}")
    h, r, c = (att[f"loss_{k}"][pair] for k in ("hypothesis", "clean", "counterfactual"))
    seq = len(h)
    return pd.DataFrame({
        "pos": list(range(seq)),
        "token": att["tokens"][pair],
        "target": att["targets"][pair],
        "loss_clean": r,
        "loss_hypothesis": h,
        "loss_counterfactual": c,
        "attribution": [x - y for x, y in zip(h, r)],
        "counterfactual": [x - y for x, y in zip(c, r)],
    })


def attribution(
    spec: Spec,
    lm: LoadedModel,
    ds: Dataset,
    hypothesis: Hypothesis | dict | str,
    pair: int = 0,
    runs: PathRuns | None = None,
) -> pd.DataFrame:
    """Signed per-token attribution for the reference input of ``pair`` (see
    :func:`attribution_table`): E over that pair's counterfactuals (one under
    STR, the K noise samples under GN)."""
    if not isinstance(pair, int) or not 0 <= pair < ds.n:
        raise PatchboardError("pair", f"{pair!r} is not a pair index; use 0-{ds.n - 1}")
    one = Dataset(pairs=[ds.pairs[pair]], clean_tokens=ds.clean_tokens[pair:pair + 1], corrupt_tokens=ds.corrupt_tokens[pair:pair + 1],
                  answer_ids=ds.answer_ids[pair:pair + 1], counter_ids=ds.counter_ids[pair:pair + 1],
                  key_positions=[ds.key_positions[pair]], position_labels=ds.position_labels, clean_strs=ds.clean_strs,
                  corrupt_strs=ds.corrupt_strs)
    if runs is not None:
        K = runs.K
        rows = slice(pair * K, (pair + 1) * K)
        sub = {k: v[rows] for k, v in runs.clean.items()}, {k: v[rows] for k, v in runs.corrupt.items()}
        runs = replace(runs, clean=sub[0], corrupt=sub[1], answer=runs.answer[rows], counter=runs.counter[rows],
                       clean_logprobs=runs.clean_logprobs[rows], rows=K)
    res = evaluate(spec, lm, one, hypothesis, runs=runs)
    t = attribution_table(res.meta, 0)
    t.insert(1, "pos_label", ds.position_labels)
    return t


# ---------------------------------------------------------------- store


def hypothesis_key(spec: Spec, hyp: Hypothesis, fingerprint: str) -> str:
    payload = json.dumps(
        {"kind": "hypothesis", "spec": hypothesis_spec(spec).compute_dict(), "edges": hyp.canonical(), "model": fingerprint,
         "engine": ENGINE_VERSION, "paths": PATHS_VERSION},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def lookup_hypothesis(spec: Spec, hyp: Hypothesis, store, fingerprint: str) -> HypothesisResult | None:
    """The stored evaluation, or None (no model load)."""
    spec = hypothesis_spec(spec)
    rec = store.get(hypothesis_key(spec, hyp, fingerprint))
    if rec is None:
        return None
    meta = rec["meta"]
    meta["created_at"] = rec["created_at"]
    return HypothesisResult(spec=spec, hypothesis=meta.get("hypothesis", hyp.to_dict()), table=rec["table"],
                            baselines=rec["baselines"], meta=meta, from_store=True)


def run_hypothesis(
    spec: Spec,
    hypothesis: Hypothesis | dict | str,
    store=None,
    lm: LoadedModel | None = None,
    progress: Callable[[int, int], None] | None = None,
    use_store: bool = True,
) -> HypothesisResult:
    """The stored evaluation for these inputs, or compute and store it (kind
    ``hypothesis``; keyed by the canonical spec, the resolved edge set, the
    weights' fingerprint and the engine versions)."""
    from patching.service import dataset_for, get_model
    from patching.store import Store

    spec = hypothesis_spec(spec)
    lm = lm or get_model(spec.model)
    hyp = hypothesis if isinstance(hypothesis, Hypothesis) else parse(hypothesis, Geometry.of(lm))
    store = store if store is not None else (Store() if use_store else None)
    if store is not None:
        hit = lookup_hypothesis(spec, hyp, store, lm.fingerprint)
        if hit is not None:
            return hit
    ds = dataset_for(spec, lm)
    res = evaluate(spec, lm, ds, hyp, progress=progress)
    res.meta["hypothesis"] = res.hypothesis
    # The Paths page's own query parameters for this result (beside the spec's).
    res.meta["page_query"] = {"mode": "hypothesis", "example": "custom", "hypothesis": encode_hypothesis(res.hypothesis)}
    if store is not None:
        k = res.row("kl")
        store.put(hypothesis_key(spec, hyp, lm.fingerprint), "hypothesis", spec.to_json(),
                  f"hypothesis {hyp.name} ({len(hyp.edges)} edges, {k['proportion_explained']:.0%} of KL) · {data_label(spec, False)}",
                  spec.model, lm.fingerprint, ENGINE_VERSION, res.meta["compute_seconds"], res.baselines, res.meta, res.table)
    return res


def encode_hypothesis(text: dict | str) -> str:
    """A hypothesis inline in a URL: its text (or a dict's compact JSON),
    zlib, URL-safe base64. The link carries the hypothesis itself, exactly as
    typed (even when it does not parse yet), never a file name."""
    import base64
    import zlib

    raw = (json.dumps(text, separators=(",", ":"), ensure_ascii=False) if isinstance(text, dict) else str(text)).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def decode_hypothesis(text: str) -> str:
    """The hypothesis text a link carries (see :func:`encode_hypothesis`)."""
    import base64
    import zlib

    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        inflater = zlib.decompressobj()  # bounded: a crafted link cannot inflate into gigabytes
        raw = inflater.decompress(data, 1 << 20)
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("too large or truncated")
        return raw.decode("utf-8")
    except Exception:
        raise PatchboardError("hypothesis", "the link's hypothesis is not readable (truncated or edited?); copy the link again") from None


# ---------------------------------------------------------------- built-in examples


def _detected_heads(table: pd.DataFrame, metric: str = "logit_diff", signs: tuple[str, ...] = ("positive",)) -> list[dict]:
    """Heads the 2-SD rule (:func:`patching.stats.detect`) flags, strongest first."""
    from patching.analysis import stats

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
    import random

    from patching.core import tasks
    from patching.core.pairs import Pair
    from patching.core.data import tokenize

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
    from patching.core.data import build_dataset
    from patching.methods.paths import sweep

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
    :func:`patching.stats.detect`) are the circuit. Hypothesis: every path
    from the input to the logits that passes only through those heads and the
    MLPs (edges from embed, the MLPs and the circuit heads into the circuit
    heads' q/k/v, the MLPs and the logits)."""
    from patching.service import dataset_for
    from patching.methods.activation import compute

    say = progress or (lambda _m: None)
    spec = Spec(model=lm.name, task="ioi", n_pairs=n_pairs, seed=seed, component="head", metric="logit_diff", direction="denoise")
    if store is not None:
        from patching.service import run

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
