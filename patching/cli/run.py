"""``python -m patching run``: one activation-patching sweep.

A stored spec is answered from the store without importing torch or loading
the model (the embedded model's fingerprint is known from its sidecar).
"""

from __future__ import annotations

import argparse
import sys
import time

from patching.cli.common import add_output_args, add_spec_args, progress_bar, spec_from_args, table_format, write_table


def register(sub) -> None:
    r = sub.add_parser("run", help="an activation-patching sweep")
    add_spec_args(r)
    add_output_args(r)
    r.set_defaults(func=cmd_run)


def cmd_run(a: argparse.Namespace) -> int:
    from patching import service
    from patching.core.registry import REGISTRY
    from patching.store import Store

    spec = spec_from_args(a)
    table_format(a.out, a.format)  # a bad --out fails before any work
    store = Store()
    t0 = time.time()
    res = service.lookup(spec, store)
    if res is not None:
        fp = REGISTRY.fingerprint(spec.model)
        print(f"from store: {spec.label()} (computed {time.strftime('%Y-%m-%d %H:%M', time.localtime(res.meta.get('created_at', 0)))}, key {service.key_of(spec, fp)[:12]})", file=sys.stderr)
    else:
        res = service.run(spec, store=store, progress=progress_bar(spec.component))
        if res.from_store:
            print(f"from store: {spec.label()}", file=sys.stderr)
        else:
            print(f"computed in {res.meta['compute_seconds']:.1f}s and stored: {spec.label()}", file=sys.stderr)
    for w in res.meta.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    b = res.baselines
    print(f"baselines: clean LD {b['clean_logit_diff']:.4f}, corrupt LD {b['corrupt_logit_diff']:.4f}, clean P {b['clean_prob']:.4f}, corrupt P {b['corrupt_prob']:.4f}, KL(clean||corrupt) {b['corrupt_kl']:.4f}"
          + (f", KL(corrupt||clean) {b['corrupt_clean_kl']:.4f}" if "corrupt_clean_kl" in b else "")
          + f", clean LD>0 on {100 * b['clean_accuracy']:.0f}% of rows"
          + (f", corruption flips the preferred answer on {100 * b['flipped_fraction']:.0f}% of pairs" if "flipped_fraction" in b else ""), file=sys.stderr)
    write_table(res.export_table(), a.out, a.format)
    if a.out:
        print(f"wrote {a.out} ({len(res.table)} rows, metric {spec.metric}) in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0
