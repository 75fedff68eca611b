"""Path patching: sender → receiver sweeps in three named forms.

The graph (nodes, receivers, GQA groups) is in :mod:`patching.methods.graph`;
the runs, inputs and hooks every path computation shares are in
:mod:`patching.methods.path_runs`.

With direction ``denoise`` the base run is the corrupted one and the source
the clean one; ``noise`` swaps them (mean and zero ablation: noising only,
the source being the ablated values), with the sign convention of
:mod:`patching.engine.metrics`, and every metric comes from the same runs. A
sender's write difference is ``source − base`` at the sender positions.

Forms (``form``)
----------------
``direct`` -- Patchboard's joint direct paths. Every chosen receiver's own copy
    of the residual stream (each head's pre-norm q/k/v input, each MLP's
    input, the final residual) gets the sender's write difference *in one
    run*; the run then continues, and each norm is recomputed exactly. The
    sender reaches the output only through the receivers (and everything
    downstream of them), so a later receiver also sees what an earlier one
    changed.
``tl_direct`` -- TransformerLens 4.3's ``get_act_patch_direct_path``: the same
    intervention into **one receiver per run**, so a sweep has a row per
    sender → receiver edge (``receiver`` column). TransformerLens defines it
    for head → head q/k/v edges (k/v refused on grouped-query models); embed
    and MLP senders, MLP and logits receivers and sender positions are the same
    construction extended (tests/engine/methods/test_paths_tl.py checks the
    parity). With a single receiver ``direct`` and ``tl_direct`` agree.
``wang`` -- Wang et al.'s three steps: (1) the base and source runs; (2) the
    base run with every head's output frozen at its base value except the
    sender's (its source value), the MLPs recomputed, caching each receiver's
    input; (3) the base run with each receiver's input *set to its base input
    plus the step-2 difference* (not the live input: a receiver in a later
    layer does not also see what earlier receivers changed), everything else
    recomputed. Sender → MLP → receiver paths count, unlike ``direct``.

A sender whose write difference is exactly zero at every sender position
(BOS under mean ablation: every prompt's write there is the same) is the
base run itself: its row is the base run's statistics, exactly 0 for every
metric, and ``meta["noop_cells"]`` lists it (a zero by construction, not a
measurement). Senders are batched along the batch dimension like
:mod:`patching.engine`, each chunk starting from the cached residual stream
at its first receiver's layer (for ``logits`` no block runs at all).
"""


from __future__ import annotations

import time
from dataclasses import dataclass
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
from patching.methods.path_request import FORMS, MAX_EDGE_RUNS
from patching.methods.path_runs import Fired, PathRuns, gqa_notes, mlp_in_hook, qkv_hook, split_qkv, sweep_inputs
from patching.results import Result, run_meta


# ---------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class Slot:
    """One patched run (per row): a sender and the receivers its write
    difference goes into."""

    sender: Sender
    reach: tuple[Receiver, ...]

    def start(self) -> int:
        return min(r.layer for r in self.reach)


