"""The generic batched patching engine.

Like TransformerLens's ``generic_activation_patch``, one function runs any list
of patches; the sweeps in ``sweeps.py`` only say *which* activations to patch.
Unlike it, the engine

* stacks many patched runs along the batch dimension (``patch x row``), chunked
  to a memory budget, instead of one forward pass per patch (auto-circuit's idea);
* starts each chunk from the cached residual stream at the lowest patched layer
  instead of recomputing the layers below it (they are identical to the
  unpatched run);
* unembeds only the final position, the only one the metrics read;
* skips patches that only touch positions before the first position where the
  two runs differ: in a causal model those activations are identical in both
  runs, so the patch is exactly a no-op.

It drives the bridge's own blocks (with their hooks), replaying the keyword
arguments (masks, rotary embeddings) captured from one ordinary forward pass, so
it works for any architecture TransformerBridge supports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .models import LoadedModel

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Edit:
    """Overwrite (part of) one activation with the source run's value.

    ``pos``/``head`` None means every position / no head axis. ``setter`` lets
    other patch kinds (e.g. path patching) write anything: it receives the
    patched run's activation slice ``[rows, ...]`` and the row slice, and edits
    it in place.
    """

    hook: str
    layer: int
    pos: int | None = None
    head: int | None = None
    setter: Callable[[torch.Tensor, slice], None] | None = field(default=None, compare=False)

    def index(self) -> tuple:
        idx: tuple = (slice(None), self.pos if self.pos is not None else slice(None))
        if self.head is not None:
            idx = idx + (self.head,)
        return idx


Patch = tuple[Edit, ...]


def memory_budget_bytes() -> int:
    return int(float(os.environ.get("PATCHBOARD_MEM_BUDGET_MB", "1024")) * 2**20)


class BlockRunner:
    """Runs the model's blocks from any layer, with the bridge's hooks live.

    The per-block keyword arguments HF computes once per forward (causal mask,
    rotary cos/sin, position ids) depend only on the sequence length; they are
    captured from one batch-1 forward pass and broadcast over any batch."""

    def __init__(self, lm: LoadedModel, seq_len: int):
        self.lm = lm
        self.bridge = lm.bridge
        self.blocks = list(self.bridge.blocks)
        captured: dict[int, dict] = {}

        def grab(i):
            def pre(_mod, _args, kwargs):
                kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "use_cache", "cache_position")}
                kw["use_cache"] = False
                captured.setdefault(i, kw)

            return pre

        handles = [b.register_forward_pre_hook(grab(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        try:
            dummy = torch.full((1, seq_len), int(self.lm.tokenizer.bos_token_id or 0), dtype=torch.long, device=lm.device)
            self.bridge(dummy)
        finally:
            for h in handles:
                h.remove()
        self.kwargs = [captured[i] for i in range(len(self.blocks))]
        cap = float(getattr(self.bridge.cfg, "output_logits_soft_cap", -1.0) or -1.0)
        self.softcap = cap if cap > 0 else None

    def run_from(self, layer: int, resid: torch.Tensor, stop: int | None = None) -> torch.Tensor:
        stop = len(self.blocks) if stop is None else stop
        x = resid
        for i in range(layer, stop):
            out = self.blocks[i](x, **self.kwargs[i])
            x = out if torch.is_tensor(out) else out[0]
        return x

    def final_logits(self, resid_last: torch.Tensor) -> torch.Tensor:
        """[B, d_model] residual at the final position -> [B, vocab] logits."""
        x = self.bridge.ln_final(resid_last[:, None, :])
        logits = self.bridge.unembed(x)[:, 0, :]
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


@dataclass
class RowStats:
    """Per-row readouts at the final position; the metrics are built from these."""

    ld: torch.Tensor  # logit(answer) - logit(counter_answer)
    prob: torch.Tensor  # P(answer)
    logprob: torch.Tensor  # log P(answer)
    kl: torch.Tensor  # KL(clean || this run)

    @staticmethod
    def cat(items: Sequence["RowStats"]) -> "RowStats":
        return RowStats(*(torch.cat([getattr(s, f) for s in items]) for f in ("ld", "prob", "logprob", "kl")))

    def view(self, *shape) -> "RowStats":
        return RowStats(*(getattr(self, f).reshape(*shape) for f in ("ld", "prob", "logprob", "kl")))


def row_stats(logits: torch.Tensor, answer: torch.Tensor, counter: torch.Tensor, clean_logprobs: torch.Tensor) -> RowStats:
    logits = logits.float()
    lp = torch.log_softmax(logits, dim=-1)
    a = answer[:, None]
    ld = (logits.gather(1, a) - logits.gather(1, counter[:, None]))[:, 0]
    lpa = lp.gather(1, a)[:, 0]
    kl = (clean_logprobs.exp() * (clean_logprobs - lp)).sum(-1)
    return RowStats(ld=ld, prob=lpa.exp(), logprob=lpa, kl=kl)


@dataclass
class EngineInputs:
    """Everything a sweep needs, for R rows (pairs x noise samples)."""

    runner: BlockRunner
    base_resid: list[torch.Tensor]  # resid_pre per layer of the run being patched, [R, seq, d]
    source: dict[str, torch.Tensor]  # hook name -> source run's activation [R, ...]
    answer: torch.Tensor  # [R]
    counter: torch.Tensor  # [R]
    clean_logprobs: torch.Tensor  # [R, vocab] at the final position
    base_stats: RowStats  # the unpatched run's stats
    same_prefix: int = 0  # positions < this are identical in both runs


def run_patches(inp: EngineInputs, patches: Sequence[Patch], progress: ProgressFn | None = None, max_rows: int | None = None) -> RowStats:
    """Run every patch; returns stats shaped [n_patches, R]."""
    R, seq, d = inp.base_resid[0].shape
    n_layers = len(inp.base_resid)
    out: list[RowStats | None] = [None] * len(patches)

    todo = []
    for i, patch in enumerate(patches):
        if all(e.setter is None and e.pos is not None and e.pos < inp.same_prefix for e in patch):
            out[i] = inp.base_stats  # exact no-op: both runs agree at those positions
        else:
            todo.append(i)

    if max_rows is None:
        # Peak memory per row is dominated by the MLP activations and the
        # attention scores of one block, plus the vocabulary row at the end.
        cfg = inp.runner.bridge.cfg
        per_row = 4 * (seq * (4 * int(cfg.d_model) + 3 * int(getattr(cfg, "d_mlp", 4 * cfg.d_model) or 4 * cfg.d_model)) + 2 * int(cfg.n_heads) * seq * seq + 3 * int(cfg.d_vocab))
        max_rows = max(1, memory_budget_bytes() // max(per_row, 1))
        max_rows = min(max_rows, 256)
    todo.sort(key=lambda i: min(e.layer for e in patches[i]))
    # Row blocks: a patch's R rows may be split when R alone exceeds the budget.
    row_blocks = [slice(r, min(R, r + max_rows)) for r in range(0, R, max_rows)]
    per_chunk = max(1, max_rows // R) if R <= max_rows else 1

    chunks: list[list[int]] = []
    cur: list[int] = []
    for i in todo:
        # Keep chunks within a few layers of each other: a patch at layer 20
        # batched with one at layer 2 would recompute 18 needless layers.
        if cur and (len(cur) >= per_chunk or min(e.layer for e in patches[i]) - min(e.layer for e in patches[cur[0]]) > max(2, n_layers // 8)):
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)

    total = len(chunks) * len(row_blocks)
    done = 0
    results: dict[int, list[RowStats]] = {i: [] for i in todo}
    bridge = inp.runner.bridge
    for chunk in chunks:
        start = min(e.layer for i in chunk for e in patches[i])
        P = len(chunk)
        for rows in row_blocks:
            Rb = rows.stop - rows.start
            by_hook: dict[str, list[tuple[int, Edit]]] = {}
            for slot, i in enumerate(chunk):
                for e in patches[i]:
                    by_hook.setdefault(e.hook, []).append((slot, e))
            hooks = [(name, _make_hook(edits, inp.source.get(name), P, Rb, rows)) for name, edits in by_hook.items()]
            x = inp.base_resid[start][rows].repeat(P, 1, 1)
            with bridge.hooks(fwd_hooks=hooks):
                x = inp.runner.run_from(start, x)
            logits = inp.runner.final_logits(x[:, -1, :])
            st = row_stats(logits, inp.answer[rows].repeat(P), inp.counter[rows].repeat(P), inp.clean_logprobs[rows].repeat(P, 1)).view(P, Rb)
            for slot, i in enumerate(chunk):
                results[i].append(RowStats(st.ld[slot], st.prob[slot], st.logprob[slot], st.kl[slot]))
            done += 1
            if progress:
                progress(done, total)
    for i in todo:
        out[i] = RowStats.cat(results[i])
    stacked = [o for o in out]  # type: ignore[misc]
    return RowStats(*(torch.stack([getattr(s, f) for s in stacked]) for f in ("ld", "prob", "logprob", "kl")))


def _make_hook(edits: list[tuple[int, Edit]], src: torch.Tensor | None, P: int, Rb: int, rows: slice):
    def hook(act: torch.Tensor, hook=None):
        view = act.reshape(P, Rb, *act.shape[1:])  # a view when contiguous, else a copy
        for slot, e in edits:
            if e.setter is not None:
                e.setter(view[slot], rows)
            else:
                idx = e.index()
                view[slot][idx] = src[rows][idx]
        return view.reshape(act.shape)

    return hook
