"""What every path computation shares: the clean and corrupted runs with
every write cached (:class:`PathRuns`), the sweep's parsed inputs, the
sender-position mask, and the hooks into each head's own q/k/v input and
each MLP's input.

The exact sweep (:mod:`patching.methods.paths`), its gradient estimate
(:mod:`patching.methods.edges`) and hypothesis evaluation
(:mod:`patching.methods.hypothesis`) all start from here. The graph (nodes,
receivers, GQA groups) is in :mod:`patching.methods.graph`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from patching.core.data import Dataset
from patching.core.errors import PatchboardError, shown
from patching.core.models import LoadedModel
from patching.core.spec import ABLATIONS, Spec
from patching.engine.blocks import BlockRunner
from patching.engine.head_write import HeadWrites
from patching.engine.readout import RowStats
from patching.engine.reference import Runs, reference_runs
from patching.engine.resources import model_lock
from patching.methods.graph import Geometry, Node, Receiver, parse_position_spec, parse_receiver_list, parse_sender_list
from patching.methods.path_request import paths_spec


# ---------------------------------------------------------------- inputs


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
                        raise PatchboardError(field, f"{where}: {shown(it, 40)} is not a role of this dataset (roles: {known}); use a token index (BOS = 0), a role or all")
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
    #: Mean or zero ablation: ``corrupt`` holds ablated values, not a run.
    ablated: bool = False
    #: Positions before this are identical in both sides (the sender writes there are no-ops).
    same_prefix: int = 0
    #: Each head's write (patching/engine/head_write.py): its own term, or
    #: through the post-attention norm where the model has one (Gemma 2/3).
    heads: HeadWrites | None = None

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

    @property
    def normalised(self) -> bool:
        """Whether the attention output is normalised after the head sum."""
        return self.heads is not None and self.heads.normalised

    def delta(self, node: Node, source: str, rows: slice | None = None) -> torch.Tensor:
        """The node's write difference ``source − base`` [rows, seq, d_model];
        a head's as :mod:`patching.engine.head_write` defines it."""
        base = "corrupt" if source == "clean" else "clean"
        if node.kind == "head" and self.normalised:
            rows = rows if rows is not None else slice(None)
            z = f"blocks.{node.layer}.attn.hook_z"
            zs, zb = self.side(source)[z][rows], self.side(base)[z][rows]
            d = self.heads.delta(node.layer, node.head, zs, zb)
            # Where the head's z is the same in both runs nothing changes: exactly 0, not the norm's rounding
            # (BOS under mean ablation is then an exact no-op, as on additive models).
            same = (zs[:, :, node.head] == zb[:, :, node.head]).all(-1)
            return d.masked_fill(same[..., None], 0.0)
        return self.write(source, node, rows) - self.write(base, node, rows)


def prepare_runs(lm: LoadedModel, ds: Dataset, spec: Spec) -> PathRuns:
    """The clean and corrupted runs with every write cached, from
    :func:`patching.engine.reference.reference_runs` -- the one preparation
    every method shares -- so the rows, the Gaussian noise, the resampled
    prompts, the mean and zero ablations and the clean/corrupt statistics
    (baselines, normaliser, KL reference) are exactly those of activation
    patching. Under mean and zero ablation the corrupted side holds the
    ablated value of every cached activation (a mean is linear, so the
    ablated residual stream is the sum of the ablated writes)."""
    _check_architecture(lm)
    geo = Geometry.of(lm)
    names = _hook_names(geo.n_layers)
    ref = reference_runs(lm, ds, spec.corruption, names, names, noise_scale=spec.noise_scale, noise_samples=spec.noise_samples,
                         seed=spec.seed, mean_set=spec.mean_set)
    runs = from_reference(lm, geo, ref, spec.corruption)
    _check_writes(runs)
    return runs


