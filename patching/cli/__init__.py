"""Command line: ``python -m patching run|compare|paths|hypothesis ...``.

Flag names are the spec's field names with dashes; the app's URL uses the same
names, so any view can be reproduced here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

from patching.core.errors import PatchboardError
from patching.core.spec import COMPONENTS, CORRUPTIONS, DIRECTIONS, IOI_CORRUPT, METRICS, TASKS, Spec


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise PatchboardError("arguments", f"{message} (see --help)")


def add_spec_args(p: argparse.ArgumentParser, metric: bool = True, component: bool = True) -> None:
    d = Spec()
    p.add_argument("--model", default=d.model, help="smollm2-135m (embedded), a hub id or a local folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--task", choices=TASKS, default=None, help="built-in task (default ioi)")
    g.add_argument("--pairs", metavar="FILE", help="CSV or JSONL with columns clean,corrupt,answer,counter_answer")
    p.add_argument("--n-pairs", type=int, default=d.n_pairs)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--corruption", choices=CORRUPTIONS, default=d.corruption)
    if metric:
        p.add_argument("--metric", choices=METRICS, default=d.metric)
    p.add_argument("--direction", choices=DIRECTIONS, default=d.direction)
    if component:
        p.add_argument("--component", choices=COMPONENTS, default=d.component)
        p.add_argument("--window", type=int, default=d.window, help="sliding window over layers (attn_out/mlp_out)")
    p.add_argument("--noise-scale", type=float, default=d.noise_scale, help="GN: noise std in units of the key embeddings' std")
    p.add_argument("--noise-samples", type=int, default=d.noise_samples, help="GN: noise samples per prompt")
    p.add_argument("--key-positions", default=None, help="GN, custom pairs: token positions to noise (BOS = 0), e.g. 3,4")
    p.add_argument("--ioi-corrupt", choices=IOI_CORRUPT, default=d.ioi_corrupt, help="IOI: which names the corruption replaces")


def spec_from_args(a: argparse.Namespace) -> Spec:
    from patching.core.pairs import load_pairs_file, parse_positions

    pairs = tuple(load_pairs_file(a.pairs)) if a.pairs else None
    task = None if pairs is not None else (a.task or "ioi")
    kw = dict(
        model=a.model, task=task, pairs=pairs, n_pairs=a.n_pairs, seed=a.seed, corruption=a.corruption,
        direction=a.direction, noise_scale=a.noise_scale, noise_samples=a.noise_samples,
        key_positions=parse_positions(a.key_positions) if a.key_positions else None, ioi_corrupt=a.ioi_corrupt,
    )
    if hasattr(a, "metric"):
        kw["metric"] = a.metric
    if hasattr(a, "component"):
        kw["component"] = a.component
        kw["window"] = a.window
    return Spec(**kw).validated()


def progress_bar(desc: str) -> Callable[[int, int], None]:
    """A tqdm bar with ETA on stderr, created on first call."""
    from tqdm import tqdm

    state: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True)
        bar = state["bar"]
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def write_table(df, out: str | None, fmt: str | None) -> None:
    fmt = fmt or (os.path.splitext(out)[1].lstrip(".") if out else "csv") or "csv"
    if fmt not in ("csv", "json", "parquet"):
        raise PatchboardError("format", f"{fmt!r} is not csv, json or parquet")
    if fmt == "parquet" and not out:
        raise PatchboardError("out", "parquet needs a file; give --out FILE.parquet")
    if fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "json":
        text = df.to_json(orient="records", indent=1, double_precision=15)
    if out is None:
        sys.stdout.write(text if fmt != "parquet" else "")
        return
    tmp = out + ".tmp"
    try:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        os.replace(tmp, out)
    except OSError as e:
        raise PatchboardError("out", f"cannot write {out!r} ({e.strerror}); check the folder exists and is writable") from None


def cmd_run(a: argparse.Namespace) -> int:
    from patching.service import get_model, lookup, run
    from patching.store import Store

    spec = spec_from_args(a)
    store = Store()
    t0 = time.time()
    lm = get_model(spec.model)
    hit = lookup(spec, store, lm.fingerprint)
    if hit is not None:
        res = hit
        print(f"from store: {spec.label()} (computed {time.strftime('%Y-%m-%d %H:%M', time.localtime(res.meta.get('created_at', 0)))}, key {spec.cache_key(lm.fingerprint)[:12]})", file=sys.stderr)
    else:
        res = run(spec, store=store, lm=lm, progress=progress_bar(spec.component))
        print(f"computed in {res.meta['compute_seconds']:.1f}s and stored: {spec.label()}", file=sys.stderr)
    for w in res.meta.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    b = res.baselines
    print(f"baselines: clean LD {b['clean_logit_diff']:.4f}, corrupt LD {b['corrupt_logit_diff']:.4f}, clean P {b['clean_prob']:.4f}, corrupt P {b['corrupt_prob']:.4f}, KL(clean||corrupt) {b['corrupt_kl']:.4f}", file=sys.stderr)
    write_table(res.export_table(), a.out, a.format)
    if a.out:
        print(f"wrote {a.out} ({len(res.table)} rows, metric {spec.metric}) in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m patching", description="Patchboard: activation and path patching.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="an activation-patching sweep")
    add_spec_args(r)
    r.add_argument("--out", help="output file (stdout if omitted)")
    r.add_argument("--format", choices=("csv", "json", "parquet"), default=None)
    r.set_defaults(func=cmd_run)
    for mod in ("compare_cli", "paths_cli"):
        try:
            m = __import__(f"patching.{mod}", fromlist=["register"])
        except ImportError:
            continue
        m.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        return int(a.func(a) or 0)
    except PatchboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; results finished before the interrupt stay stored, nothing partial was written", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless asked
        if os.environ.get("PATCHBOARD_DEBUG"):
            raise
        print(f"error: internal: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (set PATCHBOARD_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
