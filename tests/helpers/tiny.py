"""Tiny random models on the embedded tokenizer: one recipe per architecture.

The ``engine`` tier's fixtures (``tiny_model``, ``tiny_llama``, ``tiny_gpt2``
in ``tests/conftest.py``) are built from these.
"""

from __future__ import annotations

import torch

#: The embedded model's vocabulary size; the tiny models share its tokenizer.
#: Their weights are drawn larger than HF's default (initializer_range 0.2,
#: not 0.02) so that patching effects stand well above float noise.
VOCAB = 49152

#: The one tiny-model recipe per architecture: 3 layers, 4 heads of width 16
#: (Llama: grouped-query attention with 2 KV heads, RoPE, RMSNorm; GPT-2:
#: learned positions, LayerNorm, joint QKV; Gemma 3: below). Any field can be overridden.
TINY_CONFIGS = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, initializer_range=0.2),
    "gpt2": dict(n_embd=64, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=256, initializer_range=0.2),
    # Gemma 3: norms before *and after* attention and the MLP (the attention
    # output is normalised after the head sum), q/k norms, scaled embeddings,
    # GQA, local (sliding-window) and global layers with their own RoPE bases.
    "gemma3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, query_pre_attn_scalar=16, vocab_size=VOCAB, max_position_embeddings=256, initializer_range=0.2,
                   sliding_window=6, layer_types=["sliding_attention", "full_attention", "sliding_attention"], pad_token_id=0,
                   architectures=["Gemma3ForCausalLM"]),
}

#: Spread of the tiny Gemma's norm weights (HF initialises them to zero, i.e.
#: scale 1): drawn so that each norm -- the post-attention one above all --
#: rescales its input unevenly, as trained models' do.
NORM_SPREAD = 0.5


def tiny_hf(arch: str = "llama", tokenizer=None, *, seed: int = 0, scale: float = 1.0, **overrides):
    """A tiny random Hugging Face model: ``TINY_CONFIGS[arch]`` with the
    tokenizer's BOS/EOS ids and ``overrides`` (config fields), drawn after
    ``torch.manual_seed(seed)``; every weight is then multiplied by ``scale``."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "gpt2": (GPT2Config, GPT2LMHeadModel),
               "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM)}
    if arch not in classes:
        raise ValueError(f"tiny model arch {arch!r}: use one of {sorted(classes)}")
    kw = dict(TINY_CONFIGS[arch])
    if tokenizer is not None:
        kw.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    kw.update(overrides)
    config_cls, model_cls = classes[arch]
    torch.manual_seed(seed)
    hf = model_cls(config_cls(**kw))
    if arch == "gemma3":
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0.0, NORM_SPREAD)
    if scale != 1.0:
        with torch.no_grad():
            for p in hf.parameters():
                p.mul_(scale)
    return hf


class TinyModelFactory:
    """``tiny_model(arch="llama"|"gpt2"|"gemma3", **overrides)``: a tiny random model on
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
