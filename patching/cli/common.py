"""What every subcommand shares: spec flags from the field table, reading
them back into a Spec, the progress bar and writing tables.

Flag names are the spec's field names with dashes; the app's URL uses the
same names, so any view can be reproduced here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Callable

from patching.core.errors import PatchboardError
from patching.core.limits import check_int_text
from patching.core.spec import FIELDS, Spec

#: Fields the CLI spells its own way (custom pairs come from a file).
_FILE_FIELDS = ("pairs",)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the flag, no usage dump
        m = re.match(r"argument (?:-\w+/)?--([\w-]+)(?:/-\w+)?: (.*)", message, re.S)
        if m:
            raise PatchboardError(m.group(1), f"{_one_line(m.group(2))} (see --help)")
        m = re.match(r"argument (\w+): (.*)", message, re.S)
        if m:
            raise PatchboardError(m.group(1), f"{_one_line(m.group(2))} (see --help)")
        raise PatchboardError("arguments", f"{_one_line(message)} (see --help)")


def _one_line(text: str, limit: int = 300) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= limit else t[:limit] + "…"


def bounded_int(flag: str, lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number from lo to hi, digits bounded first;
    a bad value is the project's error naming ``flag``."""
    def parse(text: str) -> int:
        try:
            v = check_int_text(text, flag)
        except PatchboardError as e:
            raise argparse.ArgumentTypeError(e.message) from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} must be a whole number from {lo} to {hi}")
        return v

    parse.__name__ = "int"
    return parse


def add_spec_args(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per Spec field, from the field table (``exclude`` names the
    fields a subcommand does not take). ``--task`` and ``--pairs FILE`` are
    mutually exclusive."""
    g = p.add_mutually_exclusive_group()
    for name, s in FIELDS.items():
        if name in exclude:
            continue
        target = g if name in ("task", "pairs") else p
        if name == "pairs":
            target.add_argument("--pairs", metavar="FILE", help=s.cli)
        elif name == "model":  # checked before anything loads: a path must be a model folder
            target.add_argument("--model", type=model_name, default=s.default, help=s.cli)
        elif name == "task":
            target.add_argument("--task", choices=s.choices, default=None, help=s.cli)
        elif s.kind == "choice":
            target.add_argument(f"--{s.flag}", choices=s.choices, default=s.default, help=s.cli)
        elif s.kind in ("int", "float"):
            target.add_argument(f"--{s.flag}", type=_typed(s), default=s.default, metavar="N" if s.kind == "int" else "X", help=s.cli)
        else:
            target.add_argument(f"--{s.flag}", type=_typed(s) if s.kind == "text" else None, default=s.default, help=s.cli)


def model_name(text: str) -> str:
    """An argparse type for ``--model`` (:func:`patching.core.config.check_model_name`),
    or a model this process has loaded under that name (a script or test that
    registered it)."""
    from patching.core.config import check_model_name
    from patching.core.registry import REGISTRY

    if isinstance(text, str) and text.strip() and REGISTRY.peek(text.strip()) is not None:
        return text.strip()
    try:
        return check_model_name(text)
    except PatchboardError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def _typed(s) -> Callable[[str], object]:
    def parse(text: str):
        try:
            return s.parse(text)
        except PatchboardError as e:  # argparse would drop the message
            raise argparse.ArgumentTypeError(e.message) from None

    parse.__name__ = s.kind
    return parse


def spec_from_args(a: argparse.Namespace) -> Spec:
    from patching.core.pairs import load_pairs_file

    kw = {}
    for name, s in FIELDS.items():
        if not hasattr(a, name):
            continue
        v = getattr(a, name)
        if name == "pairs":
            v = tuple(load_pairs_file(v)) if v else None
        elif s.kind == "positions" and isinstance(v, str):
            v = s.parse(v)
        kw[name] = v
    kw["task"] = None if kw.get("pairs") is not None else (kw.get("task") or "ioi")
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


def created_text(meta: dict) -> str:
    """When a stored result was computed, as "YYYY-MM-DD HH:MM" (local time)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("created_at", 0)))


