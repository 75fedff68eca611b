"""The reference: TransformerLens 4.3's ``transformer_lens.patching`` sweeps,
read as this project's metrics, for the parity tests (tiny models in
tests/engine/, the embedded model in tests/integration/).

TransformerLens is given a mapping of per-row metrics (``reduce="none"``) read
from its patched logits; the metrics are then built from those rows with the
formulas documented in ``patching/engine/metrics.py``, written out again here.

Directions: ``denoise`` is TransformerLens's usual call (corrupted tokens, the
clean run's cache). For ``noise`` TransformerLens gets the clean tokens as its
"corrupted" tokens and the corrupted run's cache as its "clean" cache.
"""

from __future__ import annotations

import pandas as pd
import torch

from patching.core.pairs import Pair
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
    """The metrics of patching/engine/metrics.py from per-row values (means over rows)."""
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


def subset_of(table: pd.DataFrame, index_df: pd.DataFrame, cols: list[str], table_cols: list[str]) -> pd.DataFrame:
    """The rows of our ``table`` (keyed by ``table_cols``) at the cells of
    TransformerLens's ``index_df`` (its ``cols``), in its order."""
    keyed = table.set_index(table_cols)
    return keyed.loc[[tuple(int(x) for x in r) for r in index_df[cols].itertuples(index=False)]].reset_index()


def tl_edges(ix, seq: int, edge_ids) -> list:
    """Patchboard's circuit edges (indices into ``ix``, an EdgeIndex) as
    TransformerLens 4.3 faithfulness()'s (writer, reader) node pairs: a
    Patchboard edge is that edge at every position."""
    from transformer_lens.tools.analysis.attribution_patching import Node as TLNode

    n_layers = ix.geo.n_layers
    out = []
    for e in edge_ids:
        s, r = ix.senders[ix.sender[e]], ix.receivers[ix.receiver[e]]
        for p in range(seq):
            w = (TLNode("embed", p) if s.kind == "embed" else TLNode("attn_head_out", p, s.layer, s.head) if s.kind == "head"
                 else TLNode("mlp_out", p, s.layer))
            rd = (TLNode("logits", p, n_layers - 1) if r.port == "logits" else TLNode("mlp_in", p, r.layer) if r.port == "mlp"
                  else TLNode(f"{r.port}_input", p, r.layer, r.index))
            out.append((w, rd))
    return out
