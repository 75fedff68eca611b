"""Shared fixtures.

The result store and anything else written under ``PATCHBOARD_CACHE_DIR`` go to
a per-session temporary folder, but the converted embedded model is reused
from the default cache (``~/.cache/patchboard/models``; converting the GGUF
takes ~25 s): the temporary cache folder gets a ``models`` symlink to it.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def tiny_llama(embedded_tokenizer):
    """A tiny random Llama (GQA, RoPE, RMSNorm) on the embedded tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from patching.core.models import from_hf

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, initializer_range=0.2,
                      bos_token_id=embedded_tokenizer.bos_token_id, eos_token_id=embedded_tokenizer.eos_token_id)
    return from_hf(LlamaForCausalLM(cfg), embedded_tokenizer, "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2(embedded_tokenizer):
    """A tiny random GPT-2 (learned positions, LayerNorm, joint QKV) on the embedded tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from patching.core.models import from_hf

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=256, initializer_range=0.2,
                     bos_token_id=embedded_tokenizer.bos_token_id, eos_token_id=embedded_tokenizer.eos_token_id)
    return from_hf(GPT2LMHeadModel(cfg), embedded_tokenizer, "tiny-gpt2")
