"""``import --verify K`` (issue 22): results recomputed here before a bundle
is imported. A genuine bundle of a tiny model's results passes and its rows
say they were verified; a bundle whose numbers were made up under correct
keys is refused whole, naming the result and the first number that differs,
and the store is unchanged.
"""

from __future__ import annotations

import json
import random

import pytest

from patching import bundles, service
from patching.core.errors import PatchboardError
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.store import Store
from tests.helpers import registered
from tests.helpers.bundles import rezip

pytestmark = pytest.mark.engine

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
)


@pytest.fixture(scope="module")
def computed(tiny_model, tmp_path_factory):
    """A tiny model registered, and a bundle of five results computed on it (a
    head sweep with per-prompt values, a windowed sweep, a path sweep, a
    hypothesis, an attribution estimate): every kind through the service's
    check of its declared tables."""
    lm = tiny_model("llama", name="tiny-verify")
    with registered(lm):
        src = Store(tmp_path_factory.mktemp("verify") / "src.sqlite")
        spec = Spec(model=lm.name, task=None, pairs=PAIRS)
        hyp = {"name": "direct", "paths": [{"sender": "embed", "receiver": "logits"}, {"sender": "*", "receiver": "logits"}]}
        reqs = [spec.with_(component="head"), spec.with_(component="mlp_out", window=2), service.PathSweep(spec, "logits"),
                service.HypothesisEval(spec, hyp), spec.with_(component="attn_out", method="atp")]
        keys = [service.run(r, src, lm=lm).key for r in reqs]
        yield lm, bundles.bundle_bytes(src, keys), keys


def test_a_genuine_bundle_is_verified_and_imported(computed, tmp_path):
    lm, data, keys = computed
    dst = Store(tmp_path / "dst.sqlite")
    rep = bundles.import_bundle(dst, data, verify=5, name="genuine.zip")
    assert sorted(rep.verified) == sorted(keys) and rep.added == 5
    for k in keys:
        p = dst.get(k)["provenance"]
        assert p["origin"] == "imported" and p["verified"] == 1 and p["weights_here"] == "same"


#: The number each result's forgery changes (a hypothesis has no logit_diff column).
COLUMN = {0: "logit_diff", 1: "logit_diff", 2: "logit_diff", 3: "aue", 4: "logit_diff"}


def _forged(data: bytes, i: int, delta: float) -> bytes:
    from patching.store import table_from_parquet, table_to_parquet

    def edit(m):
        t = table_from_parquet(m[f"results/{i}.parquet"])
        t.loc[0, COLUMN[i]] = t.loc[0, COLUMN[i]] + delta
        m[f"results/{i}.parquet"] = table_to_parquet(t)
        return m
    return rezip(data, edit)


@pytest.mark.parametrize("i", [0, 2, 3])
def test_made_up_numbers_under_correct_keys_are_refused(computed, tmp_path, i):
    lm, data, keys = computed
    forged = _forged(data, i, 0.01)  # 100x the float32 tolerance
    dst = Store(tmp_path / "dst.sqlite")
    bundles.import_bundle(dst, forged)  # without verification it imports: every key is right ...
    assert dst.get(keys[i])["provenance"]["verified"] == 0  # ... and says it was not verified
    dst2 = Store(tmp_path / "dst2.sqlite")
    with pytest.raises(PatchboardError) as e:
        bundles.import_bundle(dst2, forged, verify=5)
    assert e.value.field == "verify" and f"result {i}" in e.value.message and COLUMN[i] in e.value.message
    assert dst2.count() == 0
    # within the tolerance it is the same result
    assert bundles.import_bundle(Store(tmp_path / "dst3.sqlite"), _forged(data, i, 1e-7), verify=5).added == 5


def test_verify_checks_exactly_the_rows_it_picks_at_random(computed):
    lm, data, keys = computed
    b = bundles.read_bundle(_forged(data, 1, 0.5))
    for seed in range(4):
        picked = random.Random(seed).sample(range(5), 1)
        if picked == [1]:
            with pytest.raises(PatchboardError, match="result 1"):
                bundles.verify_rows(b, 1, rng=random.Random(seed))
        else:
            assert bundles.verify_rows(b, 1, rng=random.Random(seed)) == [keys[picked[0]]]
    with pytest.raises(PatchboardError, match="result 1"):  # K >= the rows: every row
        bundles.verify_rows(b, 10)


def test_cli_import_verify(computed, tmp_path, monkeypatch, capsys):
    from patching.cli import main

    lm, data, keys = computed
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path / "cli"))
    path = tmp_path / "bundle.zip"
    path.write_bytes(_forged(data, 0, 0.01))
    assert main(["import", str(path), "--verify", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: verify: result 0") and err.count("\n") == 1 and Store().count() == 0
    path.write_bytes(data)
    assert main(["import", str(path), "--verify", "2"]) == 0
    err = capsys.readouterr().err
    assert "verified 2 result(s)" in err and "imported 5 result(s)" in err
    assert {json.loads(json.dumps(Store().get(k)["provenance"]))["bundle"] for k in keys} == {"bundle.zip"}


def test_cli_recompute_replaces_an_imported_result(computed, tmp_path, monkeypatch, capsys):
    """``run --recompute`` computes a stored imported result here and replaces
    it; the CLI says where a stored result came from."""
    from patching.cli import main

    lm, data, keys = computed
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path / "cli"))
    store = Store()
    bundles.import_bundle(store, _forged(data, 0, 0.01), name="made-up.zip")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer, "counter_answer": p.counter_answer}) + "\n"
                             for p in PAIRS))
    args = ["run", "--model", lm.name, "--pairs", str(pairs), "--component", "head", "--bootstrap", "0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "from store" in err and "imported from 'made-up.zip'" in err and "--recompute replaces it" in err
    assert store.get(keys[0])["origin"] == "imported"
    assert main(args + ["--recompute"]) == 0
    got = store.get(keys[0])
    assert got["origin"] == "computed" and "computed in" in capsys.readouterr().err
    assert bundles.differs(bundles.read_bundle(data).rows[0], service.lookup(Spec(model=lm.name, task=None, pairs=PAIRS, component="head"),
                                                                             store)) is None  # the real numbers again
