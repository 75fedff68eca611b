"""A 1B-class model on the CPU within the memory budget (issue 13).

Llama-3.2-1B's shape (hidden 2048, 32 query heads in 8 key/value groups, MLP
8192, vocabulary 128,256, tied embeddings) with 2 of its 16 layers, randomly
initialised from a config (no download): a full head sweep runs with
``PATCHBOARD_MEM_BUDGET_MB=256`` and the process's peak resident memory above
the loaded model stays within the budget (with the allocator's slack). The
figure is printed (``pytest -s``) and recorded as the test's property.
"""

from __future__ import annotations

import gc
import sys
import time

import pytest
import torch

BUDGET_MB = 256


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def llama_1b_shape(tokenizer, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                      vocab_size=128256, num_hidden_layers=layers, tie_word_embeddings=True, max_position_embeddings=1024,
                      rope_theta=500000.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with no_init_weights():  # one seeded draw below instead of HF's slower init
        hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, 0.02)
    hf.tie_weights()
    return hf


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak memory from /proc")
def test_head_sweep_of_a_1b_class_model_stays_within_the_budget(embedded_tokenizer, monkeypatch, record_property):
    from patching import service
    from patching.core.models import from_hf
    from patching.core.spec import Spec
    from patching.engine.resources import memory_budget_bytes

    monkeypatch.setenv("PATCHBOARD_MEM_BUDGET_MB", str(BUDGET_MB))
    hf = llama_1b_shape(embedded_tokenizer)
    assert sum(p.numel() for p in hf.parameters()) > 380e6  # 2 layers + the 128k x 2048 embedding
    lm = from_hf(hf, embedded_tokenizer, "llama-3.2-1b-shape")
    assert (lm.n_heads, lm.cfg.n_key_value_heads, lm.cfg.d_vocab) == (32, 8, 128256)
    gc.collect()
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    t0 = time.time()
    res = service.run(Spec(model=lm.name, task="ioi", n_pairs=2, component="head"), lm=lm, use_store=False)
    seconds = time.time() - t0
    peak = _status("VmHWM") - base
    record_property("peak_extra_mb", round(peak / 2**20, 1))
    print(f"\n1B-class head sweep (2 layers x 32 heads, 2 pairs): {seconds:.1f} s, weights {base / 2**30:.2f} GiB resident, "
          f"peak above them {peak / 2**20:.0f} MiB with a {BUDGET_MB} MiB budget")
    assert len(res.table) == 2 * 32 and float(res.table["kl"].abs().max()) > 0
    assert peak <= 1.25 * memory_budget_bytes("cpu"), f"peak {peak / 2**20:.0f} MiB over the {BUDGET_MB} MiB budget"
