"""Parity with TransformerLens 4.3's ``transformer_lens.patching``.

Every sweep of ``patching.sweeps.compute`` must match the corresponding
``get_act_patch_*`` (one forward pass per patch) to 1e-4 on every metric.
TransformerLens is given a mapping of per-row metrics (``reduce="none"``) read
from its patched logits; the metrics are then built from those rows with the
formulas documented in ``patching/metrics.py``, written out again here.

Directions: ``denoise`` is TransformerLens's usual call (corrupted tokens, the
clean run's cache). For ``noise`` TransformerLens gets the clean tokens as its
"corrupted" tokens and the corrupted run's cache as its "clean" cache.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from patching.core.pairs import Pair
from patching.core.data import build_dataset
from patching.core.spec import Spec
from patching.methods.activation import compute

TOL = 1e-4
METRICS = ("logit_diff", "prob", "logprob", "kl")

# IOI-style pairs (BABA, S2 -> IO), one token length for the embedded tokenizer.
PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
    Pair("When Kate and David went to the school, David gave a ring to", "When Kate and David went to the school, Kate gave a ring to", " Kate", " David"),
)


def _tl_fn(component: str):
    import transformer_lens.patching as tlp

    return {
        "resid_pre": tlp.get_act_patch_resid_pre,
        "attn_out": tlp.get_act_patch_attn_out,
        "mlp_out": tlp.get_act_patch_mlp_out,
        "head": tlp.get_act_patch_attn_head_out_all_pos,
        "head_by_pos": tlp.get_act_patch_attn_head_out_by_pos,
        **{f"head_{x}": getattr(tlp, f"get_act_patch_attn_head_{x}_all_pos") for x in ("q", "k", "v", "pattern")},
        **{f"head_{x}_by_pos": getattr(tlp, f"get_act_patch_attn_head_{x}_by_pos") for x in ("q", "k", "v", "pattern")},
    }[component]


def _row_metrics(answer: torch.Tensor, counter: torch.Tensor, clean_lp: torch.Tensor, corrupt_lp: torch.Tensor):
    """Per-row readouts of [batch, pos, vocab] logits at the final position."""

    def last(logits):
        return logits[:, -1, :].float()

    def ld(logits):
        x = last(logits)
        return x.gather(1, answer[:, None])[:, 0] - x.gather(1, counter[:, None])[:, 0]

    def logprob(logits):
        return torch.log_softmax(last(logits), -1).gather(1, answer[:, None])[:, 0]

    def prob(logits):
        return logprob(logits).exp()

    def kl(logits):  # KL(clean || this run)
        return (clean_lp.exp() * (clean_lp - torch.log_softmax(last(logits), -1))).sum(-1)

    def kl_corrupt(logits):  # KL(corrupt || this run): the signed KL effect under noising
        return (corrupt_lp.exp() * (corrupt_lp - torch.log_softmax(last(logits), -1))).sum(-1)

    return {"ld": ld, "prob": prob, "logprob": logprob, "kl": kl, "kl_corrupt": kl_corrupt}


def _reference_effects(B: dict, cl: dict, co: dict, direction: str) -> dict:
    """The metrics of patching/metrics.py from per-row values (means over rows)."""
    b = {k: v.mean(-1).double() for k, v in B.items()}
    c = {k: float(v.mean()) for k, v in cl.items()}
    k = {k: float(v.mean()) for k, v in co.items()}
    gap = c["ld"] - k["ld"]
    if direction == "denoise":
        return {"logit_diff": (b["ld"] - k["ld"]) / gap, "prob": b["prob"] - k["prob"],
                "logprob": b["logprob"] - k["logprob"], "kl": k["kl"] - b["kl"]}
    return {"logit_diff": (c["ld"] - b["ld"]) / gap, "prob": c["prob"] - b["prob"],
            "logprob": c["logprob"] - b["logprob"], "kl": c["kl_corrupt"] - b["kl_corrupt"]}


def tl_reference(lm, ds, component: str, direction: str, index_df: pd.DataFrame | None = None) -> tuple[dict, float]:
    """TransformerLens's sweep as metrics per cell, in ``cells_for`` order (or
    ``index_df``'s); also the clean-corrupt logit-difference gap."""
    bridge = lm.bridge
    clean, corrupt = ds.clean_tokens, ds.corrupt_tokens
    with torch.no_grad():
        clean_logits = bridge(clean)
        corrupt_logits = bridge(corrupt)
        clean_lp = torch.log_softmax(clean_logits[:, -1, :].float(), -1)
        corrupt_lp = torch.log_softmax(corrupt_logits[:, -1, :].float(), -1)
        fns = _row_metrics(ds.answer_ids, ds.counter_ids, clean_lp, corrupt_lp)
        cl = {k: f(clean_logits) for k, f in fns.items()}
        co = {k: f(corrupt_logits) for k, f in fns.items()}
        base, src = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
        _, src_cache = bridge.run_with_cache(src)
        # With an explicit index_df the partial's index_axis_names must be unset.
        kw = {"index_df": index_df, "index_axis_names": None} if index_df is not None else {}
        res = _tl_fn(component)(bridge, base, src_cache, fns, reduce="none", **kw)
    vals = res.values  # [metric, *axes | n_rows, batch]
    assert list(res.metric_names) == list(fns)
    if component in ("head_by_pos", "head_q_by_pos", "head_k_by_pos", "head_v_by_pos") and index_df is None:
        vals = vals.permute(0, 1, 3, 2, 4)  # TL: layer, pos, head; ours: layer, head, pos (pattern: TL's order is ours)
    vals = vals.reshape(len(fns), -1, vals.shape[-1])
    B = dict(zip(fns, vals))
    return _reference_effects(B, cl, co, direction), float(cl["ld"].mean() - co["ld"].mean())


