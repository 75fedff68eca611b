"""Shared fixtures, and each test's tier taken from its folder.

The result store and anything else written under ``PATCHBOARD_CACHE_DIR`` go to
a per-session temporary folder, but the converted embedded model is reused
from the default cache (``~/.cache/patchboard/models``; converting the GGUF
takes ~25 s): the temporary cache folder gets a ``models`` symlink to it.

Expensive artefacts are built once per run: the embedded model and its
tokenizer and the tiny random models here (session scope); the real
Disagreement grid in ``tests/conftest.py`` too (its users are in three tiers);
the Streamlit server and chromium in ``tests/browser/conftest.py``.
Shared plain helpers (no fixtures) are in ``tests/helpers/``.
"""

from __future__ import annotations

import os
from pathlib import Path

# One torch thread in this process and every process the tests start (CLI
# runs, Streamlit servers): on a loaded 2-core machine two OpenMP threads ran
# small ops hundreds of times slower than one, and one thread keeps float sums
# in one order, so results are bit-for-bit repeatable across runs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from tests.helpers import env_restored
from tests.helpers.tiny import TinyModelFactory


@pytest.fixture(scope="session", autouse=True)
def patchboard_cache_dir(tmp_path_factory):
    """A fresh PATCHBOARD_CACHE_DIR for the session, with the default cache's
    converted models linked in."""
    default_root = Path(os.environ.get("PATCHBOARD_CACHE_DIR") or Path.home() / ".cache" / "patchboard")
    models = default_root / "models"
    models.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("patchboard-cache")
    (root / "models").symlink_to(models, target_is_directory=True)
    with env_restored("PATCHBOARD_CACHE_DIR"):
        os.environ["PATCHBOARD_CACHE_DIR"] = str(root)
        yield root


@pytest.fixture
def store(tmp_path):
    from patching.store import Store

    return Store(tmp_path / "results.sqlite")


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct (loaded once per session)."""
    from patching.service import get_model

    return get_model("smollm2-135m")


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from patching.core.models import embedded_tokenizer

    return embedded_tokenizer()


@pytest.fixture(scope="session")
def real_grid(tmp_path_factory, embedded):
    """The Disagreement s2 grid on the embedded model (4 sweeps: str and gn,
    denoise and noise; tests/helpers/disagreement.py's BASE), computed once
    per run into its own store. Its users (integration, app, browser) read it
    and never write to it: a test that adds sweeps works on a copy."""
    import time
    from types import SimpleNamespace

    from patching.store import Store
    from patching.studies.disagreement import grid as disagreement_grid
    from tests.helpers.cli import make_cache
    from tests.helpers.disagreement import BASE, S2

    cache = make_cache(tmp_path_factory.mktemp("disagreement-real"))
    store = Store(cache / "results.sqlite")
    progress = []
    t0 = time.time()
    grid = disagreement_grid.load_or_compute_grid(BASE, store, embedded, progress=lambda d, t: progress.append((d, t)),
                                                  settings=S2)
    seconds = time.time() - t0
    print(f"\n[disagreement] s2 grid (4 sweeps, n-pairs 2, gn x2 samples) computed in {seconds:.0f} s")
    return SimpleNamespace(cache=cache, store=store, lm=embedded, grid=grid, progress=progress, seconds=seconds,
                           settings=disagreement_grid.parse_settings(S2, BASE))


# ---------------------------------------------------------------- tiny random models


@pytest.fixture(scope="session")
def tiny_model(embedded_tokenizer) -> TinyModelFactory:
    """The tiny-model factory (see tests/helpers/tiny.py)."""
    return TinyModelFactory(embedded_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama(tiny_model):
    """A tiny random Llama (GQA, RoPE, RMSNorm) on the embedded tokenizer."""
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_model):
    """A tiny random GPT-2 (learned positions, LayerNorm, joint QKV) on the embedded tokenizer."""
    return tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_model):
    """A tiny random Gemma 3 (attention and MLP outputs normalised after the
    sum, q/k norms, GQA, sliding-window and global layers) on the embedded tokenizer."""
    return tiny_model("gemma3")


# ---------------------------------------------------------------- test tiers
#
# A test's tier is the first folder under tests/ (pytest.ini registers them):
#   unit         no model at all
#   engine       tiny random models built in-process (tiny_model, tiny_llama, tiny_gpt2, tiny_gemma3)
#   integration  the embedded SmolLM2 model, or files converted from it (its tokenizer)
#   app          Streamlit AppTest
#   browser      real chromium via Playwright against a Streamlit server
# Below a tier folder the path mirrors the package (tests/unit/core/ tests
# patching/core/). ``gpu`` is an extra marker: skipped without CUDA.

TIERS = ("unit", "engine", "integration", "app", "browser")
TESTS = Path(__file__).resolve().parent


def tier_of(path: Path) -> str | None:
    """The tier folder ``path`` lies in, or None outside every tier folder."""
    try:
        first = Path(path).resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in TIERS else None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    no_cuda = None
    problems = []
    for item in items:
        tier = tier_of(item.path)
        if tier is None:
            problems.append(f"{item.nodeid}: outside every tier folder (tests/{{{','.join(TIERS)}}}/)")
            continue
        item.add_marker(getattr(pytest.mark, tier))
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if tiers != {tier}:  # a tier marker in the source that contradicts the folder
            problems.append(f"{item.nodeid}: tier markers {sorted(tiers)}, folder says {tier}")
        if item.get_closest_marker("gpu") is not None:
            if no_cuda is None:
                no_cuda = not torch.cuda.is_available()
            if no_cuda:
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))
    if problems:
        raise pytest.UsageError("every test needs exactly one tier, its folder's (" + ", ".join(TIERS) + "):\n  "
                                + "\n  ".join(problems))
