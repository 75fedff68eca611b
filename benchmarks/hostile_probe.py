"""The issue-22 probe: hostile hypotheses, links and bundles against the
readers a server runs on them, each in a forked child so its memory is its own.

Every case is one thing a hostile collaborator can send: a hypothesis text
(YAML alias bombs of 5-12 levels in the notes, in a path entry and in a merge
key; a megabyte string quoted in an error; 100,001 values; a key twice), the
same hypotheses inside a share link (decoded, then parsed, as the Paths page
does), and bundles (a hypothesis under an activation view's key, a relabelled
kind, edited requests, a lying manifest, duplicate JSON keys, markdown and
oversized text in meta, forged provenance, a text ``layer`` column, extra and
missing columns, 102 and 3,000 one-row row groups, a 64 MB string in 60 KB of
zstd Parquet, 5,000-character labels, 1.2 M rows, an 80 MB JSON list in a
small zip, an index, foreign metadata, a zip bomb member, a truncated zip). Each
is run in a child forked after every import, which reports refused (one
PatchboardError line), accepted, or crashed (anything else), its wall time and
the growth of its resident memory (its peak, VmHWM, minus its size when it
started).
The peer, measured in the same run the same way: importing the shipped demo
bundle (29 genuine results), a benign import.

    .venv/bin/python benchmarks/hostile_probe.py [--quick]

Prints one line per case, then tried / refused / accepted / crashed and the
worst time and memory, as ratios against the peer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Start the peak resident size (VmHWM) from now (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_case(fn) -> tuple[str, float, float, str]:
    """(outcome, seconds, MB grown, message) of ``fn()`` in a forked child:
    its peak resident size (VmHWM) minus its resident size when it started."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: run, report, exit without cleanup
        os.close(r)
        from patching.core.errors import PatchboardError

        _reset_peak()
        start = _status_kb("VmRSS")
        try:
            fn()
            out = ["accepted", ""]
        except PatchboardError as e:
            out = ["refused", str(e)]
        except BaseException as e:  # noqa: BLE001 - a crash is what the probe looks for
            out = ["CRASHED", f"{type(e).__name__}: {str(e)[:200]}"]
        out.append(max(0, _status_kb("VmHWM") - start) / 1024)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    _, status, _ = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    outcome, msg, mb = json.loads(data) if data else ("CRASHED", f"child exited with status {status}", 0.0)
    return outcome, seconds, mb, msg


