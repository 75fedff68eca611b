"""``python -m patching across-models``: the same study on several models,
compared where their components cannot be matched one to one (the numbers of
the Across models page; :mod:`patching.studies.cross_model`).

    python -m patching across-models --models smollm2-135m,gemma-3-270m --task ioi --n-pairs 8 --out across.csv

Per model: effects by relative depth (attention and MLP outputs), the
attention share, heads detected, and which factor of the Disagreement grid
changes the answer most, each with a bootstrap interval over prompts. Sweeps
already stored are read; the others are computed and stored (``--stored-only``
computes nothing). Writes one long table (``what``, ``model``, ``value``,
``lo``, ``hi``, ...) and prints one sentence per comparison.
"""

from __future__ import annotations

import argparse
import sys

from patching.cli.common import add_output_args, add_spec_args, spec_from_args, table_format, write_table


def register(sub) -> None:
    p = sub.add_parser("across-models", help="the same study on several models: depth, attention share, detections, factors")
    add_spec_args(p, exclude=("model", "component", "window", "method"))
    p.add_argument("--models", required=True, help="2 to 4 models, comma-separated (e.g. smollm2-135m,gemma-3-270m)")
    p.add_argument("--settings", default=None, help="the Disagreement grid's settings for the factor comparison (default '*/*/*': "
                                                    "every corruption, metric and direction at --ioi-corrupt)")
    p.add_argument("--stored-only", action="store_true", help="compute nothing; fail if a sweep is not stored")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="resamples of the prompts for the intervals")
    add_output_args(p)
    p.set_defaults(func=cmd_across)


def cmd_across(a: argparse.Namespace) -> int:
    from patching.core.config import check_allowed
    from patching.core.errors import PatchboardError
    from patching.core.registry import REGISTRY
    from patching.store import Store
    from patching.studies import cross_model

    a.model = "smollm2-135m"  # replaced per model
    a.component, a.window, a.method = "head", 1, "exact"
    from dataclasses import replace

    # Validated as a str spec, the noise settings would be reset; the grid's gn settings read them.
    spec = replace(spec_from_args(a), noise_scale=a.noise_scale, noise_samples=a.noise_samples)
    table_format(a.out, a.format)  # a bad --out fails before any work
    models = cross_model.parse_models(a.models)
    for m in models:
        check_allowed(m, "*")
    if not 1 <= a.bootstrap <= 100_000:
        raise PatchboardError("bootstrap", f"{a.bootstrap} is not a whole number from 1 to 100000")
    study = cross_model.Study(spec, models, a.settings or cross_model.DEFAULT_SETTINGS)
    for m in models:
        study.grid_specs(m)  # bad settings fail before any model loads
    store = Store()
    cm = cross_model.lookup(study, store, REGISTRY.fingerprint)
    if not cm.complete:
        if a.stored_only:
            raise PatchboardError("stored-only", "not stored: " + "; ".join(cm.missing()))
        cm = cross_model.compute(study, store, progress=lambda t: print(t, file=sys.stderr))
    rep = cross_model.report(cm, n_boot=a.bootstrap)
    for line in rep.lines:
        print(line, file=sys.stderr)
    write_table(cross_model.export_table(rep), a.out, a.format)
    return 0
