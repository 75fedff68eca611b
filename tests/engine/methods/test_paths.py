"""Path patching (patching.methods.paths, patching.methods.hypothesis, the CLI): invariants on
tiny random models, agreement with TransformerLens's direct path patching and
with activation patching, the hypothesis format's errors, and the built-in
examples re-derived on the embedded model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patching import service
from patching.methods import graph
from patching.methods import hypothesis
from patching.methods import hypothesis_format
from patching.methods import path_runs
from patching.methods import paths
from patching.core.pairs import Pair
from patching.core.data import build_dataset
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.methods.activation import compute

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
)


#: conftest's tiny models (Llama: grouped-query attention, 4 query heads, 2 KV
#: heads) with HF's default init scaled up after it: effects well above float noise.
TINY = {"llama": dict(max_position_embeddings=64, initializer_range=0.02, scale=4.0),
        "gpt2": dict(n_positions=64, initializer_range=0.02, scale=3.0)}


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama", **TINY["llama"])


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    return tiny_model("gpt2", **TINY["gpt2"])


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, llama, gpt2):
    return llama if request.param == "llama" else gpt2


def _spec(**kw):
    return Spec(model="tiny", task=None, pairs=PAIRS, **kw)


@pytest.fixture(scope="module")
def ds(llama):
    return build_dataset(list(PAIRS), llama.tokenizer)


def _cells(table, component, layer=None):
    t = table[table["component"] == component]
    if layer is not None:
        t = t[(t["layer"] == layer).to_numpy(bool)]
    return t.reset_index(drop=True)


# ---------------------------------------------------------------- G_H invariants


@pytest.mark.parametrize("corruption", ["str", "gn"])
def test_all_paths_explain_everything_and_none_nothing(model, ds, corruption):
    spec = _spec(corruption=corruption, noise_samples=3)
    runs = path_runs.prepare_runs(model, ds, spec.validated())
    full = hypothesis.evaluate(spec, model, ds, {"paths": [{"sender": "*", "receiver": "*"}]}, runs=runs)
    none = hypothesis.evaluate(spec, model, ds, {"paths": []}, runs=runs)
    for d in hypothesis_format.DELTAS:
        f, n = full.row(d), none.row(d)
        assert f["ate"] > 1e-3, d
        assert f["proportion_explained"] == pytest.approx(1.0, abs=1e-4), d
        assert f["aue"] == pytest.approx(0.0, abs=1e-4 * f["ate"])
        assert n["proportion_explained"] == 0.0 and n["aue"] == n["ate"], d
        assert f["ate"] == n["ate"]
    assert full.meta["rows"] == (2 * 3 if corruption == "gn" else 2)


def test_token_loss_delta_is_mean_abs_per_token_loss_change(model, ds):
    """δ = token_loss (the paper's induction setting): the mean over every
    position of |Δ per-token loss|; for "no path" (STR, one row per pair) it
    is read straight off the per-token losses of G(x_c) and G(x_r)."""
    spec = _spec()
    none = hypothesis.evaluate(spec, model, ds, {"paths": []})
    att = none.meta["attribution"]
    lc, lr = torch.tensor(att["loss_counterfactual"]), torch.tensor(att["loss_clean"])
    want = float((lc - lr).abs().mean())
    row = none.row("token_loss")
    assert row["ate"] == pytest.approx(want, rel=1e-5) and row["ate"] > 1e-3
    assert row["aue"] == row["ate"] and row["proportion_explained"] == 0.0


def test_gh_matches_independent_computations(llama, ds):
    """Two G_H values computed another way: the direct embedding path alone is
    G(x_c)'s final residual plus the embedding difference; a head with its
    whole upstream and only its direct path to the logits is the sender sweep
    of that head into logits."""
    spec = _spec().validated()
    runs = path_runs.prepare_runs(llama, ds, spec)
    emb = hypothesis.evaluate(spec, llama, ds, {"paths": [{"sender": "embed", "receiver": "logits"}]}, runs=runs)
    final = runs.corrupt["ln_final.hook_in"] + runs.delta(graph.EMBED, "clean")
    st = paths.row_stats(runs.runner.final_logits(final[:, -1]), runs.answer, runs.counter, runs.clean_logprobs)
    assert emb.row("kl")["aue"] == pytest.approx(float(st.kl.mean()), rel=1e-5)

    hyp = {"paths": [{"sender": "*", "receiver": ["0.*:*", "mlp0", "1.2:*"]}, {"sender": "1.2", "receiver": "logits"}]}
    gh = hypothesis.evaluate(spec, llama, ds, hyp, runs=runs).row("kl")["aue"]
    sw = paths.sweep(spec, llama, ds, "logits", runs=runs, senders="1.2").table
    kl_effect = float(_cells(sw, "head")["kl"][0])  # = KL(clean||corrupt) - KL(clean||patched)
    assert gh == pytest.approx(runs.corrupt_stats.kl.mean().item() - kl_effect, rel=1e-4, abs=1e-6)


def test_gh_closure_and_dead_edges(llama, ds):
    spec = _spec()
    # A sender nothing reaches keeps its x_c value: the edge carries nothing.
    dead = hypothesis.evaluate(spec, llama, ds, {"paths": [{"sender": "2.1", "receiver": "logits"}]})
    assert dead.row("kl")["proportion_explained"] == 0.0
    assert any("no listed path reaches 2.1" in w for w in dead.meta["hypothesis_warnings"])
    # A chain and its edges written one by one are the same hypothesis.
    geo = graph.Geometry.of(llama)
    a = hypothesis_format.parse({"paths": [{"path": ["embed", "1.2:*", "2.0:k", "logits"]}]}, geo)
    b = hypothesis_format.parse({"paths": [
        {"sender": "embed", "receiver": "1.2", "input": "*"},
        {"sender": "1.2", "receiver": "2.1:k"},  # GQA: 2.1's key input is KV group 0, as 2.0's
        {"sender": "2.0", "receiver": "logits"},
    ]}, geo)
    assert a.canonical() == b.canonical() and len(a.edges) == 5
    assert service.key_of(service.HypothesisEval(spec, a), "fp", geo) == service.key_of(service.HypothesisEval(spec, b), "fp", geo)


def test_attribution_endpoints(llama, ds):
    spec = _spec()
    full = hypothesis.attribution(spec, llama, ds, {"paths": [{"sender": "*", "receiver": "*"}]}, pair=1)
    none = hypothesis.attribution(spec, llama, ds, {"paths": []}, pair=1)
    assert len(full) == ds.seq_len and list(full["token"][-2:]) == [" book", " to"] and full["target"].iloc[-1] == " Anna"
    assert np.abs(full["attribution"]).max() < 1e-3
    np.testing.assert_allclose(none["attribution"], none["counterfactual"], atol=1e-6)
    # Before the first corrupted token both runs agree: nothing to attribute.
    assert np.abs(none["counterfactual"][:10]).max() < 1e-5 and np.abs(none["counterfactual"][10:]).max() > 1e-2


# ---------------------------------------------------------------- sweeps


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_sweep_into_every_input_is_activation_patching(model, ds, direction):
    """Adding a sender's write difference to every later reader's copy is
    patching its output: receivers * reproduce the head sweep."""
    spec = _spec(direction=direction, component="head")
    act = compute(spec, model, ds).table
    pth = _cells(paths.sweep(spec, model, ds, "*").table, "head")
    for m in ("logit_diff", "prob", "logprob", "kl"):
        np.testing.assert_allclose(pth[m].to_numpy(float), act[m].to_numpy(float), atol=2e-5, err_msg=m)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_direct_path_to_logits_is_patching_the_last_writer(llama, ds, direction):
    """A sender whose only route is the final residual stream: the last MLP at
    one position (receivers logits) equals activation patching mlp_out there;
    a last-layer head reaches logits and its own layer's MLP only."""
    last = llama.n_layers - 1
    spec = _spec(direction=direction, component="mlp_out")
    act = _cells(compute(spec, llama, ds).table, "mlp_out", last)
    pth = paths.sweep(spec, llama, ds, "logits", by_pos=True, senders=f"mlp{last}").table
    np.testing.assert_allclose(pth["logit_diff"].to_numpy(float), act["logit_diff"].to_numpy(float), atol=1e-5)
    np.testing.assert_allclose(pth["kl"].to_numpy(float), act["kl"].to_numpy(float), atol=1e-5)
    assert list(pth["pos"]) == list(range(ds.seq_len))

    spec = _spec(direction=direction, component="head")
    act = _cells(compute(spec, llama, ds).table, "head", last)
    pth = _cells(paths.sweep(spec, llama, ds, f"mlp{last},logits", senders=f"{last}.*").table, "head")
    np.testing.assert_allclose(pth["logit_diff"].to_numpy(float), act["logit_diff"].to_numpy(float), atol=1e-5)


def _tl_direct_path(lm, ds, src, comp):
    from transformer_lens.patching import get_act_patch_direct_path

    b = lm.bridge
    clean_logits, clean_cache = b.run_with_cache(ds.clean_tokens)
    corrupt_logits, corrupt_cache = b.run_with_cache(ds.corrupt_tokens)

    def ld(lg):
        lg = lg[:, -1]
        return (lg.gather(1, ds.answer_ids[:, None]) - lg.gather(1, ds.counter_ids[:, None]))[:, 0].mean()

    c, k = ld(clean_logits), ld(corrupt_logits)
    return get_act_patch_direct_path(b, ds.corrupt_tokens, clean_cache, corrupt_cache, lambda lg: (ld(lg) - k) / (c - k), src[0], src[1], comp, verbose=False)


@pytest.mark.parametrize("kind,comp", [("gpt2", "q"), ("gpt2", "k"), ("gpt2", "v"), ("llama", "q")])
def test_agrees_with_transformer_lens_direct_path(llama, gpt2, ds, kind, comp):
    lm = llama if kind == "llama" else gpt2
    spec = _spec()
    runs = path_runs.prepare_runs(lm, ds, spec.validated())
    seen = []
    for src in [(0, 1), (1, 3)]:
        tl = _tl_direct_path(lm, ds, src, comp)
        for dst in [(2, 0), (2, 3)]:
            ours = _cells(paths.sweep(spec, lm, ds, f"{dst[0]}.{dst[1]}:{comp}", runs=runs, senders=f"{src[0]}.{src[1]}").table, "head")
            assert float(ours["logit_diff"][0]) == pytest.approx(float(tl[dst]), abs=2e-5)
            seen.append(abs(float(tl[dst])))
    assert max(seen) > 1e-2  # real effects, not zeros


def test_gqa_key_receivers_are_kv_groups(llama, ds):
    geo = graph.Geometry.of(llama)
    a, b = graph.parse_receivers("2.0:k", geo), graph.parse_receivers("2.1:k", geo)
    assert a == b == [graph.Receiver("k", 2, 0)] and graph.parse_receivers("2.2:v", geo) == [graph.Receiver("v", 2, 1)]
    assert "KV group 0, shared by query heads 2.0-2.1" in a[0].describe(geo)
    res = paths.sweep(_spec(), llama, ds, "2.1:k,2.0:k,2.0:q")
    assert res.receivers == "2.0:q,2.0:k"
    assert any("KV group" in w for w in res.meta["warnings"])
    # Senders in layer 2 or later do not reach layer-2 inputs: NaN, not 0.
    heads = _cells(res.table, "head")
    assert heads[(heads["layer"] >= 2).to_numpy(bool)]["kl"].isna().all()
    assert heads[(heads["layer"] < 2).to_numpy(bool)]["kl"].notna().all()


def test_sender_positions_restrict_the_write(llama, ds):
    spec = _spec()
    runs = path_runs.prepare_runs(llama, ds, spec.validated())
    every = _cells(paths.sweep(spec, llama, ds, "*", runs=runs, by_pos=True, senders="embed").table, "embed")
    at = paths.sweep(spec, llama, ds, "*", runs=runs, sender_positions="10", senders="embed").table
    assert float(at["kl"][0]) == pytest.approx(float(every["kl"][10]), abs=1e-6)
    assert abs(float(every["kl"][10])) > 1e-3 and np.abs(every["kl"][:10]).max() < 1e-6


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("hyp,needle", [
    ({"paths": [{"sender": "embed", "receiver": "5.0:q"}]}, "layer 5 does not exist"),
    ({"paths": [{"sender": "1.7", "receiver": "2.0:q"}]}, "head 7 does not exist"),
    ({"paths": [{"sender": "2.0", "receiver": "1.1:k"}]}, "receiver 1.0:k is not after sender 2.0"),
    ({"paths": [{"sender": "mlp1", "receiver": "1.1:q"}]}, "not after sender mlp1"),
    ({"paths": [{"sender": "embed", "receiver": "1.1"}]}, "names a head but not which input"),
    ({"paths": [{"sender": "embed", "receiver": "1.1", "input": "z"}]}, "input 'z' is not q, k, v or *"),
    ({"paths": [{"sender": "embed", "recevier": "1.1:q"}]}, "unknown key 'recevier'"),
    ({"paths": [{"path": ["embed", "logits", "1.1:q"]}]}, "logits must be the last item"),
    ({"paths": [{"sender": "2.*", "receiver": "1.*:q"}]}, "no receiver in 1.*:q comes after any sender"),
    ({"paths": [{"sender": "logits", "receiver": "1.1:q"}]}, "is a receiver, not a node"),
    ({"paths": [{"sender": "embed", "receiver": "1.1:q", "positions": ["S9"]}]}, "'S9' is not a role"),
    ({"paths": [{"sender": "embed", "receiver": "1.1:q", "positions": [40]}]}, "position 40 is outside the prompt"),
    ({"paths": "embed->1.1:q"}, "\"paths\" must be a list"),
    ({"format": "other/2", "paths": []}, "format 'other/2'"),
    ("{not json", "not valid JSON"),
])
def test_bad_hypotheses_are_one_line_errors(llama, ds, hyp, needle):
    with pytest.raises(PatchboardError) as e:
        hypothesis.evaluate(_spec(), llama, ds, hyp)
    assert e.value.field == "hypothesis" and needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("recv,needle", [
    ("1.9:q", "head 9 does not exist"),
    ("7.0:q", "layer 7 does not exist"),
    ("1.1", "names a head but not which input"),
    ("att", "is not a receiver"),
    ("", "no receivers given"),
])
def test_bad_receivers_are_one_line_errors(llama, ds, recv, needle):
    with pytest.raises(PatchboardError) as e:
        paths.sweep(_spec(), llama, ds, recv)
    assert e.value.field == "receivers" and needle in str(e.value)


# ---------------------------------------------------------------- store and CLI


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, gpt2, tiny_model):
    """The tiny GPT-2 as a local model folder the CLI can load by path."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    hf = tiny_model.hf("gpt2", **TINY["gpt2"])  # the same weights as ``gpt2``
    hf.save_pretrained(folder)
    gpt2.tokenizer.save_pretrained(folder)
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p.to_row()) + "\n" for p in PAIRS))
    return folder


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    return tmp_path


def _cli(args, capsys):
    from patching.cli import main

    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_paths_and_hypothesis(tiny_folder, cache_dir, capsys, tmp_path):
    import pandas as pd

    base = ["--model", str(tiny_folder), "--pairs", str(tiny_folder / "pairs.jsonl")]
    out = tmp_path / "paths.csv"
    rc, _, err = _cli(["paths", *base, "--receivers", "2.1:q,2.1:k", "--out", str(out)], capsys)
    assert rc == 0, err
    t = pd.read_csv(out)
    assert list(t.columns[:5]) == ["component", "layer", "head", "pos", "value"]
    assert {"logit_diff", "prob", "logprob", "kl"} <= set(t.columns) and len(t) == 1 + 3 * 5
    rc, _, err = _cli(["paths", *base, "--receivers", "2.1:k,2.1:q", "--out", str(out)], capsys)
    assert rc == 0 and "from store" in err

    hyp = tmp_path / "h.json"
    hyp.write_text(json.dumps({"name": "all", "paths": [{"sender": "*", "receiver": "*"}]}))
    rc, text, err = _cli(["hypothesis", *base, "--hypothesis", str(hyp)], capsys)
    assert rc == 0, err
    assert "proportion explained 100.0%" in text and "AUE" in text and "ATE" in text
    rc, text, err = _cli(["hypothesis", *base, "--hypothesis", str(hyp), "--format", "json", "--delta", "loss", "--attribution", "1"], capsys)
    data = json.loads(text)
    assert rc == 0 and data["from_store"] and data["delta"] == "loss"
    assert data["proportion_explained"] == pytest.approx(1.0, abs=1e-4) and len(data["attribution"]["tokens"]) == 15

    from patching.store import Store

    kinds = set(Store().list()["kind"])
    assert kinds == {"paths", "hypothesis"}


@pytest.mark.parametrize("args,needle", [
    (["paths", "--receivers", "9.0:q"], "receivers: receiver 1 (9.0:q): layer 9 does not exist"),
    (["paths"], "arguments:"),
    (["hypothesis", "--hypothesis", "nope.json"], "hypothesis: cannot read 'nope.json'"),
])
def test_cli_errors_are_one_line(tiny_folder, cache_dir, capsys, args, needle):
    base = ["--model", str(tiny_folder), "--pairs", str(tiny_folder / "pairs.jsonl")]
    rc, _, err = _cli(args[:1] + base + args[1:], capsys)
    assert rc == 2 and needle in err and err.count("\n") == 1
