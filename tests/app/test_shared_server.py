"""A server others can use (issue 22), under AppTest, without a model:

* read-only mode (``PATCHBOARD_READ_ONLY=1``): no page offers to compute,
  load a model, import or delete; stored results still draw;
* imported results say so beside their numbers, and markdown in a stored or
  imported result's meta renders as plain text;
* shared mode: the Library lists, deletes and exports by owner;
* the Paths page parses a hypothesis once per change of its text.
"""

from __future__ import annotations

import json
import re

import pytest

from patching import bundles
from patching.core.spec import ENGINE_VERSION, Spec
from patching.store import Store
from tests.helpers import ROOT, env_restored
from tests.helpers.apptest import charts, open_page, texts
from tests.helpers.store import embedded_fingerprint, link_models, populate_paths, populate_store

STORED = Spec(task="ioi", n_pairs=2, seed=0, component="head")
NOT_STORED = Spec(task="ioi", n_pairs=3, seed=5, component="head")
PAGES = ("app.py", "pages/2_Library.py", "pages/3_Disagreement.py", "pages/4_Paths.py", "pages/5_How_to_read.py")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache with the synthetic Patch and Paths results stored."""
    c = tmp_path_factory.mktemp("shared")
    link_models(c)
    with env_restored("PATCHBOARD_CACHE_DIR"):
        populate_store(c)
        populate_paths(c)
    return c


@pytest.fixture
def env(cache, monkeypatch):
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(cache))
    monkeypatch.delenv("PATCHBOARD_ALLOWED_MODELS", raising=False)
    monkeypatch.delenv("PATCHBOARD_SHARED", raising=False)
    return cache


def _buttons(at) -> list[str]:
    return [b.label for b in at.button]


def _live_markdown(text: str) -> bool:
    """An unescaped link, image or HTML tag in markdown text."""
    return bool(re.search(r"(?<!\\)!?\[[^\]]*(?<!\\)\]\(|<img|<a ", text))


# ---------------------------------------------------------------- read-only


@pytest.mark.parametrize("page,query", [
    ("app.py", NOT_STORED.to_query()), ("app.py", STORED.to_query()),
    ("pages/4_Paths.py", NOT_STORED.to_query() | {"mode": "sweep", "receivers": "logits"}),
    ("pages/4_Paths.py", NOT_STORED.to_query() | {"mode": "hypothesis"}),
    ("pages/3_Disagreement.py", NOT_STORED.to_query()), ("pages/2_Library.py", {}),
], ids=["patch-missing", "patch-stored", "paths-sweep", "paths-hypothesis", "disagreement", "library"])
def test_read_only_offers_no_compute_import_or_delete(env, monkeypatch, page, query):
    from patching.core.registry import REGISTRY

    monkeypatch.setenv("PATCHBOARD_READ_ONLY", "1")
    at = open_page(page, query)
    assert not at.exception, at.exception
    labels = " | ".join(_buttons(at))
    for forbidden in ("Run", "Compute", "Evaluate", "Show", "Import", "Delete", "Yes, delete"):
        assert forbidden not in labels, labels
    assert not at.get("file_uploader")
    assert "read-only" in texts(at)
    if page == "app.py" and query == STORED.to_query():
        assert len(charts(at)) == 1  # stored results still draw
    assert REGISTRY.peek("smollm2-135m") is None  # nothing loaded a model


def test_without_read_only_the_buttons_are_there(env):
    at = open_page("app.py", NOT_STORED.to_query())
    assert "Run patching" in _buttons(at) and "read-only" not in texts(at)
    lib = open_page("pages/2_Library.py")
    assert lib.get("file_uploader")


# ---------------------------------------------------------------- imported results, meta as plain text


@pytest.fixture(scope="module")
def imported_cache(cache, tmp_path_factory):
    """A second server's cache holding the first one's results, imported from a bundle."""
    c = tmp_path_factory.mktemp("imported")
    link_models(c)
    src = Store(cache / "results.sqlite")
    data = bundles.bundle_bytes(src, list(src.keys()))
    bundles.import_bundle(Store(c / "results.sqlite"), data, name="alice's results.zip")
    return c


def test_imported_numbers_say_so(imported_cache, monkeypatch):
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(imported_cache))
    at = open_page("app.py", STORED.to_query())
    assert not at.exception and len(charts(at)) == 1
    assert "imported from alice's results.zip" in texts(at).replace("\\", "")
    assert all(m.label.endswith("(imported)") for m in at.metric)
    assert "Compute it here (replaces the imported numbers)" in _buttons(at)
    lib = open_page("pages/2_Library.py")
    assert set(lib.dataframe[0].value["origin"]) == {"imported"}


def test_markdown_in_a_stored_meta_is_plain_text(env, tmp_path, monkeypatch):
    """An old store may hold rows no import would accept now: their meta
    values still reach the page as plain text (no beacon image, no link)."""
    import shutil

    c = tmp_path / "poisoned"
    c.mkdir()
    (c / "models").symlink_to((env / "models").resolve(), target_is_directory=True)
    shutil.copy(env / "results.sqlite", c / "results.sqlite")
    store = Store(c / "results.sqlite")
    spec = STORED.validated()
    key = spec.cache_key(embedded_fingerprint(env))
    rec = store.get(key)
    beacon, phish = "![b](http://127.0.0.1:9/beacon.png)", "[Session expired, log in](http://127.0.0.1:9/login)"
    meta = dict(rec["meta"], n_layers=beacon, n_heads=phish, n_pairs=phish, rows=beacon, warnings=[phish, beacon])
    store.delete(key)
    store.put(key, "activation", spec.to_json(), rec["label"], spec.model, rec["model_fingerprint"], ENGINE_VERSION, 1.0,
              rec["baselines"], meta, rec["table"])
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(c))
    at = open_page("app.py", STORED.to_query())
    assert not at.exception
    shown = texts(at)
    assert "beacon" in shown and "Session expired" in shown  # shown ...
    assert not _live_markdown(shown), [t for t in shown.splitlines() if _live_markdown(t)]  # ... as text


# ---------------------------------------------------------------- shared mode


def test_shared_library_offers_only_ones_own(env, tmp_path, monkeypatch):
    import shutil

    c = tmp_path / "shared"
    c.mkdir()
    (c / "models").symlink_to((env / "models").resolve(), target_is_directory=True)
    shutil.copy(env / "results.sqlite", c / "results.sqlite")
    store = Store(c / "results.sqlite")
    fp = embedded_fingerprint(env)
    from patching.core.pairs import Pair

    private = Spec(task=None, pairs=(Pair("my secret prompt about Mary", "my secret prompt about John", " Mary", " John"),),
                   component="head").validated()
    public = Spec(task="ioi", n_pairs=2, seed=9, component="head").validated()
    rec = store.get(STORED.validated().cache_key(fp))
    for spec in (private, public):
        store.put(spec.cache_key(fp), "activation", spec.to_json(), spec.label(), spec.model, fp, ENGINE_VERSION, 1.0, rec["baselines"],
                  rec["meta"], rec["table"], owner="session:someone-else")
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(c))
    monkeypatch.setenv("PATCHBOARD_SHARED", "1")
    at = open_page("pages/2_Library.py")
    assert not at.exception
    table = at.dataframe[0].value
    assert "custom pairs" not in set(table["task"])  # someone else's own prompts are not listed
    by = dict(zip(table["key"], table["by"]))
    assert by[public.cache_key(fp)] == "someone else" and set(by.values()) == {"server", "someone else"}
    assert "left out" in " ".join(b.label for b in at.get("download_button"))  # their result is not exported
    monkeypatch.setenv("PATCHBOARD_SHARED", "0")
    at = open_page("pages/2_Library.py")
    assert "custom pairs" in set(at.dataframe[0].value["task"]) and "by" not in at.dataframe[0].value.columns


# ---------------------------------------------------------------- the Paths page parses once per change


def test_paths_page_parses_a_hypothesis_once_per_change(env, monkeypatch):
    from patching.methods import hypothesis_format

    calls = []
    real = hypothesis_format.parse

    def counted(obj, geo, *a, **k):
        calls.append(obj if isinstance(obj, str) else json.dumps(obj))
        return real(obj, geo, *a, **k)

    monkeypatch.setattr(hypothesis_format, "parse", counted)
    text = (ROOT / "examples" / "induction.json").read_text()
    at = open_page("pages/4_Paths.py", Spec(task="induction", n_pairs=2, seed=0).to_query() | {"mode": "hypothesis"})
    assert not at.exception
    first = len(calls)
    assert first >= 1
    at.selectbox(key="pb_x_delta").set_value("loss").run()  # another widget: no new parse
    at.run()
    assert len(calls) == first
    edited = text.replace("(derived)", "(edited)", 1)
    assert edited != text
    at.text_area(key="pb_x_hypothesis").input(edited).run()  # the text changed: one parse
    assert len(calls) == first + 1
