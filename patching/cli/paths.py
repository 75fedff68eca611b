"""``python -m patching paths|hypothesis|derive-hypothesis``: path patching
from the command line (registered by :mod:`patching.cli`).

    python -m patching paths --model smollm2-135m --task ioi --receivers "10.1:q,10.1:k" --out paths.csv
    python -m patching paths --task ioi --receivers logits            # each node's direct effect
    python -m patching paths --task ioi --receivers '*' --method eap  # every edge from gradients (EAP; eap_ig: EAP-IG)
    python -m patching hypothesis --task induction --hypothesis examples/induction.json [--format json]
    python -m patching derive-hypothesis induction --out examples/induction.json [--eval-seed 1 --eval-n-pairs 32 --baselines 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from patching.cli.common import (add_compute_args, add_output_args, bounded_int, add_spec_args, compute_settings, created_text, model_name,
                                 print_origin, progress_bar, spec_from_args, table_format, write_table)
from patching.core.errors import PatchboardError
from patching.core.limits import MAX_PAIRS
from patching.requests import HYPOTHESIS_FIELDS, PATH_FIELDS, VIEW_FIELDS, HypothesisEval, PathSweep

def add_request_args(p: argparse.ArgumentParser, fields, required: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> None:
    """One flag per declared request parameter (:mod:`patching.requests`),
    its old names as aliases; ``dest`` is ``req_<name>`` so no flag lands in
    a Spec field of the same name (the path ``--method`` is not the Spec's)."""
    for name, s in fields.items():
        if only is not None and name not in only:
            continue
        flags = [f"--{s.flag}", *(f"--{a}" for a in s.aliases)]
        kw: dict = {"dest": f"req_{name}", "help": s.cli}
        if s.kind == "bool":
            kw |= {"action": "store_true"}
        elif s.kind == "choice":
            kw |= {"choices": s.choices, "default": s.default}
        elif s.kind == "int":
            kw |= {"type": bounded_int(s.flag, int(s.lo), int(s.hi)), "default": s.default, "metavar": "N"}
        else:
            kw |= {"default": s.default}
        if name in required:
            kw |= {"required": True, "default": None}
        p.add_argument(*flags, **kw)


def request_args(a: argparse.Namespace, fields) -> dict:
    """The declared parameters given on the command line, by name."""
    return {name: getattr(a, f"req_{name}") for name in fields if hasattr(a, f"req_{name}")}


def register(sub) -> None:
    p = sub.add_parser("paths", help="path patching: every sender reaching the output only through chosen receivers",
                       description="Path patching: for every sender (embed, each head, each MLP), its write difference "
                       "(source - base) reaches the output only through the receivers' own inputs; every other path stays at "
                       "its base value. --form direct (all receivers in one run), tl_direct (TransformerLens's "
                       "get_act_patch_direct_path: one receiver per run, a row per edge) or wang (Wang et al.'s three steps). "
                       "Same CSV columns as `run` (tl_direct adds receiver).")
    add_spec_args(p, exclude=PathSweep.spec_unused)
    add_request_args(p, PATH_FIELDS, required=("receivers",))
    p.add_argument("--edges", metavar="FILE", default=None,
                   help="with --method eap|eap_ig: also write every edge on its own (sender, receiver, every metric; not stored)")
    add_output_args(p)
    add_compute_args(p)
    p.set_defaults(func=cmd_paths)

    h = sub.add_parser("hypothesis", help="evaluate a path-patching hypothesis: AUE, ATE and proportion explained",
                       description="G_H gives the clean input (x_r) to the hypothesis' paths and the pair's corrupted "
                       "input (x_c) to every other path (Treeify). Prints AUE, ATE and 1 - AUE/ATE for the chosen δ. "
                       "The file format is documented in patching/methods/hypothesis_format.py. --direction does not apply.")
    add_spec_args(h, exclude=HypothesisEval.spec_unused)
    h.add_argument("--hypothesis", dest="req_hypothesis", required=True, metavar="FILE", help=HYPOTHESIS_FIELDS["hypothesis"].cli)
    add_request_args(h, VIEW_FIELDS, only=("delta", "pair"))
    h.set_defaults(req_pair=None)  # no per-token attribution unless a pair is asked for
    h.add_argument("--format", choices=("text", "json"), default="text")
    h.add_argument("--baselines", type=bounded_int("baselines", 0, 200), default=0, metavar="N",
                   help="also evaluate the same paths with no heads and N random head sets of the same size (N >= 20 for a "
                        "distribution), on the same prompts, and print them beside the proportion explained (0: none)")
    h.set_defaults(func=cmd_hypothesis)

    d = sub.add_parser("derive-hypothesis", help="derive a built-in example hypothesis with the tool's own sweeps")
    d.add_argument("example", choices=("induction", "ioi"))
    d.add_argument("--model", type=model_name, default="smollm2-135m")
    d.add_argument("--seed", type=bounded_int("seed", 0, 2**31 - 1), default=0)
    d.add_argument("--n-pairs", type=bounded_int("n-pairs", 1, MAX_PAIRS), default=8)
    d.add_argument("--out", help="write the hypothesis JSON here (stdout if omitted)")
    d.add_argument("--eval-seed", type=bounded_int("eval-seed", 0, 2**31 - 1), default=None,
                   help="score the hypothesis on this seed's prompts, disjoint from the derivation's (default: --seed + 1)")
    d.add_argument("--eval-n-pairs", type=bounded_int("eval-n-pairs", 1, MAX_PAIRS), default=32, help="prompts of the held-out evaluation")
    d.add_argument("--baselines", type=bounded_int("baselines", 0, 200), default=20, metavar="N",
                   help="random head sets of the same size beside it, and the no-heads baseline (0: no held-out evaluation)")
    d.set_defaults(func=cmd_derive)


def cmd_paths(a: argparse.Namespace) -> int:
    from patching import service
    from patching.methods.graph import parse_position_spec
    from patching.methods.path_request import check_method, data_label
    from patching.store import Store

    spec = spec_from_args(a)
    table_format(a.out, a.format)
    req = service.PathSweep(spec, **request_args(a, PATH_FIELDS))
    if a.edges:
        if req.method == "exact":
            raise PatchboardError("edges", "--edges writes the gradient estimates of --method eap or eap_ig; exact per-edge runs are --form tl_direct (a row per edge)")
        table_format(a.edges, None)  # a bad --edges fails before any work
    t0 = time.time()
    check_method(req.method, req.form, req.ig_steps, spec.corruption)  # a method the form cannot take fails before the model loads
    parse_position_spec(req.sender_positions, "sender-positions", "sender positions", from_end=False)  # before the model's shape is read
    geo = service.geometry_for(spec.model)
    if geo is not None:
        req.canonical(geo)  # bad receivers/senders fail before the model loads
    store = Store()
    executor = compute_settings(a)
    res = None if a.recompute else service.lookup(req, store)
    if res is None:
        res = service.run(req, store=store, progress=progress_bar("senders"), executor=executor, fresh=a.recompute)
    how = f" ({res.meta['estimate']})" if res.meta.get("estimate") else {"wang": " (Wang form)", "tl_direct": " (TransformerLens form, per edge)"}.get(req.form, "")
    print_origin(res, f"paths {res.meta.get('senders', '*')} → {res.receivers} · {data_label(spec)}", how, f"computed {created_text(res.meta)}")
    if req.method != "exact":
        from patching.analysis.estimate_error import agreement, sign_flags, sign_note, summary_line

        ex = service.lookup(req.exact(), store)
        if ex is not None:
            print(summary_line(agreement(res.table, ex.table, spec.metric)), file=sys.stderr)
            note = sign_note(sign_flags(res.table, ex.table, spec.metric, method=req.method), req.method)
            if note:
                print(f"note: {note}", file=sys.stderr)
        else:
            print("exact sweep not stored; compare with the same command and --method exact", file=sys.stderr)
    b = res.baselines
    print(f"baselines: clean LD {b['clean_logit_diff']:.4f}, corrupt LD {b['corrupt_logit_diff']:.4f}, KL(clean||corrupt) {b['corrupt_kl']:.4f}", file=sys.stderr)
    write_table(res.export_table(), a.out, a.format)
    if a.out:
        print(f"wrote {a.out} ({len(res.table)} rows, metric {spec.metric}) in {time.time() - t0:.1f}s", file=sys.stderr)
    if a.edges:
        from patching.engine.resources import model_lock
        from patching.methods.edges import edge_table

        req = res.request
        lm = service.get_model(spec.model, spec.dtype)
        with model_lock(lm.bridge):
            ds = service.dataset_for(req.spec, lm)
            et = edge_table(req.spec, lm, ds, req.receivers, req.senders, None if req.sender_positions == "all" else req.sender_positions,
                            req.method, req.ig_steps, ig_rule=req.ig_rule)
        write_table(et, a.edges, None)
        print(f"wrote {a.edges} ({len(et)} edges)", file=sys.stderr)
    return 0


def cmd_hypothesis(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from patching import service
    from patching.methods.graph import Geometry
    from patching.methods.hypothesis import attribution_table
    from patching.methods.hypothesis_format import hypothesis_spec, load_file, parse
    from patching.methods.path_request import data_label
    from patching.store import Store

    a.metric = "kl"
    from patching.core.spec import ABLATIONS

    a.direction = "noise" if a.corruption in ABLATIONS else "denoise"  # does not apply: x_c is the counterfactual (the ablated values)
    spec = hypothesis_spec(spec_from_args(a))
    if a.req_pair is not None and a.req_pair >= spec.n_pairs:
        raise PatchboardError("attribution", f"pair {a.req_pair} does not exist; the dataset has pairs 0-{spec.n_pairs - 1}")
    obj = load_file(a.req_hypothesis)
    geo = service.geometry_for(spec.model)
    hyp = parse(obj, geo) if geo is not None else None  # a bad file fails before the model loads
    res = service.lookup(service.HypothesisEval(spec, hyp or obj), Store()) if hyp is not None else None
    if res is None:
        service.preflight(service.HypothesisEval(spec, hyp or obj))  # refusals from the config, before the model loads
        lm = service.get_model(spec.model, spec.dtype)
        hyp = parse(obj, Geometry.of(lm))
        res = service.run(service.HypothesisEval(spec, hyp), store=Store(), lm=lm, progress=progress_bar("hypothesis"))
    row = res.row(a.req_delta)
    att = attribution_table(res.meta, a.req_pair) if a.req_pair is not None else None
    base = None
    if a.baselines:
        from patching.studies import baselines

        base = baselines.baselines_summary(baselines.evaluate_with_baselines(spec, hyp.to_dict(), store=Store(), n_random=a.baselines,
                                                                             say=lambda m: print(m, file=sys.stderr)), a.req_delta)
    if a.format == "json":
        out = {
            "hypothesis": hyp.name, "n_edges": len(hyp.edges), "delta": a.req_delta,
            "aue": row["aue"], "ate": row["ate"], "proportion_explained": row["proportion_explained"],
            "max_unexplained": row["max_unexplained"],
            "deltas": {r["delta"]: {k: r[k] for k in ("aue", "ate", "proportion_explained", "max_unexplained")} for r in res.table.to_dict("records")},
            "spec": json.loads(replace(spec).to_json()), "from_store": res.from_store,
            "warnings": hyp.warnings + res.meta.get("warnings", []), "baselines": res.baselines,
        }
        if att is not None:
            out["attribution"] = {"pair": a.req_pair, "tokens": att.to_dict("records")}
        if base is not None:
            out["baselines"] = base
        sys.stdout.write(json.dumps(out, indent=1, default=float) + "\n")
        return 0
    src = f"from store (computed {created_text(res.meta)})" if res.from_store else f"computed in {res.meta['compute_seconds']:.1f}s and stored"
    print(f"{src}: {data_label(spec, False)}", file=sys.stderr)
    for w in hyp.warnings + res.meta.get("warnings", []):
        print(f"note: {w}", file=sys.stderr)
    print(f"hypothesis: {hyp.name} ({len(hyp.edges)} edges) on {res.meta['rows']} row(s)")
    pe = row["proportion_explained"]
    print(f"delta {a.req_delta}: AUE {row['aue']:.4f}  ATE {row['ate']:.4f}  proportion explained {pe * 100:.1f}%  (max unexplained {row['max_unexplained']:.4f})")
    if base is not None:
        from patching.studies import baselines

        print(f"baselines at the same number of paths: {baselines.summary_sentence(base)}")
    for r in res.table.to_dict("records"):
        if r["delta"] != a.req_delta:
            print(f"  also delta {r['delta']}: AUE {r['aue']:.4f}  ATE {r['ate']:.4f}  proportion explained {r['proportion_explained'] * 100:.1f}%")
    if att is not None:
        print(f"per-token attribution, pair {a.req_pair} (loss(G_H) - loss(clean) predicting each next token; + = hypothesis raises the loss):")
        for r in att.to_dict("records"):
            print(f"  {r['pos']:>3} {r['token']!r:>14} -> {r['target']!r:<14} {r['attribution']:+.4f}   (no path: {r['counterfactual']:+.4f})")
    return 0


def cmd_derive(a: argparse.Namespace) -> int:
    from patching.service import get_model
    from patching.studies.derive import derive_induction_hypothesis, derive_ioi_hypothesis

    if a.out:
        table_format(a.out, "json")  # a bad --out fails before any work
    from patching.store import Store
    from patching.studies.derive import held_out

    eval_seed = a.seed + 1 if a.eval_seed is None else a.eval_seed
    if a.baselines and eval_seed == a.seed:
        raise PatchboardError("eval-seed", f"{eval_seed} is the derivation's seed; score the hypothesis on other prompts")
    lm = get_model(a.model)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if a.example == "induction":
        hyp = derive_induction_hypothesis(lm, a.seed, a.n_pairs, progress=say)
    else:
        hyp = derive_ioi_hypothesis(lm, a.seed, a.n_pairs, store=Store(), progress=say)
    if a.baselines:
        from patching.studies import baselines

        hyp["derived"]["evaluation"] = ev = held_out(hyp, lm, eval_seed, a.eval_n_pairs, a.baselines, store=Store(), progress=say)
        say(f"held out ({a.eval_n_pairs} prompts of seed {eval_seed}): {baselines.summary_sentence(ev['baselines']['kl'])}")
    text = json.dumps(hyp, indent=1, ensure_ascii=False) + "\n"
    if a.out:
        try:
            with open(a.out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise PatchboardError("out", f"cannot write {a.out!r} ({e.strerror}); check the folder exists and is writable") from None
        print(f"wrote {a.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
