"""``python -m patching run``: one activation-patching sweep.

A stored spec is answered from the store without importing torch or loading
the model (the embedded model's fingerprint is known from its sidecar).
"""

from __future__ import annotations

import argparse
import sys
import time

from patching.cli.common import (add_compute_args, add_output_args, add_spec_args, compute_settings, created_text, print_origin, progress_bar,
                                 spec_from_args, table_format, write_table)
from patching.core.errors import PatchboardError


def add_uncertainty_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of the prompts for the 95%% intervals and detection stability (0: none)")
    p.add_argument("--ci", type=float, default=0.95, help="interval coverage, between 0 and 1 (default 0.95)")
    p.add_argument("--per-prompt", metavar="FILE", default=None,
                   help="also write the per-prompt values (CSV: component,layer,head,pos,prompt, then one column per metric)")


def check_uncertainty_args(a: argparse.Namespace) -> None:
    if not 0 <= a.bootstrap <= 100_000:
        raise PatchboardError("bootstrap", f"{a.bootstrap} must be a whole number from 0 to 100000 (0 = no intervals)")
    if not 0 < a.ci < 1:
        raise PatchboardError("ci", f"{a.ci} must be between 0 and 1, e.g. 0.95")
    if a.per_prompt:
        table_format(a.per_prompt, "csv")


def register(sub) -> None:
    r = sub.add_parser("run", help="an activation-patching sweep")
    add_spec_args(r)
    add_output_args(r)
    add_uncertainty_args(r)
    add_compute_args(r)
    r.set_defaults(func=cmd_run)


def cmd_run(a: argparse.Namespace) -> int:
    from patching import service
    from patching.store import Store

    spec = spec_from_args(a)
    table_format(a.out, a.format)  # a bad --out fails before any work
    check_uncertainty_args(a)
    store = Store()
    executor = compute_settings(a)
    t0 = time.time()
    res = None if a.recompute else service.lookup(spec, store)
    if res is not None:
        print_origin(res, spec.label(), stored=f"computed {created_text(res.meta)}, key {res.key[:12]}", note="warning")
    else:
        res = service.run(spec, store=store, progress=progress_bar(spec.component), executor=executor, fresh=a.recompute)
        print_origin(res, spec.label(), note="warning")
    b = res.baselines
    print(f"baselines: clean LD {b['clean_logit_diff']:.4f}, corrupt LD {b['corrupt_logit_diff']:.4f}, clean P {b['clean_prob']:.4f}, corrupt P {b['corrupt_prob']:.4f}, KL(clean||corrupt) {b['corrupt_kl']:.4f}"
          + (f", KL(corrupt||clean) {b['corrupt_clean_kl']:.4f}" if "corrupt_clean_kl" in b else "")
          + f", clean LD>0 on {100 * b['clean_accuracy']:.0f}% of rows"
          + (f", corruption flips the preferred answer on {100 * b['flipped_fraction']:.0f}% of pairs" if "flipped_fraction" in b else ""), file=sys.stderr)
    if spec.method != "exact":
        # The approximation's error in plain view, when the exact sweep is stored.
        ex = service.lookup(spec.with_(method="exact"), store)
        if ex is not None:
            from patching.analysis.estimate_error import agreement, sign_flags, sign_note, summary_line

            print(summary_line(agreement(res.table, ex.table, spec.metric, method=spec.method)), file=sys.stderr)
            note = sign_note(sign_flags(res.table, ex.table, spec.metric, method=spec.method), spec.method)
            if note:
                print(f"note: {note}", file=sys.stderr)
        else:
            print(f"exact result not stored; compare with: {spec.with_(method='exact').to_cli()}", file=sys.stderr)
    write_table(with_intervals(res, a), a.out, a.format)
    if a.per_prompt:
        from patching.analysis.uncertainty import per_prompt_table

        pp = per_prompt_table(res)
        if pp is None:
            raise PatchboardError("per-prompt", "this result has no per-prompt values (an attribution estimate, or computed by an older "
                                  "version); per-prompt values come with exact sweeps")
        write_table(pp, a.per_prompt, "csv")
    if a.out:
        print(f"wrote {a.out} ({len(res.table)} rows, metric {spec.metric}) in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


def with_intervals(res, a: argparse.Namespace):
    """The export table with value_lo/value_hi after value, then every
    metric's interval and the detection stability (when --bootstrap > 0)."""
    t = res.export_table()
    if not a.bootstrap:
        return t
    from patching.analysis.uncertainty import result_intervals

    iv = result_intervals(res, a.bootstrap, float(a.ci))
    if iv is None:
        if res.spec.method == "exact":
            print("warning: no per-prompt values stored for this result (an older version computed it); no intervals", file=sys.stderr)
        return t
    t.insert(5, "value_lo", iv["value_lo"].to_numpy())
    t.insert(6, "value_hi", iv["value_hi"].to_numpy())
    for c in iv.columns:
        if c not in ("value_lo", "value_hi"):
            t[c] = iv[c].to_numpy()
    return t