def from_reference(lm: LoadedModel, geo: Geometry, ref: Runs, corruption: str) -> PathRuns:
    """A :class:`PathRuns` over prepared reference runs."""
    W_O = [lm.bridge.blocks[l].attn.W_O.detach() for l in range(geo.n_layers)]
    return PathRuns(
        lm=lm, geo=geo, runner=BlockRunner(lm, int(ref.clean["blocks.0.hook_resid_pre"].shape[1])), clean=ref.clean, corrupt=ref.corrupt, W_O=W_O,
        answer=ref.answer, counter=ref.counter, clean_logprobs=ref.clean_logprobs, corrupt_logprobs=ref.corrupt_logprobs,
        clean_stats=ref.clean_stats, corrupt_stats=ref.corrupt_stats, K=ref.K, rows=ref.rows, sigma=ref.sigma,
        ablated=corruption in ABLATIONS, same_prefix=ref.same_prefix, heads=HeadWrites.of(lm.bridge),
    )


def _check_architecture(lm: LoadedModel) -> None:
    cfg = lm.cfg
    if getattr(cfg, "parallel_attn_mlp", False):
        raise PatchboardError("model", f"{lm.name!r} runs attention and MLP in parallel; path patching supports sequential blocks only")
    if getattr(cfg, "attn_only", False):
        raise PatchboardError("model", f"{lm.name!r} is attention-only; path patching needs MLP blocks")


def _check_writes(runs: PathRuns) -> None:
    """The graph is only right if each block's attention output is its
    heads' writes -- the sum of ``z @ W_O`` (plus a constant bias), or that
    sum through the post-attention norm (:mod:`patching.engine.head_write`)
    -- and the residual stream is the sum of the blocks' outputs. Checked on
    the first and last layers of both runs (the bias cancels in the
    difference); under mean or zero ablation, whose other side is
    constructed rather than run, on the clean run alone (the bias is then
    one vector over rows and positions)."""
    c, k = runs.clean, runs.corrupt
    geo = runs.geo
    sides = ((c, "clean"),) if runs.ablated else ((c, "clean"), (k, "corrupt"))
    for l in sorted({0, geo.n_layers - 1}):
        scale = float(c[f"blocks.{l}.hook_resid_mid"].abs().max()) + 1e-6
        if runs.normalised:
            # The norm is not additive: the block's whole output, recomputed from z, must match.
            err = max(float((runs.heads.block_output(l, side[f"blocks.{l}.attn.hook_z"])
                             - (side[f"blocks.{l}.hook_resid_mid"] - side[f"blocks.{l}.hook_resid_pre"])).abs().max()) for side, _ in sides)
        else:
            diffs = []
            for side, which in sides:
                heads = sum(runs.write(which, Node("head", l, h)) for h in range(geo.n_heads))
                attn = side[f"blocks.{l}.hook_resid_mid"] - side[f"blocks.{l}.hook_resid_pre"]
                diffs.append(attn - heads)
            if runs.ablated:
                diffs.append(diffs[0].flatten(0, 1).mean(0))  # the clean run's bias: one vector over rows and positions
            err = float((diffs[0] - diffs[1]).abs().max())  # the bias cancels in the difference
        nxt = c[f"blocks.{l + 1}.hook_resid_pre"] if l + 1 < geo.n_layers else c["ln_final.hook_in"]
        err2 = float((c[f"blocks.{l}.hook_resid_mid"] + c[f"blocks.{l}.hook_mlp_out"] - nxt).abs().max())
        if err > 1e-3 * scale or err2 > 1e-3 * scale:
            raise PatchboardError(
                "model",
                f"{runs.lm.name!r}: the residual stream is not the sum of the heads' and MLPs' writes on this architecture (layer {l}); path patching is unsupported here",
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


def gqa_notes(recv: Sequence[Receiver], geo: Geometry) -> list[str]:
    kv = [r for r in recv if r.port in ("k", "v")]
    if not kv or not geo.gqa:
        return []
    return [f"grouped-query attention: {', '.join(r.describe(geo) for r in kv)}"]
