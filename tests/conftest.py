"""Shared fixtures.

The result store and anything else written under ``PATCHBOARD_CACHE_DIR`` go to
a per-session temporary folder, but the converted embedded model is reused
from the default cache (``~/.cache/patchboard/models``; converting the GGUF
takes ~25 s): the temporary cache folder gets a ``models`` symlink to it.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from pathlib import Path

import pytest
import torch

#: The embedded model's vocabulary size; the tiny models share its tokenizer.
#: Their weights are drawn larger than HF's default (initializer_range 0.2,
#: not 0.02) so that patching effects stand well above float noise.
VOCAB = 49152


@pytest.fixture(scope="session", autouse=True)
def patchboard_cache_dir(tmp_path_factory):
    """A fresh PATCHBOARD_CACHE_DIR for the session, with the default cache's
    converted models linked in."""
    default_root = Path(os.environ.get("PATCHBOARD_CACHE_DIR") or Path.home() / ".cache" / "patchboard")
    models = default_root / "models"
    models.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("patchboard-cache")
    (root / "models").symlink_to(models, target_is_directory=True)
    old = os.environ.get("PATCHBOARD_CACHE_DIR")
    os.environ["PATCHBOARD_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("PATCHBOARD_CACHE_DIR", None)
    else:
        os.environ["PATCHBOARD_CACHE_DIR"] = old


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


# ---------------------------------------------------------------- tiny random models

#: The one tiny-model recipe per architecture: 3 layers, 4 heads of width 16
#: (Llama: grouped-query attention with 2 KV heads, RoPE, RMSNorm; GPT-2:
#: learned positions, LayerNorm, joint QKV). Any field can be overridden.
TINY_CONFIGS = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, initializer_range=0.2),
    "gpt2": dict(n_embd=64, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=256, initializer_range=0.2),
}


def tiny_hf(arch: str = "llama", tokenizer=None, *, seed: int = 0, scale: float = 1.0, **overrides):
    """A tiny random Hugging Face model: ``TINY_CONFIGS[arch]`` with the
    tokenizer's BOS/EOS ids and ``overrides`` (config fields), drawn after
    ``torch.manual_seed(seed)``; every weight is then multiplied by ``scale``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "gpt2": (GPT2Config, GPT2LMHeadModel)}
    if arch not in classes:
        raise ValueError(f"tiny model arch {arch!r}: use one of {sorted(classes)}")
    kw = dict(TINY_CONFIGS[arch])
    if tokenizer is not None:
        kw.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    kw.update(overrides)
    config_cls, model_cls = classes[arch]
    torch.manual_seed(seed)
    hf = model_cls(config_cls(**kw))
    if scale != 1.0:
        with torch.no_grad():
            for p in hf.parameters():
                p.mul_(scale)
    return hf


