"""Clean and corrupted runs: the two reference runs every patch sits between.

Rows are pairs x noise samples (pair-major). Under ``str`` there is one sample
per pair and the corrupted run reads the pair's corrupted prompt. Under ``gn``
the corrupted run reads the *clean* prompt with Gaussian noise added to the
token embeddings (``hook_embed``) at the key positions: std = noise_scale x
sigma, sigma the std of the embeddings of the dataset's key tokens (ROME's
recipe, which Zhang & Nanda follow), K seeded samples per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import Dataset
from .engine import BlockRunner, EngineInputs, RowStats, row_stats
from .models import LoadedModel


@dataclass
class Prepared:
    inputs: EngineInputs
    clean: RowStats
    corrupt: RowStats
    sigma: float | None  # GN only
    rows: int


def resid_hooks(n_layers: int) -> list[str]:
    return [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]


def _run(lm: LoadedModel, tokens: torch.Tensor, names: set[str], noise: torch.Tensor | None):
    bridge = lm.bridge
    hooks = []
    if noise is not None:
        hooks.append(("hook_embed", lambda act, hook=None: act + noise.to(act.dtype)))
    with bridge.hooks(fwd_hooks=hooks):
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    return logits[:, -1, :].float(), {n: cache[n] for n in names}


def prepare(
    lm: LoadedModel,
    ds: Dataset,
    corruption: str,
    direction: str,
    source_hooks: set[str],
    noise_scale: float = 3.0,
    noise_samples: int = 10,
    seed: int = 0,
) -> Prepared:
    """Run clean and corrupted once, caching what the sweep needs: the residual
    stream of the run being patched and the source run's patched activations."""
    dev = lm.device
    n_layers = lm.n_layers
    K = noise_samples if corruption == "gn" else 1
    clean_tok = ds.clean_tokens.to(dev)
    base_is_clean = direction == "noise"
    resid = set(resid_hooks(n_layers))

    sigma = None
    noise = None
    if corruption == "gn":
        # sigma over the key tokens' embedding entries of the whole dataset.
        _, emb = _run(lm, clean_tok, {"hook_embed"}, None)
        e = emb["hook_embed"]
        keys = torch.cat([e[i, kp] for i, kp in enumerate(ds.key_positions)])
        sigma = float(keys.std())
        g = torch.Generator().manual_seed(int(seed))
        n, seq, d = e.shape
        mask = torch.zeros(n, 1, seq, 1)
        for i, kp in enumerate(ds.key_positions):
            mask[i, 0, kp] = 1.0
        noise = (torch.randn(n, K, seq, d, generator=g) * (noise_scale * sigma) * mask).reshape(n * K, seq, d).to(dev)
        rows_tok = clean_tok.repeat_interleave(K, 0)
        corrupt_tok = rows_tok
    else:
        rows_tok = clean_tok
        corrupt_tok = ds.corrupt_tokens.to(dev)

    clean_names = (resid if base_is_clean else set()) | (set() if base_is_clean else source_hooks)
    corrupt_names = (set() if base_is_clean else resid) | (source_hooks if base_is_clean else set())
    clean_logits, clean_cache = _run(lm, clean_tok, clean_names, None)
    corrupt_logits, corrupt_cache = _run(lm, corrupt_tok, corrupt_names, noise)
    if K > 1:
        # Clean run is deterministic: repeat its rows to align with the samples.
        clean_logits = clean_logits.repeat_interleave(K, 0)
        clean_cache = {k: v.repeat_interleave(K, 0) for k, v in clean_cache.items()}

    answer = ds.answer_ids.to(dev).repeat_interleave(K, 0)
    counter = ds.counter_ids.to(dev).repeat_interleave(K, 0)
    clean_lp = torch.log_softmax(clean_logits, -1)
    clean_stats = row_stats(clean_logits, answer, counter, clean_lp)
    corrupt_stats = row_stats(corrupt_logits, answer, counter, clean_lp)

    base_cache, src_cache = (clean_cache, corrupt_cache) if base_is_clean else (corrupt_cache, clean_cache)
    same_prefix = _same_prefix(ds, corruption)
    inputs = EngineInputs(
        runner=BlockRunner(lm, ds.seq_len),
        base_resid=[base_cache[h] for h in resid_hooks(n_layers)],
        source={h: src_cache[h] for h in source_hooks},
        answer=answer,
        counter=counter,
        clean_logprobs=clean_lp,
        base_stats=clean_stats if base_is_clean else corrupt_stats,
        same_prefix=same_prefix,
    )
    return Prepared(inputs=inputs, clean=clean_stats, corrupt=corrupt_stats, sigma=sigma, rows=int(answer.shape[0]))


def _same_prefix(ds: Dataset, corruption: str) -> int:
    """First position at which any row's clean and corrupted runs can differ."""
    if corruption == "gn":
        return min(min(kp) for kp in ds.key_positions)
    diff = (ds.clean_tokens != ds.corrupt_tokens).any(0).nonzero()
    return int(diff[0]) if len(diff) else ds.seq_len
