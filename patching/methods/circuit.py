"""Evaluating circuits: every edge outside the circuit carries its ablated value.

A circuit is a set of edges of the path graph (:mod:`patching.methods.circuit_graph`).
Evaluating it on a pair runs the model with each receiver input built from
its senders' writes, edge by edge (the treeified form of Goldowsky-Dill et
al.; EAP-IG's ``evaluate_graph`` with ``intervention='patching'``)::

    input_r = a_r + sum over circuit edges s -> r of (v_s - a_s)

``a`` is the ablated run (:func:`patching.methods.path_runs.prepare_runs`, the
spec's corruption: the corrupted prompt's run under ``str``, the resampled,
noised or mean/zero-ablated one otherwise), ``v_s`` the sender's value in the
circuit's run: ``embed``'s clean value, a head recomputed from its own q, k
and v inputs, an MLP from its own input. The logits read the final residual
built the same way. Equivalently (EAP-IG's form) every edge *outside* the
circuit adds ``a_s - v_s`` to the live input. The circuit is pruned first
(:func:`~patching.methods.circuit_graph.prune`, EAP-IG's ``Graph.prune``): a
sender no circuit path reaches from embed keeps ``a_s`` on every edge. So the
circuit of every edge is the clean run, the empty circuit the ablated run.

Faithfulness is MIB's: (m(C) − m(∅)) / (m(N) − m(∅)) with m the mean logit
difference over the prompts, N every edge (the clean run) and ∅ no edge
(the ablated run) -- the ``logit_diff`` effect of
:mod:`patching.engine.metrics` in its ``denoise`` form, with the other
metrics beside it and the per-prompt values behind them.

How it is fast: circuits are stacked along the batch dimension (auto-circuit's
masks) and each layer runs only the circuits with a node to compute there;
every sender's write difference is kept once per circuit and each input is one
masked sum of them (a matrix product over the senders the receiver reads);
positions before the first one where the two runs differ are identical in
every circuit's run, so only the later positions run, on a cache of the
prefix's keys and values (checked once against the clean run); only the final
position is read out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from patching.core.data import Dataset
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.core.progress import ProgressFn
from patching.core.spec import Spec
from patching.engine.blocks import PrefixCache, PrefixKV, build_suffix_path
from patching.engine.readout import Reference, RowStats
from patching.engine.resources import memory_budget_bytes, model_devices, model_lock
from patching.methods.circuit_graph import EdgeIndex, prune
from patching.methods.graph import Geometry, Node
from patching.methods.path_runs import Fired, PathRuns, mlp_in_hook, prepare_runs, qkv_hook, split_qkv


@dataclass
class CircuitRuns:
    """The two runs (:class:`PathRuns`), the edge index, and the positions the
    circuits' runs share with both runs (``offset``: positions before it are
    equal in the clean and ablated runs, hence in every circuit's run)."""

    runs: PathRuns
    ix: EdgeIndex
    offset: int
    kv: PrefixKV | None
    calls: list | None  # suffix block calls (None: full sequences)
    clean: RowStats  # the circuit of every edge (read out here, as every circuit is)
    empty: RowStats  # the empty circuit: the ablated run

    @property
    def rows(self) -> int:
        return self.runs.rows


def prepare(lm: LoadedModel, ds: Dataset, spec: Spec, runs: PathRuns | None = None) -> CircuitRuns:
    """The shared runs (:func:`prepare_runs`) plus what circuits add: the
    shared prefix and its key/value cache, and the two reference readouts."""
    runs = runs or prepare_runs(lm, ds, spec)
    if runs.normalised:
        # A head's write is then not additive (patching/engine/head_write.py): the treeified sum
        # would need the norm re-applied per receiver and layer (EAP-IG does so for Gemma).
        raise PatchboardError("model", f"{lm.name!r} normalises the attention output after the head sum (Gemma 2/3), so a "
                              "head's write is not additive and circuits are not evaluated on it yet; use a model without "
                              "post-attention norms")
    geo = Geometry.of(lm)
    ix = EdgeIndex.of(geo)
    offset = _shared_prefix(runs)
    kv, calls = None, None
    if offset > 0:
        kv, calls = _suffix(lm, ds, runs, offset)
        if calls is None:
            offset = 0
    with model_lock(lm.bridge), torch.inference_mode():
        ref = _reference(runs, slice(0, runs.rows))
        clean = ref.stats(runs.runner.final_logits(runs.clean["ln_final.hook_in"][:, -1]).float())
        empty = ref.stats(runs.runner.final_logits(runs.corrupt["ln_final.hook_in"][:, -1]).float())
    clean, empty = clean.map(torch.Tensor.clone), empty.map(torch.Tensor.clone)
    return CircuitRuns(runs, ix, offset, kv, calls, clean, empty)


