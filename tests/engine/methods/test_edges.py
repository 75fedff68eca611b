"""Edge attribution patching (EAP, EAP-IG) against the exact path sweep.

The tiny Llama has grouped-query attention (4 query heads, 2 KV groups), so
key and value receivers are KV-group inputs here, as on the embedded model.
"""

from __future__ import annotations

import pytest
import torch

from patching.core.data import build_dataset
from patching.core.errors import PatchboardError
from patching.core.pairs import Pair
from patching.core.spec import METRICS, Spec
from patching.methods import edges as edge_patching
from patching.methods import path_request, path_runs
from patching.methods import paths

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
)


def _spec(lm, **kw) -> Spec:
    return Spec(model=lm.name, task=None, pairs=PAIRS, **kw)


@pytest.fixture(scope="module")
def ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer)


@pytest.fixture(scope="module")
def linear_lm(tiny_model):
    """A tiny GQA Llama whose last layer reaches the logits linearly: no
    final norm, its MLP writes zero and its attention input norm is the
    identity, so the logit difference is linear in the final residual stream
    and in the last layer's value inputs."""
    hf = tiny_model.hf("llama")
    with torch.no_grad():
        hf.model.layers[-1].mlp.down_proj.weight.zero_()
    hf.model.norm.forward = lambda x: x
    hf.model.layers[-1].input_layernorm.forward = lambda x: x
    from patching.core.models import from_hf

    return from_hf(hf, tiny_model.tokenizer, "tiny-linear-edges")


def _both(lm, ds, receivers, direction="denoise", method="eap", **kw):
    spec = _spec(lm, direction=direction)
    runs = path_runs.prepare_runs(lm, ds, path_request.paths_spec(spec))
    ex = paths.sweep(spec, lm, ds, receivers, runs=runs, **kw).table
    est = edge_patching.sweep(spec, lm, ds, receivers, runs=runs, method=method, **kw).table
    return ex, est


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("receivers", ["logits", "2.*:v"])
def test_eap_equals_exact_where_the_metric_is_linear(linear_lm, ds, receivers, direction):
    ex, est = _both(linear_lm, ds, receivers, direction)
    assert list(est.columns) == list(ex.columns) and len(est) == len(ex)
    assert est[["component", "layer", "head"]].equals(ex[["component", "layer", "head"]])
    assert est.logit_diff.isna().equals(ex.logit_diff.isna())  # senders no receiver reads: blank in both
    ok = ex.logit_diff.notna()
    assert float(ex.logit_diff[ok].abs().max()) > 1e-2  # something to estimate
    diff = float((est.logit_diff[ok] - ex.logit_diff[ok]).abs().max())
    assert diff < 1e-5, diff


def test_eap_ig_approaches_exact_with_many_steps(tiny_llama, ds):
    """embed → every receiver: the direct path sweep then reproduces the
    source run (each receiver sees its input as there), and the input
    gradient is the sum of the receivers' gradients, so EAP-IG on the input
    path tends to the exact effect. Nonlinear (norms, softmax, every metric):
    EAP misses, EAP-IG converges. q, k (per KV group), v, MLP and logits
    receivers all take part."""
    spec = _spec(tiny_llama)
    runs = path_runs.prepare_runs(tiny_llama, ds, path_request.paths_spec(spec))
    ex = paths.sweep(spec, tiny_llama, ds, "*", runs=runs, senders="embed").table
    err = {}
    for method, steps, rule in (("eap", 0, "left"), ("eap_ig", 2, "midpoint"), ("eap_ig", 48, "midpoint"), ("eap_ig", 2, "left"),
                                ("eap_ig", 24, "left")):
        t = edge_patching.sweep(spec, tiny_llama, ds, "*", runs=runs, senders="embed", method=method, ig_steps=steps or 5, ig_rule=rule).table
        err[steps, rule] = max(abs(float(t[m].iloc[0]) - float(ex[m].iloc[0])) for m in METRICS)
    scale = max(1.0, abs(float(ex.logit_diff.iloc[0])))
    assert err[0, "left"] > 1e-2 * scale, err  # the case is nonlinear
    # The midpoint rule's error falls as 1/m^2, the left Riemann sum's (the reference's) as 1/m.
    assert err[48, "midpoint"] < err[2, "midpoint"] and err[48, "midpoint"] < 2e-3 * scale, err
    assert err[24, "left"] < err[2, "left"] / 4 and err[24, "left"] < 3e-2 * scale, err


