"""Path patching: Wang et al.'s sender → receiver sweeps (direct-path form).

The graph (nodes, receivers, GQA groups) is in :mod:`patching.methods.graph`;
the runs, inputs and hooks every path computation shares are in
:mod:`patching.methods.path_runs`.

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
sign convention of :mod:`patching.engine.metrics`, and every metric comes from the
same runs. Senders are batched along the batch dimension like
:mod:`patching.engine`, each chunk starting from the cached residual stream at
its first receiver's layer (for ``logits`` no block runs at all).
"""


from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from patching.core.data import Dataset
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.core.progress import ProgressFn
from patching.core.spec import Spec
from patching.engine.metrics import METRICS, baseline_warnings, baselines, effects
from patching.engine.readout import RowStats, row_stats
from patching.engine.resources import model_lock, path_rows
from patching.methods.graph import Node, Receiver, Sender, canonical_receivers, canonical_senders, position_text, senders_for
from patching.methods.path_request import FORMS
from patching.methods.path_runs import Fired, PathRuns, gqa_notes, mlp_in_hook, qkv_hook, split_qkv, sweep_inputs
from patching.results import Result, run_meta


# ---------------------------------------------------------------- the sweep


def sweep_stats(
    runs: PathRuns,
    receivers: Sequence[Receiver],
    senders: Sequence[Sender],
    direction: str,
    sender_mask: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
    form: str = "direct",
) -> tuple[RowStats, list[bool]]:
    """Row stats [n_senders, rows] of every sender reaching the output only
    through ``receivers``; senders that reach none get NaN (and False).

    ``form="direct"``: each receiver's input gets the sender's write
    difference itself (TransformerLens's direct-path patching). ``"wang"``:
    Wang et al.'s form -- the sender's difference is first carried through the
    MLPs with every other head frozen at its base value (their step 2), and
    each receiver's input gets the resulting difference at its own layer, so
    sender -> MLP -> receiver paths count too."""
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
    with model_lock(bridge), split_qkv(bridge, split):
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
                delta_for = ((lambda r, d=delta: d) if form == "direct" else
                             _frozen_deltas(runs, base, rows, [senders[i].node for i in chunk], delta, P))
                slot_reach: dict[Receiver, torch.Tensor] = {}
                for slot, i in enumerate(chunk):
                    for r in reach[i]:
                        v = slot_reach.setdefault(r, torch.zeros(P, device=dev))
                        v[slot] = 1.0
                gates = {r: v.repeat_interleave(Rb)[:, None, None] for r, v in slot_reach.items()}
                fired = Fired()
                hooks = _sweep_hooks(gates, delta_for, fired)
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
                    last = last + (delta_for(Receiver("logits", L))[:, -1, :] * logit_gate[:, :, 0])
                logits = runs.runner.final_logits(last)
                co_lp = runs.corrupt_logprobs[rows].repeat(P, 1) if direction == "noise" else None
                st = row_stats(logits, _tile(runs.answer[rows], P), _tile(runs.counter[rows], P), runs.clean_logprobs[rows].repeat(P, 1), co_lp).view(P, Rb)
                for slot, i in enumerate(chunk):
                    out[i].append(st[slot])
                done += 1
                if progress:
                    progress(done, total)
    stacked = []
    for i in range(len(senders)):
        stacked.append(RowStats.cat(out[i]) if out[i] else RowStats(nan, nan, nan, nan, nan if direction == "noise" else None))
    return RowStats.combine(stacked, lambda xs: torch.stack([x.cpu() for x in xs])), active


def _tile(x: torch.Tensor, P: int) -> torch.Tensor:
    """[rows(, A)] -> [P*rows(, A)]: ids or answer sets, once per slot."""
    return x.repeat(P, *([1] * (x.dim() - 1)))


