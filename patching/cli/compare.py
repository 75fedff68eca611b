"""``python -m patching compare`` (or ``disagreement``, the page's name): rank
agreement between patching settings, the numbers of the Disagreement page
(:mod:`patching.studies.disagreement`).

    python -m patching compare --model smollm2-135m --task ioi --component head \\
        [--settings str/logit_diff/denoise,gn/prob/noise] [--k 10] --out compare.csv

Writes one row per pair of settings: ``setting_a,setting_b,spearman,kendall,
topk_jaccard,sign_flips`` then ``differs_in,n,sign_flips_detected,k`` and,
from the per-prompt values, the intervals and noise floors
(:data:`patching.studies.disagreement.report.INTERVAL_COLUMNS`). Only
measurements count: cells that are zero by construction are left out of every
number. Sweeps already in the store are read, the others computed and stored;
the grid's statistics are read from the store too, or computed from the sweeps
and stored (the page reads the same rows:
:mod:`patching.studies.disagreement.stored`). ``--effects FILE`` also writes
every effect (a column per setting; empty where not measured), from which
every point statistic can be recomputed; ``--disagreements FILE`` every
disagreement with its test (p, Benjamini-Hochberg q, significant at
``--fdr``); ``--factors FILE`` the agreement per factor (the page's bar
chart), ``--consensus FILE`` every component x setting cell (the consensus
view) and ``--summary`` prints the page's answer.
"""

from __future__ import annotations

import argparse
import sys
import time

from patching.cli.common import add_compute_args, add_output_args, bounded_int, add_spec_args, compute_settings, progress_bar, spec_from_args, table_format, write_table


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        aliases=["disagreement"],  # the Disagreement page's name
        help="rank agreement between corruption/metric/direction settings",
        description="Compare the effects of every component under several patching settings "
        "(corruption x metric x direction, and for IOI which names are corrupted). The grid spans both "
        "corruptions and directions, so --corruption and --direction are ignored; --noise-scale and "
        "--noise-samples apply to the gn settings, --ioi-corrupt to 3-part settings. A setting ending in @atp "
        "(@atp_star, @ig) is estimated by attribution patching; --method atp adds every setting's @atp twin "
        "(ig settings use 5 steps).",
    )
    add_spec_args(p, exclude=("metric",))
    p.add_argument("--settings", default=None,
                   help="comma-separated corruption/metric/direction[/ioi_corrupt][@method] settings; '*' for every value of a part "
                        "(e.g. 'str/logit_diff/denoise,gn/prob/noise,str/logit_diff/denoise@atp' or '*/*/*/s2'); default: the whole grid "
                        "(for ioi: 36 settings = 12 sweeps)")
    p.add_argument("--k", type=bounded_int("k", 1, 10_000), default=10, help="top-k for the Jaccard overlap (by |effect|)")
    p.add_argument("--stored-only", action="store_true", help="compute nothing; fail if a sweep is not stored")
    p.add_argument("--effects", metavar="FILE", default=None, help="also write every component's effect under every setting")
    p.add_argument("--summary", action="store_true", help="print the page's answer (and the findings) to stderr")
    p.add_argument("--factors", metavar="FILE", default=None,
                   help="also write the agreement between settings that differ in one factor, per factor (the page's bar chart)")
    p.add_argument("--consensus", metavar="FILE", default=None,
                   help="also write every component x setting: effect, interval, z, 2-SD detection, stability (the consensus view)")
    add_output_args(p)
    add_compute_args(p, recompute=False)
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples of the prompts (jointly across settings) for the intervals and robust labels (0: none)")
    p.add_argument("--ci", type=float, default=0.95, help="interval coverage (expanded percentile bootstrap)")
    p.add_argument("--fdr", type=float, default=0.05,
                   help="false discovery rate q: a disagreement is significant when its Benjamini-Hochberg q-value is at most this")
    p.add_argument("--disagreements", metavar="FILE", default=None,
                   help="also write every disagreement (detected/missed, sign flip) with its paired sign-flip test over the prompts: "
                        "kind,component,setting_a,setting_b,effect_a,effect_b,difference,p,q,significant")
    p.set_defaults(func=cmd_compare)