def test_positions_and_by_pos(linear_lm, ds):
    """A by-position sweep sums to the all-position one (EAP is linear in
    the sender's difference), and sender positions mask it, as exact."""
    spec = _spec(linear_lm)
    runs = path_runs.prepare_runs(linear_lm, ds, path_request.paths_spec(spec))
    kw = dict(runs=runs, senders="1.*,mlp0", method="eap")
    whole = edge_patching.sweep(spec, linear_lm, ds, "logits", **kw).table
    per = edge_patching.sweep(spec, linear_lm, ds, "logits", by_pos=True, **kw).table
    assert len(per) == len(whole) * ds.seq_len
    # Estimated changes add up; with the LD gap fixed, so do the normalised values.
    summed = per.groupby(["component", "layer", "head"], dropna=False, sort=False)["logit_diff"].sum().to_numpy()
    assert torch.allclose(torch.tensor(summed), torch.tensor(whole.logit_diff.to_numpy()), atol=1e-6)
    end = edge_patching.sweep(spec, linear_lm, ds, "logits", sender_positions="END", **kw).table
    ex_end = paths.sweep(spec, linear_lm, ds, "logits", sender_positions="END", runs=runs, senders="1.*,mlp0").table
    assert float((end.logit_diff - ex_end.logit_diff).abs().max()) < 1e-5
    last = per[per.pos == ds.seq_len - 1].logit_diff.to_numpy()
    assert torch.allclose(torch.tensor(last), torch.tensor(end.logit_diff.to_numpy()), atol=1e-6)


def test_service_stores_eap_beside_exact_and_bundles_it(tiny_llama, tmp_path):
    from patching import bundles, service
    from patching.methods.graph import Geometry
    from patching.notebook import notebook_json
    from patching.store import Store

    store = Store(tmp_path / "s.sqlite")
    spec = _spec(tiny_llama)
    geo = Geometry.of(tiny_llama)
    exact = service.PathSweep(spec, "logits")
    # Exact keys are those of before the method setting: nothing added to the payload.
    old = path_request.paths_spec(spec).cache_key("fp", kind="paths", receivers="logits", senders="*", sender_positions="all", by_pos=False,
                                       paths=service.PATHS_VERSION)
    assert service.key_of(exact, "fp", geo) == old
    keys = {service.key_of(service.PathSweep(spec, "logits", method=m, ig_steps=s), "fp", geo) for m, s in
            (("exact", 5), ("exact", 9), ("eap", 5), ("eap", 9), ("eap_ig", 5), ("eap_ig", 9))}
    assert len(keys) == 4  # ig_steps matters to eap_ig only
    eap = service.PathSweep(spec, "logits", method="eap")
    with torch.inference_mode():  # as the pages run it
        res = service.run(eap, store=store, lm=tiny_llama)
    assert not res.from_store and res.meta["method"] == "eap" and res.params["method"] == "eap"
    assert service.run(eap, store=store, lm=tiny_llama).from_store
    assert service.lookup(exact, store, tiny_llama.fingerprint) is None
    ex = service.run(eap.exact(), store=store, lm=tiny_llama)
    assert not ex.from_store and ex.key != res.key
    assert "method='eap'" in notebook_json(eap)
    # A bundle recomputes an EAP sweep's key from its meta.
    data = bundles.bundle_bytes(store, [res.key])
    dst = Store(tmp_path / "d.sqlite")
    assert bundles.import_bundle(dst, data).added == 1
    assert dst.get(res.key) is not None
    with pytest.raises(PatchboardError) as e:
        service.run(service.PathSweep(spec, "logits", form="wang", method="eap"), store=store, lm=tiny_llama)
    assert str(e.value).startswith("method:")