class TinyModelFactory:
    """``tiny_model(arch="llama"|"gpt2", **overrides)``: a tiny random model on
    the embedded tokenizer, wrapped by ``patching.core.models.from_hf`` (named
    ``tiny-<arch>`` unless ``name=``). ``tiny_model.hf(...)`` gives the bare HF
    model (e.g. to save as a local model folder). See :func:`tiny_hf` for
    ``seed``, ``scale`` and the config overrides. Every call builds a new model."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def hf(self, arch: str = "llama", **overrides):
        return tiny_hf(arch, self.tokenizer, **overrides)

    def __call__(self, arch: str = "llama", *, name: str | None = None, **overrides):
        from patching.core.models import from_hf

        return from_hf(self.hf(arch, **overrides), self.tokenizer, name or f"tiny-{arch}")


@pytest.fixture(scope="session")
def tiny_model(embedded_tokenizer) -> TinyModelFactory:
    """The tiny-model factory (tests using it are in the ``engine`` tier)."""
    return TinyModelFactory(embedded_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama(tiny_model):
    """A tiny random Llama (GQA, RoPE, RMSNorm) on the embedded tokenizer."""
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_model):
    """A tiny random GPT-2 (learned positions, LayerNorm, joint QKV) on the embedded tokenizer."""
    return tiny_model("gpt2")


# ---------------------------------------------------------------- test tiers
#
# Every test gets exactly one tier marker (registered in pytest.ini):
#   unit         no model at all
#   engine       tiny random models built in-process (tiny_model, tiny_llama, tiny_gpt2)
#   integration  the embedded SmolLM2 model, or files converted from it (its tokenizer)
#   app          Streamlit AppTest
#   browser      real chromium via Playwright against a Streamlit server
# A test that carries a tier marker keeps it; the others are assigned below,
# first match wins: browser, app, integration (model), engine, integration
# (tokenizer only), unit. ``gpu`` is an extra marker: skipped without CUDA.

TIERS = ("unit", "engine", "integration", "app", "browser")
BROWSER_MODULES = {"test_browser.py"}
APP_MODULES = {"test_app.py", "test_paths_page.py"}
BROWSER_FIXTURES = {"browser", "server", "populated_cache", "paths_server"}
EMBEDDED_FIXTURES = {"embedded"}
ENGINE_FIXTURES = {"tiny_model", "tiny_llama", "tiny_gpt2"}
TOKENIZER_FIXTURES = {"embedded_tokenizer"}
#: Calls, in a test's body or in a fixture it uses, that start a browser or a
#: Streamlit server (browser_util's helpers), that load the embedded model
#: (or convert it), or that need only its tokenizer (still the converted files).
EMBEDDED_CALLS = re.compile(r"\b(get_model|load_model|embedded_folder|populate_store|link_models)\(")
ENGINE_CALLS = re.compile(r"\b(from_hf|tiny_hf)\(")
TOKENIZER_CALLS = re.compile(r"\bembedded_tokenizer\(")
BROWSER_CALLS = re.compile(r"\b(start_server|launch_browser|sync_playwright)\(")


@functools.lru_cache(maxsize=None)
def _source(func) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def _bodies(item) -> list[str]:
    """The source of the test function and of every fixture in its closure."""
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for name in item.fixturenames:
        for fd in (info.name2fixturedefs.get(name, ()) if info else ()):
            funcs.append(fd.func)
    return [_source(f) for f in funcs if f is not None]


def _imports_apptest(module) -> bool:
    return any(getattr(v, "__module__", "").startswith("streamlit.testing") for v in vars(module).values())


def _auto_tier(item) -> str:
    # Fixtures requested by name, and those a parametrized fixture fetches by
    # name (``request.getfixturevalue(request.param)``, as test_engine's ``lm``).
    params = getattr(getattr(item, "callspec", None), "params", {})
    used = set(item.fixturenames) | {v for v in params.values() if isinstance(v, str)}
    bodies = _bodies(item)
    module = item.path.name
    if module in BROWSER_MODULES or used & BROWSER_FIXTURES or any(BROWSER_CALLS.search(b) for b in bodies):
        return "browser"
    if module in APP_MODULES or (item.module is not None and _imports_apptest(item.module)):
        return "app"
    if used & EMBEDDED_FIXTURES or any(EMBEDDED_CALLS.search(b) for b in bodies):
        return "integration"
    if used & ENGINE_FIXTURES or any(ENGINE_CALLS.search(b) for b in bodies):
        return "engine"
    if used & TOKENIZER_FIXTURES or any(TOKENIZER_CALLS.search(b) for b in bodies):
        return "integration"
    return "unit"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    no_cuda = None
    problems = []
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if not tiers:
            item.add_marker(getattr(pytest.mark, _auto_tier(item)))
            tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: tier markers {sorted(tiers) or 'none'}")
        if item.get_closest_marker("gpu") is not None:
            if no_cuda is None:
                no_cuda = not torch.cuda.is_available()
            if no_cuda:
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))
    if problems:
        raise pytest.UsageError("every test needs exactly one tier marker (" + ", ".join(TIERS) + "):\n  "
                                + "\n  ".join(problems))
