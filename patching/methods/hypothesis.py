"""Evaluating a hypothesis made of paths (Goldowsky-Dill et al., 2023): G_H,
AUE, ATE, proportion explained and per-token attribution.

The file format and its edges are in :mod:`patching.methods.hypothesis_format`.

What G_H computes
-----------------
The nodes are ``embed``, every head and every MLP, each at every position; an
edge lives at residual positions, so "sender at p -> receiver input at p"
(attention moves information between positions inside a head). The listed
edges E define the important paths: **every input-to-output path that starts
at embed and is made only of edges in E** (its closure: listing A→B and B→C
also makes embed…A→B→C important). Treeify (P2 §2) gives each path its own
copy of the input; G_H(x_r, x_c) feeds x_r to the important paths and one
shared counterfactual x_c (the pair's corrupted prompt, or its Gaussian-noised
clean prompt; under mean and zero ablation every node's ablated value) to every
other path. For an edge-closed path set this is exact
and needs one copy per node, computed in one pass over the layers:

* every node starts at its value on x_c (cached);
* a receiver's input = its x_c input + Σ over listed edges into it of
  (sender's G_H value − sender's x_c value) at the edge's positions;
  ``embed``'s G_H value is its value on x_r;
* a head's G_H value is the head recomputed from its own q, k and v inputs
  (each normalised by its own ln1 copy), an MLP's from its own input (its own
  ln2), and the output is ``ln_final`` + unembedding of the final residual
  stream built the same way.

So "all edges" gives G(x_r) (proportion explained 100 %), no edge gives
G(x_c) (0 %). A sender that no listed path reaches from embed keeps its x_c
value: its edges carry nothing (a warning says so).

Metrics (read at the final position, rows = pairs x noise samples)
------------------------------------------------------------------
For δ in ``kl`` (default: KL(G(x_r) ‖ G_H), the paper's non-cancelling
choice), ``loss`` (|Δ loss| of the clean answer, |log P_H(r) − log P(r)|) and
``logit_diff`` (|LD_H − LD| with LD = logit(r) − logit(r')) and
``token_loss`` (Goldowsky-Dill et al.'s induction setting: the mean over
every position of |L_H(t) − L(t)|, L(t) the loss of predicting the next
prompt token, the answer at the last position):

* AUE = mean over rows of δ(G(x_r), G_H(x_r, x_c))
* ATE = mean over rows of δ(G(x_r), G(x_c))   (= the AUE of "no path")
* proportion explained = 1 − AUE / ATE (can be negative); max_unexplained is
  the worst row.

:func:`attribution` is the signed per-token attribution for one reference
input: E over that pair's counterfactuals (one under STR, the K noise samples
under GN) of L(G_H) − L(G(x_r)) at every position, the loss of predicting the
next prompt token (and the answer at the last position).
"""


from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Sequence

import pandas as pd
import torch

from patching.core.data import Dataset
from patching.core.errors import PatchboardError, shown
from patching.core.models import LoadedModel
from patching.core.spec import Spec
from patching.engine.metrics import baselines
from patching.engine.readout import RowStats, row_stats
from patching.engine.resources import model_lock, path_rows, readout_rows
from patching.methods.graph import EMBED, Geometry, Node, Receiver, position_text
from patching.methods.hypothesis_format import DELTAS, Edge, Hypothesis, hypothesis_spec, live_nodes, parse
from patching.methods.path_runs import Fired, PathRuns, mlp_in_hook, position_mask, prepare_runs, qkv_hook, split_qkv
from patching.results import Result, run_meta


# ---------------------------------------------------------------- G_H


def _readout_all(runs: PathRuns, x: torch.Tensor) -> torch.Tensor:
    """[B, seq, d] final residual -> [B, seq, vocab] logits."""
    b = runs.runner.bridge
    logits = b.unembed(b.ln_final(x))
    if runs.runner.softcap is not None:
        logits = runs.runner.softcap * torch.tanh(logits / runs.runner.softcap)
    return logits


