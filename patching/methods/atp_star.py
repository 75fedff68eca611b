"""AtP* (Kramar et al. 2024): attribution patching with both of its fixes.

**QK fix** (attention saturation): for query and key components (``head_q``,
``head_k`` and their ``_by_pos`` forms) the attention pattern is not
linearised: each patch's new attention scores are computed exactly (one extra
forward pass of the blocks with the source run's queries / keys, read out
before the softmax), the softmax is recomputed exactly (per key position for
``head_k_by_pos``: one column of the scores replaced), and the exact pattern
change is multiplied by the gradient at the pattern.

**GradDrop**: L more backward passes, the l-th with the gradient through
layer l's attention and MLP outputs zeroed; the magnitude is
``1/(L-1) * sum_l |AtP_{-l}|`` (the paper's estimator of |effect|, robust to
cancellation between paths), the sign is the undropped estimate's. The L
variants are slots of the same batch of cotangents as the plain gradient
(:mod:`patching.methods.gradients`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from patching.core.models import LoadedModel
from patching.engine.resources import gradient_pass, model_lock
from patching.engine.runner import EngineInputs
from patching.methods.gradients import block_vjp, cotangent_chunk, final_cotangents, forward_graph, run_positions

# ---------------------------------------------------------------- GradDrop


def graddrop_passes(lm: LoadedModel, calls, first: int, x0: torch.Tensor, hooks: Sequence[str], ref, fstats: Sequence[str],
                    drops: Sequence[int], on_grad, base_lp: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`patching.methods.gradients.passes` with, after the plain
    gradient, one slot of ``len(fstats)`` cotangents per layer in ``drops``
    with that layer's attention and MLP outputs cut out, carried down block by
    block. ``on_grad(hook, grad [slots * F, B, ...], acts, prob)``; returns the
    run's logit difference per row."""
    F = len(fstats)
    slots = 1 + len(drops)
    L = len(lm.bridge.blocks)
    with gradient_pass(lm.bridge):
        graph = forward_graph(lm, calls, first, x0, hooks, per_block=True)
        ins, outs, acts = graph.ins, graph.outs, graph.acts
        cot, prob, ld = final_cotangents(lm, graph.x, ref, fstats, slots, base_lp)
        B, S, _ = graph.x.shape
        drop_slot = {l: s for s, l in enumerate(drops, 1)}
        for i in reversed(range(first, L)):
            names = graph.by_layer.get(i, [])
            dl = [graph.deltas[h] for h in names]
            # Going down, a slot dropping layer l equals the plain slot until
            # it reaches l: carry only the plain slot and the slots already
            # dropped (l > i) through block i; l = i passes the skip only.
            live = [0] + [drop_slot[l] for l in drops if l > i]
            rows_live = torch.tensor([s * F + f for s in live for f in range(F)], device=cot.device)
            got = block_vjp(outs[i - first], [ins[i - first]] + dl, cot[rows_live], cotangent_chunk(lm, B, S, S, len(rows_live)))
            full = []
            for j, gj in enumerate(got):
                # Slots not carried (l < i) are the plain slot's.
                out_j = gj[:F].repeat(slots, *([1] * (gj.dim() - 1)))
                out_j[rows_live] = gj
                full.append(out_j)
            if i in drop_slot:
                # GradDrop: in the slot dropping layer i, only the residual
                # skip passes the gradient on; layer i's own activations get
                # none, except resid_pre (the skip's input).
                sl = slice(drop_slot[i] * F, (drop_slot[i] + 1) * F)
                full[0][sl] = cot[sl]
                for j, h in enumerate(names, 1):
                    full[j][sl] = cot[sl] if h.endswith("hook_resid_pre") else 0.0
            cot = full[0]
            outs[i - first] = None  # free the block's graph
            for h, g in zip(names, full[1:]):
                on_grad(h, g, acts, prob)
    return ld


