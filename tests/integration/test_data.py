"""Pairs: file parsing and every validation error, on the embedded tokenizer."""

import pytest

from patching.core.pairs import Pair
from patching.core.data import build_dataset
from patching.core.errors import PatchboardError
from patching.core.models import embedded_tokenizer

IOI = Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


def test_valid_pair_tokenizes_with_bos(tok):
    ds = build_dataset([IOI], tok)
    assert int(ds.clean_tokens[0, 0]) == tok.bos_token_id
    assert ds.clean_tokens.shape == ds.corrupt_tokens.shape
    # The only differing position is S2 (" John" -> " Mary"), found automatically.
    assert ds.key_positions[0] == [10]
    assert ds.clean_strs[10] == " John" and ds.corrupt_strs[10] == " Mary"
    assert ds.position_labels[0] == "0:BOS"


@pytest.mark.parametrize("pair, field, words", [
    (Pair("When Mary and John went to the store, John gave a drink to", "When Mary went to the store, Mary gave a drink to", " Mary", " John"), "corrupt", "equal lengths"),
    (Pair("The capital of France is", "The capital of Italy is", " Parisian sunshine", " Rome"), "answer", "single-token"),
    (Pair("The capital of France is", "The capital of Italy is", " Paris", "Romeoandjuliet"), "counter_answer", "single-token"),
    (Pair("", "The capital of Italy is", " Paris", " Rome"), "clean", "empty"),
    (Pair("The capital of France is", "   ", " Paris", " Rome"), "corrupt", "empty"),
    (Pair("The capital of France is", "The capital of Italy is", "", " Rome"), "answer", "empty"),
    (Pair("The capital of France is", "The capital of Italy is", " Paris", " Paris"), "counter_answer", "same token"),
])
def test_bad_pairs_give_one_line_errors(tok, pair, field, words):
    with pytest.raises(PatchboardError) as e:
        build_dataset([pair], tok)
    assert e.value.field == field
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_dataset_keeps_one_length(tok):
    other = Pair("The capital of France is", "The capital of Italy is", " Paris", " Rome")
    with pytest.raises(PatchboardError, match="one token length"):
        build_dataset([IOI, other], tok)


def test_gn_needs_key_positions_and_checks_range(tok):
    same = Pair("The capital of France is", "The capital of France is", " Paris", " Rome")
    with pytest.raises(PatchboardError) as e:
        build_dataset([same], tok, corruption="gn")
    assert e.value.field == "key-positions"
    with pytest.raises(PatchboardError, match="past the prompt"):
        build_dataset([IOI], tok, key_positions=[99])
    assert build_dataset([same], tok, corruption="gn", key_positions=[4]).key_positions == [[4]]


def test_prompt_length_limits_are_the_servers(tok, monkeypatch):
    """MAX_PROMPT_TOKENS is set by the server (PATCHBOARD_MAX_PROMPT_TOKENS) and
    refused with one line naming it; MAX_PROMPT_CHARS before any tokenizing."""
    from patching.core.limits import MAX_PROMPT_CHARS

    p = Pair("When Mary and John went to the store, John gave a drink to",
             "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
    assert build_dataset([p], tok).seq_len > 8
    monkeypatch.setenv("PATCHBOARD_MAX_PROMPT_TOKENS", "8")
    with pytest.raises(PatchboardError, match=r"^pairs: row 1: the prompt is \d+ tokens; this server's limit is 8 \(MAX_PROMPT_TOKENS"):
        build_dataset([p], tok)
    monkeypatch.delenv("PATCHBOARD_MAX_PROMPT_TOKENS")
    long = Pair("a " * MAX_PROMPT_CHARS, "b " * MAX_PROMPT_CHARS, " Mary", " John")
    with pytest.raises(PatchboardError, match="MAX_PROMPT_CHARS"):
        build_dataset([long], tok)
