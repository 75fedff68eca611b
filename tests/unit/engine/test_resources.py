"""dtype, device, memory-budget and executor settings without a model
(patching/engine/resources.py, the device choice of patching/core/models.py,
the dtype in the Spec's key, the CLI's compute flags, patching/executors/);
the models in each dtype and device: tests/engine/core/test_models.py."""

from __future__ import annotations

import pytest
import torch

from patching.core.errors import PatchboardError
from patching.core.spec import Spec


def test_dtype_is_in_the_key_only_when_not_float32():
    s = Spec(task="ioi", n_pairs=2)
    assert "dtype" not in s.validated().compute_dict()
    assert s.cache_key("fp") == s.with_(dtype="float32").cache_key("fp")
    assert s.with_(dtype="bfloat16").cache_key("fp") != s.cache_key("fp")
    assert s.with_(dtype="bfloat16").to_query()["dtype"] == "bfloat16"
    assert Spec.from_query({"dtype": "float16"}).dtype == "float16"
    with pytest.raises(PatchboardError, match="^dtype: 'float8' is not one of float32, bfloat16, float16$"):
        Spec(dtype="float8").validated()


def test_device_choice_and_override(monkeypatch):
    from patching.core import models

    monkeypatch.delenv("PATCHBOARD_DEVICE", raising=False)
    want = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert models.default_device() == want
    monkeypatch.setenv("PATCHBOARD_DEVICE", "cpu")
    assert models.default_device() == "cpu"
    monkeypatch.setenv("PATCHBOARD_DEVICE", "tpu")
    with pytest.raises(PatchboardError, match="^device: "):
        models.default_device()
    if not torch.cuda.is_available():
        with pytest.raises(PatchboardError, match="^device: 'cuda:0': no such CUDA device here"):
            models.check_device("cuda:0")


def test_memory_budget_follows_the_device(monkeypatch):
    from types import SimpleNamespace

    from patching.engine import resources

    monkeypatch.delenv("PATCHBOARD_MEM_BUDGET_MB", raising=False)
    assert resources.memory_budget_bytes("cpu") == resources.CPU_BUDGET_MB * 2**20
    # A fake accelerator: half its free memory, the tightest of a device_map's devices.
    free = {"cuda:0": 8 << 30, "cuda:1": 2 << 30}
    monkeypatch.setattr(resources, "_free_bytes", lambda d: free.get(d))
    assert resources.memory_budget_bytes("cuda:0") == 4 << 30
    assert resources.memory_budget_bytes(["cuda:0", "cuda:1"]) == 1 << 30
    monkeypatch.setenv("PATCHBOARD_MEM_BUDGET_MB", "64")
    assert resources.memory_budget_bytes("cuda:0") == 64 << 20
    # Half precision: twice the rows in the same budget (logits stay float32).
    cfg = SimpleNamespace(d_model=64, d_mlp=128, n_heads=4, d_vocab=1000, device="cpu", dtype=torch.float32)
    rows32 = resources.rows_within_budget(cfg, width=10, seq=10)
    cfg.dtype = torch.bfloat16
    assert resources.rows_within_budget(cfg, width=10, seq=10) == 2 * rows32


@pytest.mark.gpu
def test_cuda_memory_budget_is_derived_from_free_memory(monkeypatch):
    from patching.engine import resources

    monkeypatch.delenv("PATCHBOARD_MEM_BUDGET_MB", raising=False)
    free, _ = torch.cuda.mem_get_info()
    assert abs(resources.memory_budget_bytes("cuda:0") - free * resources.DEVICE_SHARE) < 256 << 20


@pytest.mark.parametrize("args,line", [
    (["--workers", "2"], "error: executor: --ray-address and --workers apply to --executor ray"),
    (["--device", "tpu"], "error: device: 'tpu' is not a torch device; use cpu, cuda, cuda:N or mps"),
    (["--dtype", "float8"], "error: dtype: invalid choice: 'float8'"),
    (["--device-map", "everywhere"], "error: device-map: invalid choice"),
])
def test_cli_compute_flags_fail_in_one_line_before_any_work(args, line, capsys, monkeypatch):
    from patching.cli import main

    monkeypatch.delenv("PATCHBOARD_DEVICE", raising=False)
    assert main(["run", "--task", "ioi", "--n-pairs", "2", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1, err


def test_executor_choice_from_the_environment(monkeypatch):
    """The app's compute buttons run here unless PATCHBOARD_RAY_ADDRESS is set."""
    from patching import executors

    monkeypatch.delenv("PATCHBOARD_RAY_ADDRESS", raising=False)
    assert executors.from_env() is None
    assert executors.get_executor("local").local
    with pytest.raises(PatchboardError, match="^executor: 'spark' is not one of local, ray$"):
        executors.get_executor("spark")
    monkeypatch.setenv("PATCHBOARD_RAY_ADDRESS", "auto")
    monkeypatch.setenv("PATCHBOARD_RAY_WORKERS", "many")
    with pytest.raises(PatchboardError, match="^PATCHBOARD_RAY_WORKERS: 'many' is not a whole number$"):
        executors.from_env()