def ours(lm, ds, component: str, direction: str) -> pd.DataFrame:
    spec = Spec(model=lm.name, task=None, pairs=tuple(ds.pairs), component=component, direction=direction)
    return compute(spec, lm, ds).table


def assert_parity(table: pd.DataFrame, ref: dict, what: str) -> float:
    worst = 0.0
    for m in METRICS:
        got = torch.tensor(table[m].to_numpy(dtype=float), dtype=torch.float64)
        want = ref[m].to(torch.float64)
        assert got.shape == want.shape, (what, m, got.shape, want.shape)
        diff = float((got - want).abs().max())
        worst = max(worst, diff)
        assert diff <= TOL, f"{what} {m}: max abs diff {diff:.2e} > {TOL}"
    return worst


# ---------------------------------------------------------------- tiny random models


@pytest.fixture(scope="module")
def tiny_ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out", "head", "head_by_pos"])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_tiny_models_match_transformer_lens(request, arch, component, direction, tiny_ds):
    lm = request.getfixturevalue(arch)
    table = ours(lm, tiny_ds, component, direction)
    if component == "head_by_pos":
        # Every head and layer, at BOS, just before the first difference and
        # from there on (TransformerLens's loop is slow: one forward per cell).
        first = int((tiny_ds.clean_tokens != tiny_ds.corrupt_tokens).any(0).nonzero()[0])
        positions = [0, first - 1] + list(range(first, tiny_ds.seq_len))
        index_df = pd.DataFrame([(l, p, h) for l in range(lm.n_layers) for p in positions for h in range(lm.n_heads)],
                                columns=["layer", "pos", "head_index"])
        ref, gap = tl_reference(lm, tiny_ds, component, direction, index_df)
        table = _subset(table, index_df, ["layer", "pos", "head_index"], ["layer", "pos", "head"])
    else:
        ref, gap = tl_reference(lm, tiny_ds, component, direction)
    assert abs(gap) > 0.1, "pairs should separate clean from corrupt on this model"
    assert_parity(table, ref, f"{arch} {component} {direction}")
    # Something is actually being compared: effects vary across cells.
    assert float(table["kl"].abs().max()) > 1e-3


_ALL_POS = [(a, c, d) for a in ("tiny_llama", "tiny_gpt2") for c in ("head_q", "head_k", "head_v", "head_pattern") for d in ("denoise", "noise")]
# By position (TransformerLens's loop is one forward per cell): each direction on one architecture.
_BY_POS = [(a, f"head_{x}_by_pos", d) for a, d in (("tiny_llama", "noise"), ("tiny_gpt2", "denoise")) for x in ("q", "k", "v", "pattern")]