def slots_for(senders: Sequence[Sender], receivers: Sequence[Receiver], n_layers: int, form: str) -> list[Slot | None]:
    """``direct``/``wang``: one slot per sender, every receiver that reads it
    (None where none does); ``tl_direct``: one per sender → receiver edge."""
    out: list[Slot | None] = []
    for s in senders:
        reach = tuple(r for r in receivers if r.reads(s.node, n_layers))
        if form == "tl_direct":
            out += [Slot(s, (r,)) for r in reach]
        else:
            out.append(Slot(s, reach) if reach else None)
    return out


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
    through ``receivers`` (``direct`` or ``wang`` form; see the module doc);
    senders that reach none get NaN (and False)."""
    slots = slots_for(senders, receivers, runs.geo.n_layers, form)
    live = [s for s in slots if s is not None]
    st, _ = slot_stats(runs, live, direction, sender_mask, progress, form)
    R = runs.rows
    nan = torch.full((R,), float("nan"))
    blank = RowStats(nan, nan, nan, nan, nan if direction == "noise" else None, nan)
    it = iter(range(len(live)))
    stacked = [st[next(it)] if s is not None else blank for s in slots]
    return RowStats.combine(stacked, torch.stack), [s is not None for s in slots]


def slot_stats(runs: PathRuns, slots: Sequence[Slot], direction: str, sender_mask: torch.Tensor | None = None,
               progress: ProgressFn | None = None, form: str = "direct") -> tuple[RowStats, list[bool]]:
    """Row stats [n_slots, rows] (on the CPU) of every slot's patched run,
    and for each slot whether it is a no-op: its write difference exactly
    zero on every row (its stats are then the base run's, exactly)."""
    geo = runs.geo
    L = geo.n_layers
    source = "clean" if direction == "denoise" else "corrupt"
    base = runs.corrupt if direction == "denoise" else runs.clean
    base_stats = runs.corrupt_stats if direction == "denoise" else runs.clean_stats
    R = runs.rows
    seq = base["ln_final.hook_in"].shape[1]
    dev = base["ln_final.hook_in"].device
    split = any(r.port in ("q", "k", "v") for s in slots for r in s.reach)
    max_rows = path_rows(runs.lm.cfg, seq, split)
    row_blocks = [slice(r, min(R, r + max_rows)) for r in range(0, R, max_rows)]
    per_chunk = max(1, max_rows // R) if R <= max_rows else 1

    todo = sorted(range(len(slots)), key=lambda i: slots[i].start())
    chunks: list[list[int]] = []
    for i in todo:
        if chunks and len(chunks[-1]) < per_chunk and slots[chunks[-1][0]].start() == slots[i].start():
            chunks[-1].append(i)
        else:
            chunks.append([i])

    out: list[list[RowStats]] = [[] for _ in slots]
    zero = [True] * len(slots)
    total, done = len(chunks) * len(row_blocks), 0
    bridge = runs.lm.bridge
    if sender_mask is not None:
        sender_mask = sender_mask.to(dev)
    with model_lock(bridge), split_qkv(bridge, split):
        for chunk in chunks:
            start = slots[chunk[0]].start()
            P = len(chunk)
            for rows in row_blocks:
                Rb = rows.stop - rows.start
                # One delta per slot: the same write difference reaches every receiver.
                deltas, noop = [], []
                for i in chunk:
                    s = slots[i].sender
                    d = runs.delta(s.node, source, rows)
                    m = torch.zeros(Rb, seq, device=dev)
                    if s.pos is not None:
                        m[:, s.pos] = 1.0
                    else:
                        m[:] = 1.0
                    if sender_mask is not None:
                        m = m * sender_mask[rows]
                    d = d * m[..., None]
                    deltas.append(d)
                    noop.append(not bool(d.any()))
                delta = torch.cat(deltas)  # [P*Rb, seq, d]
                delta_for = ((lambda r, d=delta: d) if form != "wang" else
                             _frozen_deltas(runs, base, rows, [slots[i].sender.node for i in chunk], delta, P))
                slot_reach: dict[Receiver, torch.Tensor] = {}
                for slot, i in enumerate(chunk):
                    for r in slots[i].reach:
                        v = slot_reach.setdefault(r, torch.zeros(P, device=dev))
                        v[slot] = 1.0
                gates = {r: v.repeat_interleave(Rb)[:, None, None] for r, v in slot_reach.items()}
                # Wang et al.'s step 3 sets each receiver's input to its base input plus the
                # step-2 difference; the direct forms add the difference to the live input.
                base_for = (lambda r: _base_input(runs, base, r, rows, P)) if form == "wang" else None
                fired = Fired()
                hooks = _sweep_hooks(gates, delta_for, fired, base_for)
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
                    lr = Receiver("logits", L)
                    g = logit_gate[:, :, 0]
                    target = delta_for(lr)[:, -1, :] + (base_for(lr)[:, -1, :] if base_for is not None else last)
                    last = last + g * (target - last)
                logits = runs.runner.final_logits(last)
                co_lp = runs.corrupt_logprobs[rows].repeat(P, 1) if direction == "noise" else None
                st = row_stats(logits, _tile(runs.answer[rows], P), _tile(runs.counter[rows], P), runs.clean_logprobs[rows].repeat(P, 1), co_lp).view(P, Rb)
                for slot, i in enumerate(chunk):
                    # A write difference of exactly zero patches nothing: the base run, exactly.
                    out[i].append(_cpu(base_stats[rows], direction) if noop[slot] else _cpu(st[slot], direction))
                    zero[i] = zero[i] and noop[slot]
                done += 1
                if progress:
                    progress(done, total)
    if not slots:
        empty = torch.zeros(0, R)
        return RowStats(empty, empty, empty, empty, empty if direction == "noise" else None, empty), []
    return RowStats.combine([RowStats.cat(o) for o in out], torch.stack), zero


def _cpu(st: RowStats, direction: str) -> RowStats:
    """Stats on the CPU, with the KL the direction does not read dropped (the
    base run's stats carry both)."""
    st = st.map(lambda t: t.detach().cpu())
    if direction != "noise":
        st.kl_corrupt = None
    return st


def _base_input(runs: PathRuns, base: dict, r: Receiver, rows: slice, P: int) -> torch.Tensor:
    """The base run's value of a receiver's input [P*rows, seq, d]."""
    name = ("ln_final.hook_in" if r.port == "logits" else f"blocks.{r.layer}.hook_resid_pre" if r.port in ("q", "k", "v")
            else mlp_in_hook(r.layer))
    return base[name][rows].repeat(P, 1, 1)


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


def _sweep_hooks(gates: dict[Receiver, torch.Tensor], delta_for: Callable[[Receiver], torch.Tensor], fired: Fired,
                 base_for: Callable[[Receiver], torch.Tensor] | None = None) -> list[tuple[str, Callable]]:
    """A hook per receiver input: gated slots get the live input plus the
    difference (``base_for`` None: the direct forms) or their base input plus
    the difference (the Wang form's step 3)."""
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
                r, g = items[0]
                if base_for is None:
                    return act + delta_for(r) * g
                return act + g * (base_for(r) + delta_for(r) - act)
            act = act.clone()
            for r, g in items:
                if base_for is None:
                    act[:, :, r.index] += delta_for(r) * g
                else:
                    live = act[:, :, r.index]
                    act[:, :, r.index] = live + g * (base_for(r) + delta_for(r) - live)
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
    the output only through ``receivers``, in ``form`` (module doc). Senders
    that no receiver reads get NaN (``tl_direct``: no row)."""
    t0 = time.time()
    if form not in FORMS:
        raise PatchboardError("form", f"{form!r} is not one of {', '.join(FORMS)}")
    spec, geo, recv, nodes, runs, pos_spec, mask = sweep_inputs(spec, lm, ds, receivers, senders, sender_positions, runs)
    senders_ = senders_for(geo, ds.seq_len, by_pos, nodes)
    slots = slots_for(senders_, recv, geo.n_layers, form)
    live = [s for s in slots if s is not None]
    if form == "tl_direct" and len(live) > MAX_EDGE_RUNS:
        raise PatchboardError("form", f"tl_direct runs one patched run per sender → receiver edge: {len(live)} here, over the limit of "
                              f"{MAX_EDGE_RUNS} (MAX_EDGE_RUNS); name fewer receivers or senders, or use form direct")
    st, zero = slot_stats(runs, live, spec.direction, mask, progress, form)
    eff = effects(st, runs.clean_stats, runs.corrupt_stats, spec.direction)
    nan = float("nan")

    def cells(sd: Sender) -> dict:
        n = sd.node
        return {"component": n.kind, "layer": n.layer if n.kind != "embed" else None, "head": n.head if n.kind == "head" else None,
                "pos": sd.pos, "pos_label": ds.position_labels[sd.pos] if sd.pos is not None else ""}

    rows, noop, k = [], [], 0
    for i, s in enumerate(slots):
        if s is None:  # direct, wang: a sender no receiver reads, every metric NaN
            rows.append({**cells(senders_[i]), **{m: nan for m in METRICS}})
            continue
        row = cells(s.sender) | ({"receiver": s.reach[0].label(geo)} if form == "tl_direct" else {})
        row.update({m: float(eff[m][k]) for m in METRICS})
        if zero[k]:
            noop.append(len(rows))
        rows.append(row)
        k += 1
    table = pd.DataFrame(rows)
    for col in ("layer", "head", "pos"):
        table[col] = table[col].astype("Int64")
    label = canonical_receivers(recv, geo)
    meta = run_meta(lm, ds, runs.rows, runs.sigma, t0, kind="paths", receivers=label, receivers_described=[r.describe(geo) for r in recv],
                    senders=canonical_senders(nodes, geo), sender_positions=position_text(pos_spec), by_pos=bool(by_pos), n_kv_heads=geo.n_kv,
                    form=form, noop_cells=noop)
    meta["warnings"] += gqa_notes(recv, geo) + baseline_warnings(runs.clean_stats, runs.corrupt_stats, ds.n)
    return Result(spec=spec, table=table, baselines=baselines(runs.clean_stats, runs.corrupt_stats, ds.n), meta=meta, kind="paths",
                  params={"receivers": label, "senders": meta["senders"], "sender_positions": meta["sender_positions"], "by_pos": bool(by_pos),
                          "form": form})
