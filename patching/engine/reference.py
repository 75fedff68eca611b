"""Clean and corrupted runs: the two reference runs every patch sits between.

Rows are pairs x noise samples (pair-major). Under ``str`` there is one sample
per pair and the corrupted run reads the pair's corrupted prompt. Under ``gn``
the corrupted run reads the *clean* prompt with Gaussian noise added to the
token embeddings (``hook_embed``) at the key positions: std = noise_scale x
sigma, sigma the std of the embeddings of the dataset's key tokens (ROME's
recipe, which Zhang & Nanda follow), K seeded samples per prompt. Under ``resample`` (Goldowsky-Dill et al.'s
resampling ablation) the corrupted run of pair i's k-th row reads the clean
prompt of another pair j != i of the same dataset, drawn uniformly with the
seed (K samples per prompt); the answer and counter-answer stay pair i's.
Under ``mean`` (mean ablation) the corrupted run reads the dataset's mean
token embedding at each position (``hook_embed``), so its residual stream
entering layer 0 is the dataset's mean there; noising writes, for each patched
activation, the dataset's mean of that activation over the clean prompts at
each position; denoising writes the clean activation into the mean run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from patching.core.data import Dataset
from patching.engine.blocks import PrefixKV
from patching.engine.readout import RowStats, answer_scores, row_stats
from patching.engine.resources import model_lock, no_graph, reference_rows
from patching.engine.runner import EngineInputs
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel


@dataclass
class Prepared:
    inputs: EngineInputs
    clean: RowStats
    corrupt: RowStats
    sigma: float | None  # GN only
    rows: int
    corrupt_logprobs: torch.Tensor | None = None  # [rows, vocab] at the final position


def resid_hooks(n_layers: int) -> list[str]:
    return [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]


def _run(lm: LoadedModel, tokens: torch.Tensor, names: set[str], noise: torch.Tensor | None, kv_prefix: int = 0):
    """One run (in row chunks within the memory budget), caching ``names``.

    Returns the final position's logits, the cache and, when ``kv_prefix`` > 0,
    the keys/values of positions < ``kv_prefix`` (None where the model's cache
    is not plain per-layer keys/values)."""
    from transformers import DynamicCache

    bridge = lm.bridge
    n, seq = tokens.shape
    step = reference_rows(lm.cfg, seq)
    last, caches, kvs = [], {k: [] for k in names}, []
    want_kv = 0 < kv_prefix < seq
    for r in range(0, n, step):
        tok = tokens[r:r + step]
        hooks = []
        if noise is not None:
            nz = noise[r:r + step]
            hooks.append(("hook_embed", lambda act, hook=None, nz=nz: act + nz.to(act.dtype)))
        kv = DynamicCache() if want_kv else None
        with model_lock(bridge), bridge.hooks(fwd_hooks=hooks):
            try:
                # The HF cache is filled on the way; it changes nothing else.
                logits, cache = bridge.run_with_cache(tok, names_filter=lambda h: h in names, **({"past_key_values": kv} if kv is not None else {}))
            except Exception:
                if kv is None:
                    raise
                want_kv, kv = False, None
                logits, cache = bridge.run_with_cache(tok, names_filter=lambda h: h in names)
        last.append(logits[:, -1, :].float())
        for k in names:
            caches[k].append(cache[k])
        if want_kv:
            part = PrefixKV.from_hf_cache(kv, kv_prefix)
            want_kv = part is not None
            kvs.append(part)
        del logits, cache
    cat = (lambda xs: xs[0] if len(xs) == 1 else torch.cat(xs))
    prefix = PrefixKV.cat(kvs) if want_kv and kvs else None
    return cat(last), {k: cat(v) for k, v in caches.items()}, prefix


class _Stop(Exception):
    pass


def input_embeddings(lm: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """``hook_embed`` of ``tokens``, stopping the forward pass right there."""
    got: dict[str, torch.Tensor] = {}

    def grab(act, hook=None):
        got["e"] = act.detach().clone()
        raise _Stop

    try:
        with model_lock(lm.bridge), lm.bridge.hooks(fwd_hooks=[("hook_embed", grab)]):
            lm.bridge(tokens)
    except Exception:
        if "e" not in got:
            raise
    if "e" not in got:  # pragma: no cover - the hook always fires
        _, c, _ = _run(lm, tokens, {"hook_embed"}, None)
        got["e"] = c["hook_embed"]
    return got["e"]


def gaussian_noise(lm: LoadedModel, ds: Dataset, K: int, noise_scale: float, seed: int) -> tuple[torch.Tensor, float]:
    """GN's noise for every row (pair-major, K samples per pair) [n*K, seq, d]
    and sigma: N(0, (scale * sigma)^2) at each pair's key positions, zero
    elsewhere; sigma the std of the key tokens' embedding entries over the
    whole dataset."""
    clean_tok = ds.clean_tokens.to(lm.device)
    n = clean_tok.shape[0]
    e = input_embeddings(lm, clean_tok)
    keys = torch.cat([e[i, kp] for i, kp in enumerate(ds.key_positions)])
    sigma = float(keys.std())
    g = torch.Generator().manual_seed(int(seed))
    _, seq, d = e.shape
    mask = torch.zeros(n, 1, seq, 1)
    for i, kp in enumerate(ds.key_positions):
        mask[i, 0, kp] = 1.0
    noise = (torch.randn(n, K, seq, d, generator=g) * (noise_scale * sigma) * mask).reshape(n * K, seq, d).to(lm.device)
    return noise, sigma


@no_graph()  # an engine entry: tests and scripts call it directly
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
    """Run clean and corrupted once (as one batch), caching what the sweep
    needs: the residual stream of the run being patched, the source run's
    patched activations and the keys/values of the shared prefix."""
    dev = lm.device
    n_layers = lm.n_layers
    K = noise_samples if corruption in ("gn", "resample") else 1
    clean_tok = ds.clean_tokens.to(dev)
    n = clean_tok.shape[0]
    base_is_clean = direction == "noise"
    resid = set(resid_hooks(n_layers))

    sigma = None
    noise = None
    if corruption == "gn":
        noise, sigma = gaussian_noise(lm, ds, K, noise_scale, seed)
        rows_tok = clean_tok.repeat_interleave(K, 0)
        corrupt_tok = rows_tok
    elif corruption == "resample":
        corrupt_tok = clean_tok[resample_index(n, K, seed).to(clean_tok.device)]
    elif corruption == "mean":
        if n < 2:
            raise PatchboardError("n-pairs", "mean ablation needs at least 2 pairs (the dataset's mean activation); ask for more pairs")
        # The corrupted run reads the dataset's mean embedding at every
        # position (positions where every prompt has the same token stay exact).
        e = input_embeddings(lm, clean_tok)
        varies = (ds.clean_tokens != ds.clean_tokens[:1]).any(0).to(e.device)[None, :, None]
        noise = ((e.mean(0, keepdim=True) - e) * varies).to(dev)
        corrupt_tok = clean_tok
    else:
        rows_tok = clean_tok
        corrupt_tok = ds.corrupt_tokens.to(dev)

    # Under mean ablation the noising source is the clean runs' mean, so the clean run caches it.
    clean_names = (resid if base_is_clean else set()) | (set() if base_is_clean and corruption != "mean" else source_hooks)
    corrupt_names = (set() if base_is_clean else resid) | (source_hooks if base_is_clean else set())
    same_prefix = _same_prefix(ds, corruption)
    # One forward for both runs: clean rows first, then the corrupted rows
    # (noised at the key positions under GN; adding zeros leaves clean rows exact).
    both_noise = None if noise is None else torch.cat([torch.zeros((n,) + tuple(noise.shape[1:]), dtype=noise.dtype, device=noise.device), noise])
    logits, cache, kv = _run(lm, torch.cat([clean_tok, corrupt_tok]), clean_names | corrupt_names, both_noise, kv_prefix=same_prefix)
    clean_logits, corrupt_logits = logits[:n], logits[n:]
    clean_cache = {k: cache[k][:n] for k in clean_names}
    corrupt_cache = {k: cache[k][n:] for k in corrupt_names}
    # The rows the engine runs are the corrupted side's (pairs x samples); before
    # same_prefix both runs read the same tokens, so its prefix cache serves both.
    prefix_kv = PrefixKV([k[n:] for k in kv.keys], [v[n:] for v in kv.values]) if kv is not None else None
    del cache
    if corruption == "mean" and base_is_clean:
        # Noising writes the dataset's mean activation at each position.
        corrupt_cache.update({h: clean_cache[h].mean(0, keepdim=True).expand_as(clean_cache[h]).contiguous() for h in source_hooks})
    if K > 1:
        # Clean run is deterministic: repeat its rows to align with the samples.
        clean_logits = clean_logits.repeat_interleave(K, 0)
        clean_cache = {k: v.repeat_interleave(K, 0) for k, v in clean_cache.items()}

    ans, cnt = ds.answers()  # ids, or answer sets
    answer = ans.to(dev).repeat_interleave(K, 0)
    counter = cnt.to(dev).repeat_interleave(K, 0)
    clean_lp = torch.log_softmax(clean_logits, -1)
    # Both reference distributions, so both directions' KL effects (and
    # path patching, which reads either direction from one preparation) work.
    corrupt_lp = torch.log_softmax(corrupt_logits, -1)
    clean_stats = row_stats(clean_logits, answer, counter, clean_lp, corrupt_lp)
    corrupt_stats = row_stats(corrupt_logits, answer, counter, clean_lp, corrupt_lp)

    base_cache, src_cache = (clean_cache, corrupt_cache) if base_is_clean else (corrupt_cache, clean_cache)
    inputs = EngineInputs(
        base_resid=[base_cache[h] for h in resid_hooks(n_layers)],
        source={h: src_cache[h] for h in source_hooks},
        answer=answer,
        counter=counter,
        clean_logprobs=clean_lp,
        corrupt_logprobs=corrupt_lp if base_is_clean else None,
        base_stats=clean_stats if base_is_clean else corrupt_stats,
        same_prefix=same_prefix,
        lm=lm,
        prefix_kv=prefix_kv,
    )
    return Prepared(inputs=inputs, clean=clean_stats, corrupt=corrupt_stats, sigma=sigma, rows=int(answer.shape[0]), corrupt_logprobs=corrupt_lp)


def resample_index(n: int, K: int, seed: int) -> torch.Tensor:
    """[n*K] (pair-major): for pair i's k-th sample, the index of another pair
    of the dataset (never i itself), drawn uniformly and seeded."""
    if n < 2:
        raise PatchboardError("n-pairs", "resample needs at least 2 pairs (each prompt's corrupted input is another prompt of the dataset); ask for more pairs")
    g = torch.Generator().manual_seed(int(seed))
    off = torch.randint(1, n, (n, K), generator=g)
    return ((torch.arange(n)[:, None] + off) % n).reshape(-1)


def _same_prefix(ds: Dataset, corruption: str) -> int:
    """First position at which any row's clean and corrupted runs can differ."""
    if corruption == "gn":
        return min(min(kp) for kp in ds.key_positions)
    if corruption in ("resample", "mean"):
        diff = (ds.clean_tokens != ds.clean_tokens[:1]).any(0).nonzero()
        return int(diff[0]) if len(diff) else ds.seq_len
    diff = (ds.clean_tokens != ds.corrupt_tokens).any(0).nonzero()
    return int(diff[0]) if len(diff) else ds.seq_len


def check_clean_behaviour(ds: Dataset, lm: LoadedModel) -> Dataset:
    """Warn (with the number) when the clean run does not prefer the answer."""
    with model_lock(lm.bridge), no_graph():
        logits = lm.bridge(ds.clean_tokens.to(lm.device))[:, -1, :]
    ans, cnt = ds.answers()
    ld, _ = answer_scores(logits.float(), torch.log_softmax(logits.float(), -1), ans.to(lm.device), cnt.to(lm.device))
    wrong = int((ld <= 0).sum())
    if wrong and ds.answer_sets is not None:
        ds.warnings.append(f"the clean logit-sum difference (answer set minus counter set) is <= 0 on {wrong} of {ds.n} pair(s)")
    elif wrong:
        ds.warnings.append(f"the clean run prefers the counter-answer over the answer on {wrong} of {ds.n} pair(s)")
    return ds
