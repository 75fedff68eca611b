"""``python -m patching pairs``: the exact prompt pairs a spec averages over.

Takes the same flags as ``run`` (so a ``run`` command line can be repeated
with ``pairs``); only the dataset flags (model -- its tokenizer --, task,
ioi-corrupt, n-pairs, seed, pairs, corruption, key-positions) change the
output. Writes ``clean,corrupt,answer,counter_answer,key_positions`` as CSV
(stdout or ``--out FILE.csv``) or JSONL (``--out FILE.jsonl``); the file can
be read back with ``--pairs``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

from patching.cli.common import add_spec_args, spec_from_args
from patching.core.errors import PatchboardError


def register(sub) -> None:
    p = sub.add_parser("pairs", help="write the prompt pairs a spec averages over (same flags as run)")
    add_spec_args(p)
    p.add_argument("--out", metavar="FILE", help="output file, .csv or .jsonl (CSV on stdout if omitted)")
    p.set_defaults(func=cmd_pairs)


def tokenizer_for(name: str):
    """The model's tokenizer, never its weights where the tokenizer alone
    can be read: a known model's converted copy (one not added yet refuses,
    saying how to add it), a local folder's tokenizer files, a model already
    loaded; only a hub id not loaded here loads its model."""
    from patching.core.config import can_load, known, not_installed_error
    from patching.core.models import tokenizer_only
    from patching.core.registry import REGISTRY

    if known(name) is not None and not can_load(name):
        raise not_installed_error(name)
    lm = REGISTRY.peek(name)
    if lm is not None:
        return lm.tokenizer
    tok = tokenizer_only(name)
    if tok is not None:
        return tok
    from patching.service import get_model

    return get_model(name).tokenizer


def render(rows: list[dict], fmt: str) -> str:
    from patching.core.tasks import PAIRS_TABLE_COLUMNS

    if fmt == "jsonl":
        return "".join(json.dumps({**r, "key_positions": [int(x) for x in r["key_positions"].split()]}, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(PAIRS_TABLE_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _format(out: str | None) -> str:
    if out is None:
        return "csv"
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".csv", ".jsonl"):
        raise PatchboardError("out", f"{out!r}: write a .csv or .jsonl file")
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise PatchboardError("out", f"cannot write {out!r}; give a file in a folder that exists and is writable")
    return ext.lstrip(".")


def cmd_pairs(a: argparse.Namespace) -> int:
    from patching.core.tasks import pairs_table

    spec = spec_from_args(a)
    fmt = _format(a.out)  # a bad --out fails before any work
    rows = pairs_table(spec, tokenizer_for(spec.model))
    text = render(rows, fmt)
    if a.out is None:
        sys.stdout.write(text)
        return 0
    tmp = a.out + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, a.out)
    except OSError as e:
        raise PatchboardError("out", f"cannot write {a.out!r} ({e.strerror}); check the folder exists and is writable") from None
    print(f"wrote {a.out} ({len(rows)} pairs: {spec.label()})", file=sys.stderr)
    return 0
