"""Circuit evaluation (patching.methods.circuit) on tiny random models: the
all-edges and empty identities, agreement with G_H (hypothesis evaluation),
with the exact path patch of one edge, with TransformerLens 4.3's
``faithfulness()``, and batching that changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patching.core.data import build_dataset
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.engine.readout import row_stats
from patching.methods import circuit
from patching.methods import hypothesis
from patching.methods import paths
from patching.methods.circuit_graph import EdgeIndex, path_circuit
from patching.methods.graph import Geometry, Node, Receiver
from patching.methods.hypothesis_format import Edge
from patching.methods.path_runs import prepare_runs

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
    Pair("When Kate and David went to the school, David gave a ring to", "When Kate and David went to the school, Kate gave a ring to", " Kate", " David"),
)
#: Pairs whose final token differs too, so embed -> logits carries something.
LAST = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink for", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book for", " Anna", " Peter"),
)


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    return tiny_model("gpt2", n_positions=64, initializer_range=0.02, scale=3.0)


@pytest.fixture(scope="module")
def llama_mha(tiny_model):
    """A tiny Llama without grouped-query attention (TransformerLens's edges refuse GQA)."""
    return tiny_model("llama", max_position_embeddings=64, initializer_range=0.02, scale=4.0, num_key_value_heads=4)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request, tiny_llama, gpt2):
    lm = tiny_llama if request.param == "llama" else gpt2
    return _setup(lm, PAIRS)


def _setup(lm, pairs, **kw):
    spec = Spec(model=lm.name, task=None, pairs=pairs, **kw).validated()
    ds = build_dataset(list(pairs), lm.tokenizer, spec.corruption)
    runs = prepare_runs(lm, ds, spec)
    return lm, spec, ds, runs, circuit.prepare(lm, ds, spec, runs)


def _faithfulness(cr, st) -> np.ndarray:
    gap = float(cr.clean.ld.double().mean() - cr.empty.ld.double().mean())
    return ((st.ld.double().mean(-1) - cr.empty.ld.double().mean()) / gap).numpy()


