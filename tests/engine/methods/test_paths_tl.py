"""Parity with TransformerLens 4.3 on tiny models: the ``tl_direct`` form
against ``transformer_lens.patching.get_act_patch_direct_path`` (one receiver
per run), and EAP against ``attribution_patch(..., granularity="edge")``
(node and edge scores), for every port each supports: q, k and v on a
tiny GPT-2 and on a Llama without grouped-query attention, q on the
grouped-query tiny Llama (TransformerLens refuses k and v there, and edges)."""

from __future__ import annotations

import pytest
import torch

from patching.core.data import build_dataset
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.methods import edges as edge_patching
from patching.methods import path_request, path_runs, paths

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
)
TOL = 1e-4


@pytest.fixture(scope="module")
def models(tiny_model):
    return {
        "gpt2": tiny_model("gpt2", name="tiny-tl-gpt2", n_positions=64, initializer_range=0.02, scale=3.0),
        "llama_gqa": tiny_model("llama", name="tiny-tl-gqa", max_position_embeddings=64, initializer_range=0.02, scale=4.0),
        "llama_mha": tiny_model("llama", name="tiny-tl-mha", max_position_embeddings=64, initializer_range=0.02, scale=4.0,
                                num_key_value_heads=4),
    }


@pytest.fixture(scope="module")
def ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer)


def _spec(lm, **kw) -> Spec:
    return Spec(model=lm.name, task=None, pairs=PAIRS, **kw)


def _runs(lm, ds):
    """The clean and corrupted runs, as TransformerLens is given them."""
    b = lm.bridge
    with torch.no_grad():
        clean_logits, clean_cache = b.run_with_cache(ds.clean_tokens)
        corrupt_logits, corrupt_cache = b.run_with_cache(ds.corrupt_tokens)
    return clean_logits, clean_cache, corrupt_logits, corrupt_cache


def _ld(ds, logits):
    lg = logits[:, -1].float()
    return (lg.gather(1, ds.answer_ids[:, None]) - lg.gather(1, ds.counter_ids[:, None]))[:, 0]


