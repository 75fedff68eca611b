"""Attribution patching (``method`` = atp, atp_star, ig): the estimates
against exact patching, finite differences and TransformerLens's
``attribution_patch`` (the setting and its key: tests/unit/core/test_spec_method.py).

The tiny Llama has grouped-query attention (4 query heads, 2 KV heads), so
every estimate here is checked on a GQA model too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patching.core.data import build_dataset
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.methods.activation import compute as exact
from patching.engine.readout import STATS
from patching.methods.attribution import compute as attribute

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
    Pair("When Kate and David went to the school, David gave a ring to", "When Kate and David went to the school, Kate gave a ring to", " Kate", " David"),
)
METRICS = ("logit_diff", "prob", "logprob", "kl")


def _spec(lm, **kw) -> Spec:
    return Spec(model=lm.name, task=None, pairs=PAIRS, **kw)


def _grad_pass(lm, embed: torch.Tensor, hooks, ref, drops=()):
    """The gradient passes on whole sequences from resid_pre 0 = ``embed``:
    (base activations, {stat: {hook: gradient}}, [per dropped layer: the same
    with that layer dropped]), every statistic of ``STATS``."""
    from patching.engine.blocks import BlockRunner
    from patching.methods import atp_star, gradients

    runner = BlockRunner(lm, embed.shape[1])
    got: dict[str, torch.Tensor] = {}
    acts_out: dict[str, torch.Tensor] = {}

    def on_grad(h, g, acts, prob):
        got[h] = g
        acts_out[h] = acts[h].clone()

    if drops:
        atp_star.graddrop_passes(lm, runner.calls, 0, embed, hooks, ref, STATS, list(drops), on_grad)
    else:
        gradients.passes(lm, runner.calls, 0, embed, hooks, ref, STATS, on_grad)
    F = len(STATS)
    res = [{f: {h: got[h][s * F + j] for h in hooks} for j, f in enumerate(STATS)} for s in range(1 + len(drops))]
    return acts_out, res[0], res[1:]


# ---------------------------------------------------------------- a linear case


@pytest.fixture(scope="module")
def linear_lm(tiny_model):
    """A tiny GQA Llama whose last layer reaches the logits linearly: its MLP
    writes zero and the final norm is the identity, so the logit difference
    is linear in every last-layer head and attention output."""
    hf = tiny_model.hf("llama")
    with torch.no_grad():
        hf.model.layers[-1].mlp.down_proj.weight.zero_()
    hf.model.norm.forward = lambda x: x
    from patching.core.models import from_hf

    return from_hf(hf, tiny_model.tokenizer, "tiny-linear")


@pytest.fixture(scope="module")
def ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", ["head", "head_by_pos", "attn_out"])
def test_atp_equals_exact_where_the_metric_is_linear(linear_lm, ds, component, direction):
    spec = _spec(linear_lm, component=component, direction=direction)
    ex = exact(spec, linear_lm, ds).table
    last = ex.layer == linear_lm.n_layers - 1
    assert float(ex.logit_diff[last].abs().max()) > 1e-2  # something to estimate
    for method in ("atp", "atp_star", "ig"):
        est = attribute(spec.with_(method=method), linear_lm, ds).table
        assert list(est.columns) == list(ex.columns) and len(est) == len(ex)
        assert est["measured"].equals(ex["measured"])  # the same no-op cells (positions both prompts share)
        diff = float((est.logit_diff[last] - ex.logit_diff[last]).abs().max())
        assert diff < 1e-5, (method, diff)
        # Earlier layers reach the logits through nonlinear blocks: not equal.
    est = attribute(spec.with_(method="atp"), linear_lm, ds).table
    assert float((est.logit_diff[~last] - ex.logit_diff[~last]).abs().max()) > 1e-3


@pytest.mark.parametrize(("component", "direction"), [("head_v", "noise"), ("head_v_by_pos", "denoise"),
                                                  ("head_pattern", "denoise"), ("head_pattern_by_pos", "noise")])
def test_atp_equals_exact_for_values_and_patterns_where_linear(linear_lm, ds, component, direction):
    """A last-layer head's output is linear in its values and its pattern (z =
    pattern x values), so atp is exact there; values per key/value group (GQA)."""
    spec = _spec(linear_lm, component=component, direction=direction)
    ex = exact(spec, linear_lm, ds).table
    est = attribute(spec.with_(method="atp"), linear_lm, ds).table
    assert len(est) == len(ex) and (est[["layer", "head", "pos"]].equals(ex[["layer", "head", "pos"]]))
    last = ex.layer == linear_lm.n_layers - 1
    assert float(ex.logit_diff[last].abs().max()) > 1e-2
    assert float((est.logit_diff[last] - ex.logit_diff[last]).abs().max()) < 1e-5
    if component.startswith("head_v"):
        assert int(ex["head"].max()) == 1  # two key/value groups


@pytest.mark.parametrize(("component", "direction"), [("head_q", "noise"), ("head_q_by_pos", "denoise"),
                                                  ("head_k", "denoise"), ("head_k_by_pos", "noise")])
def test_atp_star_qk_fix_is_exact_through_the_softmax(linear_lm, ds, component, direction):
    """Queries and keys reach a last-layer head's output through the softmax
    only. AtP*'s QK fix recomputes the softmax exactly (per key position for
    ``head_k_by_pos``, per key/value group on this GQA model), so where the
    pattern reaches the metric linearly it equals exact patching; plain atp
    linearises the saturated softmax and misses by more than the effects."""
    spec = _spec(linear_lm, component=component, direction=direction)
    ex = exact(spec, linear_lm, ds).table
    last = ex.layer == linear_lm.n_layers - 1
    err = {}
    for method in ("atp", "atp_star"):
        est = attribute(spec.with_(method=method), linear_lm, ds).table
        assert len(est) == len(ex)
        err[method] = float((est.logit_diff[last] - ex.logit_diff[last]).abs().max())
    assert err["atp_star"] < 1e-5, err
    assert err["atp"] > 0.3 * float(ex.logit_diff[last].abs().max()) > 1e-2, err


def test_suffix_path_gives_the_full_sequence_estimates(tiny_llama, ds, monkeypatch):
    """The passes run only the positions after the prefix both prompts share;
    forcing whole sequences changes nothing (patterns, QK fix, ig included)."""
    from patching.methods import attribution

    cases = [("head_k_by_pos", "atp_star", "denoise"), ("head_pattern_by_pos", "atp", "noise"), ("resid_pre", "ig", "denoise"),
             ("head_q", "atp_star", "noise")]
    fast = {c: attribute(_spec(tiny_llama, component=c[0], method=c[1], direction=c[2]), tiny_llama, ds).table for c in cases}
    monkeypatch.setattr(attribution, "_suffix_path", lambda lm, inp: None)
    for c in cases:
        full = attribute(_spec(tiny_llama, component=c[0], method=c[1], direction=c[2]), tiny_llama, ds).table
        for m in METRICS:
            assert float((full[m] - fast[c][m]).abs().max()) < 1e-5, (c, m)
        assert float(full.logit_diff.abs().max()) > 1e-3


def test_graddrop_matches_zeroing_each_layer_by_hand(tiny_llama, ds):
    """GradDrop's batched slots equal plain backward passes with layer l's
    attention and MLP outputs' gradient zeroed by a tensor hook."""
    lm = tiny_llama
    from patching.engine.reference import input_embeddings

    embed = input_embeddings(lm, ds.corrupt_tokens)
    with torch.no_grad():
        clean_lp = torch.log_softmax(lm.bridge(ds.clean_tokens)[:, -1, :].float(), -1)
    ref = (ds.answer_ids, ds.counter_ids, clean_lp, clean_lp)
    hooks = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.2.attn.hook_pattern"]
    _, plain, dropped = _grad_pass(lm, embed, hooks, ref, drops=[0, 1, 2])
    for slot, layer in enumerate([0, 1, 2]):
        deltas = {}

        def add(name):
            def hook(act, hook=None):
                deltas[name] = torch.zeros_like(act, requires_grad=True)
                return act + deltas[name]

            return hook

        def cut(act, hook=None):
            y = act * 1.0
            y.register_hook(torch.zeros_like)
            return y

        fwd = [(h, add(h)) for h in hooks] + [(f"blocks.{layer}.hook_{x}_out", cut) for x in ("attn", "mlp")]
        with torch.enable_grad(), lm.bridge.hooks(fwd_hooks=fwd):
            logits = lm.bridge(ds.corrupt_tokens)[:, -1, :].float()
            ld = (logits.gather(1, ds.answer_ids[:, None]) - logits.gather(1, ds.counter_ids[:, None])).sum()
            grads = torch.autograd.grad(ld, [deltas[h] for h in hooks], allow_unused=True)
        for h, g in zip(hooks, grads):
            want = g if g is not None else torch.zeros_like(deltas[h])
            assert torch.allclose(dropped[slot]["ld"][h], want, atol=1e-5), (layer, h)
            if _layer_of(h) == layer and not h.endswith("resid_pre"):
                assert float(want.abs().max()) == 0.0  # the dropped layer's own activations
    assert any(not torch.allclose(dropped[0]["ld"][h], plain["ld"][h]) for h in hooks[:1])