def _reference(runs: PathRuns, rows: slice) -> Reference:
    return Reference(runs.answer[rows], runs.counter[rows], runs.clean_logprobs[rows])


def _shared_prefix(runs: PathRuns) -> int:
    """The first position at which any row's clean and ablated runs differ in
    any cached residual stream (every layer's input and the final one)."""
    L = runs.geo.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + ["ln_final.hook_in"]
    seq = runs.clean[names[0]].shape[1]
    first = seq
    for n in names:
        diff = (runs.clean[n] != runs.corrupt[n]).reshape(-1, seq, runs.clean[n].shape[-1]).any(-1).any(0)
        hit = diff.nonzero()
        if len(hit):
            first = min(first, int(hit[0]))
    return min(first, seq - 1)


def _suffix(lm: LoadedModel, ds: Dataset, runs: PathRuns, offset: int):
    """The prefix's keys and values (one forward pass of the clean prefix,
    rows repeated per sample) and the blocks' calls for the positions after
    it; (None, None) where the architecture's cache does not fit, or the
    suffix run does not reproduce the clean run."""
    from transformers import DynamicCache

    bridge = lm.bridge
    try:
        with model_lock(bridge), torch.inference_mode(False), torch.no_grad():
            cache = DynamicCache()
            bridge(ds.clean_tokens[:, :offset].to(lm.device), past_key_values=cache)
            kv = PrefixKV.from_hf_cache(cache, offset)
            if kv is None:
                return None, None
            if runs.K > 1:
                kv = PrefixKV([k.repeat_interleave(runs.K, 0) for k in kv.keys], [v.repeat_interleave(runs.K, 0) for v in kv.values])
            path = build_suffix_path(lm, kv, ds.seq_len)
            if path is None:
                return None, None
            # The suffix run must reproduce the clean run (checked once, in the mode circuits run in).
            with split_qkv(bridge), torch.inference_mode():
                x = _run_blocks(runs, path.calls, kv, slice(0, runs.rows), runs.clean["blocks.0.hook_resid_pre"][:, offset:], 0, runs.geo.n_layers)
            want = runs.clean["ln_final.hook_in"][:, offset:]
            if not torch.allclose(x.double(), want.double(), atol=1e-3 * float(want.abs().max()) + 1e-4, rtol=1e-4):
                return None, None
            return kv, path.calls
    except Exception:  # noqa: BLE001 - an architecture the cache path does not fit: run full sequences
        return None, None