def gh_final_resid(runs: PathRuns, edges: Sequence[Edge], masks: dict, rows: slice) -> torch.Tensor:
    """The final residual stream [rows, seq, d] of G_H (see the module doc)."""
    geo = runs.geo
    L = geo.n_layers
    c = runs.corrupt
    live = live_nodes(edges, geo)
    into: dict[Receiver, list[Edge]] = {}
    for e in edges:
        if e.sender in live:
            into.setdefault(e.receiver, []).append(e)
    deltas: dict[Node, torch.Tensor] = {EMBED: runs.delta(EMBED, "clean", rows)}
    cache: dict[tuple, torch.Tensor] = {}

    # Attention normalised after the head sum (patching/engine/head_write.py):
    # the heads of one layer listed into one receiver change inside the norm
    # together, N(o_xc + Σ_listed (z_GH − z_xc) W_O) − N(o_xc) per position, so
    # listing every edge gives G(x_r) exactly and a single head its own Δ_h.
    contribs: dict[int, torch.Tensor] = {}  # layer -> [rows, seq, heads, d] (z_GH − z_xc) W_O per head
    norm = runs.normalised

    def incoming(r: Receiver) -> torch.Tensor | None:
        es = into.get(r)
        if not es:
            return None
        key = tuple((e.sender, e.positions) for e in es)
        if key not in cache:
            acc = None
            joint: dict[int, torch.Tensor] = {}  # layer -> [rows, seq, heads] which heads' changes this receiver reads
            for e in es:
                m = masks[e.positions][rows] if e.positions is not None else None
                if norm and e.sender.kind == "head":
                    w = joint.setdefault(e.sender.layer, torch.zeros(contribs[e.sender.layer].shape[:3], device=dev,
                                                                      dtype=contribs[e.sender.layer].dtype))
                    w[:, :, e.sender.head] = torch.maximum(w[:, :, e.sender.head], m.to(w.dtype) if m is not None else torch.ones_like(w[:, :, 0]))
                    continue
                d = deltas[e.sender]
                if m is not None:
                    d = d * m[..., None]
                acc = d if acc is None else acc + d
            for l, w in joint.items():
                o = runs.heads.attn_sum(l, c[f"blocks.{l}.attn.hook_z"][rows])
                n = runs.heads.post_norm[l]
                d = n(o + torch.einsum("rsh,rshm->rsm", w, contribs[l])) - n(o)
                acc = d if acc is None else acc + d
            cache[key] = acc
        return cache[key]

    split = any(r.port in ("q", "k", "v") for r in into)
    bridge = runs.lm.bridge
    dev = c["blocks.0.hook_resid_pre"].device
    with model_lock(bridge), split_qkv(bridge, split):
        for l in range(L):
            heads = [h for h in range(geo.n_heads) if Node("head", l, h) in live]
            mlp_live = Node("mlp", l) in live
            if not heads and not mlp_live:
                continue
            cache.clear()
            adds: dict[str, list[tuple[int, torch.Tensor]]] = {}
            for port in ("q", "k", "v"):
                idx = sorted({h if port == "q" else geo.group(h) for h in heads})
                for i in idx:
                    a = incoming(Receiver(port, l, i))
                    if a is not None:
                        adds.setdefault(qkv_hook(l, port), []).append((i, a))
            captured: dict[str, torch.Tensor] = {}
            fired = Fired()

            def add_hook(name, items):
                def hook(act, hook=None):
                    fired.names.add(name)
                    act = act.clone()
                    for i, a in items:
                        act[:, :, i] += a
                    return act

                return hook

            def z_hook(act, hook=None):
                captured["z"] = act.detach().clone()
                return act

            def mlp_in(act, hook=None, l=l):
                fired.names.add("mlp_in")
                # Same-layer heads are computed by now: their deltas can feed this MLP.
                z = captured["z"]
                if norm and heads:
                    W = runs.W_O[l]
                    contribs[l] = torch.einsum("rshd,hdm->rshm", (z - c[f"blocks.{l}.attn.hook_z"][rows]).to(W.dtype), W)
                for h in heads:
                    deltas[Node("head", l, h)] = (z[:, :, h] - c[f"blocks.{l}.attn.hook_z"][rows, :, h]) @ runs.W_O[l][h]
                base = c[f"blocks.{l}.hook_resid_mid"][rows]
                a = incoming(Receiver("mlp", l)) if mlp_live else None
                return base + a if a is not None else base

            def mlp_out(act, hook=None):
                captured["mlp_out"] = act.detach().clone()
                return act

            hooks = [(name, add_hook(name, items)) for name, items in adds.items()]
            hooks += [(f"blocks.{l}.attn.hook_z", z_hook), (mlp_in_hook(l), mlp_in), (f"blocks.{l}.hook_mlp_out", mlp_out)]
            x = c[f"blocks.{l}.hook_resid_pre"][rows]
            with bridge.hooks(fwd_hooks=hooks):
                runs.runner.run_from(l, x, stop=l + 1)
            fired.check(list(adds) + ["mlp_in"])
            if mlp_live:
                deltas[Node("mlp", l)] = captured["mlp_out"] - c[f"blocks.{l}.hook_mlp_out"][rows]
    final = c["ln_final.hook_in"][rows]
    cache.clear()
    a = incoming(Receiver("logits", L))
    return final + a if a is not None else final


