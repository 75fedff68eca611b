"""A head's write (patching/engine/head_write.py), checked by hand with hooks.

On a model that normalises its attention output after the head sum (the tiny
Gemma 3), a head's write difference must equal what the block itself adds
when only that head's ``z`` is patched: run the base prompt with head h's
``z`` replaced by the source run's, read ``hook_attn_out`` (the normalised
output the block adds to the residual stream) and subtract the base run's.
On an additive model (the tiny Llama) the same measurement equals
``(z_src − z_base) W_O[h]``, the textbook definition.
"""

from __future__ import annotations

import pytest
import torch

from patching.engine.head_write import HeadWrites


def _tokens(tok):
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    ids = [tok(t, return_tensors="pt").input_ids for t in (clean, corrupt)]
    bos = torch.tensor([[tok.bos_token_id]])
    return [torch.cat([bos, i], 1) for i in ids]


def _by_hand(lm, layer, head, src_z, base_tokens):
    """hook_attn_out with only head ``head``'s z taken from ``src_z``, minus the base run's."""
    b = lm.bridge
    _, base = b.run_with_cache(base_tokens, names_filter=lambda n: n == f"blocks.{layer}.hook_attn_out")

    def patch(z, hook=None):
        z = z.clone()
        z[:, :, head] = src_z[:, :, head]
        return z

    got = {}

    def grab(x, hook=None):
        got["out"] = x.detach().clone()
        return x

    b.run_with_hooks(base_tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch), (f"blocks.{layer}.hook_attn_out", grab)])
    return got["out"] - base[f"blocks.{layer}.hook_attn_out"]


def _z(lm, tokens):
    _, c = lm.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_z"))
    return [c[f"blocks.{l}.attn.hook_z"] for l in range(lm.n_layers)]


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3), (2, 1)])
def test_gemma3_head_write_is_the_normalised_output_change(tiny_gemma3, embedded_tokenizer, layer, head):
    clean, corrupt = _tokens(embedded_tokenizer)
    zc, zk = _z(tiny_gemma3, clean), _z(tiny_gemma3, corrupt)
    hw = HeadWrites.of(tiny_gemma3.bridge)
    assert hw.normalised and hw.post_norm[layer] is not None
    want = _by_hand(tiny_gemma3, layer, head, zc[layer], corrupt)
    got = hw.delta(layer, head, zc[layer], zk[layer])
    assert float(want.abs().max()) > 1e-2, "the patched head should move the block's output"
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), float((got - want).abs().max())
    # All heads at once agree with one at a time.
    assert torch.allclose(hw.deltas(layer, zc[layer], zk[layer])[:, :, head], got, atol=1e-6)
    # The additive formula is not the write here: the norm rescales it.
    naive = (zc[layer][:, :, head] - zk[layer][:, :, head]) @ hw.W_O[layer][head]
    assert float((naive - want).abs().max()) > 10 * float((got - want).abs().max()) + 1e-3


def test_gemma3_block_output_is_the_models_attention_output(tiny_gemma3, embedded_tokenizer):
    """N(Σ_h z_h W_O[h] + b_O) is what the block adds to the residual stream."""
    clean, _ = _tokens(embedded_tokenizer)
    _, c = tiny_gemma3.bridge.run_with_cache(clean)
    hw = HeadWrites.of(tiny_gemma3.bridge)
    for l in range(tiny_gemma3.n_layers):
        got = hw.block_output(l, c[f"blocks.{l}.attn.hook_z"])
        want = c[f"blocks.{l}.hook_resid_mid"] - c[f"blocks.{l}.hook_resid_pre"]
        assert torch.allclose(got, want, atol=1e-4), (l, float((got - want).abs().max()))


def test_gemma3_head_writes_do_not_add_up(tiny_gemma3, embedded_tokenizer):
    """The norm's rescaling is shared: Σ_h Δ_h differs from the whole
    attention output's change (which is why each sender is patched alone)."""
    clean, corrupt = _tokens(embedded_tokenizer)
    zc, zk = _z(tiny_gemma3, clean), _z(tiny_gemma3, corrupt)
    hw = HeadWrites.of(tiny_gemma3.bridge)
    total = hw.block_output(1, zc[1]) - hw.block_output(1, zk[1])
    summed = hw.deltas(1, zc[1], zk[1]).sum(2)
    assert float((total - summed).abs().max()) > 1e-3


def test_additive_head_write_is_z_times_w_o(tiny_llama, embedded_tokenizer):
    clean, corrupt = _tokens(embedded_tokenizer)
    zc, zk = _z(tiny_llama, clean), _z(tiny_llama, corrupt)
    hw = HeadWrites.of(tiny_llama.bridge)
    assert not hw.normalised
    want = _by_hand(tiny_llama, 1, 2, zc[1], corrupt)
    got = hw.delta(1, 2, zc[1], zk[1])
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(got, zc[1][:, :, 2] @ hw.W_O[1][2] - zk[1][:, :, 2] @ hw.W_O[1][2])
    assert torch.allclose(hw.deltas(1, zc[1], zk[1]).sum(2), hw.attn_sum(1, zc[1]) - hw.attn_sum(1, zk[1]), atol=1e-5)