def hypothesis_cases(quick: bool):
    from patching.core.codec import decode_hypothesis, encode_hypothesis
    from patching.methods.graph import Geometry
    from patching.methods.hypothesis_format import parse

    geo = Geometry(30, 9, 3)  # the embedded model's shape

    def bomb(levels, where):
        lines = [f"x0: &x0 {json.dumps('x' * 16)}"] + [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
        tail = {"notes": f"notes: *x{levels}", "entry": f"paths: [*x{levels}]", "merge": f"paths: []\nnotes: {{<<: {{a: *x{levels}}}}}"}[where]
        return "\n".join(lines) + "\n" + ("paths: []\n" if where == "notes" else "") + tail

    texts = {f"alias bomb, {lv} levels, {w}": bomb(lv, w) for w in ("notes", "entry", "merge") for lv in ((7, 10) if quick else range(5, 13))}
    texts |= {
        "1 MB string in an entry": json.dumps({"paths": ["q" * (1 << 20)]}),
        "1 MB key": json.dumps({"paths": [], "k" * (1 << 20): 1}),
        "100,001 values": '{"paths": [], "notes": [' + ",".join(["0"] * 100_001) + "]}",
        "a key twice": '{"paths": [], "name": "a", "name": "b"}',
        "5,000 nested lists": '{"paths": ' + "[" * 5000 + "]" * 5000 + "}",
        "python tag": "paths: !!python/object/apply:os.system ['echo pwned']",
    }
    for name, text in texts.items():
        yield f"hypothesis: {name}", lambda t=text: parse(t, geo)
        if len(text) < 600_000:
            yield f"link: {name}", lambda t=text: parse(decode_hypothesis(encode_hypothesis(t)), geo)


def bundle_cases(tmp: Path):
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from patching import bundles
    from patching.core.spec import Spec
    from patching.store import Store
    from tests.helpers.bundles import (MODEL, activation_table, meta_edit, put_activation, put_hypothesis, put_paths, rezip, row_edit,
                                       table_edit)

    src = Store(tmp / "src.sqlite")
    spec = Spec(model=MODEL, task="ioi", n_pairs=2, seed=0, component="head")
    keys = [put_activation(src, spec), put_paths(src, spec), put_hypothesis(src, spec)]
    good = bundles.bundle_bytes(src, keys)

    def parquet(table, **kw):
        buf = io.BytesIO()
        pq.write_table(table, buf, **kw)
        return buf.getvalue()

    def swap_kind(m):
        act, hyp = json.loads(m["results/0.json"]), json.loads(m["results/2.json"])
        hyp["key"] = act["key"]
        manifest = json.loads(m["manifest.json"])
        manifest["results"][0] = dict(manifest["results"][2], key=act["key"])
        return {**m, "results/0.json": json.dumps(hyp).encode(), "results/0.parquet": m["results/2.parquet"],
                "manifest.json": json.dumps(manifest).encode()}

    t = activation_table()
    long_string = t.copy()
    long_string.loc[0, "pos_label"] = "x" * (64 << 20)
    df = activation_table()
    n = 1_200_000
    many_rows = pa.table({c: pa.array(np.zeros(n, dtype=np.int64)) if c == "layer" else pa.array(np.zeros(n)) if df[c].dtype.kind == "f"
                          else pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array(["head"])).cast(pa.large_string())
                          if c in ("component", "pos_label") else pa.nulls(n, pa.int64()) for c in df.columns}
                         ).replace_schema_metadata(pa.Schema.from_pandas(df, preserve_index=False).metadata)
    edits = {
        "hypothesis under an activation key": swap_kind,
        "kind relabelled": row_edit(0, kind="hypothesis"),
        "hypothesis edited under its key": meta_edit(2, hypothesis={"paths": [{"sender": "embed", "receiver": "logits"}]}),
        "receivers edited under their key": meta_edit(1, receivers="0.0:q"),
        "manifest describes other results": lambda m: {**m, "manifest.json": json.dumps(
            {**json.loads(m["manifest.json"]), "results": list(reversed(json.loads(m["manifest.json"])["results"]))}).encode()},
        "duplicate JSON key": lambda m: {**m, "results/0.json": m["results/0.json"].replace(b'{"baselines_json"', b'{"kind": "paths", "baselines_json"', 1)},
        "beacon image in meta": meta_edit(0, n_layers="![b](http://127.0.0.1:9/b.png)"),
        "phishing link in a warning": meta_edit(0, warnings=["[Session expired, log in](http://127.0.0.1:9/)" * 200]),
        "forged provenance": row_edit(0, provenance_json=json.dumps({"origin": "mine"})),
        "text layer column": table_edit(0, t.assign(layer=t["layer"].astype(str))),
        "extra column": table_edit(0, t.assign(extra=1.0)),
        "missing column": table_edit(0, t.drop(columns=["kl"])),
        "other component": table_edit(0, t.assign(component="mlp_out")),
        "102 one-row row groups": table_edit(0, parquet(pa.Table.from_pandas(pd.concat([t] * 17, ignore_index=True), preserve_index=False),
                                                        row_group_size=1)),
        "3,000 one-row row groups": table_edit(0, parquet(pa.Table.from_pandas(pd.concat([t] * 500, ignore_index=True), preserve_index=False),
                                                          row_group_size=1)),
        "64 MB string in zstd Parquet": table_edit(0, parquet(pa.Table.from_pandas(long_string, preserve_index=False), compression="zstd",
                                                              compression_level=19)),
        "5,000-character labels": table_edit(0, parquet(pa.Table.from_pandas(t.assign(pos_label="y" * 5000), preserve_index=False))),
        "1.2 M rows": table_edit(0, parquet(many_rows)),
        "index column": table_edit(0, parquet(pa.Table.from_pandas(t.set_index("pos_label"), preserve_index=True))),
        "no pandas metadata": table_edit(0, parquet(pa.Table.from_pandas(t, preserve_index=False).replace_schema_metadata({}))),
        "80 MB JSON list": lambda m: {**m, "results/0.json": b"[" + b"0," * (40 << 20) + b"0]"},
        "1 GB of zeros as a member": lambda m: {**m, "results/0.parquet": b"\0" * (1 << 30)},
        "path member": lambda m: {**m, "../evil.py": b"import os"},
        "per-prompt values on a hypothesis": lambda m: {**m, "results/2.prompts.parquet": m["results/0.parquet"]},
    }
    dst = tmp / "dst.sqlite"
    for name, edit in edits.items():
        data = rezip(good, edit)
        yield f"bundle: {name} ({len(data) // 1024} KB)", lambda d=data: bundles.import_bundle(Store(dst), d)
    yield "bundle: truncated", lambda: bundles.import_bundle(Store(dst), good[: len(good) // 2])
    yield "bundle: genuine (3 kinds)", lambda: bundles.import_bundle(Store(tmp / "genuine.sqlite"), good)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two bomb depths instead of eight")
    a = p.parse_args()
    import patching.bundles  # noqa: F401 - every import done before the first fork
    import pyarrow.parquet  # noqa: F401
    import yaml  # noqa: F401

    from patching import bundles
    from patching.store import Store
    from tests.helpers import ROOT
    from tests.helpers.store import link_models

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "cache").mkdir()
        link_models(tmp / "cache")  # the embedded model's converted config, as on a server after warmup
        os.environ["PATCHBOARD_CACHE_DIR"] = str(tmp / "cache")
        demo = (ROOT / "patching" / "demo" / "demo.zip").read_bytes()
        peer = run_case(lambda: bundles.import_bundle(Store(tmp / "peer.sqlite"), demo, name="demo.zip"))
        print(f"peer: import the shipped demo ({len(demo) // 1024} KB, 29 results): {peer[0]} in {peer[1]:.2f} s, +{peer[2]:.0f} MB")
        rows = []
        for name, fn in [*hypothesis_cases(a.quick), *bundle_cases(tmp)]:
            outcome, s, mb, msg = run_case(fn)
            rows.append((name, outcome, s, mb))
            print(f"{outcome:9s} {s * 1000:8.1f} ms {mb:7.1f} MB  {name}" + (f"  [{msg[:110]}]" if outcome != "accepted" else ""), flush=True)
    refused = sum(r[1] == "refused" for r in rows)
    crashed = [r for r in rows if r[1] == "CRASHED"]
    accepted = [r[0] for r in rows if r[1] == "accepted"]
    worst_t = max(rows, key=lambda r: r[2])
    worst_m = max(rows, key=lambda r: r[3])
    print(f"\ntried {len(rows)}, refused {refused}, accepted {len(accepted)} ({'; '.join(accepted) or 'none'}), crashed {len(crashed)}")
    print(f"worst time: {worst_t[2]:.2f} s ({worst_t[0]}) = {worst_t[2] / peer[1]:.2f} x the demo import")
    print(f"worst memory: +{worst_m[3]:.0f} MB ({worst_m[0]}) = {worst_m[3] / max(peer[2], 1):.2f} x the demo import (+{peer[2]:.0f} MB)")
    print(f"machine load: {os.getloadavg()[0]:.2f}")
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
