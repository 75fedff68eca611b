"""Circuits: scoring every edge, and a faithfulness curve with random baselines, in one run.

On the embedded model (30 layers x 9 query heads, 3 KV groups; 70,651 edges),
IOI (s2, seed 0), STR, ``--n-pairs`` pairs: model loading and the cached runs
not timed in the ratios (printed once).

1. Every edge scored by EAP (one forward and backward pass per row block, the
   one statistic the ranking reads), beside the generic edge table
   (``patching.methods.edges.edge_table``: every statistic, every position).
2. The curve: ``--points`` sizes, the top-n circuit and ``--random`` random
   circuits at each, evaluated by ``patching.methods.circuit.evaluate``
   (circuits stacked along the batch, a layer runs only the circuits with work
   there, the shared prefix cached), beside the same circuits done as a
   notebook would: one full forward pass per circuit on the clean prompts with
   a hook on every receiver input adding (ablated − live) for every edge
   outside the circuit (EAP-IG's ``evaluate_graph`` form). The notebook peer is
   timed on ``--peer`` circuits spread over the curve (every one with
   ``--peer 0``) and its total extrapolated per circuit; both give the same
   faithfulness (the largest difference is printed).
3. TransformerLens 4.3's ``faithfulness()``: it refuses grouped-query models
   (the embedded one; its message is printed); on a tiny GPT-2 (3 layers, 4
   heads), ``--tl-pairs`` pairs x 4 circuits, it is timed beside ``evaluate``.

Usage::

    .venv/bin/python benchmarks/circuits.py [--n-pairs 16] [--points 20] [--random 20] [--peer 21] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from patching.core.spec import Spec  # noqa: E402
from patching.methods import circuit  # noqa: E402
from patching.methods import circuit_curve  # noqa: E402
from patching.methods.circuit_graph import EdgeIndex, prune  # noqa: E402
from patching.methods.edges import edge_table  # noqa: E402
from patching.methods.graph import Node  # noqa: E402
from patching.methods.path_runs import mlp_in_hook, prepare_runs, qkv_hook, split_qkv  # noqa: E402
from patching.service import dataset_for, get_model  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def notebook_faithfulness(cr, mask: np.ndarray) -> float:
    """One circuit, one full forward pass on the clean prompts, written as
    EAP-IG's ``evaluate_graph`` does: a [batch, pos, sender, d_model] tensor
    of (ablated − live) writes filled as the forward pass goes, and at every
    receiver input one einsum over the senders outside the circuit."""
    runs, ix = cr.runs, cr.ix
    geo = runs.geo
    H, G, L = geo.n_heads, geo.n_kv, geo.n_layers
    out_of = torch.from_numpy(~prune(mask, ix)).float()
    S, R = len(ix.senders), len(ix.receivers)
    M = torch.zeros(S, R)  # M[s, r] = 1 when the edge s -> r is outside the circuit
    M[torch.from_numpy(ix.sender).long(), torch.from_numpy(ix.receiver).long()] = out_of
    abl = runs.corrupt
    B, seq, d = abl["ln_final.hook_in"].shape
    diff = torch.zeros(B, seq, S, d)

    def put_heads(l):
        def z(act, hook=None):
            a = torch.einsum("bphe,hed->bphd", abl[f"blocks.{l}.attn.hook_z"], runs.W_O[l])
            v = torch.einsum("bphe,hed->bphd", act, runs.W_O[l])
            s0 = ix.sender_of(Node("head", l, 0))
            diff[:, :, s0:s0 + H] = a - v
            return act
        return z

    def put_mlp(l):
        def f(act, hook=None):
            diff[:, :, ix.sender_of(Node("mlp", l))] = abl[f"blocks.{l}.hook_mlp_out"] - act
            return act
        return f

    def update(r0: int, n: int):
        k = ix.n_readable(r0)
        return torch.einsum("bpsd,sr->bprd", diff[:, :, :k], M[:k, r0:r0 + n])

    def take(l, port):
        r0 = ix.receiver_of_port(port, l, 0) if port != "mlp" else ix.receiver_of_port("mlp", l)
        n = H if port == "q" else G if port in ("k", "v") else 1

        def f(act, hook=None):
            u = update(r0, n)
            return act + u if port != "mlp" else act + u[:, :, 0]
        return f

    hooks = []
    for l in range(L):
        hooks += [(qkv_hook(l, p), take(l, p)) for p in "qkv"]
        hooks += [(f"blocks.{l}.attn.hook_z", put_heads(l)), (mlp_in_hook(l), take(l, "mlp")), (f"blocks.{l}.hook_mlp_out", put_mlp(l))]
    diff[:, :, 0] = abl["blocks.0.hook_resid_pre"] - runs.clean["blocks.0.hook_resid_pre"]
    bridge = runs.lm.bridge
    with torch.inference_mode(), split_qkv(bridge), bridge.hooks(fwd_hooks=hooks):
        x = runs.runner.run_from(0, runs.clean["blocks.0.hook_resid_pre"].clone())
    final = x[:, -1] + update(R - 1, 1)[:, -1, 0]
    logits = runs.runner.final_logits(final).float()
    ld = logits.gather(1, runs.answer[:, None])[:, 0] - logits.gather(1, runs.counter[:, None])[:, 0]
    return float((ld.mean() - cr.empty.ld.mean()) / (cr.clean.ld.mean() - cr.empty.ld.mean()))


def tl_comparison(n_pairs: int) -> None:
    from transformer_lens.tools.analysis.attribution_patching import faithfulness

    from patching.core.models import embedded_tokenizer
    from tests.helpers.tiny import TinyModelFactory
    from tests.helpers.transformer_lens import tl_edges

    lm = TinyModelFactory(embedded_tokenizer())("gpt2", n_positions=64, initializer_range=0.02, scale=3.0)
    spec = Spec(model=lm.name, task="ioi", n_pairs=n_pairs).validated()
    ds = dataset_for(spec, lm)
    cr = circuit.prepare(lm, ds, spec)
    ix, seq = cr.ix, ds.seq_len
    rng = np.random.default_rng(0)
    masks = np.array([rng.random(ix.n_edges) < p for p in (0.2, 0.5, 0.8, 0.95)])
    (st, _), t_ours = timed(lambda: circuit.evaluate(cr, masks))

    t0 = time.perf_counter()
    worst = 0.0
    for c, m in enumerate(masks):
        kept = tl_edges(ix, seq, np.flatnonzero(m))
        for i in range(ds.n):
            a, b = int(ds.answer_ids[i]), int(ds.counter_ids[i])
            tl = faithfulness(lm.bridge, ds.clean_tokens[i:i + 1], ds.corrupt_tokens[i:i + 1], lambda lg: lg[0, -1, a] - lg[0, -1, b], kept)
            ours = float((st.ld[c, i] - cr.empty.ld[i]) / (cr.clean.ld[i] - cr.empty.ld[i]))
            worst = max(worst, abs(tl.recovered - ours) / max(1.0, abs(ours)))
    t_tl = time.perf_counter() - t0
    print(f"tiny GPT-2 (3 layers x 4 heads, {ix.n_edges} edges), {ds.n} pairs x {len(masks)} circuits: evaluate {t_ours:.2f} s, "
          f"TransformerLens faithfulness() {t_tl:.2f} s ({t_tl / t_ours:.0f}x slower; per-pair values agree within {worst:.1e})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-pairs", type=int, default=16)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--random", type=int, default=20)
    ap.add_argument("--peer", type=int, default=21, help="circuits the notebook peer is timed on (0: every one)")
    ap.add_argument("--tl-pairs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared 2-core machine two threads thrash)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    lm = get_model("smollm2-135m")
    spec = Spec(task="ioi", n_pairs=a.n_pairs, seed=0).validated()
    ds = dataset_for(spec, lm)
    print(f"embedded model, IOI n={a.n_pairs}, STR")
    ix = EdgeIndex.of(circuit.Geometry.of(lm))
    scoring_spec = Spec(task="ioi", n_pairs=a.n_pairs, seed=1, direction="noise").validated()
    s_ds = dataset_for(scoring_spec, lm)
    s_runs, t = timed(lambda: prepare_runs(lm, s_ds, scoring_spec))
    print(f"the scoring prompts' two cached runs (shared): {t:.2f} s")
    scores, t_eap = timed(lambda: circuit_curve._estimated(s_runs, ix, "eap", "noise", "logit_diff", 5, None))
    _, t_table = timed(lambda: edge_table(scoring_spec, lm, s_ds, "*", method="eap", runs=s_runs))
    print(f"1. every edge ({ix.n_edges}) scored by EAP: {t_eap:.2f} s; the generic edge table (every statistic): {t_table:.2f} s "
          f"({t_table / t_eap:.1f}x)")
    cr, t = timed(lambda: circuit.prepare(lm, ds, spec))
    print(f"the evaluation prompts' cached runs and prefix cache (shared): {t:.2f} s (prefix: {cr.offset} of {ds.seq_len} positions)")
    sizes = circuit_curve.size_grid(ix.n_edges, a.points)
    order = circuit_curve.ranking(scores)
    masks = np.concatenate([circuit_curve.top_masks(order, sizes, ix.n_edges), circuit_curve.random_masks(ix.n_edges, sizes, a.random, 0)])
    (st, pruned), t_curve = timed(lambda: circuit.evaluate(cr, masks))
    gap = float(cr.clean.ld.mean() - cr.empty.ld.mean())
    f = ((st.ld.mean(-1) - cr.empty.ld.mean()) / gap).double().numpy()
    live = int((pruned.sum(1) > 0).sum())
    print(f"2. the curve: {len(sizes)} sizes x (1 top-n + {a.random} random) = {len(masks)} circuits ({live} non-empty after pruning) "
          f"evaluated in {t_curve:.2f} s")
    pick = range(len(masks)) if a.peer == 0 else sorted(set(np.linspace(0, len(masks) - 1, a.peer).round().astype(int).tolist()))
    pick = [int(i) for i in pick]
    t0 = time.perf_counter()
    diffs = [abs(notebook_faithfulness(cr, masks[i]) - f[i]) for i in pick]
    t_peer = time.perf_counter() - t0
    per = t_peer / len(pick)
    print(f"   one patched pass per circuit (notebook): {per:.2f} s per circuit on {len(pick)} circuits, {per * len(masks):.0f} s for the "
          f"{len(masks)} (extrapolated): batched is {per * len(masks) / t_curve:.1f}x faster; largest faithfulness difference {max(diffs):.1e}")
    print("   top-n faithfulness: " + ", ".join(f"{n}: {v:.3f}" for n, v in zip(sizes, f[:len(sizes)])))
    try:
        from transformer_lens.tools.analysis.attribution_patching import _check_kv_heads_match_query_heads

        _check_kv_heads_match_query_heads(lm.bridge)
        print("3. TransformerLens faithfulness() accepts this model")
    except ValueError as e:
        print(f"3. TransformerLens faithfulness() refuses the embedded model: {str(e).splitlines()[0][:160]}")
    tl_comparison(a.tl_pairs)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
