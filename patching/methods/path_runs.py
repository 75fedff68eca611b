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
from patching.core.spec import Spec
from patching.engine.blocks import BlockRunner
from patching.engine.head_write import HeadWrites
from patching.engine.readout import RowStats
from patching.engine.reference import prepare
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
            return self.heads.delta(node.layer, node.head, self.side(source)[z][rows], self.side(base)[z][rows])
        return self.write(source, node, rows) - self.write(base, node, rows)


def prepare_runs(lm: LoadedModel, ds: Dataset, spec: Spec) -> PathRuns:
    """The corrupted (or noised) run comes from :func:`patching.engine.reference.prepare`
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
        heads=HeadWrites.of(lm.bridge),
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
    """The graph is only right if each block's attention output is its
    heads' writes -- the sum of ``z @ W_O`` (plus a constant bias), or that
    sum through the post-attention norm (:mod:`patching.engine.head_write`)
    -- and the residual stream is the sum of the blocks' outputs. Checked on
    the first and last layers of both runs."""
    c, k = runs.clean, runs.corrupt
    geo = runs.geo
    for l in sorted({0, geo.n_layers - 1}):
        scale = float(c[f"blocks.{l}.hook_resid_mid"].abs().max()) + 1e-6
        if runs.normalised:
            # The norm is not additive: the block's whole output, recomputed from z, must match.
            err = max(float((runs.heads.block_output(l, side[f"blocks.{l}.attn.hook_z"])
                             - (side[f"blocks.{l}.hook_resid_mid"] - side[f"blocks.{l}.hook_resid_pre"])).abs().max()) for side in (c, k))
        else:
            diffs = []
            for side, which in ((c, "clean"), (k, "corrupt")):
                heads = sum(runs.write(which, Node("head", l, h)) for h in range(geo.n_heads))
                attn = side[f"blocks.{l}.hook_resid_mid"] - side[f"blocks.{l}.hook_resid_pre"]
                diffs.append(attn - heads)
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
