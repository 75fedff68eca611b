"""A head's write into the residual stream, defined exactly on every
architecture: the one definition path patching, hypotheses and edges use
(:mod:`patching.methods.path_runs` calls it).

Additive attention (GPT-2, Llama, SmolLM2, ...): a block adds its attention
output ``o = Σ_h z_h W_O[h] + b_O`` to the residual stream, so head ``h``'s
write is its own term ``z_h W_O[h]`` and a path patch carries the difference
``(z_h^src − z_h^base) W_O[h]``.

Normalised after the head sum (Gemma 2 and 3: a post-attention RMSNorm ``N``):
the block adds ``N(o)``, and no head has an additive term of its own. Head
``h``'s write difference is then defined as the change of the normalised
attention output when only that head's input to the sum changes::

    Δ_h = N(o^base − z_h^base W_O[h] + z_h^src W_O[h]) − N(o^base)

at every position (``N`` acts on each position alone), with every other
head at its base value. It is exactly what the block would add to the
residual stream, beyond its base output, if only head ``h``'s ``z`` were
patched; with ``N`` the identity it is the additive definition. It is not
additive over heads (``Σ_h Δ_h ≠ N(o^src) − N(o^base)`` in general: the
norm's rescaling is shared), so each sender's paths are measured on their own,
as path patching does anyway. Post-MLP norms need nothing of this kind: a
block's MLP write is its normalised output, ``hook_mlp_out``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


def _plain(module):
    """The wrapped Hugging Face module of a bridge component (its forward
    fires no hooks), else the component itself."""
    return getattr(module, "_original_component", None) or module


@dataclass
class HeadWrites:
    """Per layer: ``W_O`` [heads, d_head, d_model], ``b_O`` [d_model] or None,
    and the post-attention norm (None where the attention output is added
    to the residual stream as it is)."""

    W_O: list[torch.Tensor]
    b_O: list[torch.Tensor | None]
    post_norm: list[Callable[[torch.Tensor], torch.Tensor] | None]

    @staticmethod
    def of(bridge) -> "HeadWrites":
        W_O, b_O, post = [], [], []
        for block in bridge.blocks:
            W_O.append(block.attn.W_O.detach())
            b = getattr(block.attn, "b_O", None)
            b_O.append(b.detach() if torch.is_tensor(b) else None)
            norm = getattr(block, "ln1_post", None)
            post.append(_plain(norm) if norm is not None else None)
        return HeadWrites(W_O, b_O, post)

    @property
    def normalised(self) -> bool:
        """Whether any layer normalises its attention output after the head sum."""
        return any(n is not None for n in self.post_norm)

    def attn_sum(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """``o = Σ_h z_h W_O[h] + b_O``: [rows, seq, heads, d_head] -> [rows, seq, d_model]."""
        W = self.W_O[layer]
        o = torch.einsum("rshd,hdm->rsm", z.to(W.dtype), W)
        b = self.b_O[layer]
        return o + b if b is not None else o

    def block_output(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """What the block adds to the residual stream for heads' ``z``: ``N(o)`` (``o`` where no norm)."""
        o = self.attn_sum(layer, z)
        n = self.post_norm[layer]
        return n(o) if n is not None else o

    def delta(self, layer: int, head: int, z_src: torch.Tensor, z_base: torch.Tensor) -> torch.Tensor:
        """Head ``head``'s write difference [rows, seq, d_model] (the module
        doc's Δ_h) from both runs' ``z`` [rows, seq, heads, d_head]."""
        if self.post_norm[layer] is None:
            W = self.W_O[layer][head]
            return z_src[:, :, head] @ W - z_base[:, :, head] @ W  # the additive definition, as path patching always computed it
        return self.deltas(layer, z_src, z_base, (head,))[:, :, 0]

    def deltas(self, layer: int, z_src: torch.Tensor, z_base: torch.Tensor, heads: Sequence[int] | None = None) -> torch.Tensor:
        """Every head's (or ``heads``') write difference at once:
        [rows, seq, len(heads), d_model]."""
        heads = list(range(z_src.shape[2])) if heads is None else list(heads)
        W = self.W_O[layer]
        zs, zb = z_src[:, :, heads].to(W.dtype), z_base[:, :, heads].to(W.dtype)
        src = torch.einsum("rshd,hdm->rshm", zs, W[heads])
        base = torch.einsum("rshd,hdm->rshm", zb, W[heads])
        n = self.post_norm[layer]
        if n is None:
            return src - base  # each head's own term: the additive definition
        o = self.attn_sum(layer, z_base)  # [rows, seq, d]
        patched = o[:, :, None, :] - base + src  # only head h's input to the sum changed
        return n(patched) - n(o)[:, :, None, :]