def graddrop_estimate(slot_means: torch.Tensor, first: int, n_layers: int) -> torch.Tensor:
    """GradDrop's estimate from the row-mean estimates of every slot
    ``slot_means`` [slots, cells] (slot 0 undropped, slot k dropping layer
    ``first + k - 1``): magnitude 1/(L-1) sum_l |AtP_{-l}|, sign from the
    undropped one. Layers below the lowest one scored drop nothing: AtP_{-l}
    = AtP there."""
    mag = slot_means[1:].abs().sum(0) + first * slot_means[0].abs()
    return torch.sign(slot_means[0]) * mag / max(1, n_layers - 1)


# ---------------------------------------------------------------- the QK fix


def mixed_scores(lm: LoadedModel, calls, inp: EngineInputs, rows: slice, off: int, qk_hooks: Sequence[str],
                 layer_of: dict[str, int]) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer with a query/key component: the attention scores (before the
    softmax, masked) of the base run, and of the base run with every query /
    every key replaced by the source run's (float64, [R, head, query, key]).
    Score (q, t) depends on query q and key t only, so column t of the
    key-replaced scores is exactly the scores after patching key t alone, and
    row q of the query-replaced ones those after patching query q alone."""
    bridge = lm.bridge
    blocks = list(bridge.blocks)
    Rc = rows.stop - rows.start
    out: dict[int, dict[str, torch.Tensor]] = {}
    layers = sorted({layer_of[h] for h in qk_hooks})
    cl = calls()
    kinds = ["q", "k"]
    for l in layers:
        got: dict[str, torch.Tensor] = {}
        fwd = []
        for j, kind in enumerate(kinds, 1):
            name = f"blocks.{l}.attn.hook_{kind}"
            src = run_positions(name, inp.source[name][rows], off) if name in inp.source else None
            if src is None:
                continue

            def put(act, hook=None, src=src, j=j):
                act = act.clone()
                act[j * Rc:(j + 1) * Rc] = src.to(act.dtype)
                return act

            fwd.append((name, put))

        def grab(act, hook=None):
            got["s"] = act.detach().double()
            raise _StopBlock

        fwd.append((f"blocks.{l}.attn.hook_attn_scores", grab))
        if inp.base_resid[l] is None:
            raise ValueError("AtP*'s QK fix needs the base run's residual stream at every layer (a prepared input)")
        x = inp.base_resid[l][rows, off:].repeat(3, 1, 1)
        args, kwargs = cl[l]  # the prefix cache tiles itself over the three row blocks
        # No gradients: the caller's entry runs under no_graph.
        with model_lock(bridge), bridge.hooks(fwd_hooks=fwd):
            try:
                blocks[l](x, *args, **kwargs)
            except _StopBlock:
                pass
        s = got["s"]
        out[l] = {"base": s[:Rc], "q": s[Rc:2 * Rc], "k": s[2 * Rc:]}  # row blocks 0, 1 (q replaced), 2 (k replaced)
    return out


class _StopBlock(Exception):
    pass


def qk_fix_scores(hook: str, g: torch.Tensor, sc: dict[str, torch.Tensor], lm: LoadedModel, off: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """AtP*'s score of query/key patches: the exact pattern change times the
    gradient at the pattern ``g`` [slots, F, steps, R, head, query, key],
    summed within each address: ([.., pos (run positions only), head or key/value group],
    and for keys every key at once [.., group]; None for queries)."""
    g = g.double()
    base = sc["base"]
    A = torch.softmax(base, -1)
    H = base.shape[1]
    if hook.endswith("hook_q"):
        dA = torch.softmax(sc["q"], -1) - A  # every query row on its own
        by = (g * dA).sum(-1)  # [.., head, query]
        return by.transpose(-1, -2), None  # [.., pos, head]
    kv = int(getattr(lm.cfg, "n_key_value_heads", None) or H)
    group = lambda t: t.reshape(*t.shape[:-1], kv, H // kv).sum(-1)  # noqa: E731  heads -> their key/value group
    new = sc["k"]
    whole = group((g * (torch.softmax(new, -1) - A)).sum((-1, -2)))  # every key at once: [.., head] -> [.., group]
    keys = base.shape[-1]
    cols = []
    for t in range(off, keys):
        s_t = base.clone()
        s_t[..., t] = new[..., t]
        cols.append(group((g * (torch.softmax(s_t, -1) - A)).sum((-1, -2))))
    return torch.stack(cols, -2), whole  # [.., pos (run), group]