def _layer_of(hook: str) -> int:
    return int(hook.split(".")[1])


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_read_out_gradients_from_known_log_probs_equal_autograd(tiny_llama, monkeypatch, direction):
    """atp forms d stat / d logits in closed form from the base run's known
    log-probs; on answer *sets* (greater-than: every year after YY) too, it
    equals autograd through the unembedding and the read-out."""
    from patching.methods import gradients
    from patching.service import dataset_for

    spec = Spec(model=tiny_llama.name, task="greater_than", n_pairs=3, component="mlp_out", method="atp", direction=direction)
    gt = dataset_for(spec, tiny_llama)
    assert gt.answer_sets is not None
    fast = attribute(spec, tiny_llama, gt).table
    monkeypatch.setattr(gradients, "known_head", lambda *a, **k: None)
    slow = attribute(spec, tiny_llama, gt).table
    for m in METRICS:
        assert float((fast[m] - slow[m]).abs().max()) <= 1e-5 * max(1.0, float(slow[m].abs().max())), m
    assert float(slow.prob.abs().max()) > 0


# ---------------------------------------------------------------- gradients


@pytest.fixture
def float64_throughout(monkeypatch):
    """A float64 model computed in float64 everywhere. HF's Llama RMSNorm and
    the bridge's attention softmax upcast to float32 (no-ops for float32 and
    bfloat16 models, rounding in a float64 one); a statistic rounded to float32
    (~1e-6 here) divided by a finite-difference step of 2e-3 was the whole
    tolerance, and the rounding's bits follow the CPU's vector kernels
    (``ATEN_CPU_CAPABILITY=avx2`` gives CI's -0.00146 at hook_q / logprob)."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    from transformers.models.llama import modeling_llama

    rms_norm, softmax = modeling_llama.LlamaRMSNorm.forward, AttentionBridge._masked_softmax

    def rms_norm64(self, x):
        if x.dtype != torch.float64:
            return rms_norm(self, x)
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def softmax64(self, scores, dtype=None):
        return softmax(self, scores, dtype=None if scores.dtype == torch.float64 else dtype)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm64)
    monkeypatch.setattr(AttentionBridge, "_masked_softmax", softmax64)


def test_gradients_match_finite_differences(tiny_model, ds, float64_throughout):
    """d stat / d activation from the backward pass against central
    differences of the model itself (float64 throughout), at every hook kind."""
    from patching.core.models import from_hf

    lm = from_hf(tiny_model.hf("llama").double(), tiny_model.tokenizer, "tiny-fd")
    tok = ds.corrupt_tokens
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out", "blocks.2.hook_attn_out",
             "blocks.0.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v", "blocks.2.attn.hook_pattern"]
    from patching.engine.reference import input_embeddings

    embed = input_embeddings(lm, tok)
    with torch.no_grad():
        clean_lp = torch.log_softmax(lm.bridge(ds.clean_tokens)[:, -1, :].double(), -1)
    ref = (ds.answer_ids, ds.counter_ids, clean_lp, clean_lp)
    acts, grads, _ = _grad_pass(lm, embed, hooks, ref)  # Llama: resid_pre 0 = the embeddings
    g = torch.Generator().manual_seed(0)
    for h in hooks:
        v = torch.randn(acts[h].shape, generator=g, dtype=torch.float64)

        def stats_at(step: float):
            def add(act, hook=None):
                return act + step * v.to(act.dtype)

            with torch.no_grad(), lm.bridge.hooks(fwd_hooks=[(h, add)]):
                logits = lm.bridge(tok)[:, -1, :].double()
            lp = torch.log_softmax(logits, -1)  # float64 (row_stats reads out in float32)
            a, c = ds.answer_ids[:, None], ds.counter_ids[:, None]
            lpa = lp.gather(1, a)[:, 0]
            lpc = lp.gather(1, c)[:, 0]
            return {"ld": (logits.gather(1, a) - logits.gather(1, c))[:, 0].sum(), "prob": lpa.exp().sum(), "logprob": lpa.sum(),
                    "kl": (clean_lp.exp() * (clean_lp - lp)).sum(), "kl_corrupt": (clean_lp.exp() * (clean_lp - lp)).sum(),
                    "pd": (lpa.exp() - lpc.exp()).sum()}

        # Central differences with one Richardson step: truncation O(eps^4),
        # float64 rounding ~1e-16 / eps; both far below the tolerance.
        eps = 1e-4
        s = {k: stats_at(k * eps) for k in (-1.0, -0.5, 0.5, 1.0)}
        for f in STATS:
            d1 = (s[1.0][f] - s[-1.0][f]) / (2 * eps)
            d2 = (s[0.5][f] - s[-0.5][f]) / eps
            fd = float((4 * d2 - d1) / 3)
            an = float((grads[f][h].double() * v).sum())
            # Relative to |g| |v|, the size of the terms the directional
            # derivative sums (it can cancel to near 0: hook_q / logprob is
            # 3e-6 of it); the backward pass reads out in float32, which
            # bounds its own error by ~6e-8 of that.
            scale = float(grads[f][h].double().norm() * v.norm())
            assert scale > 0, (h, f)  # the statistic reads this hook
            assert abs(fd - an) <= 1e-6 * scale, (h, f, fd, an, scale)


# ---------------------------------------------------------------- integrated gradients


def test_ig_approaches_exact_with_many_steps(tiny_llama, ds):
    """Input-path IG is the exact effect for a component the path moves
    alone: the embeddings (resid_pre at layer 0; the pairs differ at one
    position). Nonlinear in every metric; atp misses, ig converges."""
    spec = _spec(tiny_llama, component="resid_pre", direction="denoise")
    ex = exact(spec, tiny_llama, ds).table
    first = ex.layer == 0
    atp = attribute(spec.with_(method="atp"), tiny_llama, ds).table
    errors = {}
    for steps in (2, 64):
        for rule in ("midpoint", "left"):
            ig = attribute(spec.with_(method="ig", ig_steps=steps, ig_rule=rule), tiny_llama, ds).table
            errors[steps, rule] = max(float((ig[m][first] - ex[m][first]).abs().max()) for m in METRICS)
    atp_err = max(float((atp[m][first] - ex[m][first]).abs().max()) for m in METRICS)
    assert atp_err > 1e-2, atp_err  # the case is nonlinear
    scale = max(1.0, float(ex.logit_diff[first].abs().max()))
    # The midpoint rule's error falls as 1/m^2; the left Riemann sum's (EAP-IG's reference) as 1/m.
    assert errors[64, "midpoint"] < errors[2, "midpoint"] and errors[64, "midpoint"] < 1e-3 * scale, (errors, atp_err)
    assert errors[64, "left"] < errors[2, "left"] and errors[64, "left"] < 2e-2 * scale, (errors, atp_err)


# ---------------------------------------------------------------- TransformerLens parity


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_node_scores_match_transformer_lens_attribution_patch(request, arch, ds):
    """TL's node score (clean - corrupt) . d LD / d a at the corrupted run,
    averaged over pairs, is our denoise atp ``logit_diff`` times the
    clean-corrupt gap (we normalise by it): heads by position (attn_head_out),
    mlp_out by position, and, for Llama (no position embedding), resid_pre at
    layer 0 (embed)."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    lm = request.getfixturevalue(arch)
    answer, counter = ds.answer_ids, ds.counter_ids
    pair = {"i": 0}

    def metric(logits):
        i = pair["i"]
        return logits[0, -1, answer[i]] - logits[0, -1, counter[i]]

    tl_scores = {}
    with torch.enable_grad():
        for i in range(ds.n):  # one pair at a time: its own answer tokens
            pair["i"] = i
            res = attribution_patch(lm.bridge, ds.clean_tokens[i:i + 1], ds.corrupt_tokens[i:i + 1], metric)
            for node, s in res.node_scores.items():
                tl_scores[node] = tl_scores.get(node, 0.0) + s / ds.n
    worst = 0.0
    for component, kind in (("head_by_pos", "attn_head_out"), ("mlp_out", "mlp_out"), ("resid_pre", "embed")):
        if kind == "embed" and arch == "tiny_gpt2":
            continue
        r = attribute(_spec(lm, component=component, method="atp"), lm, ds)
        gap = r.baselines["clean_logit_diff"] - r.baselines["corrupt_logit_diff"]
        n = 0
        for row in r.table.itertuples():
            if kind == "embed" and row.layer != 0:
                continue
            key = [k for k in tl_scores if k.kind == kind and k.position == row.pos
                   and (kind == "embed" or k.layer == row.layer) and (kind != "attn_head_out" or k.head == row.head)]
            assert len(key) == 1
            worst = max(worst, abs(row.logit_diff * gap - tl_scores[key[0]]))
            n += 1
        assert n > 0
    assert worst < 1e-4, worst


# ---------------------------------------------------------------- the service


def test_service_runs_attribution_with_gradients_and_stores_it(tiny_llama, tmp_path):
    from patching import service
    from patching.store import Store

    store = Store(tmp_path / "s.sqlite")
    spec = _spec(tiny_llama, component="head", method="atp")
    res = service.run(spec, store=store, lm=tiny_llama)
    assert not res.from_store and res.meta["method"] == "atp"
    again = service.run(spec, store=store, lm=tiny_llama)
    assert again.from_store and again.table.equals(res.table)
    ex = service.run(spec.with_(method="exact"), store=store, lm=tiny_llama)
    assert not ex.from_store  # a different key
    assert service.key_of(spec, tiny_llama.fingerprint) != service.key_of(spec.with_(method="exact"), tiny_llama.fingerprint)
    corr = np.corrcoef(res.table.logit_diff.to_numpy(), ex.table.logit_diff.to_numpy())[0, 1]
    assert float(corr) > 0.5
