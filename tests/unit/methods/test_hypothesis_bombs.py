"""No amplification from text (issue 22): a hypothesis in a link, a file or a
paste costs at most what its text costs.

The probe's bomb: 275 bytes of YAML whose anchors and aliases nest 7-10
levels deep (9 copies a level) stood for 9**levels values; printing one in an
error message (``!r``) or serialising the notes cost 17.6 s and 783 MB at 7
levels. Now anchors and aliases are refused while the YAML is composed,
before any value is built; a key given twice is refused; a parsed hypothesis
holds at most MAX_NODES values; a value quoted in a message is bounded
(``patching.core.errors.shown``). Memory is asserted generously
(tracemalloc's peak); times are printed, never asserted.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from patching.core.codec import decode_hypothesis, encode_hypothesis
from patching.core.errors import MAX_MESSAGE_CHARS, PatchboardError, shown
from patching.core.limits import MAX_NODES
from patching.methods.graph import Geometry
from patching.methods.hypothesis_format import parse, parse_text

GEO = Geometry(30, 9, 3)


def alias_bomb(levels: int, width: int = 9, where: str = "notes") -> str:
    """The probe's shape: level i is a list of ``width`` aliases of level i-1."""
    lines = ['format: "patchboard.hypothesis/1"', "paths: []", f"{where}:", '  a0: &a0 "xxxxxxxxxxxxxxxx"']
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines)


def entry_bomb(levels: int) -> str:
    """Aliases where an error message quotes the value (a bad path entry)."""
    lines = ["x0: &x0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\npaths: [*x{levels}]"


def _measured(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    except PatchboardError as e:
        err = e
    else:
        err = None
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return err, seconds, peak


@pytest.mark.parametrize("levels", [7, 8, 9, 10])
@pytest.mark.parametrize("bomb", [alias_bomb, entry_bomb], ids=["notes", "entry"])
def test_alias_bombs_are_refused_cheaply(levels, bomb):
    import yaml  # noqa: F401 - imported before measuring (its import is not the bomb's cost)

    text = bomb(levels)
    assert len(text) < 1_000
    err, seconds, peak = _measured(lambda: parse(text, GEO))
    print(f"\n[bomb] {bomb.__name__} {levels} levels ({len(text)} bytes): refused in {seconds * 1000:.1f} ms, peak {peak / 1e6:.2f} MB")
    assert err is not None and err.field == "hypothesis"
    assert "anchors and aliases" in err.message and len(str(err)) < 300
    assert peak < 50_000_000  # the probe's 7 levels took 783 MB


def test_alias_bomb_in_a_link_is_refused_the_same_way():
    blob = encode_hypothesis(alias_bomb(10))
    assert len(blob) < 400
    err, _, peak = _measured(lambda: parse(decode_hypothesis(blob), GEO))
    assert err is not None and "anchors and aliases" in err.message and peak < 50_000_000


def test_plain_yaml_still_parses_and_a_repeated_key_is_refused():
    hyp = parse('format: "patchboard.hypothesis/1"\nname: yaml\npaths:\n  - {sender: embed, receiver: logits}\n', GEO)
    assert hyp.name == "yaml" and len(hyp.edges) == 1
    for text in ('paths: []\nname: a\nname: b\n', '{"paths": [], "name": "a", "name": "b"}'):
        with pytest.raises(PatchboardError, match="appears twice"):
            parse_text(text)


def test_node_count_is_bounded_after_parsing():
    big = '{"paths": [], "notes": [' + ",".join(["0"] * (MAX_NODES + 1)) + "]}"
    with pytest.raises(PatchboardError, match="MAX_NODES"):
        parse_text(big)
    with pytest.raises(PatchboardError, match="MAX_NODES"):  # an object from a stored row or a bundle, too
        parse({"paths": [], "notes": [0] * (MAX_NODES + 1)}, GEO)


@pytest.mark.parametrize("value", ["y" * 1_000_000, ["z" * 10_000] * 10_000, {"k": list(range(100_000))}, 10**4000])
def test_quoted_values_are_bounded(value):
    assert len(shown(value)) <= 70


def test_messages_quote_user_values_within_a_cap():
    huge = "q" * 1_000_000
    for hyp in ({"paths": [huge]}, {"paths": [{"sender": huge, "receiver": "logits"}]}, {"paths": [], huge: 1},
                {"paths": [{"sender": "embed", "receiver": "logits", "input": [huge] * 1000}]}, {"format": huge, "paths": []}):
        with pytest.raises(PatchboardError) as e:
            parse(hyp, GEO)
        assert len(str(e.value)) < 600, str(e.value)[:200]
    assert len(PatchboardError("x", "m" * 100_000).message) <= MAX_MESSAGE_CHARS + 1