def print_origin(res, label: str, how: str = "", stored: str | None = None, note: str = "note") -> None:
    """Say on stderr where ``res`` came from: "from store{how}: {label}"
    (with " ({stored})" when given) or "computed in Ns and stored{how}:
    {label}"; then its warnings, one "{note}: ..." line each."""
    if res.from_store:
        print(f"from store{how}: {label}" + (f" ({stored})" if stored else ""), file=sys.stderr)
        if getattr(res, "imported", False):
            p = res.provenance
            print(f"imported from {str(p.get('bundle') or 'a bundle')[:200]!r} on {time.strftime('%Y-%m-%d %H:%M', time.localtime(p.get('at') or 0))}, "
                  f"not computed here ({'verified by recomputation' if p.get('verified') else 'not verified'}); "
                  "the same command with --recompute replaces it", file=sys.stderr)
    else:
        print(f"computed in {res.meta['compute_seconds']:.1f}s and stored{how}: {label}", file=sys.stderr)
    for w in res.meta.get("warnings", []):
        print(f"{note}: {w}", file=sys.stderr)


def table_format(out: str | None, fmt: str | None) -> str:
    """The output format, checked before any work: from --format or the
    file's extension."""
    fmt = fmt or (os.path.splitext(out)[1].lstrip(".") if out else "csv") or "csv"
    if fmt not in ("csv", "json", "parquet"):
        raise PatchboardError("format", f"{fmt!r} is not csv, json or parquet")
    if fmt == "parquet" and not out:
        raise PatchboardError("out", "parquet needs a file; give --out FILE.parquet")
    if out is not None:
        folder = os.path.dirname(os.path.abspath(out))
        if os.path.isdir(out):
            raise PatchboardError("out", f"{out!r} is a folder; give a file name")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise PatchboardError("out", f"cannot write into {folder!r}; check the folder exists and is writable")
        probe = out + ".tmp"  # the file write_table writes first: try it now, before any work
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            os.remove(probe)
        except FileExistsError:
            pass
        except OSError as e:
            raise PatchboardError("out", f"cannot write {out!r} ({e.strerror}); check the folder exists and is writable") from None
    return fmt


def write_table(df, out: str | None, fmt: str | None) -> None:
    fmt = table_format(out, fmt)
    if fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "json":
        from patching.results import table_records

        text = json.dumps(table_records(df), indent=1, default=float) + "\n"
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


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output file (stdout if omitted)")
    p.add_argument("--format", choices=("csv", "json", "parquet"), default=None)


def add_compute_args(p: argparse.ArgumentParser, recompute: bool = True) -> None:
    """Where the computation runs: ``--executor``, Ray's address and workers,
    the device and a multi-device placement. None of these enters a result's key."""
    g = p.add_argument_group("where it runs (not part of a result's key)")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process; ray: actors on a Ray cluster (--ray-address), each loading the model once")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="ray: local (start one here, the default), auto (the cluster `ray start` runs on this machine) or "
                        "ray://HEAD:10001; default: PATCHBOARD_RAY_ADDRESS, else local")
    g.add_argument("--workers", type=bounded_int("workers", 1, 4096), default=None, metavar="N",
                   help="ray: actors to start (default: one per GPU of the cluster, else one per CPU)")
    g.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda, cuda:N or mps (default: CUDA, then MPS, else CPU; results agree across devices within "
                        "the dtype's tolerance)")
    if recompute:
        g.add_argument("--recompute", action="store_true",
                       help="compute even when the result is stored: an imported result is replaced by this computation "
                            "(a result computed here is kept; the first computation wins)")
    g.add_argument("--device-map", default=None, choices=("auto", "balanced", "balanced_low_0", "sequential"),
                   help="spread a model too big for one device over every GPU, offloading to the CPU past their memory "
                        "(Hugging Face device_map; hub ids and local folders)")


def compute_settings(a: argparse.Namespace):
    """Apply --device/--device-map (for this process and, through the
    environment, for Ray's workers) and return the executor, None for local."""
    if getattr(a, "device", None):
        from patching.core.models import check_device

        os.environ["PATCHBOARD_DEVICE"] = check_device(a.device) if a.executor == "local" else a.device
    if getattr(a, "device_map", None):
        os.environ["PATCHBOARD_DEVICE_MAP"] = a.device_map
    if getattr(a, "executor", "local") == "local":
        if a.ray_address or a.workers:
            raise PatchboardError("executor", "--ray-address and --workers apply to --executor ray")
        return None
    from patching.executors import get_executor

    address = a.ray_address or os.environ.get("PATCHBOARD_RAY_ADDRESS") or "local"
    return get_executor("ray", address, a.workers)