@pytest.mark.parametrize("arch,ports", [("gpt2", "qkv"), ("llama_mha", "qkv"), ("llama_gqa", "q")])
def test_tl_direct_is_transformer_lens_get_act_patch_direct_path(models, ds, arch, ports):
    """Every later head's q/k/v input alone, for two source heads: the
    normalised logit difference and the signed KL (TransformerLens given our
    formulas as its patching_metric), within 1e-4."""
    from transformer_lens.patching import get_act_patch_direct_path

    lm = models[arch]
    clean_logits, clean_cache, corrupt_logits, corrupt_cache = _runs(lm, ds)
    c, k = _ld(ds, clean_logits).mean(), _ld(ds, corrupt_logits).mean()
    clean_lp = torch.log_softmax(clean_logits[:, -1].float(), -1)
    kl_ref = (clean_lp.exp() * (clean_lp - torch.log_softmax(corrupt_logits[:, -1].float(), -1))).sum(-1).mean()
    metrics = {"logit_diff": lambda lg: (_ld(ds, lg).mean() - k) / (c - k),
               "kl": lambda lg: kl_ref - (clean_lp.exp() * (clean_lp - torch.log_softmax(lg[:, -1].float(), -1))).sum(-1).mean()}
    spec = _spec(lm)
    runs = path_runs.prepare_runs(lm, ds, path_request.paths_spec(spec))
    seen = []
    for src in [(0, 1), (1, 3)]:
        for port in ports:
            ours = paths.sweep(spec, lm, ds, f"{src[0] + 1}-2.*:{port}", runs=runs, senders=f"{src[0]}.{src[1]}", form="tl_direct").table
            for m, fn in metrics.items():
                with torch.no_grad():
                    tl = get_act_patch_direct_path(lm.bridge, ds.corrupt_tokens, clean_cache, corrupt_cache, fn, src[0], src[1], port,
                                                   verbose=False)
                for layer in range(src[0] + 1, lm.n_layers):
                    for head in range(lm.n_heads):
                        if port != "q" and head % (lm.n_heads // int(getattr(lm.cfg, "n_key_value_heads", None) or lm.n_heads)):
                            continue  # k/v receivers are per KV group (here: per head)
                        row = ours[ours["receiver"] == f"{layer}.{head}:{port}"]
                        assert len(row) == 1, (layer, head, port)
                        assert float(row[m].iloc[0]) == pytest.approx(float(tl[layer, head]), abs=TOL), (arch, src, layer, head, port, m)
                        seen.append(abs(float(tl[layer, head])))
    assert max(seen) > 1e-2  # real effects, not zeros


def test_tl_direct_is_direct_with_one_receiver_and_differs_with_many(models, ds):
    """With one receiver the two direct forms are one intervention; with
    receivers in two layers the joint form also carries what the earlier
    receiver changed into the later one."""
    lm = models["llama_gqa"]
    spec = _spec(lm)
    runs = path_runs.prepare_runs(lm, ds, path_request.paths_spec(spec))
    per = paths.sweep(spec, lm, ds, "1.0:q,2.3:q", runs=runs, senders="0.*", form="tl_direct").table
    assert list(per.columns[:6]) == ["component", "layer", "head", "pos", "pos_label", "receiver"] and len(per) == 8
    for recv in ("1.0:q", "2.3:q"):
        one = paths.sweep(spec, lm, ds, recv, runs=runs, senders="0.*").table
        got = per[per["receiver"] == recv].reset_index(drop=True)
        assert torch.allclose(torch.tensor(got["logit_diff"].to_numpy(float)), torch.tensor(one["logit_diff"].to_numpy(float)), atol=1e-6)
    joint = paths.sweep(spec, lm, ds, "1.0:q,2.3:q", runs=runs, senders="0.*").table
    summed = per.groupby("head")["logit_diff"].sum().to_numpy(float)
    assert abs(joint["logit_diff"].to_numpy(float) - summed).max() > 1e-4


# ---------------------------------------------------------------- EAP vs attribution_patch


@pytest.mark.parametrize("arch", ["gpt2", "llama_mha"])
def test_eap_is_transformer_lens_edge_attribution(models, ds, arch):
    """TransformerLens's ``attribution_patch(granularity="edge")`` scores each
    writer -> reader edge at one position as (clean - corrupted write) .
    d LD / d (reader input) at the corrupted run, averaged over pairs: EAP
    under ``denoise``. Its edges summed over positions are our per-edge
    scores (times the LD gap), and its node scores (each writer's edges
    summed) our sweep into every receiver; both within 1e-4."""
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    lm = models[arch]
    ex = lm.bridge
    a, c = ds.answer_ids, ds.counter_ids

    def metric(logits):
        lg = logits[0, -1]
        return lg[a[0]] - lg[c[0]]

    tl_edges, tl_nodes = {}, {}
    for i in range(ds.n):  # one pair at a time: its own answer tokens
        a, c = ds.answer_ids[i:i + 1], ds.counter_ids[i:i + 1]
        with torch.enable_grad():
            res = attribution_patch(ex, ds.clean_tokens[i:i + 1], ds.corrupt_tokens[i:i + 1], metric, EdgeAttributionConfig(granularity="edge"))
        for (w, r), v in res.edge_scores.items():
            key = (_writer(w), _reader(r))
            tl_edges[key] = tl_edges.get(key, 0.0) + v / ds.n
        for w, v in res.node_scores.items():
            tl_nodes[_writer(w)] = tl_nodes.get(_writer(w), 0.0) + v / ds.n
    spec = _spec(lm)
    runs = path_runs.prepare_runs(lm, ds, path_request.paths_spec(spec))
    gap = float(runs.clean_stats.ld.mean() - runs.corrupt_stats.ld.mean())
    ours = edge_patching.edge_table(spec, lm, ds, "*", runs=runs)
    assert len(ours) == len(tl_edges)
    worst = max(abs(float(r.logit_diff) * gap - tl_edges[(r.sender, r.receiver)]) for r in ours.itertuples())
    assert worst < TOL, worst
    assert max(abs(v) for v in tl_edges.values()) > 1e-2
    rows = edge_patching.sweep(spec, lm, ds, "*", runs=runs, method="eap").table
    for r in rows.itertuples():
        name = "embed" if r.component == "embed" else f"mlp{r.layer}" if r.component == "mlp" else f"{r.layer}.{r.head}"
        assert float(r.logit_diff) * gap == pytest.approx(tl_nodes[name], abs=TOL), name


def _writer(n) -> str:
    return "embed" if n.kind == "embed" else f"mlp{n.layer}" if n.kind == "mlp_out" else f"{n.layer}.{n.head}"


def _reader(n) -> str:
    if n.kind == "logits":
        return "logits"
    if n.kind == "mlp_in":
        return f"mlp{n.layer}"
    return f"{n.layer}.{n.head}:{n.kind[0]}"
