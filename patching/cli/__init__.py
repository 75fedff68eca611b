"""Command line: ``python -m patching run|compare|paths|hypothesis|derive-hypothesis|circuit|export|import|pairs|demo|models|across-models``.

Each subcommand lives in its own module and registers itself here by a plain
import (a broken module fails loudly, never drops its subcommand).
"""

from __future__ import annotations

import os
import sys

from patching.cli import across, bundle, circuit, compare, demo, models, pairs, paths, run
from patching.cli.common import Parser
from patching.core.errors import PatchboardError


def build_parser() -> Parser:
    p = Parser(prog="python -m patching", description="Patchboard: activation and path patching.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    for mod in (run, compare, paths, circuit, bundle, pairs, demo, models, across):
        mod.register(sub)
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