def _masks(hyp_edges: Sequence[Edge], ds: Dataset, K: int, device) -> dict:
    out = {}
    for e in hyp_edges:
        if e.positions is not None and e.positions not in out:
            out[e.positions] = position_mask(e.positions, ds, K, "hypothesis", f"positions {position_text(e.positions)}").to(device)
    return out


def _deltas(stats, ref, token_loss: torch.Tensor, ref_token_loss: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "kl": stats.kl,
        "loss": (stats.logprob - ref.logprob).abs(),
        "logit_diff": (stats.ld - ref.ld).abs(),
        # The paper's induction setting: mean over every position of |Δ per-token loss|.
        "token_loss": (token_loss - ref_token_loss).abs().mean(-1),
    }


def evaluate(spec: Spec, lm: LoadedModel, ds: Dataset, hypothesis: Hypothesis | dict | str, runs: PathRuns | None = None,
             progress: Callable[[int, int], None] | None = None) -> Result:
    """AUE, ATE and proportion explained over the dataset, for every δ; and,
    from the same G_H runs, the per-token attribution of every pair
    (``meta["attribution"]``, read with :func:`attribution_table`). Holds the
    model's lock throughout: G_H switches the model to split q/k/v inputs."""
    with model_lock(lm.bridge):
        return _evaluate(spec, lm, ds, hypothesis, runs, progress)