def _frozen_deltas(runs: PathRuns, base: dict, rows: slice, nodes: Sequence[Node], delta: torch.Tensor,
                   P: int) -> Callable[[Receiver], torch.Tensor]:
    """Wang et al.'s step 2 for P senders at once (slot-major rows): the base
    run with every head's z frozen at its base value, each slot's sender
    writing its difference (a head: added to its layer's attention output; an
    MLP: to its output; embed: to the input), the MLPs recomputed. Returns,
    per receiver, the difference its input then sees: resid_pre (q/k/v) or
    resid_mid (MLP) of its layer, or the final residual (logits)."""
    L = runs.geo.n_layers
    Rb = rows.stop - rows.start
    starts = [0 if n.kind == "embed" else n.layer for n in nodes]
    start = min(starts)
    slot = lambda i: slice(i * Rb, (i + 1) * Rb)  # noqa: E731
    got: dict[str, torch.Tensor] = {}

    def freeze(l):
        def hook(act, hook=None):
            return base[f"blocks.{l}.attn.hook_z"][rows].repeat(P, 1, 1, 1).to(act.dtype)
        return hook

    def inject(kind, l):
        def hook(act, hook=None):
            act = act.clone()
            for i, n in enumerate(nodes):
                if n.kind == kind and n.layer == l:
                    act[slot(i)] += delta[slot(i)].to(act.dtype)
            return act
        return hook

    def grab(name):
        def hook(act, hook=None):
            got[name] = act.detach().clone()
            return act
        return hook

    hooks = []
    for l in range(start, L):
        hooks.append((f"blocks.{l}.attn.hook_z", freeze(l)))
        hooks.append((f"blocks.{l}.hook_resid_pre", grab(f"blocks.{l}.hook_resid_pre")))
        hooks.append((mlp_in_hook(l), grab(mlp_in_hook(l))))
        if any(n.kind == "head" and n.layer == l for n in nodes):
            hooks.append((f"blocks.{l}.hook_attn_out", inject("head", l)))
        if any(n.kind == "mlp" and n.layer == l for n in nodes):
            hooks.append((f"blocks.{l}.hook_mlp_out", inject("mlp", l)))
    x = base[f"blocks.{start}.hook_resid_pre"][rows].repeat(P, 1, 1)
    x = x + torch.cat([delta[slot(i)] if n.kind == "embed" else torch.zeros_like(delta[slot(i)]) for i, n in enumerate(nodes)])
    with runs.lm.bridge.hooks(fwd_hooks=hooks):
        final = runs.runner.run_from(start, x)

    def delta_for(r: Receiver) -> torch.Tensor:
        if r.port == "logits":
            name, now = "ln_final.hook_in", final
        else:
            name = f"blocks.{r.layer}.hook_resid_pre" if r.port in ("q", "k", "v") else mlp_in_hook(r.layer)
            now = got[name]
        return now - base[name][rows].repeat(P, 1, 1)

    return delta_for


def _sweep_hooks(gates: dict[Receiver, torch.Tensor], delta_for: Callable[[Receiver], torch.Tensor], fired: Fired) -> list[tuple[str, Callable]]:
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
                return act + delta_for(items[0][0]) * items[0][1]
            act = act.clone()
            for r, g in items:
                act[:, :, r.index] += delta_for(r) * g
            return act

        return hook

    return [(name, make(name, items)) for name, items in by_hook.items()]


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
    form: str = "direct",
) -> Result:
    """Every sender (embed, each head, each MLP, or the ``senders`` given; at
    ``sender_positions``, or one row per position with ``by_pos``) reaching
    the output only through ``receivers``. Senders that no receiver reads get
    NaN."""
    t0 = time.time()
    spec, geo, recv, nodes, runs, pos_spec, mask = sweep_inputs(spec, lm, ds, receivers, senders, sender_positions, runs)
    senders_ = senders_for(geo, ds.seq_len, by_pos, nodes)
    if form not in FORMS:
        raise PatchboardError("form", f"{form!r} is not one of {', '.join(FORMS)}")
    stats, active = sweep_stats(runs, recv, senders_, spec.direction, mask, progress, form)
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
    meta = run_meta(lm, ds, runs.rows, runs.sigma, t0, kind="paths", receivers=label, receivers_described=[r.describe(geo) for r in recv],
                    senders=canonical_senders(nodes, geo), sender_positions=position_text(pos_spec), by_pos=bool(by_pos), n_kv_heads=geo.n_kv,
                    form=form)
    meta["warnings"] += gqa_notes(recv, geo) + baseline_warnings(runs.clean_stats, runs.corrupt_stats, ds.n)
    return Result(spec=spec, table=table, baselines=baselines(runs.clean_stats, runs.corrupt_stats, ds.n), meta=meta, kind="paths",
                  params={"receivers": label, "senders": meta["senders"], "sender_positions": meta["sender_positions"], "by_pos": bool(by_pos),
                          "form": form})
