"""Path patching: Wang et al.'s sender → receiver sweeps (direct-path form).

The graph (nodes, receivers, GQA groups) is in :mod:`patching.methods.graph`.

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

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch

from patching.core.data import Dataset
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.core.progress import ProgressFn
from patching.core.spec import Spec
from patching.engine.blocks import BlockRunner
from patching.engine.metrics import METRICS, baseline_warnings, baselines, effects
from patching.engine.readout import RowStats, row_stats
from patching.engine.reference import prepare
from patching.engine.resources import model_lock, path_rows
from patching.methods.graph import (
    ALL,
    EMBED,
    Geometry,
    Node,
    Receiver,
    Sender,
    canonical_receivers,
    canonical_senders,
    data_label,
    paths_spec,
    parse_position_spec,
    parse_receiver_list,
    parse_sender_list,
    position_text,
    senders_for,
)
from patching.results import Result, run_meta


def sweep_inputs(spec: Spec, lm: LoadedModel, ds: Dataset, receivers: Any, senders: Any, sender_positions: Any,
                 runs: "PathRuns | None"):
    """What every path sweep (exact or estimated) starts from: the paths spec,
    the geometry, parsed receivers and senders, the reference runs, the
    sender positions asked for and their mask (None = every position)."""
    spec = paths_spec(spec)
    geo = Geometry.of(lm)
    recv = parse_receiver_list(receivers, geo)
    nodes = parse_sender_list(senders, geo)
    pos_spec = parse_position_spec(sender_positions, "sender-positions", "sender positions")
    runs = runs or prepare_runs(lm, ds, spec)
    mask = position_mask(pos_spec, ds, runs.K, "sender-positions", "sender positions") if pos_spec is not None else None
    return spec, geo, recv, nodes, runs, pos_spec, mask


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
    corrupt_logprobs: torch.Tensor  # the signed KL effect under noising reads KL(corrupt || patched)
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
    K = spec.noise_samples if spec.corruption in ("gn", "resample") else 1
    with model_lock(lm.bridge):
        _, cache = lm.bridge.run_with_cache(ds.clean_tokens.to(lm.device), names_filter=lambda n: n in names)
    clean = {n: cache[n].repeat_interleave(K, 0) if K > 1 else cache[n] for n in names}
    del cache
    W_O = [lm.bridge.blocks[l].attn.W_O.detach() for l in range(geo.n_layers)]
    inp = prep.inputs
    runs = PathRuns(
        lm=lm, geo=geo, runner=inp.runner, clean=clean, corrupt=inp.source, W_O=W_O,
        answer=inp.answer, counter=inp.counter, clean_logprobs=inp.clean_logprobs,
        corrupt_logprobs=prep.corrupt_logprobs, clean_stats=prep.clean, corrupt_stats=prep.corrupt, K=K, rows=prep.rows, sigma=prep.sigma,
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

@contextmanager
def split_qkv(bridge, on: bool = True):
    """Turn on ``use_split_qkv_input`` (each head's own copy of the residual
    stream for q/k/v) for the duration, restoring the caller's flags. Held
    under the model's lock, like every forward pass: no other computation
    can run the model while its config is switched."""
    if not on:
        yield
        return
    with model_lock(bridge):
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


#: Path-patching forms: TransformerLens's direct paths, or Wang et al.'s (MLPs recomputed).
FORMS = ("direct", "wang")


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
    meta["warnings"] += _gqa_notes(recv, geo) + baseline_warnings(runs.clean_stats, runs.corrupt_stats, ds.n)
    return Result(spec=spec, table=table, baselines=baselines(runs.clean_stats, runs.corrupt_stats, ds.n), meta=meta, kind="paths",
                  params={"receivers": label, "senders": meta["senders"], "sender_positions": meta["sender_positions"], "by_pos": bool(by_pos),
                          "form": form})


def _gqa_notes(recv: Sequence[Receiver], geo: Geometry) -> list[str]:
    kv = [r for r in recv if r.port in ("k", "v")]
    if not kv or not geo.gqa:
        return []
    return [f"grouped-query attention: {', '.join(r.describe(geo) for r in kv)}"]