def _random_masks(n_edges: int, fractions, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([rng.random(n_edges) < p for p in fractions])


def test_all_edges_is_the_clean_run_and_no_edge_the_ablated_run(setup):
    lm, spec, ds, runs, cr = setup
    masks = np.zeros((2, cr.ix.n_edges), dtype=bool)
    masks[1] = True
    st, pruned = circuit.evaluate(cr, masks)
    f = _faithfulness(cr, st)
    assert abs(f[1] - 1.0) < 1e-5 and f[0] == 0.0
    # The references are the runs themselves: every edge = the clean run, no edge = the corrupted run, exactly.
    assert torch.allclose(st.ld[1], runs.clean_stats.ld, atol=1e-5)
    assert torch.allclose(st.kl[1], torch.zeros_like(st.kl[1]), atol=1e-5)
    assert torch.equal(st.ld[0], cr.empty.ld) and torch.allclose(cr.empty.ld, runs.corrupt_stats.ld, atol=1e-6)
    assert pruned[0].sum() == 0 and pruned[1].all()


def test_circuits_equal_hypothesis_gh_and_batching_changes_nothing(setup):
    """G_H of the same edges (patching.methods.hypothesis, layer by layer, one
    circuit at a time) gives the same logits; stacking circuits, row blocks and
    the shared-prefix cache do not change a number."""
    lm, spec, ds, runs, cr = setup
    ix = cr.ix
    masks = _random_masks(ix.n_edges, (0.1, 0.3, 0.6, 0.9))
    st, _ = circuit.evaluate(cr, masks, max_circuits=3)
    one, _ = circuit.evaluate(cr, masks, max_circuits=1)
    assert torch.allclose(st.ld, one.ld, atol=1e-6)
    full = circuit.CircuitRuns(cr.runs, ix, 0, None, None, cr.clean, cr.empty)  # every position run, no prefix cache
    assert cr.offset > 0
    no_prefix, _ = circuit.evaluate(full, masks)
    assert torch.allclose(st.ld, no_prefix.ld, atol=1e-4)
    for i, m in enumerate(masks):
        edges = [Edge(ix.senders[ix.sender[e]], ix.receivers[ix.receiver[e]]) for e in np.flatnonzero(m)]
        with torch.no_grad():
            final = hypothesis.gh_final_resid(runs, edges, {}, slice(0, runs.rows))
            ref = row_stats(runs.runner.final_logits(final[:, -1]), runs.answer, runs.counter, runs.clean_logprobs)
        assert torch.allclose(st.ld[i], ref.ld, atol=1e-4), i
        assert torch.allclose(st.logprob[i], ref.logprob, atol=1e-4), i


@pytest.mark.parametrize("sender,receiver", [
    ("head 1.2", "logits"), ("head 0.1", "q 2.3"), ("mlp 0", "k 1.1"), ("embed", "mlp 1"), ("head 1.0", "mlp 1"), ("mlp 1", "v 2.0"),
])
def test_one_edge_with_clean_sender_equals_its_exact_path_patch(setup, sender, receiver):
    """path_circuit(s, r): the edge, every edge upstream of s (s carries its
    clean value) and every edge downstream of r's node (the change propagates
    as in a continued run) equals paths.sweep with that one sender and receiver."""
    lm, spec, ds, runs, cr = setup
    geo = runs.geo
    kind, _, where = sender.partition(" ")
    s = Node("embed") if kind == "embed" else Node(kind, *map(int, where.split("."))) if kind == "head" else Node("mlp", int(where))
    port, _, at = receiver.partition(" ")
    if port == "logits":
        r = Receiver("logits", geo.n_layers)
    elif port == "mlp":
        r = Receiver("mlp", int(at))
    else:
        layer, head = map(int, at.split("."))
        r = Receiver(port, layer, head if port == "q" else geo.group(head))
    st, _ = circuit.evaluate(cr, path_circuit(s, r, geo)[None])
    res = paths.sweep(spec, lm, ds, r.label(geo), senders=str(s), runs=runs)
    assert abs(_faithfulness(cr, st)[0] - float(res.table["logit_diff"].iloc[0])) < 1e-4 * max(1.0, abs(float(res.table["logit_diff"].iloc[0])))


def test_the_single_edge_embed_to_logits_is_its_path_patch(tiny_llama):
    lm, spec, ds, runs, cr = _setup(tiny_llama, LAST)
    geo = runs.geo
    m = np.zeros(cr.ix.n_edges, dtype=bool)
    m[cr.ix.edge(Node("embed"), Receiver("logits", geo.n_layers))] = True
    st, _ = circuit.evaluate(cr, m[None])
    res = paths.sweep(spec, lm, ds, "logits", senders="embed", runs=runs)
    exact = float(res.table["logit_diff"].iloc[0])
    assert exact != 0.0 and abs(_faithfulness(cr, st)[0] - exact) < 1e-5


@pytest.mark.parametrize("arch,ablation", [("gpt2", "str"), ("llama_mha", "str"), ("gpt2", "mean")])
def test_faithfulness_equals_transformer_lens(arch, ablation, gpt2, llama_mha):
    """TransformerLens 4.3's faithfulness() ablates every (writer, reader,
    position) edge outside the circuit with the corrupted run's writer, or
    with its mean over held-out prompts; a Patchboard edge is that edge at
    every position, and ``mean`` is the mean over the other prompts
    (leave-one-out), so TL gets the other prompts as its calibration set.
    Under mean ablation the circuit is pruned first (TL does not prune: an
    unreached sender would carry its recomputed value there). Per pair, within 1e-4."""
    from transformer_lens.tools.analysis.attribution_patching import FaithfulnessConfig
    from transformer_lens.tools.analysis.attribution_patching import faithfulness

    from patching.methods.circuit_graph import prune
    from tests.helpers.transformer_lens import tl_edges

    lm = gpt2 if arch == "gpt2" else llama_mha
    kw = {} if ablation == "str" else {"corruption": "mean", "direction": "noise"}
    _, spec, ds, runs, cr = _setup(lm, PAIRS, **kw)
    ix, seq = cr.ix, ds.seq_len
    masks = _random_masks(ix.n_edges, (0.7,), seed=3)
    if ablation == "mean":
        masks = prune(masks, ix)
    st, _ = circuit.evaluate(cr, masks)

    for c, m in enumerate(masks):
        kept = tl_edges(ix, seq, np.flatnonzero(m))
        for i in range(ds.n):
            a, b = int(ds.answer_ids[i]), int(ds.counter_ids[i])
            extra = {} if ablation == "str" else {
                "config": FaithfulnessConfig(ablation="mean"),
                "mean_tokens": torch.cat([ds.clean_tokens[:i], ds.clean_tokens[i + 1:]])}
            tl = faithfulness(lm.bridge, ds.clean_tokens[i:i + 1], ds.corrupt_tokens[i:i + 1],
                              lambda logits: logits[0, -1, a] - logits[0, -1, b], kept, **extra)
            if ablation == "str":
                ours = float((st.ld[c, i] - cr.empty.ld[i]) / (cr.clean.ld[i] - cr.empty.ld[i]))
                assert abs(tl.recovered - ours) < 1e-4 * max(1.0, abs(ours)), (c, i, tl.recovered, ours)
            else:
                # TL normalises by the corrupted prompt's run; the ablated metric itself is what both define alike.
                ablated = tl.recovered * (tl.full_metric - tl.corrupt_metric) + tl.corrupt_metric
                assert abs(ablated - float(st.ld[c, i])) < 1e-4 * max(1.0, abs(ablated)), (c, i, ablated, float(st.ld[c, i]))
                assert abs(tl.full_metric - float(cr.clean.ld[i])) < 1e-4


def test_gqa_key_receiver_is_the_groups_input(tiny_llama):
    """On a grouped-query model a k edge changes every query head of its
    group: the circuit of embed -> L.g:k plus the group's heads' out-edges
    moves the output, and both heads of the group are computed."""
    lm, spec, ds, runs, cr = _setup(tiny_llama, PAIRS)
    geo = runs.geo
    assert geo.gqa
    ix = cr.ix
    m = np.zeros(ix.n_edges, dtype=bool)
    m[ix.edge(Node("embed"), Receiver("k", 1, 0))] = True
    for h in geo.group_heads(0):
        m[ix.edge(Node("head", 1, h), Receiver("logits", geo.n_layers))] = True
    st, pruned = circuit.evaluate(cr, m[None])
    assert pruned[0].sum() == 1 + geo.group_size
    assert not torch.allclose(st.ld[0], cr.empty.ld)


def test_curves_and_circuits_are_stored_bundled_and_agree(tiny_llama, tmp_path):
    """A curve through the service: its ends are exact, each top-n row is the
    circuit evaluated on its own, the scores were taken on held-out prompts,
    and both results travel in a bundle like any result."""
    from patching import bundles, service
    from patching.methods.circuit_curve import circuit_at
    from patching.methods.circuit_graph import canonical_text
    from patching.store import Store
    from tests.helpers import registered

    store = Store(tmp_path / "a.sqlite")
    spec = Spec(model=tiny_llama.name, task="ioi", n_pairs=4)
    with registered(tiny_llama):
        curve = service.run(service.CircuitCurve(spec, points=5, random=3), store, lm=tiny_llama)
        top = curve.table[curve.table["circuit"] == "top"].set_index("n_edges")
        assert abs(top["logit_diff"].iloc[-1] - 1.0) < 1e-5 and len(curve.table) == len(top) * 4
        assert curve.meta["score_seed"] == 1 and curve.meta["score_prompts"] >= 1
        geo = Geometry.of(tiny_llama)
        n = int(top.index[2])
        one = service.run(service.CircuitEval(spec, canonical_text(circuit_at(curve, n, geo), geo)), store, lm=tiny_llama)
        assert abs(float(one.table["logit_diff"].iloc[0]) - float(top.loc[n, "logit_diff"])) < 1e-6
        other = Store(tmp_path / "b.sqlite")
        assert bundles.import_bundle(other, bundles.bundle_bytes(store, [curve.key, one.key])).added == 2
        again = service.lookup(service.CircuitCurve(spec, points=5, random=3), other)
        assert again is not None and again.table.equals(curve.table) and again.per_prompt.equals(curve.per_prompt)


@pytest.mark.parametrize("corruption", ["gn", "resample"])
def test_sampled_corruptions_keep_the_identities(tiny_llama, corruption):
    """Rows are pairs x samples: every edge is still the clean run, no edge the
    corrupted one, and a circuit is still G_H of its edges."""
    lm, spec, ds, runs, cr = _setup(tiny_llama, PAIRS, corruption=corruption, noise_samples=2)
    assert cr.rows == 2 * len(PAIRS)
    ix = cr.ix
    masks = np.concatenate([np.zeros((1, ix.n_edges), dtype=bool), np.ones((1, ix.n_edges), dtype=bool), _random_masks(ix.n_edges, (0.5,))])
    st, _ = circuit.evaluate(cr, masks)
    assert torch.allclose(st.ld[1], runs.clean_stats.ld, atol=1e-5) and torch.allclose(st.ld[0], runs.corrupt_stats.ld, atol=1e-6)
    ix_edges = [Edge(ix.senders[ix.sender[e]], ix.receivers[ix.receiver[e]]) for e in np.flatnonzero(masks[2])]
    with torch.no_grad():
        final = hypothesis.gh_final_resid(runs, ix_edges, {}, slice(0, runs.rows))
        ref = row_stats(runs.runner.final_logits(final[:, -1]), runs.answer, runs.counter, runs.clean_logprobs)
    assert torch.allclose(st.ld[2], ref.ld, atol=1e-4)
