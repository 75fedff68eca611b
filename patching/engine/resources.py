"""The engine's shared resources: the one model lock, the one memory budget
and the one owner of autograd's mode (:func:`no_graph`, :func:`gradient_pass`).

The lock: hooks, pass-through blocks and the split q/k/v switch live on the
shared model, so two computations on one model (two browser sessions on one
server) must never run forward passes at the same time. Every forward pass on
a loaded model holds :func:`model_lock` (re-entrant), and so does anything
that changes the model's config for the duration of a computation.

The budget: ``PATCHBOARD_MEM_BUDGET_MB`` caps the activations one batch may
hold; unset, it is derived from the device: on CUDA half of the free memory
of the model's devices (``torch.cuda.mem_get_info``; with a ``device_map`` the
tightest of them), on MPS half of what torch recommends, on the CPU 1024 MB.
:func:`rows_within_budget` is the one formula every batched pass (reference
runs, activation sweeps, path sweeps, G_H) sizes its batches with; it counts
the activations in the model's dtype (2 bytes per number in bfloat16/float16).
"""

from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any

#: Upper bound on tokens (rows x positions run) per batch of a sweep: past a
#: few thousand, bigger batches stop paying on CPU.
MAX_BATCH_TOKENS = 4096
#: Rows unembedded at once (the vocabulary row dominates memory there).
UNEMBED_ROWS = 256

_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(bridge) -> threading.RLock:
    """The lock of one loaded model (keyed by its bridge; freed with it).
    Hold it for every forward pass and every temporary change of the model
    (hooks, config switches). Re-entrant."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(bridge)
        if lock is None:
            lock = _LOCKS[bridge] = threading.RLock()
        return lock


#: The CPU's budget, and the share of a GPU's free memory one batch may take.
CPU_BUDGET_MB = 1024
DEVICE_SHARE = 0.5


def memory_budget_bytes(device: Any = None) -> int:
    """Bytes of activations one batch may hold on ``device`` (a torch device,
    its name, or a list of them for a model spread over several)."""
    env = os.environ.get("PATCHBOARD_MEM_BUDGET_MB")
    if env:
        return int(float(env) * 2**20)
    devices = device if isinstance(device, (list, tuple, set)) else [device]
    free = [_free_bytes(str(d)) for d in devices if d is not None]
    free = [f for f in free if f is not None]
    return int(min(free) * DEVICE_SHARE) if free else CPU_BUDGET_MB * 2**20


def _free_bytes(device: str) -> int | None:
    """Free memory of one accelerator, None for the CPU (whose budget is fixed)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if device.startswith("mps") and hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    return None


def model_devices(cfg) -> list[str]:
    """The devices a model's layers live on (one, unless loaded with a device_map)."""
    return list(getattr(cfg, "_pb_devices", None) or [str(getattr(cfg, "device", None) or "cpu")])


def dtype_bytes(cfg) -> int:
    import torch

    dt = getattr(cfg, "dtype", None)
    return 2 if dt in (torch.float16, torch.bfloat16) else 4


def rows_within_budget(cfg, *, width: int, seq: int, resid: int = 4, mlp: int = 3, scores: bool = True, logit_positions: int = 0,
                       split_heads: bool = False, reserve: int = 0, budget: int | None = None, token_cap: int | None = None,
                       row_cap: int | None = None) -> int:
    """Rows (batch entries) one pass may hold within the memory budget.

    Per row, in the model's dtype: ``width`` positions run through one block (``resid``
    residual-sized and ``mlp`` MLP-sized activations each), the attention
    scores (2 x heads x width x seq, with ``scores``), ``logit_positions`` rows of logits (3 copies:
    logits, log-softmax, probabilities) and, with ``split_heads``, the
    per-head q/k/v copies of the residual stream path patching makes.
    ``reserve`` bytes are set aside first (e.g. a chunked unembedding);
    ``budget`` replaces the configured budget (a pass with its own cap)."""
    d = int(cfg.d_model)
    d_mlp = int(getattr(cfg, "d_mlp", 0) or 4 * d)
    heads = int(cfg.n_heads)
    b = dtype_bytes(cfg)
    # Logits are read out in float32 whatever the model's dtype.
    per_row = b * (width * (resid * d + mlp * d_mlp) + (2 * heads * width * seq if scores else 0)) + 4 * 3 * int(cfg.d_vocab) * logit_positions
    if split_heads:
        per_row += b * width * d * 3 * heads * 2
    total = memory_budget_bytes(model_devices(cfg)) if budget is None else int(budget)
    total = max(total - reserve, per_row) if reserve else total
    rows = total // max(per_row, 1)
    if token_cap is not None:
        rows = min(rows, token_cap // max(width, 1))
    if row_cap is not None:
        rows = min(rows, row_cap)
    return max(1, rows)


def unembed_rows(cfg) -> int:
    """Rows unembedded at once: ``UNEMBED_ROWS``, fewer where a quarter of the
    budget cannot hold their logits (large vocabularies, e.g. Llama 3's 128k)."""
    per_row = 4 * 3 * int(cfg.d_vocab)
    return max(1, min(UNEMBED_ROWS, memory_budget_bytes(model_devices(cfg)) // 4 // per_row))


def sweep_rows(cfg, width: int, seq: int) -> int:
    """Rows per batch of an activation sweep (the unembedding is chunked
    separately, :func:`unembed_rows` at a time)."""
    return rows_within_budget(cfg, width=width, seq=seq, reserve=4 * 3 * int(cfg.d_vocab) * unembed_rows(cfg), token_cap=MAX_BATCH_TOKENS)


def reference_rows(cfg, seq: int) -> int:
    """Rows per ordinary forward pass: the logits of every position dominate."""
    return rows_within_budget(cfg, width=seq, seq=seq, resid=8, mlp=0, scores=False, logit_positions=seq)


def path_rows(cfg, seq: int, split_heads: bool) -> int:
    """Rows per batch of a path sweep (whole sequences, one readout row)."""
    return rows_within_budget(cfg, width=seq, seq=seq, resid=6, logit_positions=1, split_heads=split_heads, row_cap=256)


def readout_rows(cfg, seq: int, budget: int = 256 << 20) -> int:
    """Rows whose logits at every position fit in ``budget`` bytes."""
    return rows_within_budget(cfg, width=seq, seq=seq, resid=0, mlp=0, scores=False, logit_positions=seq, budget=budget)


# ---------------------------------------------------------------- autograd's mode
#
# Owned here. Grad mode is per thread and callers arrive with it in any state
# (Streamlit's script threads with it on, the pages under inference_mode,
# scripts and tests with it off once a model is loaded, the service switched
# per request), so no method relies on its caller: every method's entry runs
# under no_graph (an exact sweep never builds an autograd graph; the engine's
# run_patches goes further, inference_mode, for speed), and gradient_pass is
# the one place gradients are turned on: the backward passes of attribution
# (patching/methods/gradients.py, patching/methods/atp_star.py).


def no_graph():
    """No autograd graph inside (a context manager, or a decorator when called)."""
    import torch

    return torch.no_grad()


@contextmanager
def gradient_pass(bridge):
    """Gradients on, holding the model's lock, with ordinary tensors even
    inside an outer inference_mode (whose tensors autograd cannot save)."""
    import torch

    with model_lock(bridge), torch.inference_mode(False), torch.enable_grad():
        yield
