"""``python -m patching export|import``: result bundles (see :mod:`patching.bundles`).

    python -m patching export --out results.zip                 # everything stored
    python -m patching export --kind paths --task ioi --out paths.zip
    python -m patching export --key 3f2a9c1d --key 77aa01b2 --out two.zip
    python -m patching export --link 'http://host:8501/?model=...&task=ioi&...' --out view.zip
    python -m patching import results.zip [--allow-other-weights] [--verify K]
"""

from __future__ import annotations

import argparse
import os
import sys

from patching.cli.common import bounded_int
from patching.core.errors import PatchboardError
from patching.kinds import KINDS

#: The largest link accepted by --link (characters).
MAX_LINK = 1 << 20


def register(sub) -> None:
    e = sub.add_parser("export", help="write stored results into a bundle file (data only)",
                       description="Select stored results by key, by filter (kind, model, task) or by a share link, and write "
                       "them, with their specs, tables, baselines, weights' fingerprints and versions, into one zip file.")
    e.add_argument("--key", action="append", default=[], help="a stored result's key (8+ leading characters); repeatable")
    e.add_argument("--kind", choices=tuple(KINDS), default=None)
    e.add_argument("--model", default=None, help="only results of this model")
    e.add_argument("--task", default=None, help="only results of this task")
    e.add_argument("--link", default=None, help="a share link (or its query string) of an activation or path-sweep view")
    e.add_argument("--out", required=True, help="the bundle file to write (.zip)")
    e.set_defaults(func=cmd_export)
    i = sub.add_parser("import", help="add the results of a bundle file to this machine's store",
                       description="Validates the whole bundle first; a bad, truncated or oversized bundle changes nothing.")
    i.add_argument("file", help="a bundle written by `python -m patching export` or the app")
    i.add_argument("--allow-other-weights", action="store_true",
                   help="import results computed on weights whose fingerprint differs from this machine's copy")
    i.add_argument("--verify", type=bounded_int("verify", 0, 10_000), default=0, metavar="K",
                   help="first recompute K randomly chosen results of the bundle here (loads their models) and refuse the whole "
                        "bundle if any differs beyond its dtype's tolerance (default 0: trust the bundle; every imported "
                        "result is marked imported)")
    i.set_defaults(func=cmd_import)


def cmd_export(a: argparse.Namespace) -> int:
    from patching import bundles
    from patching.store import Store

    out_dir = os.path.dirname(os.path.abspath(a.out))
    if os.path.isdir(a.out) or not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise PatchboardError("out", f"cannot write {a.out!r}; give a file in a writable folder")
    store = Store()
    keys = list(a.key)
    if a.link:
        keys.append(_key_of_link(a.link))
    selected = bundles.select_keys(store, keys, a.kind, a.model, a.task)
    data = bundles.bundle_bytes(store, selected)
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: {len(selected)} result(s), {len(data) / 1e6:.2f} MB", file=sys.stderr)
    return 0


def _key_of_link(link: str) -> str:
    """The store key of the view a share link opens (activation or path sweep)."""
    from urllib.parse import parse_qsl, urlsplit

    from patching import service
    from patching.core.registry import REGISTRY
    from patching.core.spec import Spec

    if len(link) > MAX_LINK:
        raise PatchboardError("link", f"longer than {MAX_LINK} characters")
    query = urlsplit(link).query if "?" in link else link.lstrip("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    req = service.PathSweep.from_query(params) if params.get("mode") == "sweep" else Spec.from_query(params)
    spec = service.as_request(req).spec
    fp = REGISTRY.fingerprint(spec.model)
    if fp is None:
        raise PatchboardError("link", f"the weights of {spec.model} are unknown until it has been loaded here once; export by --key instead")
    if params.get("mode") == "sweep":
        return service.key_of(req, fp, service.geometry_for(spec.model))
    return service.key_of(spec, fp)


def cmd_import(a: argparse.Namespace) -> int:
    from patching import bundles
    from patching.store import Store

    data = _read_file(a.file)
    rep = bundles.import_bundle(Store(), data, a.allow_other_weights, name=os.path.basename(a.file), verify=a.verify)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(rep.kinds.items()))
    if a.verify:
        print(f"verified {len(rep.verified)} result(s) by recomputing them here: "
              f"{', '.join(k[:12] for k in rep.verified)}", file=sys.stderr)
    print(f"imported {rep.added} result(s) ({kinds}); {rep.already} were already stored", file=sys.stderr)
    return 0


def _read_file(path: str) -> bytes:
    import stat

    from patching.bundles import MAX_BUNDLE_BYTES

    try:
        st = os.stat(path)
    except OSError as e:
        raise PatchboardError("file", f"cannot read {path!r} ({e.strerror}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise PatchboardError("file", f"{path!r} is not a regular file")
    if st.st_size > MAX_BUNDLE_BYTES:
        raise PatchboardError("file", f"{path!r} is {st.st_size} bytes; a bundle may be at most {MAX_BUNDLE_BYTES >> 20} MB")
    with open(path, "rb") as f:
        return f.read(MAX_BUNDLE_BYTES + 1)
