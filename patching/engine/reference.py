"""Clean and corrupted runs: the two reference runs every patch sits between.

:func:`reference_runs` is the one preparation every method reads -- activation
sweeps and their attribution estimates (through :func:`prepare`), path sweeps,
edge attribution and hypotheses (through
:func:`patching.methods.path_runs.prepare_runs`): the clean run, the corrupted
run (or, under mean and zero ablation, the ablated values), their read-out
statistics, log-probabilities (the normaliser and the KL reference come from
these) and the keys/values of the prefix the two runs share.

Rows are pairs x noise samples (pair-major). Under ``str`` there is one sample
per pair and the corrupted run reads the pair's corrupted prompt. Under ``gn``
the corrupted run reads the *clean* prompt with Gaussian noise added to the
token embeddings (``hook_embed``) at the key positions: std = noise_scale x
sigma, sigma the std of the embeddings of the dataset's key tokens (ROME's
recipe, which Zhang & Nanda follow), K seeded samples per prompt. Under ``resample`` (Goldowsky-Dill et al.'s
resampling ablation) the corrupted run of pair i's k-th row reads the clean
prompt of another pair j != i of the same dataset, drawn uniformly with the
seed (K samples per prompt); the answer and counter-answer stay pair i's.

Mean and zero ablation (:data:`patching.core.spec.ABLATIONS`) are noising
interventions with no second input: the patched activation of prompt i's
clean run is replaced by

* ``mean``: its mean at the same position over a reference set that excludes
  the prompt -- the other clean prompts of the dataset (leave-one-out,
  ``mean_set="others"``), or the dataset's corrupted prompts
  (``mean_set="corrupt"``; IOI's ``abc`` prompts are Wang et al.'s p_ABC);
* ``zero``: zeros.

The "corrupted" side then holds these values for every cached activation, and
the reference every baseline, normaliser and KL reads is the *ablated run*:
the readout of the final residual stream ablated the same way (its mean over
the reference set; zeros), the prediction with every write to the residual
stream ablated at once (for the mean exactly so: a mean is linear, so the mean
of the final residual is the sum of the writes' means). Positions before the
first one where the reference prompts differ are the same activation in every
prompt (the model is causal), so their mean is the activation itself, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from patching.core.data import Dataset
from patching.core.errors import PatchboardError
from patching.core.models import LoadedModel
from patching.core.spec import ABLATIONS, SAMPLED_CORRUPTIONS
from patching.engine.blocks import PrefixKV, final_logits, logit_softcap
from patching.engine.readout import RowStats, answer_scores, row_stats
from patching.engine.resources import model_lock, no_graph, reference_rows
from patching.engine.runner import PATTERN_HOOKS, EngineInputs


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


@dataclass
class Runs:
    """The clean and corrupted runs every method starts from (rows = pairs x
    K samples, pair-major; the clean run's rows repeated K times).

    ``corrupt`` holds the corrupted run's cached activations, or under mean and
    zero ablation the ablated values; ``corrupt_logprobs`` / ``corrupt_stats``
    are then the ablated run's (the readout of the ablated final residual
    stream). ``prefix_kv``: the keys and values of positions < ``same_prefix``,
    which both runs share."""

    clean: dict[str, torch.Tensor]
    corrupt: dict[str, torch.Tensor]
    answer: torch.Tensor
    counter: torch.Tensor
    clean_logprobs: torch.Tensor  # [R, vocab] at the final position
    corrupt_logprobs: torch.Tensor  # [R, vocab]: the corrupted (ablated) reference
    clean_stats: RowStats
    corrupt_stats: RowStats
    K: int
    sigma: float | None
    same_prefix: int
    prefix_kv: PrefixKV | None = None

    @property
    def rows(self) -> int:
        return int(self.answer.shape[0])


#: The final residual stream (the unembedding's input), whose ablation is the ablated run.
FINAL = "ln_final.hook_in"


@no_graph()  # an engine entry: the methods and tests call it directly
def reference_runs(
    lm: LoadedModel,
    ds: Dataset,
    corruption: str,
    clean_hooks: set[str],
    corrupt_hooks: set[str],
    noise_scale: float = 3.0,
    noise_samples: int = 10,
    seed: int = 0,
    mean_set: str = "others",
) -> Runs:
    """Run clean and corrupted once (as one batch), caching ``clean_hooks`` of
    the clean run and ``corrupt_hooks`` of the corrupted one (under mean and
    zero ablation: their ablated values) and the keys/values of the shared
    prefix. The one preparation of every method (see the module doc)."""
    if corruption in ABLATIONS:
        return _ablated_runs(lm, ds, corruption, clean_hooks, corrupt_hooks, mean_set)
    dev = lm.device
    K = noise_samples if corruption in SAMPLED_CORRUPTIONS else 1
    clean_tok = ds.clean_tokens.to(dev)
    n = clean_tok.shape[0]
    sigma = None
    noise = None
    if corruption == "gn":
        noise, sigma = gaussian_noise(lm, ds, K, noise_scale, seed)
        corrupt_tok = clean_tok.repeat_interleave(K, 0)
    elif corruption == "resample":
        corrupt_tok = clean_tok[resample_index(n, K, seed).to(clean_tok.device)]
    else:
        corrupt_tok = ds.corrupt_tokens.to(dev)
    same_prefix = _same_prefix(ds, corruption)
    # One forward for both runs: clean rows first, then the corrupted rows
    # (noised at the key positions under GN; adding zeros leaves clean rows exact).
    both_noise = None if noise is None else torch.cat([torch.zeros((n,) + tuple(noise.shape[1:]), dtype=noise.dtype, device=noise.device), noise])
    logits, cache, kv = _run(lm, torch.cat([clean_tok, corrupt_tok]), set(clean_hooks) | set(corrupt_hooks), both_noise, kv_prefix=same_prefix)
    clean_logits, corrupt_logits = logits[:n], logits[n:]
    clean_cache = {k: cache[k][:n] for k in clean_hooks}
    corrupt_cache = {k: cache[k][n:] for k in corrupt_hooks}
    # The rows the engine runs are the corrupted side's (pairs x samples); before
    # same_prefix both runs read the same tokens, so its prefix cache serves both.
    prefix_kv = PrefixKV([k[n:] for k in kv.keys], [v[n:] for v in kv.values]) if kv is not None else None
    del cache
    if K > 1:
        # Clean run is deterministic: repeat its rows to align with the samples.
        clean_logits = clean_logits.repeat_interleave(K, 0)
        clean_cache = {k: v.repeat_interleave(K, 0) for k, v in clean_cache.items()}
    return _finish(ds, dev, K, clean_cache, corrupt_cache, clean_logits, corrupt_logits, sigma, same_prefix, prefix_kv)


def _finish(ds, dev, K, clean_cache, corrupt_cache, clean_logits, corrupt_logits, sigma, same_prefix, prefix_kv) -> Runs:
    ans, cnt = ds.answers()  # ids, or answer sets
    answer = ans.to(dev).repeat_interleave(K, 0)
    counter = cnt.to(dev).repeat_interleave(K, 0)
    clean_lp = torch.log_softmax(clean_logits, -1)
    # Both reference distributions, so both directions' KL effects (and
    # path patching, which reads either direction from one preparation) work.
    corrupt_lp = torch.log_softmax(corrupt_logits, -1)
    clean_stats = row_stats(clean_logits, answer, counter, clean_lp, corrupt_lp)
    corrupt_stats = row_stats(corrupt_logits, answer, counter, clean_lp, corrupt_lp)
    return Runs(clean=clean_cache, corrupt=corrupt_cache, answer=answer, counter=counter, clean_logprobs=clean_lp,
                corrupt_logprobs=corrupt_lp, clean_stats=clean_stats, corrupt_stats=corrupt_stats, K=K, sigma=sigma,
                same_prefix=same_prefix, prefix_kv=prefix_kv)


def _ablated_runs(lm: LoadedModel, ds: Dataset, corruption: str, clean_hooks: set[str], corrupt_hooks: set[str], mean_set: str) -> Runs:
    """Mean or zero ablation: one clean run (and, for ``mean_set="corrupt"``,
    the corrupted prompts' run the mean is taken over) caching what is
    ablated; the ablated values and the ablated run's readout."""
    dev = lm.device
    clean_tok = ds.clean_tokens.to(dev)
    n = clean_tok.shape[0]
    if corruption == "mean" and mean_set == "others" and n < 2:
        raise PatchboardError("n-pairs", "mean ablation over the other prompts needs at least 2 pairs; ask for more pairs, or --mean-set corrupt")
    over_corrupt = corruption == "mean" and mean_set == "corrupt"
    final = FINAL if FINAL in lm.bridge.hook_dict else f"blocks.{lm.n_layers - 1}.hook_resid_post"
    toks = torch.cat([clean_tok, ds.corrupt_tokens.to(dev)]) if over_corrupt else clean_tok
    same_prefix = _same_prefix(ds, corruption, mean_set)
    names = set(clean_hooks) | set(corrupt_hooks) | {final}
    logits, cache, kv = _run(lm, toks, names, None, kv_prefix=same_prefix)
    clean_logits = logits[:n]
    clean_cache = {k: cache[k][:n] for k in clean_hooks}

    def ablated(name: str) -> torch.Tensor:
        return ablate(cache[name][:n], corruption, cache[name][n:] if over_corrupt else None, same_prefix,
                      pattern=name.endswith(PATTERN_HOOKS))

    corrupt_cache = {k: ablated(k) for k in corrupt_hooks}
    # The ablated run: the readout of the final residual stream ablated alike.
    bridge = lm.bridge
    last = ablated(final)[:, -1, :]
    with model_lock(bridge):
        corrupt_logits = final_logits(bridge, logit_softcap(bridge), last).float()
    prefix_kv = PrefixKV([k[:n] for k in kv.keys], [v[:n] for v in kv.values]) if kv is not None else None
    del cache
    return _finish(ds, dev, 1, clean_cache, corrupt_cache, clean_logits, corrupt_logits, None, same_prefix, prefix_kv)


def ablate(acts: torch.Tensor, corruption: str, over: torch.Tensor | None = None, same_prefix: int = 0,
           pattern: bool = False) -> torch.Tensor:
    """The ablated value of one activation ``acts`` [n, pos, ...] (an attention
    pattern [n, head, query, key] with ``pattern``), per row: zeros
    (``zero``), the mean over the other rows (``mean``, leave-one-out) or over
    ``over`` [m, pos, ...] (``mean`` over a reference set). Means are summed in
    float64; positions before ``same_prefix`` keep the activation itself,
    which every prompt shares there."""
    if corruption == "zero":
        return torch.zeros_like(acts)
    x = acts.double()
    if over is not None:
        out = over.double().mean(0, keepdim=True).expand_as(x)
    else:
        n = x.shape[0]
        out = (x.sum(0, keepdim=True) - x) / (n - 1)
    out = out.to(acts.dtype).contiguous()
    if same_prefix > 0:
        if pattern:
            out[:, :, :same_prefix] = acts[:, :, :same_prefix]
        else:
            out[:, :same_prefix] = acts[:, :same_prefix]
    return out


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
    mean_set: str = "others",
) -> Prepared:
    """The activation engine's inputs from :func:`reference_runs`: the
    residual stream of the run being patched, the source run's patched
    activations (under mean and zero ablation: their ablated values) and the
    keys/values of the shared prefix."""
    base_is_clean = direction == "noise"
    resid = set(resid_hooks(lm.n_layers))
    if corruption in ABLATIONS:
        if not base_is_clean:
            raise PatchboardError("direction", f"{corruption} ablation is a noising intervention; use --direction noise")
        clean_hooks, corrupt_hooks = resid, set(source_hooks)
    else:
        clean_hooks = resid if base_is_clean else set(source_hooks)
        corrupt_hooks = set(source_hooks) if base_is_clean else resid
    runs = reference_runs(lm, ds, corruption, clean_hooks, corrupt_hooks, noise_scale, noise_samples, seed, mean_set)
    base_cache, src_cache = (runs.clean, runs.corrupt) if base_is_clean else (runs.corrupt, runs.clean)
    inputs = EngineInputs(
        base_resid=[base_cache[h] for h in resid_hooks(lm.n_layers)],
        source={h: src_cache[h] for h in source_hooks},
        answer=runs.answer,
        counter=runs.counter,
        clean_logprobs=runs.clean_logprobs,
        corrupt_logprobs=runs.corrupt_logprobs if base_is_clean else None,
        base_stats=runs.clean_stats if base_is_clean else runs.corrupt_stats,
        same_prefix=runs.same_prefix,
        lm=lm,
        prefix_kv=runs.prefix_kv,
    )
    return Prepared(inputs=inputs, clean=runs.clean_stats, corrupt=runs.corrupt_stats, sigma=runs.sigma, rows=runs.rows,
                    corrupt_logprobs=runs.corrupt_logprobs)


def resample_index(n: int, K: int, seed: int) -> torch.Tensor:
    """[n*K] (pair-major): for pair i's k-th sample, the index of another pair
    of the dataset (never i itself), drawn uniformly and seeded."""
    if n < 2:
        raise PatchboardError("n-pairs", "resample needs at least 2 pairs (each prompt's corrupted input is another prompt of the dataset); ask for more pairs")
    g = torch.Generator().manual_seed(int(seed))
    off = torch.randint(1, n, (n, K), generator=g)
    return ((torch.arange(n)[:, None] + off) % n).reshape(-1)


def _same_prefix(ds: Dataset, corruption: str, mean_set: str = "others") -> int:
    """First position at which any row's clean and corrupted runs can differ
    (under mean ablation: where the prompts the mean is taken over, and the
    prompt itself, can differ; under zero ablation: 0)."""
    if corruption == "gn":
        return min(min(kp) for kp in ds.key_positions)
    if corruption == "zero":
        return 0
    if corruption in ("resample", "mean"):
        toks = ds.clean_tokens if not (corruption == "mean" and mean_set == "corrupt") else torch.cat([ds.clean_tokens, ds.corrupt_tokens])
        diff = (toks != toks[:1]).any(0).nonzero()
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
