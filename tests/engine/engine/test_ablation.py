"""Mean and zero ablation, one definition in every method, by hand on a tiny
Llama. The patched activation of prompt i's clean run is replaced by its
mean at the same position over the other prompts (leave-one-out), over the
corrupted prompts (``mean_set="corrupt"``), or by zeros; the baselines, the
normaliser and the KL reference are the ablated run's: the readout of the
final residual stream ablated the same way. Activation sweeps, attribution
(atp), path sweeps, EAP and hypotheses are each checked against a hand
computation with hooks, and the issue's BOS check gives exactly 0."""

from __future__ import annotations

import pytest
import torch

from patching.analysis.measurement import measured
from patching.core.data import build_dataset
from patching.core.pairs import Pair
from patching.core.spec import METRICS, Spec
from patching.methods import edges as edge_patching
from patching.methods import hypothesis, path_request, path_runs, paths
from patching.methods.activation import compute
from patching.methods.attribution import compute as attribute

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
    Pair("When Kate and David went to the school, David gave a ring to", "When Kate and David went to the school, Kate gave a ring to", " Kate", " David"),
    Pair("When Lucy and Brian went to the beach, Brian gave a shell to", "When Lucy and Brian went to the beach, Lucy gave a shell to", " Lucy", " Brian"),
)
CASES = [("mean", "others"), ("mean", "corrupt"), ("zero", "others")]


@pytest.fixture(scope="module")
def ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer)


def _spec(lm, corruption, mean_set="others", **kw):
    return Spec(model=lm.name, task=None, pairs=PAIRS, corruption=corruption, mean_set=mean_set, direction="noise", **kw)


class Hand:
    """The definitions written out with hooks: the clean run, the reference
    set's run, the ablated value of any cached activation, the ablated run."""

    def __init__(self, lm, ds, corruption, mean_set):
        self.lm, self.ds, self.corruption, self.mean_set = lm, ds, corruption, mean_set
        b = lm.bridge
        with torch.no_grad():
            self.clean_logits, self.cache = b.run_with_cache(ds.clean_tokens)
            _, self.ref_cache = b.run_with_cache(ds.corrupt_tokens)
        self.ref_logits = self.readout(self.ablated("ln_final.hook_in")[:, -1])

    def ablated(self, name):
        x = self.cache[name]
        if self.corruption == "zero":
            return torch.zeros_like(x)
        if self.mean_set == "corrupt":
            return self.ref_cache[name].mean(0, keepdim=True).expand_as(x)
        return (x.sum(0, keepdim=True) - x) / (x.shape[0] - 1)  # leave-one-out

    def readout(self, last):
        b = self.lm.bridge
        with torch.no_grad():
            return b.unembed(b.ln_final(last[:, None]))[:, 0]

    def run(self, hooks):
        with torch.no_grad(), self.lm.bridge.hooks(fwd_hooks=hooks):
            return self.lm.bridge(self.ds.clean_tokens)

    def ld(self, logits):
        x = logits[..., -1, :].float() if logits.dim() == 3 else logits.float()
        return (x.gather(1, self.ds.answer_ids[:, None]) - x.gather(1, self.ds.counter_ids[:, None]))[:, 0]

    def kl_ref(self, logits):  # KL(ablated run || this run)
        x = logits[..., -1, :].float() if logits.dim() == 3 else logits.float()
        p = torch.log_softmax(self.ref_logits.float(), -1)
        return (p.exp() * (p - torch.log_softmax(x, -1))).sum(-1)

    def effects(self, patched):
        """logit_diff and kl under noising, from the definitions."""
        cl, ref = self.ld(self.clean_logits).mean(), self.ld(self.ref_logits).mean()
        return {"logit_diff": float((cl - self.ld(patched).mean()) / (cl - ref)),
                "kl": float(self.kl_ref(self.clean_logits).mean() - self.kl_ref(patched).mean())}