def _run_blocks(runs: PathRuns, calls, kv: PrefixKV | None, rows: slice, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    blocks = runs.runner.blocks
    if calls is not None:
        cache = PrefixCache([k[rows] for k in kv.keys], [v[rows] for v in kv.values])
        bound = [c.bind(cache) for c in calls]
    else:
        bound = runs.runner.calls
    for l in range(start, stop):
        args, kwargs = bound[l]
        out = blocks[l](x, *args, **kwargs)
        x = out if torch.is_tensor(out) else out[0]
    return x


# ---------------------------------------------------------------- evaluation


def evaluate(cr: CircuitRuns, masks: np.ndarray, progress: ProgressFn | None = None, max_circuits: int | None = None) -> tuple[RowStats, np.ndarray]:
    """Every circuit of ``masks`` ([C, E] bool over :attr:`CircuitRuns.ix`):
    row stats [C, rows] and the pruned masks. Circuits run in batches that fit
    the memory budget (``max_circuits`` caps a batch)."""
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    if masks.shape[1] != cr.ix.n_edges:
        raise ValueError(f"masks have {masks.shape[1]} edges; this model's graph has {cr.ix.n_edges}")
    pruned = prune(masks, cr.ix)
    C, R = masks.shape[0], cr.rows
    out: list[RowStats | None] = [None] * C
    sizes = pruned.sum(1)
    # Equal circuits (after pruning) are evaluated once: random draws of every edge, say.
    first: dict[bytes, int] = {}
    same = [first.setdefault(np.packbits(pruned[c]).tobytes(), c) for c in range(C)]
    todo = [c for c in range(C) if sizes[c] > 0 and same[c] == c]
    for c in range(C):
        if sizes[c] == 0:
            out[c] = cr.empty
    # Similar circuits together: a layer runs only the circuits with work there.
    todo.sort(key=lambda c: sizes[c])
    rows_per, per_batch = _batching(cr, max_circuits)
    row_blocks = [slice(r, min(R, r + rows_per)) for r in range(0, R, rows_per)]
    batches = [todo[i:i + per_batch] for i in range(0, len(todo), per_batch)]
    total, done = len(batches) * len(row_blocks), 0
    bridge = cr.runs.lm.bridge
    parts: dict[int, list[RowStats]] = {c: [] for c in todo}
    with model_lock(bridge), split_qkv(bridge), torch.inference_mode():
        for batch in batches:
            for rows in row_blocks:
                st = _evaluate_batch(cr, pruned[batch], rows)
                for j, c in enumerate(batch):
                    parts[c].append(st[j].map(torch.Tensor.clone))
                done += 1
                if progress:
                    progress(done, total)
    for c in todo:
        out[c] = RowStats.cat(parts[c])
    for c in range(C):
        if out[c] is None:
            out[c] = out[same[c]]
    return RowStats.combine(out, torch.stack), pruned  # type: ignore[arg-type]


def _batching(cr: CircuitRuns, max_circuits: int | None) -> tuple[int, int]:
    """(rows per block, circuits per batch) within the memory budget: per
    circuit and row, every sender's write difference at the positions run,
    plus the block's activations with per-head q/k/v copies."""
    cfg = cr.runs.lm.cfg
    geo = cr.runs.geo
    seq = cr.runs.clean["ln_final.hook_in"].shape[1]
    P = seq - cr.offset
    d = int(cfg.d_model)
    d_mlp = int(getattr(cfg, "d_mlp", 0) or 4 * d)
    per_row = 4 * P * (len(cr.ix.senders) * d + (geo.n_heads + 2 * geo.n_kv + 8) * d + 3 * d_mlp + 2 * geo.n_heads * seq)
    budget = memory_budget_bytes(model_devices(cfg))
    rows = max(1, min(cr.rows, budget // max(per_row, 1)))
    per_batch = max(1, budget // max(per_row * rows, 1))
    if max_circuits is not None:
        per_batch = max(1, min(per_batch, max_circuits))
    return rows, per_batch


def _evaluate_batch(cr: CircuitRuns, pm: np.ndarray, rows: slice) -> RowStats:
    """Row stats [Cb, Rb] of the (pruned) circuits ``pm`` on ``rows``."""
    runs, ix = cr.runs, cr.ix
    geo = runs.geo
    L, H, G = geo.n_layers, geo.n_heads, geo.n_kv
    abl, cl = runs.corrupt, runs.clean
    off = cr.offset
    Cb = pm.shape[0]
    Rb = rows.stop - rows.start
    seq = abl["ln_final.hook_in"].shape[1]
    P = seq - off
    d = abl["ln_final.hook_in"].shape[-1]
    dev = abl["ln_final.hook_in"].device

    # Senders that send on some kept edge: they get a slot, in graph order, so
    # the senders any receiver reads occupy a prefix of the slots.
    sends = np.zeros((Cb, len(ix.senders)), dtype=bool)
    for c in range(Cb):
        sends[c, np.unique(ix.sender[pm[c]])] = True
    used = sends.any(0)
    slot = np.cumsum(used) - 1
    slot_sender = np.flatnonzero(used)
    n_slots = len(slot_sender)
    prefix_slots = np.concatenate([[0], np.cumsum(used)])  # senders [0, s) own slots [0, prefix_slots[s])
    D = torch.zeros(Cb, n_slots, Rb * P * d, device=dev)
    if used[0]:
        D[:, 0] = (cl["blocks.0.hook_resid_pre"][rows, off:] - abl["blocks.0.hook_resid_pre"][rows, off:]).reshape(-1)

    def masks_of(ri: int, circuits: Sequence[int], lo: int, hi: int) -> torch.Tensor:
        """[len(circuits), hi - lo] float mask of receiver ri's kept edges from the senders in slots [lo, hi)."""
        cols = int(ix.starts[ri]) + slot_sender[lo:hi]
        return torch.from_numpy(pm[np.ix_(list(circuits), cols)].astype(np.float32)).to(dev)

    def summed(ri_list: Sequence[int], circuits: Sequence[int], lo: int, hi: int) -> dict[int, torch.Tensor]:
        """{receiver: [len(circuits), Rb, P, d]}: each receiver's masked sum of
        the differences of the senders in slots [lo, hi), one matrix product
        per circuit (its differences read once for every receiver);
        receivers without such a kept edge are left out."""
        if hi <= lo:
            return {}
        Ms = [masks_of(ri, circuits, lo, hi) for ri in ri_list]
        keep = [i for i, M in enumerate(Ms) if bool(M.any())]
        if not keep:
            return {}
        M = torch.stack([Ms[i] for i in keep], 1)  # [n, receivers, hi - lo]
        acc = torch.empty(len(circuits), len(keep), Rb * P * d, device=dev)
        for j, c in enumerate(circuits):
            cols = M[j].any(0).nonzero()[:, 0]
            if len(cols) < 0.6 * (hi - lo):
                # A sparse circuit: only the senders some receiver keeps (fewer rows of D read).
                torch.mm(M[j][:, cols], D[c, lo:hi].index_select(0, cols), out=acc[j])
            else:
                torch.mm(M[j], D[c, lo:hi], out=acc[j])
        return {ri_list[i]: acc[:, t].view(len(circuits), Rb, P, d) for t, i in enumerate(keep)}

    for l in range(L):
        head_s = [ix.sender_of(Node("head", l, h)) for h in range(H)]
        mlp_s = ix.sender_of(Node("mlp", l))
        layer_s = head_s + [mlp_s]
        sub = [c for c in range(Cb) if sends[c, layer_s].any()]
        if not sub:
            continue
        n = len(sub)
        attn_r = [ix.receiver_of_port("q", l, h) for h in range(H)] + [ix.receiver_of_port(p, l, g) for p in ("k", "v") for g in range(G)]
        mlp_r = ix.receiver_of_port("mlp", l, -1)
        # The senders before this layer occupy slots [0, k); this layer's heads [k, k_mlp).
        k = int(prefix_slots[head_s[0]])
        k_mlp = int(prefix_slots[mlp_s])
        adds = summed(attn_r + [mlp_r], sub, 0, k)
        fired = Fired()
        captured: dict[str, torch.Tensor] = {}

        def add_port(port: str, count: int, base: int, name: str):
            items = [(i, adds[attn_r[base + i]]) for i in range(count) if attn_r[base + i] in adds]

            def hook(act, hook=None):
                fired.names.add(name)
                if not items:
                    return act
                # The head's own copy of the residual stream (a fresh tensor): added to in place.
                v = act.view(n, Rb, P, count, d)
                for i, a in items:
                    v[:, :, :, i] += a.to(act.dtype)
                return act

            return hook

        def z_hook(act, hook=None):
            captured["z"] = act
            return act

        def mlp_in(act, hook=None, l=l, k=k, k_mlp=k_mlp):
            fired.names.add("mlp_in")
            z = captured["z"].float()  # [n*Rb, P, H, dh]
            dz = z - abl[f"blocks.{l}.attn.hook_z"][rows, off:].float().repeat(n, 1, 1, 1)
            writes = torch.einsum("bphe,hed->bhpd", dz, runs.W_O[l].float())  # [n*Rb, H, P, d]
            writes = writes.reshape(n, Rb, H, P, d).permute(0, 2, 1, 3, 4).reshape(n, H, Rb * P * d)
            idx = torch.as_tensor(sub, device=dev)
            hs = [h for h in range(H) if used[head_s[h]]]
            if hs:
                D[idx[:, None], torch.as_tensor([int(slot[head_s[h]]) for h in hs], device=dev)[None, :]] = writes[:, hs]
            base = abl[mlp_in_hook(l)][rows, off:].repeat(n, 1, 1)
            for part in (adds.get(mlp_r), summed([mlp_r], sub, k, k_mlp).get(mlp_r)):  # earlier senders, then this layer's heads
                if part is not None:
                    base = base + part.reshape(n * Rb, P, d).to(base.dtype)
            return base.to(act.dtype)

        def mlp_out(act, hook=None, l=l):
            if used[mlp_s]:
                diff = act.float() - abl[f"blocks.{l}.hook_mlp_out"][rows, off:].float().repeat(n, 1, 1)
                D[torch.as_tensor(sub, device=dev), int(slot[mlp_s])] = diff.reshape(n, Rb * P * d)
            return act

        hooks = [(qkv_hook(l, "q"), add_port("q", H, 0, qkv_hook(l, "q"))),
                 (qkv_hook(l, "k"), add_port("k", G, H, qkv_hook(l, "k"))),
                 (qkv_hook(l, "v"), add_port("v", G, H + G, qkv_hook(l, "v"))),
                 (f"blocks.{l}.attn.hook_z", z_hook), (mlp_in_hook(l), mlp_in), (f"blocks.{l}.hook_mlp_out", mlp_out)]
        x = abl[f"blocks.{l}.hook_resid_pre"][rows, off:].repeat(n, 1, 1)
        with runs.lm.bridge.hooks(fwd_hooks=hooks):
            _run_blocks(runs, cr.calls, cr.kv, rows, x, l, l + 1)
        fired.check([qkv_hook(l, p) for p in "qkv"] + ["mlp_in"])

    # The logits read the final residual at the last position.
    final = abl["ln_final.hook_in"][rows, -1].float().repeat(Cb, 1)  # [Cb*Rb, d]
    if n_slots:
        M = masks_of(len(ix.receivers) - 1, range(Cb), 0, n_slots)
        last = D.view(Cb, n_slots, Rb, P, d)[:, :, :, -1, :].reshape(Cb, n_slots, Rb * d)
        final = final + torch.bmm(M[:, None, :], last).reshape(Cb * Rb, d)
    logits = runs.runner.final_logits(final.to(abl["ln_final.hook_in"].dtype)).float()
    return _reference(runs, rows).stats(logits.view(Cb, Rb, -1)).view(Cb, Rb)
