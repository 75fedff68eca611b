"""Property-based fuzzing of every parser that reads user input.

Each parser either accepts a value within bounds or raises the project's
PatchboardError naming a field; nothing else (no OverflowError, RecursionError,
csv.Error, UnicodeError, MemoryError...). Generated with the ``hypothesis``
library: seeded (``derandomize``), bounded example counts, no example database,
so every run is the same ~2,700 cases in well under a minute. Hostile atoms
(huge ranges, 5,000-digit integers, lone surrogates, Infinity, deep nesting,
markdown links and images, bare carriage returns) are mixed into grammar-shaped
text so the strategies reach past the first syntax check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patching.core.errors import PatchboardError
from patching.core.limits import MAX_INT_DIGITS, MAX_PAIRS
from patching.core.pairs import parse_pairs_text, parse_positions
from patching.core.spec import FIELDS, Spec
from patching.methods.graph import Geometry, parse_position_spec, parse_receiver_list, parse_sender_list
from patching.methods.path_request import SweepRequest

FUZZ = settings(max_examples=250, derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
GEO = Geometry(30, 9, 3)  # the embedded SmolLM2's shape; a GQA model

HOSTILE = [
    "0-999999999", "9" * 5000, "1" * (MAX_INT_DIGITS + 1), "-1", "Infinity", "NaN", "1e309", "-0", "0x10",
    "\ud800", "\udfff", "![t](http://host/x.png)", "[Session expired](http://host/phish)", "<img src=x onerror=alert(1)>",
    "\r", "\n", "\x00", "\u2028", "*", "", " ", ",", ":", ".", "-", "'", '"', "\\", "{", "[", "[" * 100, "{\"a\":" * 60,
    "mlp", "logits", "embed", "q", "k", "v", "END", "all", "٣", "１", "𝟙",
]
atoms = st.one_of(st.sampled_from(HOSTILE), st.integers(-10**6, 10**12).map(str), st.text(max_size=12))


def _joined(parts, seps=("", ".", "-", ":", ",", " ")):
    return st.lists(st.tuples(parts, st.sampled_from(seps)), max_size=8).map(lambda xs: "".join(a + b for a, b in xs))


def assert_project_error(e: PatchboardError, fields=None):
    assert isinstance(e.field, str) and e.field and isinstance(e.message, str) and e.message
    assert "\n" not in str(e)
    if fields is not None:
        assert e.field in fields, (e.field, fields)


# ---------------------------------------------------------------- links (every page's spec reader)

flags = st.sampled_from(sorted({s.flag for s in FIELDS.values()} | {"k", "mode", "x"}))
link_values = st.one_of(atoms, _joined(atoms), st.sampled_from(["ioi", "gn", "head", "8", "3.0", "eJyrVg", "AAAA"]))


@FUZZ
@given(st.dictionaries(flags, link_values, max_size=6))
def test_fuzz_spec_links(q):
    try:
        spec = Spec.from_query(q)
    except PatchboardError as e:
        assert_project_error(e)
        return
    assert spec.validated() is spec
    assert 1 <= spec.n_pairs <= MAX_PAIRS
    # A spec read from a link round-trips through its own link (idempotent).
    assert Spec.from_query(spec.to_query()) == spec


pairs_rows = st.lists(st.fixed_dictionaries({
    "clean": st.one_of(atoms, st.text(max_size=30)), "corrupt": st.text(max_size=30),
    "answer": atoms, "counter_answer": atoms}, optional={"key_positions": st.one_of(
        st.lists(st.one_of(st.integers(-5, 10**30), st.floats(allow_nan=True), st.booleans()), max_size=4), atoms)}),
    min_size=0, max_size=6)


@FUZZ
@given(pairs_rows, st.integers(0, 3))
def test_fuzz_link_pairs_and_validated_is_idempotent(rows, repeat):
    from patching.core.codec import encode_json

    blob = encode_json(rows * (1 + repeat * 200))  # up to 3,600 rows: MAX_PAIRS must hold for links too
    try:
        spec = Spec.from_query({"pairs": blob})
    except PatchboardError as e:
        assert_project_error(e, {"pairs", "key-positions", "task"})
        return
    assert len(spec.pairs) <= MAX_PAIRS and spec.n_pairs == len(spec.pairs)
    assert spec.validated() == spec and dataclasses.replace(spec).validated() == spec  # replace: not marked canonical
    assert Spec.from_query(spec.to_query()) == spec  # the share link encodes (no surrogate survives)


# ---------------------------------------------------------------- page extras

def _extra_parsers():
    from patching.core import codec
    from ui import extras

    return {
        "top": extras.int_in("top", 1, 50), "k": extras.int_in("k", 1, 50), "pair": extras.int_in("pair", 0, MAX_PAIRS - 1),
        "noise-scale": extras.float_in("noise-scale", 0.0, 100.0), "units": extras.choice("units", ("raw", "z")),
        "mode": extras.choice("mode", ("sweep", "hypothesis")), "variants": extras.subset("variants", ("s2", "s1_io", "abc")),
        "receivers": extras.text("receivers"), "hypothesis": codec.decode_hypothesis,
    }


@FUZZ
@given(st.sampled_from(sorted(_extra_parsers())), link_values)
def test_fuzz_page_extras(name, raw):
    from ui.url import read_extra

    cast = _extra_parsers()[name]
    try:
        cast(raw)
    except PatchboardError as e:
        assert_project_error(e, {name})
    value, msg = read_extra(name, raw, "DEFAULT", cast)  # the guarded path never raises
    if msg is not None:
        assert value == "DEFAULT" and not _live_markdown(msg.split("**", 2)[-1])


@FUZZ
@given(st.dictionaries(flags, link_values, max_size=5))
def test_fuzz_read_spec_from_url(q):
    from ui.url import read_spec_from_url

    spec, msg = read_spec_from_url(params=q)
    assert isinstance(spec, Spec)
    if msg:
        assert msg.startswith("This link") and not _live_markdown(msg.split("**", 2)[-1])


def _live_markdown(text: str) -> bool:
    """True when ``text`` holds an unescaped link, image, HTML tag or
    directive, or a bare URL / e-mail that GFM would autolink (it does so after
    resolving escapes, so those are checked on the resolved text)."""
    unescaped = re.sub(r"\\.", "", text)
    resolved = re.sub(r"\\(.)", r"\1", text)
    return bool(re.search(r"[\[\]<>!`]|\$|:\w+\[", unescaped) or re.search(r"(?i)://|www\.|@\w", resolved))


@FUZZ
@given(st.one_of(atoms, _joined(atoms), st.text(max_size=60)))
def test_fuzz_md_plain(value):
    from ui.plain import md_plain

    out = md_plain(value)
    assert not _live_markdown(out) and "\n" not in out
    out.encode("utf-8")  # always sendable


# ---------------------------------------------------------------- pairs parsers (pasted, uploaded, CLI files)

cells = st.one_of(atoms, st.text(max_size=20), st.sampled_from(['"a,b"', '"x""y"', '"unterminated', "a\rb", "x" * 200]))
csv_text = st.tuples(
    st.sampled_from(["clean,corrupt,answer,counter_answer", "clean,corrupt,answer,counter_answer,key_positions", "clean,corrupt", ""]),
    st.lists(st.lists(cells, min_size=1, max_size=6).map(",".join), max_size=8),
    st.sampled_from(["\n", "\r\n", "\r"]),
).map(lambda t: t[2].join([t[0], *t[1]]))
jsonl_text = st.lists(st.one_of(
    pairs_rows.map(lambda rows: "\n".join(json.dumps(r, ensure_ascii=False) if isinstance(r, dict) else str(r) for r in rows)),
    st.sampled_from(HOSTILE), st.text(max_size=40)), max_size=5).map("\n".join)


@FUZZ
@given(st.one_of(csv_text, jsonl_text, st.text(max_size=80)), st.sampled_from(["csv", "jsonl", "txt"]))
def test_fuzz_pairs_text(text, fmt):
    try:
        pairs = parse_pairs_text(text, fmt, "pairs")
    except PatchboardError as e:
        assert_project_error(e, {"pairs"})
        return
    assert 1 <= len(pairs) <= MAX_PAIRS
    for p in pairs:
        for c in (p.clean, p.corrupt, p.answer, p.counter_answer):
            c.encode("utf-8")


def test_pairs_bounds_named():
    big = "clean,corrupt,answer,counter_answer\n" + "a,b,c,d\n" * (MAX_PAIRS + 1)
    with pytest.raises(PatchboardError, match="MAX_PAIRS"):
        parse_pairs_text(big, "csv")
    with pytest.raises(PatchboardError, match="MAX_PAIRS"):
        parse_pairs_text('{"clean":"a","corrupt":"b","answer":"c","counter_answer":"d"}\n' * (MAX_PAIRS + 1), "jsonl")
    with pytest.raises(PatchboardError, match="pairs"):
        parse_pairs_text("clean,corrupt,answer,counter_answer\n" + "a" * 200_000 + ",b,c,d", "csv")
    with pytest.raises(PatchboardError, match="key-positions"):
        parse_positions([float("inf")])


# ---------------------------------------------------------------- receivers / senders / positions grammar

grammar_atoms = st.one_of(
    st.sampled_from(["*", "mlp", "logits", "embed", ":q", ":k", ":v", ":*", ".", "-", ",", "0", "29", "30", "8", "9"]),
    st.integers(0, 10**25).map(str), st.sampled_from(HOSTILE))
grammar = _joined(grammar_atoms, seps=("",))


def assert_node_list(parse, field: str, text: str, most: int) -> None:
    """``parse(text, GEO)`` either refuses in one project error naming
    ``field`` or returns between 1 and ``most`` nodes."""
    try:
        nodes = parse(text, GEO)
    except PatchboardError as e:
        assert_project_error(e, {field})
        return
    assert 1 <= len(nodes) <= most


@FUZZ
@given(grammar)
def test_fuzz_receivers(text):
    assert_node_list(parse_receiver_list, "receivers", text, GEO.n_layers * (GEO.n_heads + 2 * GEO.n_kv + 1) + 1)


@FUZZ
@given(grammar)
def test_fuzz_senders(text):
    assert_node_list(parse_sender_list, "senders", text, 1 + GEO.n_layers * (GEO.n_heads + 1))


@FUZZ
@given(st.one_of(grammar, st.lists(st.one_of(st.integers(-10**30, 10**30), st.floats(), st.booleans(), atoms), max_size=5)))
def test_fuzz_positions(value):
    try:
        parse_position_spec(value, "sender-positions", "sender positions")
    except PatchboardError as e:
        assert_project_error(e, {"sender-positions"})
    try:
        parse_positions(value)
    except PatchboardError as e:
        assert_project_error(e, {"key-positions"})


def test_range_bound_checked_before_materialising():
    import tracemalloc

    tracemalloc.start()
    for text in ("0-999999999.0:q", "0-99999999999999.*:*", "mlp0-999999999", "0-" + "9" * 5000 + ".0:q"):
        with pytest.raises(PatchboardError):
            SweepRequest.make(GEO, text, "0-999999999.*", "0")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5_000_000  # range(0, 10**9) as a list would be ~8 GB


# ---------------------------------------------------------------- hypothesis parser

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), atoms, grammar)
json_obj = st.recursive(json_leaf, lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(
    st.sampled_from(["sender", "receiver", "input", "positions", "path", "note", "x"]), ch, max_size=4)), max_leaves=12)
entries = st.lists(st.one_of(
    st.fixed_dictionaries({"sender": st.one_of(grammar, st.lists(grammar, max_size=3)), "receiver": st.one_of(grammar, st.lists(grammar, max_size=3))},
                          optional={"input": st.sampled_from(["q", "k", "v", "*", "z"]), "positions": json_leaf}),
    st.fixed_dictionaries({"path": st.lists(grammar, max_size=4)}), json_obj), max_size=4)
hyp_docs = st.one_of(
    st.fixed_dictionaries({"paths": entries}, optional={"name": json_leaf, "description": json_leaf, "format": json_leaf}).map(
        lambda d: json.dumps(d, ensure_ascii=False)),
    json_obj.map(json.dumps), st.sampled_from(HOSTILE), st.text(max_size=60),
    st.integers(1, 60).map(lambda n: '{"paths": ' + "[" * n * 3 + "]" * n * 3 + "}"),
)


@FUZZ
@given(hyp_docs)
def test_fuzz_hypothesis(text):
    from patching.methods.hypothesis_format import parse

    try:
        hyp = parse(text, GEO)
    except PatchboardError as e:
        assert_project_error(e, {"hypothesis"})
        return
    hyp.name.encode("utf-8")
    hyp.description.encode("utf-8")


# ---------------------------------------------------------------- the CLI argument parser (no model, ever)


class _Accepted(BaseException):
    """Raised where the CLI would load a model or compute: validation passed."""


@pytest.fixture(scope="module")
def cli_sandbox(tmp_path_factory):
    """Files a fuzzed command line may name, and a CLI that can never load a model."""
    d = tmp_path_factory.mktemp("cli-fuzz")
    (d / "ok.jsonl").write_text('{"clean":"When Mary and John","corrupt":"When John and John","answer":" Mary","counter_answer":" John"}\n')
    (d / "bin.csv").write_bytes(os.urandom(256) + b"\x00")
    (d / "latin.csv").write_bytes(b"clean,corrupt,answer,counter_answer\n\xe9,b,c,d\n")
    (d / "deep.json").write_text('{"paths": ' + "[" * 500 + "]" * 500 + "}")
    (d / "hyp.json").write_text('{"paths": [{"sender": "embed", "receiver": "logits"}]}')
    (d / "dir.csv").mkdir()
    os.mkfifo(d / "fifo.csv")
    (d / "zero.csv").symlink_to("/dev/zero")
    return d


def test_fuzz_cli_arguments(cli_sandbox, monkeypatch):
    import patching.service as service
    from patching.cli import main
    from patching.core.registry import REGISTRY

    def accepted(*a, **k):
        raise _Accepted

    for obj, name in ((service, "run"), (service, "lookup"), (service, "get_model"), (REGISTRY, "get"), (REGISTRY, "fingerprint")):
        monkeypatch.setattr(obj, name, accepted)
    monkeypatch.setattr(service, "geometry_for", lambda name: GEO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub-shaped --model is checked against the cache, never the network
    monkeypatch.chdir(cli_sandbox)
    files = ["ok.jsonl", "bin.csv", "latin.csv", "deep.json", "hyp.json", "dir.csv", "fifo.csv", "zero.csv", "missing.csv",
             "/proc/x.csv", "out.csv", "out.parquet", "dir.csv/x.csv", "."]
    flag_names = sorted({f"--{s.flag}" for s in FIELDS.values()} | {"--receivers", "--senders", "--sender-positions", "--out", "--format",
                                                                     "--hypothesis", "--attribution", "--k", "--settings", "--effects", "--by-pos"})
    argv = st.tuples(
        st.sampled_from(["run", "paths", "compare", "hypothesis", "derive-hypothesis", "nope"]),
        st.lists(st.tuples(st.sampled_from(flag_names), st.one_of(st.sampled_from(files), atoms, grammar)), max_size=4),
    ).map(lambda t: [t[0]] + [x for pair in t[1] for x in pair])
    outcomes = {"accepted": 0, "refused": 0}

    @FUZZ
    @given(argv)
    def run_one(args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(args)
            except _Accepted:
                outcomes["accepted"] += 1
                return
            except SystemExit as e:  # --help only
                assert e.code == 0
                return
        lines = err.getvalue().strip().splitlines()
        assert rc == 2, (args, err.getvalue())
        assert len(lines) == 1 and re.match(r"^error: [\w-]+: \S", lines[0]), lines
        outcomes["refused"] += 1

    run_one()
    assert outcomes["refused"] > 100 and outcomes["accepted"] > 0, outcomes


@pytest.mark.parametrize("args, needle", [
    (["run", "--pairs", "fifo.csv"], "error: pairs: 'fifo.csv' is not a regular file"),
    (["run", "--pairs", "zero.csv"], "error: pairs: 'zero.csv' is not a regular file"),
    (["run", "--pairs", "bin.csv"], "error: pairs: 'bin.csv' is a binary file"),
    (["run", "--pairs", "latin.csv"], "error: pairs: 'latin.csv' is not UTF-8"),
    (["run", "--pairs", "dir.csv"], "error: pairs: 'dir.csv' is a folder"),
    (["run", "--pairs", "big.csv"], "error: pairs: 'big.csv' is 8388609 bytes; the limit is 8388608 bytes (MAX_FILE_BYTES)"),
    (["hypothesis", "--hypothesis", "deep.json"], "error: hypothesis: nested deeper than 32 levels (MAX_JSON_DEPTH)"),
    (["hypothesis", "--hypothesis", "fifo.csv"], "error: hypothesis: 'fifo.csv' is not a regular file"),
    (["run", "--out", "dir.csv"], "error: out: 'dir.csv' is a folder"),
    (["run", "--format", "parquet"], "error: out: parquet needs a file"),
    (["run", "--out", "/proc/x.csv"], "error: out: cannot write '/proc/x.csv'"),
    (["paths", "--receivers", "0-999999999.0:q"], "error: receivers: receiver 1 (0-999999999.0:q): layer 999999999 does not exist"),
    (["paths", "--receivers", "logits", "--senders", "1" * 5000 + ".0"], "error: senders: an item of 5002 characters"),
    (["run", "--n-pairs", "9" * 5000], "error: n-pairs: "),
    (["run", "--component", "neuron"], "error: component: invalid choice"),
    (["compare", "--k", "0"], "error: k: 0 must be a whole number from 1 to 10000"),
    (["run", "--model", "../etc"], "error: model: no folder '../etc'"),
    (["run", "--model", "/nonexistent/model-folder"], "error: model: no folder '/nonexistent/model-folder'"),
    (["paths", "--model", "dir.csv", "--receivers", "logits"], "error: model: 'dir.csv' is a folder without config.json"),
    (["derive-hypothesis", "ioi", "--model", "../x"], "error: model: no folder '../x'"),
    (["paths", "--receivers", "logits", "--sender-positions", "-1"], "error: sender-positions: sender positions: position -1 is negative"),
    (["run", "--model", "a`b![x]"], "error: model: 'a`b![x]' is neither"),
    (["run", "--model", "no-such-org/no-such-model"], "error: model: 'no-such-org/no-such-model' is not in this machine's Hugging Face cache"),
])
def test_cli_bad_input_exits_2_before_any_model(cli_sandbox, monkeypatch, args, needle):
    """Bad files and flags: exit 2, one line naming the field, and the model
    registry is never asked (no load, no compute)."""
    import patching.service as service
    from patching.cli import main
    from patching.core.registry import REGISTRY

    def never(*a, **k):
        raise AssertionError("the model was asked for")

    for obj, name in ((service, "run"), (service, "lookup"), (service, "get_model"), (REGISTRY, "get")):
        monkeypatch.setattr(obj, name, never)
    monkeypatch.setattr(service, "geometry_for", lambda name: GEO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(cli_sandbox)
    if not (cli_sandbox / "big.csv").exists():
        (cli_sandbox / "big.csv").write_bytes(b"x" * ((8 << 20) + 1))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(args)
    assert rc == 2 and err.getvalue().count("\n") == 1 and err.getvalue().startswith(needle), err.getvalue()


# ---------------------------------------------------------------- hypotheses as YAML (anchors, aliases, tags, repeated keys)

yaml_scalar = st.one_of(st.sampled_from(["embed", "logits", "0.0", "1.2:q", "*", "mlp1", "END", "-1", "all", "null", "~", "!!str x",
                                         "!!python/object:os.system x", "&a x", "*a", "<<: *a", "{a: 1}", "[1, *a]", "'q'", '"\\u0000"']),
                        atoms)
yaml_docs = st.lists(st.tuples(st.sampled_from(["paths", "name", "notes", "format", "description", "a", "<<", "paths"]),
                               st.lists(yaml_scalar, min_size=0, max_size=4)), min_size=1, max_size=6).map(
    lambda kv: "\n".join(f"{k}: [{', '.join(v)}]" if len(v) != 1 else f"{k}: {v[0]}" for k, v in kv))


@FUZZ
@given(st.one_of(yaml_docs, yaml_docs.map(lambda d: "x: &a [1, 2]\n" + d), yaml_docs.map(lambda d: d + "\ny: *a")))
def test_fuzz_hypothesis_yaml(text):
    """YAML hypotheses: parsed, or one project error naming the hypothesis;
    anchors and aliases never parse (issue 22: no amplification from text)."""
    from patching.methods.hypothesis_format import parse

    try:
        hyp = parse(text, GEO)
    except PatchboardError as e:
        assert_project_error(e, {"hypothesis"})
        assert len(str(e)) < 2_200
        return
    assert "&a [" not in text and "*a" not in text.replace('"*a', "")  # an anchor or alias that parsed would be here
    hyp.to_json()


# ---------------------------------------------------------------- bundles (a hostile collaborator's edits of a real bundle)


@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory):
    from patching import bundles
    from patching.store import Store
    from tests.helpers.bundles import MODEL, put_activation, put_hypothesis, put_paths

    s = Store(tmp_path_factory.mktemp("fuzz-bundle") / "src.sqlite")
    spec = Spec(model=MODEL, task="ioi", n_pairs=2, seed=0, component="head")
    keys = [put_activation(s, spec), put_paths(s, spec), put_hypothesis(s, spec)]
    return bundles.bundle_bytes(s, keys)


json_hostile = st.one_of(json_leaf, st.sampled_from([
    "![beacon](http://127.0.0.1:9/b.png)", "[log in](http://127.0.0.1:9/)", "<img src=x onerror=alert(1)>", 1e308, -1, 2**70,
    "0" * 64, "f" * 64, "hypothesis", "activation", "paths", {"paths": []}, [[["deep"]]], {"a": {"b": {"c": 1}}}]))
ROW_FIELDS = ["key", "kind", "spec_json", "label", "model", "model_fingerprint", "engine_version", "created_at", "compute_seconds",
              "baselines_json", "meta_json", "provenance_json", "extra"]
META_KEYS = ["n_layers", "n_heads", "n_kv_heads", "n_pairs", "warnings", "receivers", "senders", "hypothesis", "attribution",
             "position_labels", "clean_tokens", "per_row", "compute_seconds", "model_fingerprint", "x"]


def _mutation():
    from tests.helpers import bundles as hb

    def table(columns):
        import numpy as np
        import pandas as pd

        return pd.DataFrame({c: (np.arange(3, dtype=np.int64) if i % 3 == 0 else ["a", "b", "c"] if i % 3 == 1 else np.zeros(3))
                             for i, c in enumerate(columns)})

    i = st.integers(0, 2)
    return st.one_of(
        st.builds(lambda i, f, v: hb.row_edit(i, **{f: v}), i, st.sampled_from(ROW_FIELDS), json_hostile),
        st.builds(lambda i, k, v: hb.meta_edit(i, **{k: v}), i, st.sampled_from(META_KEYS), json_hostile),
        st.builds(lambda i, cols: hb.table_edit(i, table(cols)), i, st.lists(st.sampled_from(
            ["component", "layer", "head", "pos", "pos_label", "logit_diff", "prob", "logprob", "kl", "delta", "aue", "x"]), max_size=10, unique=True)),
        st.builds(lambda name, cut: (lambda m: {**m, name: m[name][:cut]} if name in m else m),
                  st.sampled_from(["manifest.json", "results/0.json", "results/1.parquet", "results/2.parquet"]), st.integers(0, 400)),
        st.builds(lambda name, raw: (lambda m: {**m, name: raw}),
                  st.sampled_from(["results/3.json", "results/0.prompts.parquet", "../x", "manifest.json", "results/1.json"]),
                  st.one_of(st.binary(max_size=64), st.sampled_from([b"{}", b"[]", b'{"format": "patchboard.bundle/1", "results": []}']))),
        st.builds(lambda name: (lambda m: {k: v for k, v in m.items() if k != name}),
                  st.sampled_from(["manifest.json", "results/0.json", "results/2.parquet"])),
    )


def test_fuzz_bundles(fuzz_bundle, tmp_path):
    """Edited bundles: imported whole (every row's key recomputed) or refused
    in one line naming the bundle, the store unchanged; nothing else."""
    from patching import bundles
    from patching.store import Store
    from tests.helpers.bundles import rezip

    outcomes = {"imported": 0, "refused": 0}

    @settings(max_examples=120, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_mutation(), min_size=1, max_size=3))
    def run_one(edits):
        def edit(m):
            for e in edits:
                try:
                    m = e(dict(m))
                except (KeyError, ValueError, TypeError):
                    pass  # an edit of a member an earlier edit removed or mangled
            return m

        data = rezip(fuzz_bundle, edit)
        store = Store(tmp_path / f"fuzz{outcomes['imported'] + outcomes['refused']}.sqlite")
        try:
            rep = bundles.import_bundle(store, data)
        except PatchboardError as e:
            assert_project_error(e, {"bundle", "model-fingerprint"})
            assert store.count() == 0
            outcomes["refused"] += 1
            return
        assert rep.added == store.count() >= 1
        outcomes["imported"] += 1

    run_one()
    print(f"\n[fuzz] bundles: {outcomes}")
    assert outcomes["refused"] > 60, outcomes
