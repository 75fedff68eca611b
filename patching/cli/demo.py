"""``python -m patching demo build|import``: the shipped demo bundle (see :mod:`patching.demo`)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    d = sub.add_parser("demo", help="build or import the shipped demo bundle (every page's default results)",
                       description="build: compute the results behind every page's default link on the embedded model (what is "
                       "not stored yet) and write patching/demo/demo.zip. import: add the demo's missing results to this store.")
    dsub = d.add_subparsers(dest="demo_cmd", required=True, metavar="build|import")
    b = dsub.add_parser("build", help="compute what is missing and write the demo bundle")
    b.add_argument("--out", default=None, help="the bundle to write (default: patching/demo/demo.zip)")
    b.add_argument("--no-compute", action="store_true", help="bundle only the demo results already stored (say which are left out)")
    b.set_defaults(func=cmd_build)
    i = dsub.add_parser("import", help="add the demo's missing results to this machine's store (never overwrites)")
    i.set_defaults(func=cmd_import)


def cmd_build(a: argparse.Namespace) -> int:
    from pathlib import Path

    from patching import demo

    demo.build(Path(a.out) if a.out else demo.DEMO_PATH, say=lambda s: print(s, file=sys.stderr, flush=True),
               compute=not a.no_compute)
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from patching import demo

    print(demo.ensure_imported(), file=sys.stderr)
    return 0
