"""Path patching, part 1: the graph's nodes and receivers, the two reference
runs, and Wang et al.'s sender → receiver sweeps.

Nodes and receivers
-------------------
A **node** writes into the residual stream: ``embed`` (the token, plus
positional, embedding), a head ``L.H`` (its write is ``z_H @ W_O[H]``) or an
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

Sender → receiver sweeps
------------------------
:func:`sweep` is Wang et al.'s path patching in the exact "delta" form that
TransformerLens's ``get_act_patch_direct_path`` uses: the sender's write
difference ``source − base`` (at the sender positions) is added to each
receiver's own copy of the residual stream in the base run, and the run then
continues normally, so the sender reaches the output only through those
receivers (and everything downstream of them); every other path from the
sender stays at its base value. With direction ``denoise`` the base run is the
corrupted one and the source the clean one; ``noise`` swaps them, with the
sign convention of :mod:`patching.metrics`, and every metric comes from the
same runs. Senders are batched along the batch dimension like
:mod:`patching.engine`, each chunk starting from the cached residual stream at
its first receiver's layer (for ``logits`` no block runs at all).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch

from patching.core.data import Dataset
from patching.core.progress import ProgressFn
from patching.engine.blocks import BlockRunner
from patching.engine.readout import RowStats, row_stats
from patching.engine.resources import model_lock, path_rows, readout_rows
from patching.core.errors import PatchboardError
from patching.engine.metrics import METRICS, baselines, effects
from patching.core.models import LoadedModel
from patching.engine.reference import prepare
from patching.core.spec import ENGINE_VERSION, Spec

#: Bumped when path-patching numbers change for the same inputs.
PATHS_VERSION = "1"

PORTS = ("q", "k", "v", "mlp", "logits")


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    n_heads: int
    n_kv: int

    @staticmethod
    def of(lm: LoadedModel) -> "Geometry":
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
    if "-" in part:
        a, b = (int(x) for x in part.split("-"))
        if a > b:
            raise PatchboardError(field, f"{where}: the {what} range {part!r} is empty; write low-high")
        vals = list(range(a, b + 1))
    else:
        vals = [int(part)]
    bad = [v for v in vals if v >= n]
    if bad:
        raise PatchboardError(field, f"{where}: {what} {bad[0]} does not exist; this model has {what}s 0-{n - 1}")
    return vals


def _model_shape(geo: Geometry) -> str:
    return f"{geo.n_layers} layers x {geo.n_heads} heads"


def parse_nodes(text: Any, geo: Geometry, field: str = "sender", where: str = "sender") -> list[Node]:
    """``embed``, ``L.H``, ``mlpL`` (layers/heads may be ``*`` or ``a-b``) or
    ``*`` (every node) -> nodes."""
    if not isinstance(text, str) or not text.strip():
        raise PatchboardError(field, f"{where}: expected a node such as embed, 5.1 or mlp3, got {text!r}")
    t = text.strip().replace(" ", "")
    if t == "*":
        return [EMBED] + [Node("head", l, h) for l in range(geo.n_layers) for h in range(geo.n_heads)] + [Node("mlp", l) for l in range(geo.n_layers)]
    if t == "embed":
        return [EMBED]
    m = _HEAD_RE.match(t)
    if m:
        try:
            layers = _expand(m.group(1), geo.n_layers, "layer", field, where)
            heads = _expand(m.group(2), geo.n_heads, "head", field, where)
        except PatchboardError as e:
            raise PatchboardError(field, f"{e.message} ({_model_shape(geo)}); {t!r} is not a head") from None
        return [Node("head", l, h) for l in layers for h in heads]
    m = _MLP_RE.match(t)
    if m:
        return [Node("mlp", l) for l in _expand(m.group(1), geo.n_layers, "layer", field, where)]
    if ":" in t or t == "logits":
        raise PatchboardError(field, f"{where}: {t!r} is a receiver, not a node; a sender is embed, L.H (a head) or mlpL")
    raise PatchboardError(field, f"{where}: {t!r} is not a node; write embed, L.H (a head, e.g. 5.1), mlpL (e.g. mlp3) or *")


def parse_receivers(text: Any, geo: Geometry, field: str = "receivers", where: str = "receiver") -> list[Receiver]:
    """One receiver spec (``L.H:q``, ``L.H:*``, ``mlpL``, ``logits``, ``*``) ->
    receivers, GQA keys/values mapped to their KV group."""
    if not isinstance(text, str) or not text.strip():
        raise PatchboardError(field, f"{where}: expected a receiver such as 5.1:q, mlp3 or logits, got {text!r}")
    t = text.strip().replace(" ", "")
    if t == "logits":
        return [Receiver("logits", geo.n_layers)]
    if t == "*":
        out = []
        for l in range(geo.n_layers):
            out += [Receiver("q", l, h) for h in range(geo.n_heads)]
            out += [Receiver(p, l, g) for p in ("k", "v") for g in range(geo.n_kv)]
            out.append(Receiver("mlp", l))
        return out + [Receiver("logits", geo.n_layers)]
    m = _RECV_RE.match(t)
    if m:
        try:
            layers = _expand(m.group(1), geo.n_layers, "layer", field, where)
            heads = _expand(m.group(2), geo.n_heads, "head", field, where)
        except PatchboardError as e:
            raise PatchboardError(field, f"{e.message} ({_model_shape(geo)}); {t!r} is not a receiver") from None
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
        raise PatchboardError(field, f"{where}: {t!r} names a head but not which input; write {t}:q, {t}:k, {t}:v or {t}:*")
    raise PatchboardError(field, f"{where}: {t!r} is not a receiver; write L.H:q|k|v|* (e.g. 5.1:q), mlpL (e.g. mlp3), logits or *")


def parse_receiver_list(text: Any, geo: Geometry, field: str = "receivers") -> list[Receiver]:
    """A comma-separated list (the CLI's ``--receivers``) or a list of specs."""
    items = text if isinstance(text, (list, tuple)) else str(text or "").split(",")
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items:
        raise PatchboardError(field, "no receivers given; write e.g. 5.1:q,5.1:k or logits")
    out: list[Receiver] = []
    for i, s in enumerate(items, 1):
        for r in parse_receivers(s, geo, field, f"receiver {i} ({s})"):
            if r not in out:
                out.append(r)
    return sorted(out, key=lambda r: r.sort_key(geo.n_layers))


def canonical_receivers(receivers: Sequence[Receiver], geo: Geometry) -> str:
    return ",".join(r.label(geo) for r in sorted(set(receivers), key=lambda r: r.sort_key(geo.n_layers)))


# ---------------------------------------------------------------- positions

ALL = "all"


def parse_position_spec(value: Any, field: str, where: str) -> tuple[int | str, ...] | None:
    """``"all"``/None -> None (every position); an int (negative counts from the
    end), a role name (``END``, ``S2``, ``A_LAST``...) or a list of them."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", ALL)):
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    out: list[int | str] = []
    for it in items:
        if isinstance(it, bool):
            raise PatchboardError(field, f"{where}: {it!r} is not a position; write token indices (BOS = 0), role names such as END, or all")
        if isinstance(it, int):
            out.append(int(it))
        elif isinstance(it, str) and re.fullmatch(r"-?\d+", it.strip()):
            out.append(int(it.strip()))
        elif isinstance(it, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", it.strip()):
            if it.strip().lower() == ALL:
                return None
            out.append(it.strip())
        else:
            raise PatchboardError(field, f"{where}: {it!r} is not a position; write token indices (BOS = 0), role names such as END, or all")
    if not out:
        raise PatchboardError(field, f"{where}: empty position list; write all, token indices or role names")
    # Canonical order: ints first, then names.
    return tuple(sorted(set(out), key=lambda x: (isinstance(x, str), x if isinstance(x, int) else 0, str(x))))


def position_text(spec: tuple[int | str, ...] | None) -> str:
    return ALL if spec is None else ",".join(map(str, spec))


def position_mask(spec: tuple[int | str, ...] | None, ds: Dataset, K: int, field: str, where: str) -> torch.Tensor:
    """[rows, seq] float mask (rows = pairs x K, pair-major). Roles are looked
    up per pair, so roles at different indices in different pairs work."""
    n, seq = ds.n, ds.seq_len
    m = torch.zeros(n, seq)
    if spec is None:
        m[:] = 1.0
    else:
        for i, p in enumerate(ds.pairs):
            roles = dict(p.roles)
            roles.setdefault("END", seq - 1)
            for it in spec:
                if isinstance(it, int):
                    j = it + seq if it < 0 else it
                    if not 0 <= j < seq:
                        raise PatchboardError(field, f"{where}: position {it} is outside the prompt ({seq} tokens, BOS = 0)")
                else:
                    if it not in roles:
                        known = ", ".join(sorted(roles)) or "END"
                        raise PatchboardError(field, f"{where}: {it!r} is not a role of this dataset (roles: {known}); use a token index (BOS = 0), a role or all")
                    j = roles[it]
                m[i, j] = 1.0
    return m.repeat_interleave(K, 0)


# ---------------------------------------------------------------- the two runs


def _hook_names(n_layers: int) -> set[str]:
    names = {"blocks.0.hook_resid_pre", "ln_final.hook_in"}
    for l in range(n_layers):
        names |= {f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_mlp_out", f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_resid_pre"}
    return names


@dataclass
class PathRuns:
    """The clean and corrupted runs, everything cached that path patching
    reads: per layer the residual stream before the block and before the MLP,
    every head's z and MLP output, and the final residual stream."""

    lm: LoadedModel
    geo: Geometry
    runner: BlockRunner
    clean: dict[str, torch.Tensor]
    corrupt: dict[str, torch.Tensor]
    W_O: list[torch.Tensor]  # per layer [n_heads, d_head, d_model]
    answer: torch.Tensor
    counter: torch.Tensor
    clean_logprobs: torch.Tensor
    clean_stats: RowStats
    corrupt_stats: RowStats
    K: int
    rows: int
    sigma: float | None

    def side(self, which: str) -> dict[str, torch.Tensor]:
        return self.clean if which == "clean" else self.corrupt

    def write(self, which: str, node: Node, rows: slice | None = None) -> torch.Tensor:
        """The node's write into the residual stream [rows, seq, d_model]."""
        c = self.side(which)
        rows = rows if rows is not None else slice(None)
        if node.kind == "embed":
            return c["blocks.0.hook_resid_pre"][rows]
        if node.kind == "mlp":
            return c[f"blocks.{node.layer}.hook_mlp_out"][rows]
        z = c[f"blocks.{node.layer}.attn.hook_z"][rows, :, node.head]
        return z @ self.W_O[node.layer][node.head]

    def delta(self, node: Node, source: str, rows: slice | None = None) -> torch.Tensor:
        base = "corrupt" if source == "clean" else "clean"
        return self.write(source, node, rows) - self.write(base, node, rows)


def prepare_runs(lm: LoadedModel, ds: Dataset, spec: Spec) -> PathRuns:
    """The corrupted (or noised) run comes from :func:`patching.runs.prepare`
    (direction ``noise``: its source is the corrupted run), so the rows, the
    Gaussian noise and the clean/corrupt statistics are exactly those of
    activation patching; the clean run, deterministic, is cached here."""
    _check_architecture(lm)
    geo = Geometry.of(lm)
    names = _hook_names(geo.n_layers)
    prep = prepare(lm, ds, spec.corruption, "noise", names, noise_scale=spec.noise_scale, noise_samples=spec.noise_samples, seed=spec.seed)
    K = spec.noise_samples if spec.corruption == "gn" else 1
    _, cache = lm.bridge.run_with_cache(ds.clean_tokens.to(lm.device), names_filter=lambda n: n in names)
    clean = {n: cache[n].repeat_interleave(K, 0) if K > 1 else cache[n] for n in names}
    del cache
    W_O = [lm.bridge.blocks[l].attn.W_O.detach() for l in range(geo.n_layers)]
    inp = prep.inputs
    runs = PathRuns(
        lm=lm, geo=geo, runner=inp.runner, clean=clean, corrupt=inp.source, W_O=W_O,
        answer=inp.answer, counter=inp.counter, clean_logprobs=inp.clean_logprobs,
        clean_stats=prep.clean, corrupt_stats=prep.corrupt, K=K, rows=prep.rows, sigma=prep.sigma,
    )
    _check_writes(runs)
    return runs


def _check_architecture(lm: LoadedModel) -> None:
    cfg = lm.cfg
    if getattr(cfg, "parallel_attn_mlp", False):
        raise PatchboardError("model", f"{lm.name!r} runs attention and MLP in parallel; path patching supports sequential blocks only")
    if getattr(cfg, "attn_only", False):
        raise PatchboardError("model", f"{lm.name!r} is attention-only; path patching needs MLP blocks")


def _check_writes(runs: PathRuns) -> None:
    """The graph is only right if each block's attention output is the sum of
    its heads' ``z @ W_O`` writes (plus a constant bias) and the residual
    stream is the sum of the writes. Checked on the first and last layers of
    both runs (the bias cancels in the difference)."""
    c, k = runs.clean, runs.corrupt
    geo = runs.geo
    for l in sorted({0, geo.n_layers - 1}):
        diffs = []
        for side, which in ((c, "clean"), (k, "corrupt")):
            heads = sum(runs.write(which, Node("head", l, h)) for h in range(geo.n_heads))
            attn = side[f"blocks.{l}.hook_resid_mid"] - side[f"blocks.{l}.hook_resid_pre"]
            diffs.append(attn - heads)
        err = float((diffs[0] - diffs[1]).abs().max())
        scale = float(c[f"blocks.{l}.hook_resid_mid"].abs().max()) + 1e-6
        nxt = c[f"blocks.{l + 1}.hook_resid_pre"] if l + 1 < geo.n_layers else c["ln_final.hook_in"]
        err2 = float((c[f"blocks.{l}.hook_resid_mid"] + c[f"blocks.{l}.hook_mlp_out"] - nxt).abs().max())
        if err > 1e-3 * scale or err2 > 1e-3 * scale:
            raise PatchboardError(
                "model",
                f"{runs.lm.name!r}: the residual stream is not the sum of per-head z @ W_O and MLP writes on this architecture (layer {l}); path patching is unsupported here",
            )


# ---------------------------------------------------------------- hooks

_SPLIT_LOCK = threading.RLock()


@contextmanager
def split_qkv(bridge, on: bool = True):
    """Turn on ``use_split_qkv_input`` (each head's own copy of the residual
    stream for q/k/v) for the duration, restoring the caller's flags. Held
    under a lock: a concurrent run turning it off mid-way would silently drop
    the per-head hooks."""
    if not on:
        yield
        return
    with _SPLIT_LOCK:
        saved_split = bool(getattr(bridge.cfg, "use_split_qkv_input", False))
        saved_attn_in = bool(getattr(bridge.cfg, "use_attn_in", False))
        try:
            if saved_attn_in:
                bridge.set_use_attn_in(False)
            if not saved_split:
                try:
                    bridge.set_use_split_qkv_input(True)
                except (ValueError, NotImplementedError, RuntimeError) as e:
                    raise PatchboardError("model", f"this model's attention has no per-head q/k/v input ({str(e).splitlines()[0][:120]}); use mlp or logits receivers") from None
            yield
        finally:
            bridge.set_use_split_qkv_input(saved_split)
            if saved_attn_in:
                bridge.set_use_attn_in(True)


def qkv_hook(layer: int, port: str) -> str:
    return f"blocks.{layer}.attn.hook_{port}_input"


def mlp_in_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_mid"


class Fired:
    """Records which hooks ran, so a hook that silently never fires (an
    architecture without the fork) is an error, not a wrong number."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def check(self, expected: Iterable[str]) -> None:
        missing = sorted(set(expected) - self.names)
        if missing:
            raise PatchboardError("model", f"the hook {missing[0]} never fired; this model's blocks do not expose the per-head inputs path patching needs")


# ---------------------------------------------------------------- sweeps


@dataclass
class Sender:
    node: Node
    pos: int | None  # a single position (by-position sweeps) or None


def parse_sender_list(text: Any, geo: Geometry, field: str = "senders") -> list[Node]:
    """``*`` (default) or a comma list / list of node specs, in graph order."""
    items = text if isinstance(text, (list, tuple)) else str("*" if text is None else text).split(",")
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items:
        raise PatchboardError(field, "no senders given; write * or e.g. embed,0-5.*,mlp*")
    out: set[Node] = set()
    for i, s in enumerate(items, 1):
        out.update(parse_nodes(s, geo, field, f"sender {i} ({s})"))
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


def sweep_stats(
    runs: PathRuns,
    receivers: Sequence[Receiver],
    senders: Sequence[Sender],
    direction: str,
    sender_mask: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
) -> tuple[RowStats, list[bool]]:
    """Row stats [n_senders, rows] of every sender reaching the output only
    through ``receivers``; senders that reach none get NaN (and False)."""
    geo = runs.geo
    L = geo.n_layers
    source = "clean" if direction == "denoise" else "corrupt"
    base = runs.corrupt if direction == "denoise" else runs.clean
    R = runs.rows
    seq = base["ln_final.hook_in"].shape[1]
    dev = base["ln_final.hook_in"].device
    reach = [[r for r in receivers if r.reads(s.node, L)] for s in senders]
    active = [bool(x) for x in reach]
    split = any(r.port in ("q", "k", "v") for r in receivers)
    max_rows = path_rows(runs.lm.cfg, seq, split)
    row_blocks = [slice(r, min(R, r + max_rows)) for r in range(0, R, max_rows)]
    per_chunk = max(1, max_rows // R) if R <= max_rows else 1

    def start_of(i: int) -> int:
        return min(r.layer for r in reach[i])

    todo = sorted((i for i in range(len(senders)) if active[i]), key=start_of)
    chunks: list[list[int]] = []
    for i in todo:
        if chunks and len(chunks[-1]) < per_chunk and start_of(chunks[-1][0]) == start_of(i):
            chunks[-1].append(i)
        else:
            chunks.append([i])

    nan = torch.full((R,), float("nan"))
    out: list[list[RowStats]] = [[] for _ in senders]
    total, done = len(chunks) * len(row_blocks), 0
    bridge = runs.lm.bridge
    if sender_mask is not None:
        sender_mask = sender_mask.to(dev)
    with split_qkv(bridge, split):
        for chunk in chunks:
            start = start_of(chunk[0])
            P = len(chunk)
            for rows in row_blocks:
                Rb = rows.stop - rows.start
                # One delta per slot: the same write difference reaches every receiver.
                deltas = []
                for i in chunk:
                    s = senders[i]
                    d = runs.delta(s.node, source, rows)
                    m = torch.zeros(Rb, seq, device=dev)
                    if s.pos is not None:
                        m[:, s.pos] = 1.0
                    else:
                        m[:] = 1.0
                    if sender_mask is not None:
                        m = m * sender_mask[rows]
                    deltas.append(d * m[..., None])
                delta = torch.cat(deltas)  # [P*Rb, seq, d]
                slot_reach: dict[Receiver, torch.Tensor] = {}
                for slot, i in enumerate(chunk):
                    for r in reach[i]:
                        v = slot_reach.setdefault(r, torch.zeros(P, device=dev))
                        v[slot] = 1.0
                gates = {r: v.repeat_interleave(Rb)[:, None, None] for r, v in slot_reach.items()}
                fired = Fired()
                hooks = _sweep_hooks(gates, delta, fired)
                if start < L:
                    x = base[f"blocks.{start}.hook_resid_pre"][rows].repeat(P, 1, 1)
                    with bridge.hooks(fwd_hooks=hooks):
                        x = runs.runner.run_from(start, x)
                    fired.check(name for name, _ in hooks)
                else:
                    x = base["ln_final.hook_in"][rows].repeat(P, 1, 1)
                logit_gate = gates.get(Receiver("logits", L))
                last = x[:, -1, :]
                if logit_gate is not None:
                    last = last + (delta[:, -1, :] * logit_gate[:, :, 0])
                logits = runs.runner.final_logits(last)
                st = row_stats(logits, runs.answer[rows].repeat(P), runs.counter[rows].repeat(P), runs.clean_logprobs[rows].repeat(P, 1)).view(P, Rb)
                for slot, i in enumerate(chunk):
                    out[i].append(RowStats(st.ld[slot], st.prob[slot], st.logprob[slot], st.kl[slot]))
                done += 1
                if progress:
                    progress(done, total)
    stacked = []
    for i in range(len(senders)):
        stacked.append(RowStats.cat(out[i]) if out[i] else RowStats(nan, nan, nan, nan))
    return RowStats(*(torch.stack([getattr(s, f).cpu() for s in stacked]) for f in ("ld", "prob", "logprob", "kl"))), active


def _sweep_hooks(gates: dict[Receiver, torch.Tensor], delta: torch.Tensor, fired: Fired) -> list[tuple[str, Callable]]:
    by_hook: dict[str, list[tuple[Receiver, torch.Tensor]]] = {}
    for r, g in gates.items():
        if r.port in ("q", "k", "v"):
            by_hook.setdefault(qkv_hook(r.layer, r.port), []).append((r, g))
        elif r.port == "mlp":
            by_hook.setdefault(mlp_in_hook(r.layer), []).append((r, g))

    def make(name, items):
        def hook(act, hook=None):
            fired.names.add(name)
            if name.endswith("hook_resid_mid"):
                # The MLP's own input: a new tensor, so the residual skip keeps its value.
                return act + delta * items[0][1]
            act = act.clone()
            for r, g in items:
                act[:, :, r.index] += delta * g
            return act

        return hook

    return [(name, make(name, items)) for name, items in by_hook.items()]


@dataclass
class PathsResult:
    """A sender sweep: the spec, the receivers, a tidy table (a row per
    sender; columns as ``python -m patching run`` plus ``receivers``)."""

    spec: Spec
    receivers: str
    table: pd.DataFrame
    baselines: dict[str, float]
    meta: dict[str, Any]
    from_store: bool = False

    def export_table(self, metric: str | None = None) -> pd.DataFrame:
        t = self.table.copy()
        t.insert(4, "value", t[metric or self.spec.metric])
        return t


def data_label(spec: Spec, direction: bool = True) -> str:
    """``Spec.label()`` without the component (a sweep's senders are every
    node) and, for hypotheses, without the direction."""
    parts = spec.label().split(" · ")[:-1]
    return " · ".join(p for p in parts if direction or p not in ("denoise", "noise"))


def paths_spec(spec: Spec) -> Spec:
    """The spec fields a sweep uses: the component and window do not apply."""
    return replace(spec, component="head", window=1).validated()


def sweep(
    spec: Spec,
    lm: LoadedModel,
    ds: Dataset,
    receivers: str | Sequence[str],
    sender_positions: Any = None,
    by_pos: bool = False,
    progress: ProgressFn | None = None,
    runs: PathRuns | None = None,
    senders: Any = None,
) -> PathsResult:
    """Every sender (embed, each head, each MLP, or the ``senders`` given; at
    ``sender_positions``, or one row per position with ``by_pos``) reaching
    the output only through ``receivers``. Senders that no receiver reads get
    NaN."""
    spec = paths_spec(spec)
    t0 = time.time()
    geo = Geometry.of(lm)
    recv = parse_receiver_list(receivers, geo)
    nodes = parse_sender_list(senders, geo)
    pos_spec = parse_position_spec(sender_positions, "sender-positions", "sender positions")
    runs = runs or prepare_runs(lm, ds, spec)
    mask = position_mask(pos_spec, ds, runs.K, "sender-positions", "sender positions") if pos_spec is not None else None
    senders_ = senders_for(geo, ds.seq_len, by_pos, nodes)
    stats, active = sweep_stats(runs, recv, senders_, spec.direction, mask, progress)
    eff = effects(stats, runs.clean_stats, runs.corrupt_stats, spec.direction)
    label = canonical_receivers(recv, geo)
    rows = []
    for i, s in enumerate(senders_):
        n = s.node
        rows.append({
            "component": n.kind,
            "layer": n.layer if n.kind != "embed" else None,
            "head": n.head if n.kind == "head" else None,
            "pos": s.pos,
            "pos_label": ds.position_labels[s.pos] if s.pos is not None else "",
            **{m: (float(eff[m][i]) if active[i] else float("nan")) for m in METRICS},
        })
    table = pd.DataFrame(rows)
    for col in ("layer", "head", "pos"):
        table[col] = table[col].astype("Int64")
    meta = {
        "kind": "paths",
        "receivers": label,
        "receivers_described": [r.describe(geo) for r in recv],
        "senders": canonical_senders(nodes, geo),
        "sender_positions": position_text(pos_spec),
        "by_pos": bool(by_pos),
        "n_pairs": ds.n,
        "rows": runs.rows,
        "seq_len": ds.seq_len,
        "n_layers": geo.n_layers,
        "n_heads": geo.n_heads,
        "n_kv_heads": geo.n_kv,
        "position_labels": ds.position_labels,
        "clean_tokens": ds.clean_strs,
        "corrupt_tokens": ds.corrupt_strs,
        "sigma": runs.sigma,
        "compute_seconds": round(time.time() - t0, 3),
        "warnings": list(ds.warnings) + _gqa_notes(recv, geo),
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
    }
    return PathsResult(spec=spec, receivers=label, table=table, baselines=baselines(runs.clean_stats, runs.corrupt_stats), meta=meta)


def _gqa_notes(recv: Sequence[Receiver], geo: Geometry) -> list[str]:
    kv = [r for r in recv if r.port in ("k", "v")]
    if not kv or not geo.gqa:
        return []
    return [f"grouped-query attention: {', '.join(r.describe(geo) for r in kv)}"]


# ---------------------------------------------------------------- store


def paths_key(spec: Spec, receivers: str, sender_positions: str, by_pos: bool, fingerprint: str, senders: str = "*") -> str:
    payload = json.dumps(
        {"kind": "paths", "spec": paths_spec(spec).compute_dict(), "receivers": receivers, "senders": senders,
         "sender_positions": sender_positions, "by_pos": bool(by_pos), "model": fingerprint, "engine": ENGINE_VERSION,
         "paths": PATHS_VERSION},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class SweepRequest:
    """What a sweep computes besides the spec, in canonical form."""

    receivers: str
    senders: str = "*"
    sender_positions: str = ALL
    by_pos: bool = False

    @staticmethod
    def make(geo: Geometry, receivers: Any, senders: Any = None, sender_positions: Any = None, by_pos: bool = False) -> "SweepRequest":
        return SweepRequest(
            receivers=canonical_receivers(parse_receiver_list(receivers, geo), geo),
            senders=canonical_senders(parse_sender_list(senders, geo), geo),
            sender_positions=position_text(parse_position_spec(sender_positions, "sender-positions", "sender positions")),
            by_pos=bool(by_pos),
        )

    def key(self, spec: Spec, fingerprint: str) -> str:
        return paths_key(spec, self.receivers, self.sender_positions, self.by_pos, fingerprint, self.senders)


def geometry_for(name: str) -> Geometry | None:
    """A model's geometry without loading its weights: from a model this
    process loaded, else its config.json (the embedded model's converted copy,
    a local folder or the hub cache; never a download); None when unknown."""
    from patching import service as api
    from patching.core.config import EMBEDDED, cache_dir

    lm = api._models.get(name)
    if lm is not None:
        return Geometry.of(lm)
    try:
        from transformers import AutoConfig

        src = str(cache_dir() / "models" / EMBEDDED) if name == EMBEDDED else name
        cfg = AutoConfig.from_pretrained(src, local_files_only=True)
        n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
        n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
        kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        return Geometry(int(n_layers), int(n_heads), int(kv))
    except Exception:  # noqa: BLE001 - unknown until the model loads
        return None


def lookup_paths(spec: Spec, req: SweepRequest, store, fingerprint: str) -> PathsResult | None:
    """The stored sweep, or None (no model load)."""
    spec = paths_spec(spec)
    rec = store.get(req.key(spec, fingerprint))
    if rec is None:
        return None
    meta = rec["meta"]
    meta["created_at"] = rec["created_at"]
    return PathsResult(spec=spec, receivers=req.receivers, table=rec["table"], baselines=rec["baselines"], meta=meta, from_store=True)


def run_paths(
    spec: Spec,
    receivers: str | Sequence[str],
    sender_positions: Any = None,
    by_pos: bool = False,
    store=None,
    lm: LoadedModel | None = None,
    progress: ProgressFn | None = None,
    use_store: bool = True,
    senders: Any = None,
) -> PathsResult:
    """The stored sweep for these inputs, or compute and store it (kind
    ``paths``; the key hashes the canonical spec, receivers, senders, sender
    positions, the weights' fingerprint and the engine versions)."""
    from patching.service import dataset_for, get_model
    from patching.store import Store

    spec = paths_spec(spec)
    lm = lm or get_model(spec.model)
    req = SweepRequest.make(Geometry.of(lm), receivers, senders, sender_positions, by_pos)
    store = store if store is not None else (Store() if use_store else None)
    if store is not None:
        hit = lookup_paths(spec, req, store, lm.fingerprint)
        if hit is not None:
            return hit
    ds = dataset_for(spec, lm)
    res = sweep(spec, lm, ds, req.receivers, None if req.sender_positions == ALL else req.sender_positions, req.by_pos, progress,
                senders=req.senders)
    # The Paths page's own query parameters for this result (beside the spec's).
    res.meta["page_query"] = {"mode": "sweep", "receivers": req.receivers, "senders": req.senders, "sender-pos": req.sender_positions}
    if store is not None:
        store.put(req.key(spec, lm.fingerprint), "paths", spec.to_json(), f"paths {req.senders} → {req.receivers} · {data_label(spec)}",
                  spec.model, lm.fingerprint, ENGINE_VERSION, res.meta["compute_seconds"], res.baselines, res.meta, res.table)
    return res