@pytest.mark.parametrize("corruption,mean_set", CASES)
def test_activation_sweep_by_hand(tiny_llama, ds, corruption, mean_set):
    hand = Hand(tiny_llama, ds, corruption, mean_set)
    res = compute(_spec(tiny_llama, corruption, mean_set, component="head"), tiny_llama, ds)
    b = res.baselines
    assert b["clean_logit_diff"] == pytest.approx(float(hand.ld(hand.clean_logits).mean()), abs=1e-4)
    assert b["corrupt_logit_diff"] == pytest.approx(float(hand.ld(hand.ref_logits).mean()), abs=1e-4)  # the ablated run
    assert b["corrupt_clean_kl"] == pytest.approx(float(hand.kl_ref(hand.clean_logits).mean()), abs=1e-4)
    hook, head = "blocks.1.attn.hook_z", 2
    value = hand.ablated(hook)

    def put(act, hook=None):
        act = act.clone()
        act[:, :, head] = value[:, :, head]
        return act

    want = hand.effects(hand.run([(hook, put)]))
    t = res.table
    cell = t[(t["layer"] == 1) & (t["head"] == head)].iloc[0]
    for m, v in want.items():
        assert float(cell[m]) == pytest.approx(v, abs=1e-4), m
    assert abs(want["logit_diff"]) > 1e-3 and t[list(METRICS)].notna().all().all()


@pytest.mark.parametrize("corruption,mean_set", CASES[::2])
def test_attribution_by_hand(tiny_llama, ds, corruption, mean_set):
    """atp: (ablated - clean z) . d LD / d z at the clean run, over the gap."""
    hand = Hand(tiny_llama, ds, corruption, mean_set)
    res = attribute(_spec(tiny_llama, corruption, mean_set, component="head", method="atp"), tiny_llama, ds)
    hook, layer, head = "blocks.2.attn.hook_z", 2, 1
    got = {}

    def grad_hook(act, hook=None):
        d = torch.zeros_like(act, requires_grad=True)
        got["d"] = d
        return act + d

    with torch.enable_grad(), tiny_llama.bridge.hooks(fwd_hooks=[(hook, grad_hook)]):
        (g,) = torch.autograd.grad(hand.ld(tiny_llama.bridge(ds.clean_tokens)).sum(), got["d"])
    est = float(((hand.ablated(hook) - hand.cache[hook])[:, :, head] * g[:, :, head]).sum() / ds.n)
    gap = float(hand.ld(hand.clean_logits).mean() - hand.ld(hand.ref_logits).mean())
    cell = res.table[(res.table["layer"] == layer) & (res.table["head"] == head)].iloc[0]
    assert float(cell["logit_diff"]) == pytest.approx(-est / gap, abs=1e-4)
    assert abs(est) > 1e-3
    star = attribute(_spec(tiny_llama, corruption, mean_set, component="head_q", method="atp_star"), tiny_llama, ds).table
    assert star[list(METRICS)].notna().all().all()  # AtP* takes the ablated queries too


@pytest.mark.parametrize("corruption,mean_set", CASES)
def test_path_sweep_eap_and_hypothesis_by_hand(tiny_llama, ds, corruption, mean_set):
    """Sender 1.2 into logits: the clean final residual plus the sender's
    ablated-minus-clean write (z @ W_O); EAP: that difference at the last
    position dotted with d LD / d (final residual) at the clean run. The
    hypothesis "embed -> logits": G_H's final residual is the ablated one
    plus the embedding's clean-minus-ablated write; "no path" is the
    ablated run itself."""
    hand = Hand(tiny_llama, ds, corruption, mean_set)
    spec = _spec(tiny_llama, corruption, mean_set)
    runs = path_runs.prepare_runs(tiny_llama, ds, path_request.paths_spec(spec))
    W_O = tiny_llama.bridge.blocks[1].attn.W_O[2].detach()
    z = "blocks.1.attn.hook_z"
    delta = (hand.ablated(z)[:, :, 2] - hand.cache[z][:, :, 2]) @ W_O  # [n, seq, d]
    final = hand.cache["ln_final.hook_in"][:, -1]
    want = hand.effects(hand.readout(final + delta[:, -1]))
    t = paths.sweep(spec, tiny_llama, ds, "logits", runs=runs, senders="1.2").table
    for m, v in want.items():
        assert float(t[m].iloc[0]) == pytest.approx(v, abs=1e-4), m
    assert abs(want["logit_diff"]) > 1e-3

    x = final.clone().requires_grad_(True)
    b = tiny_llama.bridge
    with torch.enable_grad():
        (g,) = torch.autograd.grad(hand.ld(b.unembed(b.ln_final(x[:, None]))[:, 0]).sum(), x)
    gap = float(hand.ld(hand.clean_logits).mean() - hand.ld(hand.ref_logits).mean())
    est = float((delta[:, -1] * g).sum() / ds.n)
    eap = edge_patching.sweep(spec, tiny_llama, ds, "logits", runs=runs, senders="1.2", method="eap").table
    assert float(eap["logit_diff"].iloc[0]) == pytest.approx(-est / gap, abs=1e-4)

    emb = hypothesis.evaluate(spec, tiny_llama, ds, {"paths": [{"sender": "embed", "receiver": "logits"}]}, runs=runs)
    r0 = "blocks.0.hook_resid_pre"
    gh = hand.readout(hand.ablated("ln_final.hook_in")[:, -1] + (hand.cache[r0] - hand.ablated(r0))[:, -1])
    lp = torch.log_softmax(hand.clean_logits[:, -1].float(), -1)
    kl = lambda logits: (lp.exp() * (lp - torch.log_softmax(logits.float(), -1))).sum(-1).mean()  # noqa: E731
    assert emb.row("kl")["aue"] == pytest.approx(float(kl(gh)), abs=1e-4)
    assert emb.row("kl")["ate"] == pytest.approx(float(kl(hand.ref_logits)), abs=1e-4)  # no path: the ablated run
    assert emb.baselines["corrupt_kl"] == pytest.approx(emb.row("kl")["ate"], abs=1e-5)