def test_cli_paths_method_prints_agreement_with_the_stored_exact_sweep(tiny_model, tmp_path, monkeypatch, capsys):
    import json

    import pandas as pd

    from patching.cli import main

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "tiny-llama"
    tiny_model.hf("llama").save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p.to_row()) + "\n" for p in PAIRS))
    base = ["paths", "--model", str(folder), "--pairs", str(folder / "pairs.jsonl"), "--receivers", "2.*:*,logits"]

    def cli(*extra):
        rc = main([*base, *extra])
        return rc, capsys.readouterr().err

    rc, err = cli("--method", "eap", "--out", str(tmp_path / "eap.csv"))
    assert rc == 0, err
    assert "(EAP at the corrupted run (denoising" in err and "exact sweep not stored" in err  # the default direction's variant, named
    rc, err = cli("--out", str(tmp_path / "exact.csv"))
    assert rc == 0, err
    rc, err = cli("--method", "eap", "--out", str(tmp_path / "eap.csv"))
    assert rc == 0 and "from store (EAP at the corrupted run" in err and "agreement with the stored exact result" in err, err
    rc, err = cli("--method", "eap", "--direction", "noise")
    assert rc == 0 and "EAP (Syed et al.: the gradient at the clean run)" in err, err
    a, e = pd.read_csv(tmp_path / "eap.csv"), pd.read_csv(tmp_path / "exact.csv")
    assert list(a.columns) == list(e.columns) and len(a) == len(e)
    rc, err = cli("--method", "eap_ig", "--ig-steps", "3", "--edges", str(tmp_path / "edges.csv"))
    assert rc == 0 and "(EAP-IG (Hanna et al.; 3 steps, left rule))" in err, err
    edges = pd.read_csv(tmp_path / "edges.csv")
    assert list(edges.columns[:2]) == ["sender", "receiver"] and set(edges.receiver) == {"2.0:q", "2.1:q", "2.2:q", "2.3:q", "2.0:k",
                                                                                          "2.2:k", "2.0:v", "2.2:v", "logits"}
    rc, err = cli("--edges", str(tmp_path / "edges.csv"))
    assert rc == 2 and "error: edges:" in err
    rc, err = cli("--method", "eap", "--form", "wang")
    assert rc == 2 and "error: method:" in err


def test_edges_add_up_to_each_senders_row(tiny_llama, ds):
    """The per-edge table: every sender → receiver that reads it, and a
    sender's edges sum to its row of the sweep, every metric."""
    spec = _spec(tiny_llama, direction="noise")
    runs = path_runs.prepare_runs(tiny_llama, ds, path_request.paths_spec(spec))
    recv = "1.*:*,mlp1,logits"
    edges = edge_patching.edge_table(spec, tiny_llama, ds, recv, senders="embed,0.*,mlp0,1.2", runs=runs)
    assert list(edges.columns) == ["sender", "receiver", *METRICS]
    # 1.2 reads nothing from 1.* inputs; it reaches mlp1 and logits only. The others reach 4 q + 2 k + 2 v + mlp1 + logits.
    assert len(edges) == 6 * 10 + 2 and set(edges[edges.sender == "1.2"].receiver) == {"mlp1", "logits"}
    assert set(edges.receiver) >= {"1.0:k", "1.2:k", "1.3:q"}  # GQA: k/v per KV group (heads 0-1, 2-3)
    assert float(edges.logit_diff.abs().max()) > 1e-3
    rows = edge_patching.sweep(spec, tiny_llama, ds, recv, senders="embed,0.*,mlp0,1.2", runs=runs, method="eap").table
    label = lambda r: "embed" if r.component == "embed" else f"mlp{r.layer}" if r.component == "mlp" else f"{r.layer}.{r.head}"  # noqa: E731
    summed = edges.groupby("sender")[list(METRICS)].sum()
    for r in rows.itertuples():
        for m in METRICS:
            assert getattr(r, m) == pytest.approx(summed.loc[label(r), m], rel=1e-4, abs=1e-7), (label(r), m)
    with pytest.raises(PatchboardError):
        edge_patching.edge_table(spec, tiny_llama, ds, recv, method="exact", runs=runs)


