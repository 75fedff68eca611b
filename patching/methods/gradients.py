"""The batched gradient passes attribution patching is built on.

One forward pass of the blocks with a zero tensor added at each scored hook,
then one backward pass, block by block, of a batch of cotangents: every
read-out statistic's gradient at every hooked activation at once.

How it is fast (``benchmarks/attribution.py``):

* one backward pass for every statistic: the read-out statistics are
  functions of the final position's residual stream only, so their gradients
  there are stacked into one batch of cotangents and carried down the blocks
  together (``is_grads_batched``); P(answer)'s gradient is P(answer) times
  log P(answer)'s, and each direction's metrics read one KL only, so three
  cotangents serve four metrics. GradDrop's variants join the same batch
  (:mod:`patching.methods.atp_star`);
* where the run's log-probs are known, the statistics' gradients at the
  final residual are formed in closed form (:func:`known_head`), without
  unembedding;
* only activations, never weights, get gradients.

The gradient is taken with respect to a zero tensor added to each hooked
activation (the bridge hands some hooks a reshaped view, whose own ``.grad``
never fills), block by block. Every pass holds the model lock and turns
gradients on only inside it (:func:`patching.engine.resources.gradient_pass`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from patching.core.models import LoadedModel
from patching.engine.blocks import final_logits, logit_softcap
from patching.engine.readout import answer_scores, row_stats
from patching.engine.resources import gradient_pass, memory_budget_bytes, model_lock
from patching.engine.runner import PATTERN_HOOKS


def hook_layer(hook: str) -> int:
    """The block a hook belongs to (``blocks.<layer>.…``)."""
    parts = hook.split(".")
    if parts[0] != "blocks":
        raise ValueError(f"attribution scores block activations only, not {hook}")
    return int(parts[1])


def pattern_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def run_positions(hook: str, act: torch.Tensor, off: int) -> torch.Tensor:
    """The run positions (``off:``) of a full-sequence activation: the
    query axis of a pattern, the position axis otherwise."""
    if off == 0:
        return act
    return act[:, :, off:] if hook.endswith(PATTERN_HOOKS) else act[:, off:]


def capture(lm: LoadedModel, calls, resid0: torch.Tensor, hooks: Sequence[str], answer, counter):
    """The hooked activations of the blocks run from ``resid0`` (no
    gradients: the caller's entry runs under ``no_graph``) and the run's
    logit difference per row."""
    got: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(act, hook=None):
            got[name] = act.detach().clone()

        return hook

    blocks = list(lm.bridge.blocks)
    with model_lock(lm.bridge), lm.bridge.hooks(fwd_hooks=[(h, grab(h)) for h in hooks]):
        x = resid0
        for i, b in enumerate(blocks):
            args, kwargs = calls[i]
            o = b(x, *args, **kwargs)
            x = o if torch.is_tensor(o) else o[0]
        logits = final_logits(lm.bridge, logit_softcap(lm.bridge), x[:, -1, :]).float()
    ld, _ = answer_scores(logits, torch.log_softmax(logits, -1), answer, counter)
    return got, ld


@dataclass
class Graph:
    """One forward pass with a zero tensor (``deltas``) added at each hook:
    the hooked activations (``acts``, detached), the hooks of each block, the
    final residual ``x`` and, run block by block, each block's input and
    output (``ins``, ``outs``)."""

    x: torch.Tensor
    acts: dict[str, torch.Tensor]
    deltas: dict[str, torch.Tensor]
    by_layer: dict[int, list[str]]
    ins: list[torch.Tensor]
    outs: list[torch.Tensor | None]


def forward_graph(lm: LoadedModel, calls, first: int, x0: torch.Tensor, hooks: Sequence[str], per_block: bool) -> Graph:
    """Blocks ``first..`` from ``x0``, inside a :func:`gradient_pass`. With
    ``per_block`` every block gets a graph of its own (its input detached), so
    the backward pass can go down one block at a time; otherwise one graph."""
    bridge = lm.bridge
    blocks = list(bridge.blocks)
    acts: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}

    def make(name: str):
        def hook(act, hook=None):
            dl = torch.zeros_like(act, requires_grad=True)
            deltas[name] = dl
            acts[name] = act.detach()
            return act + dl

        return hook

    by_layer: dict[int, list[str]] = {}
    for h in hooks:
        by_layer.setdefault(hook_layer(h), []).append(h)
    ins: list[torch.Tensor] = []
    outs: list[torch.Tensor | None] = []
    with bridge.hooks(fwd_hooks=[(h, make(h)) for h in hooks]):
        x = x0
        for i in range(first, len(blocks)):
            xi = x.detach().requires_grad_(True) if per_block or i == first else x
            args, kwargs = calls[i]
            o = blocks[i](xi, *args, **kwargs)
            x = o if torch.is_tensor(o) else o[0]
            ins.append(xi)
            outs.append(x)
    return Graph(x, acts, deltas, by_layer, ins, outs)


def final_cotangents(lm: LoadedModel, x: torch.Tensor, ref, fstats: Sequence[str], slots: int,
                     base_lp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The read-out statistics' gradients at the final position's residual
    stream, all in one batched backward through the unembedding (or from
    :func:`known_head` with ``base_lp``), laid out as the cotangents of ``x``
    [slots * F, B, S, d] (each slot a copy), with the run's P(answer) and
    logit difference per row."""
    bridge = lm.bridge
    answer, counter, clean_lp, corrupt_lp = ref
    F = len(fstats)
    last = x[:, -1, :].detach().requires_grad_(True)
    head = known_head(bridge, last, ref, fstats, base_lp) if base_lp is not None else None
    if head is not None:
        g_last, prob, ld = head
    else:
        st = row_stats(final_logits(bridge, logit_softcap(bridge), last), answer, counter, clean_lp, corrupt_lp)
        vals = torch.stack([getattr(st, f).sum() for f in fstats])
        (g_last,) = torch.autograd.grad(vals, last, grad_outputs=torch.eye(F, dtype=vals.dtype, device=vals.device),
                                     is_grads_batched=True)
        prob, ld = st.prob.detach(), st.ld.detach()
    B, S, d = x.shape
    cot = x.new_zeros(slots * F, B, S, d)
    cot[:, :, -1, :] = g_last.repeat(slots, 1, 1)
    return cot, prob, ld


def passes(lm: LoadedModel, calls, first: int, x0: torch.Tensor, hooks: Sequence[str], ref, fstats: Sequence[str],
           on_grad, base_lp: torch.Tensor | None = None) -> torch.Tensor:
    """One forward pass of blocks ``first..`` from ``x0`` with a zero tensor
    added at each of ``hooks``, then one backward call for a batch of
    ``len(fstats)`` cotangents. ``on_grad(hook, grad [F, B, ...], acts, prob)``
    receives each hook's gradients. With ``base_lp`` (the run's own
    log-probs, known beforehand) the statistics' gradients at the final
    residual are formed without unembedding. Returns the run's logit
    difference per row (to check the path taken)."""
    with gradient_pass(lm.bridge):
        graph = forward_graph(lm, calls, first, x0, hooks, per_block=False)
        x, acts = graph.x, graph.acts
        cot, prob, ld = final_cotangents(lm, x, ref, fstats, 1, base_lp)
        B, S, _ = x.shape
        names = [h for i in range(first, len(lm.bridge.blocks)) for h in graph.by_layer.get(i, [])]
        got = block_vjp(x, [graph.deltas[h] for h in names], cot, cotangent_chunk(lm, B, S, S, len(fstats)))
        del graph, x  # free the graph before the scores are formed
        for h, g in zip(names, got):
            on_grad(h, g, acts, prob)
    return ld


def known_head(bridge, last: torch.Tensor, ref, fstats: Sequence[str], base_lp: torch.Tensor):
    """The statistics' gradients at the final residual ``last`` [B, d] when
    the run's log-probs are known: d stat / d logits in closed form (logit
    difference: the answer's minus the counter-answer's indicator; log P(answer):
    the answer's share of P minus P; KL(ref || .): P - P_ref; P(answer) -
    P(counter): P on the answers minus P on the counters minus their
    difference times P), then through the
    unembedding matrix and the final norm. (gradients [F, B, d], P(answer) [B],
    logit difference [B]); None for an unembedding this does not cover.
    Called inside a :func:`gradient_pass`."""
    answer, counter, clean_lp, corrupt_lp = ref
    W = getattr(bridge.unembed, "W_U", None)
    B, d = last.shape
    if logit_softcap(bridge) is not None or not torch.is_tensor(W) or W.dim() != 2 or W.shape[0] != d or W.shape[1] != base_lp.shape[-1]:
        return None
    p = base_lp.float().exp()
    a = answer if answer.dim() == 2 else answer[:, None]
    c = counter if counter.dim() == 2 else counter[:, None]
    am = torch.zeros_like(p).scatter_(1, a.clamp(min=0), (a >= 0).to(p.dtype))  # answer-set indicator
    cm = torch.zeros_like(p).scatter_(1, c.clamp(min=0), (c >= 0).to(p.dtype))
    pa = (p * am).sum(-1, keepdim=True)
    pc = (p * cm).sum(-1, keepdim=True)
    # d (P(answer set) - P(counter set)) / d logits = p (1_A - 1_C) - (P_A - P_C) p
    cot = {"ld": am - cm, "logprob": p * am / pa - p, "kl": p - clean_lp.float().exp(), "pd": p * (am - cm) - (pa - pc) * p}
    if corrupt_lp is not None:
        cot["kl_corrupt"] = p - corrupt_lp.float().exp()
    G = torch.stack([cot[f] for f in fstats]).to(W.dtype)  # [F, B, vocab]
    u = G @ W.T  # [F, B, d] at the final norm's output (the bias adds nothing to a gradient)
    z = bridge.ln_final(last[:, None, :])[:, 0, :]
    (g_last,) = torch.autograd.grad(z, last, grad_outputs=u, is_grads_batched=True)
    ld = (z.detach() * u[list(fstats).index("ld")]).sum(-1)
    bias = getattr(bridge.unembed, "b_U", None)
    if torch.is_tensor(bias) and bias.shape == p.shape[-1:]:
        ld = ld + ((am - cm) * bias.float()).sum(-1)
    return g_last, pa[:, 0], ld


def block_vjp(out: torch.Tensor, inputs: list[torch.Tensor], cot: torch.Tensor, n_chunk: int) -> list[torch.Tensor]:
    """Vector-Jacobian products of one block for a batch of cotangents
    ``cot`` [N, ...] (``n_chunk`` at a time): one [N, ...] tensor per input
    (zeros where an input does not reach ``out``)."""
    N = cot.shape[0]
    parts: list[list[torch.Tensor | None]] = [[] for _ in inputs]
    for c in range(0, N, n_chunk):
        got = torch.autograd.grad(out, inputs, grad_outputs=cot[c:c + n_chunk], is_grads_batched=True,
                                  retain_graph=c + n_chunk < N, allow_unused=True)
        for j, g in enumerate(got):
            parts[j].append(g)
    res = []
    for j, ps in enumerate(parts):
        if any(p is None for p in ps):
            res.append(cot.new_zeros((N,) + tuple(inputs[j].shape)))
        else:
            res.append(ps[0] if len(ps) == 1 else torch.cat(ps))
    return res


def cotangent_chunk(lm: LoadedModel, B: int, S: int, seq: int, N: int) -> int:
    """Cotangents carried through one block at once within the memory budget."""
    cfg = lm.cfg
    d, d_mlp = int(cfg.d_model), int(getattr(cfg, "d_mlp", 0) or 4 * cfg.d_model)
    per = 4 * B * S * (10 * d + 5 * d_mlp + 4 * int(cfg.n_heads) * seq)
    return max(1, min(N, memory_budget_bytes() // max(1, per)))