def test_bos_check_gives_exactly_zero(tiny_llama, ds):
    """The issue's check: mean ablation, senders at BOS (every prompt writes
    the same there, so the mean is the write itself): every row of every
    metric is exactly 0, a no-op listed as such, in the path sweep, EAP and
    the activation sweep; zero ablation does change BOS."""
    spec = _spec(tiny_llama, "mean")
    for receivers in ("logits", "*"):
        res = paths.sweep(spec, tiny_llama, ds, receivers, sender_positions="0")
        vals = res.table[list(METRICS)].to_numpy(float)
        assert (vals[~torch.isnan(torch.tensor(vals)).numpy()] == 0.0).all() and len(res.table) > 10
        assert res.meta["noop_cells"] == [i for i in range(len(res.table)) if res.table[list(METRICS)].iloc[i].notna().all()]
        assert not measured(res.table).loc[res.meta["noop_cells"]].any()  # zeros by construction, not measurements
        eap = edge_patching.sweep(spec, tiny_llama, ds, receivers, sender_positions="0", method="eap").table
        assert (eap[list(METRICS)].fillna(0.0).to_numpy(float) == 0.0).all()
    act = compute(_spec(tiny_llama, "mean", component="head_by_pos"), tiny_llama, ds)
    bos = act.table["pos"] == 0
    assert (act.table[bos][list(METRICS)].to_numpy(float) == 0.0).all()
    # Zeros are not the BOS write: through every receiver (attention reads BOS) it matters.
    zero = paths.sweep(_spec(tiny_llama, "zero"), tiny_llama, ds, "*", sender_positions="0")
    assert float(zero.table["logit_diff"].abs().max()) > 1e-4 and not zero.meta["noop_cells"]


@pytest.mark.parametrize("corruption", ["mean", "zero"])
def test_ablation_on_a_model_that_normalises_the_attention_output(tiny_gemma3, ds, corruption):
    """Gemma 3 (post-attention norms; a head's write through the norm,
    patching/engine/head_write.py): the path runs take the ablated values
    (the writes check reads the clean run alone: a norm of a mean is not the
    mean of the norms), a sweep and a hypothesis run, and under mean ablation
    BOS stays an exact no-op."""
    spec = _spec(tiny_gemma3, corruption)
    runs = path_runs.prepare_runs(tiny_gemma3, ds, path_request.paths_spec(spec))
    assert runs.normalised and runs.ablated
    t = paths.sweep(spec, tiny_gemma3, ds, "*", runs=runs, senders="0.*,1.*,mlp0").table
    assert t[list(METRICS)].notna().all().all() and float(t["logit_diff"].abs().max()) > 1e-4
    bos = paths.sweep(spec, tiny_gemma3, ds, "*", runs=runs, senders="0.*,mlp0", sender_positions="0").table
    assert (bos[list(METRICS)].to_numpy(float) == 0.0).all() == (corruption == "mean")
    none = hypothesis.evaluate(spec, tiny_gemma3, ds, {"paths": []}, runs=runs)
    assert none.row("kl")["ate"] == pytest.approx(float(runs.corrupt_stats.kl.mean()), rel=1e-5)  # no path: the ablated run
