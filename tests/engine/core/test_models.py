"""dtype, device and memory-budget plumbing (issue 13).

Parity per dtype: the engine in bfloat16/float16 agrees with TransformerLens
run in the same dtype on the same bridge (TOL_SAME_DTYPE), and with the
float32 sweep to the tolerances docs/scale-out.md states (TOL_VS_FLOAT32). Both half
types run on the CPU in torch 2.13; the CUDA versions are the ``gpu`` tests.
"""

from __future__ import annotations

import pytest
import torch

from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.methods.activation import compute

METRICS = ("logit_diff", "prob", "logprob", "kl")
TOL_SAME_DTYPE = 1e-4
#: |half-precision effect - float32 effect|, per metric (measured on the tiny
#: models: about half of these; docs/scale-out.md's table).
TOL_VS_FLOAT32 = {
    "bfloat16": {"logit_diff": 0.1, "prob": 1e-4, "logprob": 0.08, "kl": 0.01},
    "float16": {"logit_diff": 0.015, "prob": 1e-5, "logprob": 0.01, "kl": 0.002},
}


@pytest.fixture(scope="module")
def parity_ds(embedded_tokenizer):
    from tests.helpers.transformer_lens import PAIRS

    from patching.core.data import build_dataset

    return build_dataset(list(PAIRS), embedded_tokenizer)


def _half(tiny_model, dtype: str, arch: str = "llama"):
    from patching.core.models import from_hf

    return from_hf(tiny_model.hf(arch).to(getattr(torch, dtype)), tiny_model.tokenizer, f"tiny-{arch}")


def _diff(a, b, m) -> float:
    return float((torch.tensor(a[m].to_numpy(float)) - torch.as_tensor(b[m] if not hasattr(b[m], "to_numpy") else b[m].to_numpy(float)).double()).abs().max())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_matches_transformer_lens_in_the_same_dtype(tiny_model, parity_ds, dtype):
    from tests.helpers.transformer_lens import tl_reference

    lm32 = tiny_model("llama")
    lm = _half(tiny_model, dtype)
    assert lm.dtype == dtype and next(lm.bridge.parameters()).dtype == getattr(torch, dtype)
    spec = Spec(model="tiny-llama", task=None, pairs=tuple(parity_ds.pairs), component="head", dtype=dtype)
    ours = compute(spec, lm, parity_ds).table
    ref, gap = tl_reference(lm, parity_ds, "head", "denoise")
    assert abs(gap) > 0.1
    for m in METRICS:
        assert _diff(ours, ref, m) <= TOL_SAME_DTYPE, (dtype, m)
    f32 = compute(spec.with_(dtype="float32"), lm32, parity_ds).table
    worst = {m: float((ours[m] - f32[m]).abs().max()) for m in METRICS}
    for m in METRICS:
        assert worst[m] <= TOL_VS_FLOAT32[dtype][m], (dtype, m, worst)
    # Half precision really ran: not bit-equal to float32.
    assert worst["logit_diff"] > 0


def test_service_refuses_a_model_in_another_dtype(tiny_model, store):
    lm = tiny_model("llama")
    with pytest.raises(PatchboardError, match="^dtype: the spec asks for bfloat16 but the model given is loaded in float32"):
        from patching import service

        service.run(Spec(model=lm.name, task="ioi", n_pairs=2, dtype="bfloat16"), store=store, lm=lm)
    assert store.count() == 0


def test_device_map_with_offloaded_layers_gives_the_same_numbers(tiny_model, tmp_path, parity_ds):
    """A local folder loaded with a device_map that offloads two of its three
    layers to disk (read back as they run) goes through the same model path:
    same fingerprint (read module by module), same sweep."""
    from patching.core.models import load_model

    folder = tmp_path / "tiny"
    tiny_model.hf("llama").save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)
    plain = load_model(str(folder), device="cpu")
    placement = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
                 "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    mapped = load_model(str(folder), device_map=placement)
    assert any(p.is_meta for p in mapped.bridge.original_model.parameters()), "no layer was offloaded"
    assert mapped.fingerprint == plain.fingerprint
    spec = Spec(model=str(folder), task=None, pairs=tuple(parity_ds.pairs), component="head")
    a, b = compute(spec, plain, parity_ds).table, compute(spec, mapped, parity_ds).table
    for m in METRICS:
        assert float((a[m] - b[m]).abs().max()) <= 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_matches_transformer_lens_in_each_dtype(tiny_model, parity_ds, dtype):
    from tests.helpers.transformer_lens import tl_reference

    from patching.core.models import from_hf

    lm = from_hf(tiny_model.hf("llama").to("cuda", getattr(torch, dtype)), tiny_model.tokenizer, "tiny-llama")
    assert lm.device.startswith("cuda")
    spec = Spec(model="tiny-llama", task=None, pairs=tuple(parity_ds.pairs), component="head", dtype=dtype)
    ours = compute(spec, lm, parity_ds).table
    from dataclasses import replace

    on_gpu = replace(parity_ds, **{f: getattr(parity_ds, f).to("cuda") for f in ("clean_tokens", "corrupt_tokens", "answer_ids", "counter_ids")})
    ref, _ = tl_reference(lm, on_gpu, "head", "denoise")
    for m in METRICS:
        assert _diff(ours, {k: v.cpu() for k, v in ref.items()}, m) <= (1e-4 if dtype == "float32" else 1e-3), (dtype, m)
    cpu = compute(spec.with_(dtype="float32"), tiny_model("llama"), parity_ds).table
    tol = {"float32": 1e-4, **{d: TOL_VS_FLOAT32[d]["logit_diff"] for d in TOL_VS_FLOAT32}}[dtype]
    assert float((ours["logit_diff"] - cpu["logit_diff"]).abs().max()) <= tol
