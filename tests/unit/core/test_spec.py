"""The spec: validation, canonical form, URL round trip, cache key."""

import pytest

from patching.core.pairs import Pair
from patching.core.errors import PatchboardError
from patching.core.pairs import decode_pairs, encode_pairs
from patching.core.spec import Spec

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("The Eiffel Tower is in", "The Colosseum is in", " Paris", " Rome", key_positions=(1, 2, 3)),
)


def test_query_round_trip_restores_every_field():
    s = Spec(model="smollm2-135m", task="ioi", n_pairs=12, seed=3, corruption="gn", metric="kl", direction="noise",
             component="mlp_out", window=5, noise_scale=2.5, noise_samples=4, ioi_corrupt="abc").validated()
    q = s.to_query()
    assert q["n-pairs"] == "12" and q["noise-scale"] == "2.5" and q["ioi-corrupt"] == "abc"
    assert Spec.from_query(q) == s


def test_query_round_trip_with_custom_pairs():
    s = Spec(task=None, pairs=PAIRS, corruption="gn", seed=5).validated()
    back = Spec.from_query(s.to_query())
    assert back == s
    assert back.pairs[1].key_positions == (1, 2, 3)
    assert decode_pairs(encode_pairs(PAIRS)) == PAIRS


def test_issue_example_link_parses():
    q = dict(x.split("=") for x in "model=smollm2-135m&task=ioi&n-pairs=8&seed=0&corruption=str&metric=logit_diff&direction=denoise&component=head".split("&"))
    assert Spec.from_query(q) == Spec().validated()


def test_metric_is_not_part_of_cache_key_but_everything_else_is():
    a = Spec().validated()
    assert a.cache_key("fp") == a.with_(metric="prob").cache_key("fp")
    assert a.cache_key("fp") != a.with_(seed=1).cache_key("fp")
    assert a.cache_key("fp") != a.with_(direction="noise").cache_key("fp")
    assert a.cache_key("fp") != a.cache_key("other-weights")


def test_irrelevant_fields_are_canonicalised():
    # Noise parameters do not matter under STR, nor ioi-corrupt outside IOI.
    a = Spec(noise_scale=7.0, noise_samples=3).validated()
    assert a.noise_scale == 3.0 and a.noise_samples == 10
    assert Spec(task="facts", ioi_corrupt="abc").validated().ioi_corrupt == "s2"
    assert Spec(noise_scale=7.0).cache_key("f") == Spec().cache_key("f")


@pytest.mark.parametrize("changes, field", [
    (dict(metric="accuracy"), "metric"),
    (dict(corruption="blur"), "corruption"),
    (dict(corruption="zero"), "direction"),  # zero ablation is noising only
    (dict(direction="sideways"), "direction"),
    (dict(component="neuron"), "component"),
    (dict(task="sst2"), "task"),
    (dict(n_pairs=0), "n-pairs"),
    (dict(window=3, component="head"), "window"),
    (dict(noise_scale=-1.0), "noise-scale"),
    (dict(noise_samples=0), "noise-samples"),
    (dict(model=""), "model"),
    (dict(task=None), "task"),
    (dict(key_positions=(1,)), "key-positions"),
])
def test_bad_values_name_their_field(changes, field):
    with pytest.raises(PatchboardError) as e:
        Spec(**changes).validated()
    assert e.value.field == field
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("query, field", [
    ({"n-pairs": "eight"}, "n-pairs"),
    ({"metric": "nope"}, "metric"),
    ({"pairs": "!!!not-base64"}, "pairs"),
    ({"noise-scale": "x"}, "noise-scale"),
    ({"key-positions": "a,b"}, "key-positions"),
])
def test_malformed_links_raise_one_line_errors(query, field):
    with pytest.raises(PatchboardError) as e:
        Spec.from_query(query)
    assert e.value.field == field


def test_link_pairs_cannot_inflate_without_bound():
    import base64
    import zlib

    bomb = base64.urlsafe_b64encode(zlib.compress(b"[" + b" " * (50 << 20) + b"]", 9)).decode()
    with pytest.raises(PatchboardError):
        decode_pairs(bomb)


def test_to_cli_names_the_same_flags():
    s = Spec(component="mlp_out", window=3, metric="prob").validated()
    cli = s.to_cli()
    for flag in ("--model smollm2-135m", "--task ioi", "--n-pairs 8", "--component mlp_out", "--window 3", "--metric prob"):
        assert flag in cli