@pytest.mark.parametrize("arch,component,direction", _ALL_POS + _BY_POS)
def test_qkv_and_pattern_match_transformer_lens(request, arch, component, direction, tiny_ds):
    """get_act_patch_attn_head_{q,k,v,pattern}_{all_pos,by_pos}. Keys and
    values are per key/value group on the grouped-query tiny Llama (2 groups
    of 2 heads), as in TransformerLens; patterns go through the full-sequence
    path, q/k/v through the suffix path. By position: every layer and head at
    BOS, just before the first difference and from there on."""
    lm = request.getfixturevalue(arch)
    table = ours(lm, tiny_ds, component, direction)
    n_kv = int(getattr(lm.cfg, "n_key_value_heads", None) or lm.n_heads)
    heads = n_kv if component.startswith(("head_k", "head_v")) else lm.n_heads
    per_pos = tiny_ds.seq_len if component.endswith("_by_pos") else 1
    assert len(table) == lm.n_layers * heads * per_pos
    if arch == "tiny_llama" and component.startswith(("head_k", "head_v")):
        assert heads == 2 < lm.n_heads
    if component.endswith("_by_pos"):
        first = int((tiny_ds.clean_tokens != tiny_ds.corrupt_tokens).any(0).nonzero()[0])
        positions = [0, first - 1] + list(range(first, tiny_ds.seq_len))
        cols = ["layer", "head_index", "dest_pos"] if component == "head_pattern_by_pos" else ["layer", "pos", "head"]
        index_df = pd.DataFrame([(l, h, p) if "dest_pos" in cols else (l, p, h) for l in range(lm.n_layers) for p in positions
                                 for h in range(heads)], columns=cols)
        ref, gap = tl_reference(lm, tiny_ds, component, direction, index_df)
        table = _subset(table, index_df, cols, ["layer", "head", "pos"] if "dest_pos" in cols else ["layer", "pos", "head"])
    else:
        ref, gap = tl_reference(lm, tiny_ds, component, direction)
    assert abs(gap) > 0.1
    assert_parity(table, ref, f"{arch} {component} {direction}")
    assert float(table["kl"].abs().max()) > 1e-3 and float(table["logit_diff"].abs().max()) > 1e-3


def test_parity_covers_patches_before_the_first_difference(tiny_llama, tiny_ds):
    """Positions before the first clean/corrupt difference are skipped by the
    engine (exact no-ops); TransformerLens runs them. Both must say ~0."""
    table = ours(tiny_llama, tiny_ds, "resid_pre", "denoise")
    first = int((tiny_ds.clean_tokens != tiny_ds.corrupt_tokens).any(0).nonzero()[0])
    early = table[table["pos"] < first]
    assert len(early) > 0
    ref, _ = tl_reference(tiny_llama, tiny_ds, "resid_pre", "denoise")
    idx = torch.tensor((table["pos"] < first).to_numpy(bool))
    assert float(ref["logit_diff"][idx].abs().max()) < TOL
    assert float(early["logit_diff"].abs().max()) < TOL


# ---------------------------------------------------------------- embedded model


@pytest.fixture(scope="module")
def emb_ds(embedded):
    return build_dataset(list(PAIRS[:2]), embedded.tokenizer)


def _subset(table: pd.DataFrame, index_df: pd.DataFrame, cols: list[str], table_cols: list[str]) -> pd.DataFrame:
    keyed = table.set_index(table_cols)
    return keyed.loc[[tuple(int(x) for x in r) for r in index_df[cols].itertuples(index=False)]].reset_index()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_embedded_head_sweep_matches_transformer_lens(embedded, emb_ds, direction):
    """Our whole head sweep; TransformerLens on a few layers (one forward pass
    per patch is slow on CPU), first, middle and last included."""
    layers = [0, 9, 20, embedded.n_layers - 1]
    index_df = pd.DataFrame([(l, h) for l in layers for h in range(embedded.n_heads)], columns=["layer", "head"])
    ref, gap = tl_reference(embedded, emb_ds, "head", direction, index_df)
    assert gap > 5
    table = ours(embedded, emb_ds, "head", direction)
    assert len(table) == embedded.n_layers * embedded.n_heads
    sub = _subset(table, index_df, ["layer", "head"], ["layer", "head"])
    assert_parity(sub, ref, f"embedded head {direction}")


def test_embedded_resid_pre_matches_transformer_lens(embedded, emb_ds):
    layers = [0, 14, embedded.n_layers - 1]
    index_df = pd.DataFrame([(l, p) for l in layers for p in range(emb_ds.seq_len)], columns=["layer", "pos"])
    ref, _ = tl_reference(embedded, emb_ds, "resid_pre", "denoise", index_df)
    table = ours(embedded, emb_ds, "resid_pre", "denoise")
    sub = _subset(table, index_df, ["layer", "pos"], ["layer", "pos"])
    assert_parity(sub, ref, "embedded resid_pre denoise")
    # Patching the S2 position at layer 0 restores most of the behaviour.
    s2 = int((emb_ds.clean_tokens != emb_ds.corrupt_tokens).any(0).nonzero()[0])
    assert float(sub[(sub["layer"] == 0) & (sub["pos"] == s2)]["logit_diff"].iloc[0]) > 0.9