def _reference_eap_ig(lm, ds, steps: int) -> dict[tuple[str, str], float]:
    """hannamw/EAP-IG's ``get_scores_eap_ig`` written out again, independently:
    TransformerLens's own hooks (``hook_embed``, ``attn.hook_result``,
    ``hook_mlp_out`` as writers; the split ``attn.hook_{q,k,v}_input``,
    ``hook_mlp_in`` and the last ``hook_resid_post`` as readers); the input
    embeddings x_k = corrupted + (k/m)(clean - corrupted), k = 0..m-1 (the left
    Riemann sum); score(w -> r) = mean over pairs and steps of
    (corrupted - clean write of w) . d LD / d (input of r), LD summed over the
    batch (the reference's ``logit_diff(mean=True, loss=True)`` divides by the
    batch once more and flips the sign)."""
    b = lm.bridge
    L, H = lm.n_layers, lm.n_heads
    writers = {"embed": "hook_embed", **{f"mlp{l}": f"blocks.{l}.hook_mlp_out" for l in range(L)}}
    saved = (b.cfg.use_attn_result, b.cfg.use_split_qkv_input, b.cfg.use_hook_mlp_in)
    b.set_use_attn_result(True)
    b.set_use_split_qkv_input(True)
    b.set_use_hook_mlp_in(True)
    try:
        names = list(writers.values()) + [f"blocks.{l}.attn.hook_result" for l in range(L)]
        with torch.no_grad():
            _, clean = b.run_with_cache(ds.clean_tokens, names_filter=lambda n: n in names)
            _, corrupt = b.run_with_cache(ds.corrupt_tokens, names_filter=lambda n: n in names)
        diff = {w: corrupt[h] - clean[h] for w, h in writers.items()}
        for l in range(L):
            for h in range(H):
                diff[f"{l}.{h}"] = corrupt[f"blocks.{l}.attn.hook_result"][:, :, h] - clean[f"blocks.{l}.attn.hook_result"][:, :, h]
        readers = {f"blocks.{l}.attn.hook_{p}_input": [(f"{l}.{h}:{p}", h) for h in range(H)] for l in range(L) for p in "qkv"}
        readers |= {f"blocks.{l}.hook_mlp_in": [(f"mlp{l}", None)] for l in range(L)}
        readers[f"blocks.{L - 1}.hook_resid_post"] = [("logits", None)]
        grads: dict[str, torch.Tensor] = {}
        for k in range(steps):
            x = corrupt["hook_embed"] + (k / steps) * (clean["hook_embed"] - corrupt["hook_embed"])
            zeros = {}

            def add(name):
                def hook(act, hook=None):
                    zeros[name] = torch.zeros_like(act, requires_grad=True)
                    return act + zeros[name]
                return hook

            with torch.enable_grad(), b.hooks(fwd_hooks=[("hook_embed", lambda act, hook=None: x.clone())] + [(n, add(n)) for n in readers]):
                logits = b(ds.clean_tokens)[:, -1]
                ld = (logits.gather(1, ds.answer_ids[:, None]) - logits.gather(1, ds.counter_ids[:, None])).sum()
                got = torch.autograd.grad(ld, [zeros[n] for n in readers])
            for n, g in zip(readers, got):
                grads[n] = grads.get(n, 0) + g / steps
    finally:
        b.set_use_attn_result(saved[0])
        b.set_use_split_qkv_input(saved[1])
        b.set_use_hook_mlp_in(saved[2])
    order = lambda name: -1 if name == "embed" else 2 * int(name[3:]) + 1 if name.startswith("mlp") else 2 * int(name.split(".")[0])  # noqa: E731
    rorder = lambda name: 2 * L if name == "logits" else 2 * int(name[3:]) + 1 if name.startswith("mlp") else 2 * int(name.split(".")[0])  # noqa: E731
    out = {}
    for n, items in readers.items():
        for label, h in items:
            g = grads[n][:, :, h] if h is not None else grads[n]
            for w, d in diff.items():
                if order(w) < rorder(label):
                    out[(w, label)] = float((d * g).sum()) / ds.n
    return out


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_eap_ig_left_rule_is_the_reference_formula(tiny_model, ds, direction):
    """EAP-IG with the left rule (the default) against the reference's
    formula written out independently above, every edge of a tiny GPT-2,
    within 1e-5 (relative to the largest score); the midpoint rule is a
    different number. Our logit_diff column is the estimated change over the
    LD gap, signed so that positive carries the behaviour: under both
    directions the reference's (corrupted - clean) score is -logit_diff x gap."""
    lm = tiny_model("gpt2", name="tiny-eapig-gpt2", n_positions=64, initializer_range=0.02, scale=3.0)
    steps = 3
    ref = _reference_eap_ig(lm, ds, steps)
    spec = _spec(lm, direction=direction)
    runs = path_runs.prepare_runs(lm, ds, path_request.paths_spec(spec))
    gap = float(runs.clean_stats.ld.mean() - runs.corrupt_stats.ld.mean())
    ours = edge_patching.edge_table(spec, lm, ds, "*", method="eap_ig", ig_steps=steps, runs=runs)
    assert len(ours) == len(ref)
    scale = max(abs(v) for v in ref.values())
    worst = max(abs(-float(r.logit_diff) * gap - ref[(r.sender, r.receiver)]) for r in ours.itertuples())
    assert scale > 1e-2 and worst < 1e-5 * max(1.0, scale), (worst, scale)
    mid = edge_patching.edge_table(spec, lm, ds, "*", method="eap_ig", ig_steps=steps, runs=runs, ig_rule="midpoint")
    assert max(abs(-float(r.logit_diff) * gap - ref[(r.sender, r.receiver)]) for r in mid.itertuples()) > 1e-3 * scale