def _evaluate(
    spec: Spec,
    lm: LoadedModel,
    ds: Dataset,
    hypothesis: Hypothesis | dict | str,
    runs: PathRuns | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """AUE, ATE and proportion explained over the dataset, for every δ; and,
    from the same G_H runs, the per-token attribution of every pair
    (``meta["attribution"]``, read with :func:`attribution_table`)."""
    spec = hypothesis_spec(spec)
    t0 = time.time()
    geo = Geometry.of(lm)
    hyp = hypothesis if isinstance(hypothesis, Hypothesis) else parse(hypothesis, geo)
    runs = runs or prepare_runs(lm, ds, spec)
    dev = runs.answer.device
    masks = _masks(hyp.edges, ds, runs.K, dev)
    R, K, seq = runs.rows, runs.K, ds.seq_len
    # Whole-sequence readouts dominate memory: a block of rows per pass.
    max_rows = max(K, min(path_rows(lm.cfg, seq, True), readout_rows(lm.cfg, seq)))
    max_rows -= max_rows % K  # whole pairs per block
    blocks = [slice(r, min(R, r + max_rows)) for r in range(0, R, max_rows)]
    targets = torch.cat([ds.clean_tokens[:, 1:], ds.answer_ids[:, None]], 1).to(dev).repeat_interleave(K, 0)  # [R, seq]
    gh, ref_r, ref_c = [], [], []
    losses: dict[str, list[torch.Tensor]] = {"hypothesis": [], "clean": [], "counterfactual": []}
    row_losses: dict[str, list[torch.Tensor]] = {"hypothesis": [], "clean": [], "counterfactual": []}  # per row [rows, seq]
    for i, rows in enumerate(blocks, 1):
        final = gh_final_resid(runs, hyp.edges, masks, rows)
        a, cn, lp = runs.answer[rows], runs.counter[rows], runs.clean_logprobs[rows]
        # Every output goes through the same readout, so "no path" is G(x_c) exactly.
        for name, x, acc in (("hypothesis", final, gh), ("clean", runs.clean["ln_final.hook_in"][rows], ref_r),
                             ("counterfactual", runs.corrupt["ln_final.hook_in"][rows], ref_c)):
            logits = _readout_all(runs, x).float()
            acc.append(row_stats(logits[:, -1], a, cn, lp))
            tl = -torch.log_softmax(logits, -1).gather(-1, targets[rows][..., None])[..., 0]  # [rows, seq]
            losses[name].append(tl.reshape(-1, K, seq).mean(1))  # E over the pair's counterfactuals
            row_losses[name].append(tl)
            del logits
        if progress:
            progress(i, len(blocks))

    gh_s, r_s, c_s = RowStats.cat(gh), RowStats.cat(ref_r), RowStats.cat(ref_c)
    tok = {k: torch.cat(v) for k, v in row_losses.items()}
    un, te = _deltas(gh_s, r_s, tok["hypothesis"], tok["clean"]), _deltas(c_s, r_s, tok["counterfactual"], tok["clean"])
    rows_out = []
    for d in DELTAS:
        aue, ate = float(un[d].mean()), float(te[d].mean())
        prop = 1.0 - aue / ate if ate > 1e-12 else float("nan")
        rows_out.append({"delta": d, "aue": aue, "ate": ate, "proportion_explained": prop, "max_unexplained": float(un[d].max())})
    table = pd.DataFrame(rows_out)
    tok = lm.tokenizer
    tgt = torch.cat([ds.clean_tokens[:, 1:], ds.answer_ids[:, None]], 1)
    meta = run_meta(
        lm, ds, R, runs.sigma, t0, kind="hypothesis", name=hyp.name, n_edges=len(hyp.edges),
        n_live_nodes=len(live_nodes(hyp.edges, geo)) - 1, hypothesis_digest=hyp.digest(), hypothesis_warnings=hyp.warnings,
        per_row={d: [float(x) for x in un[d]] for d in DELTAS}, per_row_total={d: [float(x) for x in te[d]] for d in DELTAS},
        attribution={
            "tokens": [[tok.decode([int(t)]) for t in row] for row in ds.clean_tokens],
            "targets": [[tok.decode([int(t)]) for t in row] for row in tgt],
            **{f"loss_{k}": torch.cat(v).cpu().tolist() for k, v in losses.items()},
        },
        n_kv_heads=geo.n_kv,
    )
    meta["hypothesis"] = hyp.to_dict()
    return Result(spec=spec, table=table, baselines=baselines(runs.clean_stats, runs.corrupt_stats), meta=meta,
                  kind="hypothesis", params={"edges": hyp.canonical()})


def attribution_table(meta: dict, pair: int = 0) -> pd.DataFrame:
    """The signed per-token attribution of one pair from an evaluation's meta:
    at each position t, E_{x_c}[L(G_H) − L(G(x_r))] for predicting the clean
    prompt's token t+1 (the answer at the last position); positive = the
    hypothesis raises the loss there. ``counterfactual`` is the same for
    G(x_c) (what "no path" gives)."""
    att = meta.get("attribution") or {}
    n = len(att.get("tokens") or [])
    if not isinstance(pair, int) or isinstance(pair, bool) or not 0 <= pair < n:
        raise PatchboardError("pair", f"{shown(pair, 20)} is not a pair index; use 0-{n - 1}")
    h, r, c = (att[f"loss_{k}"][pair] for k in ("hypothesis", "clean", "counterfactual"))
    seq = len(h)
    return pd.DataFrame({
        "pos": list(range(seq)),
        "token": att["tokens"][pair],
        "target": att["targets"][pair],
        "loss_clean": r,
        "loss_hypothesis": h,
        "loss_counterfactual": c,
        "attribution": [x - y for x, y in zip(h, r)],
        "counterfactual": [x - y for x, y in zip(c, r)],
    })


def attribution(
    spec: Spec,
    lm: LoadedModel,
    ds: Dataset,
    hypothesis: Hypothesis | dict | str,
    pair: int = 0,
    runs: PathRuns | None = None,
) -> pd.DataFrame:
    """Signed per-token attribution for the reference input of ``pair`` (see
    :func:`attribution_table`): E over that pair's counterfactuals (one under
    STR, the K noise samples under GN)."""
    if not isinstance(pair, int) or not 0 <= pair < ds.n:
        raise PatchboardError("pair", f"{shown(pair, 20)} is not a pair index; use 0-{ds.n - 1}")
    # The runs of the whole dataset (a leave-one-out mean needs the other prompts), then the pair's rows.
    runs = runs or prepare_runs(lm, ds, hypothesis_spec(spec))
    one = Dataset(pairs=[ds.pairs[pair]], clean_tokens=ds.clean_tokens[pair:pair + 1], corrupt_tokens=ds.corrupt_tokens[pair:pair + 1],
                  answer_ids=ds.answer_ids[pair:pair + 1], counter_ids=ds.counter_ids[pair:pair + 1],
                  answer_sets=ds.answer_sets[pair:pair + 1] if ds.answer_sets is not None else None,
                  counter_sets=ds.counter_sets[pair:pair + 1] if ds.counter_sets is not None else None,
                  key_positions=[ds.key_positions[pair]], position_labels=ds.position_labels, clean_strs=ds.clean_strs,
                  corrupt_strs=ds.corrupt_strs)
    if runs is not None:
        K = runs.K
        rows = slice(pair * K, (pair + 1) * K)
        sub = {k: v[rows] for k, v in runs.clean.items()}, {k: v[rows] for k, v in runs.corrupt.items()}
        runs = replace(runs, clean=sub[0], corrupt=sub[1], answer=runs.answer[rows], counter=runs.counter[rows],
                       clean_logprobs=runs.clean_logprobs[rows], rows=K)
    res = evaluate(spec, lm, one, hypothesis, runs=runs)
    t = attribution_table(res.meta, 0)
    t.insert(1, "pos_label", ds.position_labels)
    return t