def cmd_compare(a: argparse.Namespace) -> int:
    from patching.core.errors import PatchboardError
    from patching.core.registry import REGISTRY
    from patching.store import Store
    from patching.studies.disagreement import grid as disagreement_grid
    from patching.studies.disagreement import answer, grid_stats, robust, stored, view

    t0 = time.time()
    if a.k < 1:
        raise PatchboardError("k", f"{a.k} must be a positive whole number")
    a.corruption = "gn"  # keeps --noise-scale/--noise-samples through validation; each setting sets its own
    spec = spec_from_args(a)
    table_format(a.out, a.format)
    if not 0 <= a.bootstrap <= 100_000:
        raise PatchboardError("bootstrap", f"{a.bootstrap} must be a whole number from 0 to 100000 (0 = no intervals)")
    if not 0 < a.ci < 1:
        raise PatchboardError("ci", f"{a.ci} must be between 0 and 1, e.g. 0.95")
    if not 0 < a.fdr < 1:
        raise PatchboardError("fdr", f"{a.fdr} must be between 0 and 1, e.g. 0.05")
    for extra in (a.effects, a.factors, a.consensus, a.disagreements):
        if extra:
            table_format(extra, None)  # a bad file name fails before any work
    # --method atp|atp_star|ig: each setting beside its estimate (setting@atp); exact: the settings as given.
    specs = disagreement_grid.grid_specs(spec, disagreement_grid.with_method(disagreement_grid.parse_settings(a.settings, spec), spec.method))
    if len(specs) < 2:
        raise PatchboardError("settings", "give at least two settings to compare")
    settings = list(specs)
    store = Store()
    executor = compute_settings(a)
    fp = REGISTRY.fingerprint(spec.model, spec.dtype)
    grid = disagreement_grid.lookup_grid(spec, store, fp, settings) if fp else None
    grid_fp = fp
    if grid is None or not grid.complete:
        if a.stored_only:
            missing = grid.missing if grid is not None else settings
            raise PatchboardError("stored-only", f"{len(missing)} setting(s) not stored, e.g. {missing[0]}; run without --stored-only to compute them")
        from patching.service import get_model

        lm = get_model(spec.model, spec.dtype) if executor is None else None
        if grid is None:
            grid = disagreement_grid.lookup_grid(spec, store, lm.fingerprint if lm is not None else executor.fingerprint(spec.model, spec.dtype),
                                                 settings)
        n = grid.n_missing_sweeps
        if n:
            where = f" on {executor.n_workers} Ray worker(s)" if executor is not None else ""
            print(f"computing {n} of {grid.n_sweeps} sweep(s){where}; the others are stored", file=sys.stderr)
        grid_fp = lm.fingerprint if lm is not None else executor.fingerprint(spec.model, spec.dtype)
        grid = disagreement_grid.load_or_compute_grid(spec, store, lm, progress=progress_bar(f"grid ({n} sweeps)") if n else None,
                                                      settings=settings, executor=executor)
        print(f"{grid.computed} sweep(s) computed and stored in {grid.seconds:.1f}s", file=sys.stderr)
    else:
        print(f"all {grid.n_sweeps} sweep(s) from the store", file=sys.stderr)
    stats, key, new = stored.load_or_compute(store, spec, grid.available, grid_fp, a.k, n_boot=a.bootstrap, level=a.ci, fdr=a.fdr)
    print(f"grid statistics {'computed and stored' if new else 'from the store'} ({key[:12]})", file=sys.stderr)
    if a.bootstrap and not stats.has_intervals:
        print("warning: some sweeps have no per-prompt values (attribution estimates, or computed by an older version); no intervals", file=sys.stderr)
    table = stats.agreement
    if stats.has_intervals:  # the page leaves Kendall's intervals out (O(cells^2) per resample); the CLI adds them
        samples = robust.grid_samples(grid, a.bootstrap)
        kd = robust.robust_agreement(samples, a.k, a.ci, kendall=True)[["setting_a", "setting_b", "kendall_lo", "kendall_hi"]]
        table = table.merge(grid_stats.either_order(kd, table), on=["setting_a", "setting_b"], how="left")
    if a.disagreements and stats.has_intervals:
        write_table(stats.tests, a.disagreements, None)
    write_table(table, a.out, a.format)
    if a.effects:
        write_table(view.effects_table(stats), a.effects, None)
    if a.factors:
        write_table(stats.factors, a.factors, None)
    if a.consensus:
        write_table(view.cells_table(stats), a.consensus, None)
    if a.summary:
        for line in answer.sentences(stats) + answer.test_lines(stats):
            print(f"- {answer.plain(line)}", file=sys.stderr)
    if a.out:
        print(f"wrote {a.out} ({len(table)} pairs of {len(stats.settings)} settings, top-{a.k}) in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0
