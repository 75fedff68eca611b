"""The Ray executor on a real local cluster (issue 13).

One cluster for the module (``ray.init(num_cpus=2)``, no dashboard); the
workers load a tiny Llama from a local folder (the model registry's ordinary
path), as a cluster's nodes would load a shared model. Checked: the numbers
equal the local executor's, a worker killed mid-grid is restarted and the grid
still completes with the same numbers and nothing partial stored, a task's
error comes back as the one-line error and stores nothing, and two drivers
computing the same grid at once leave one entry per sweep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

ray = pytest.importorskip("ray")

# integration, not engine: a Ray cluster, its worker processes and a second
# driver (the CLI in a subprocess) take ~60 s, too slow for `make test-fast`.
pytestmark = pytest.mark.integration
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from patching import service  # noqa: E402
from patching.core.errors import PatchboardError  # noqa: E402
from patching.core.spec import Spec  # noqa: E402
from patching.store import Store  # noqa: E402
from patching.studies.disagreement import grid as disagreement_grid  # noqa: E402

SETTINGS = "str/logit_diff/denoise,str/logit_diff/noise,gn/logit_diff/denoise"
METRICS = ("logit_diff", "prob", "logprob", "kl")


@pytest.fixture(scope="module")
def fail_flag(tmp_path_factory):
    """The file whose presence makes one worker die mid-task (the workers read
    its path from the environment they are started with)."""
    path = tmp_path_factory.mktemp("ray-flag") / "fail-once"
    os.environ["PATCHBOARD_TEST_FAIL_ONCE"] = str(path)
    yield path
    os.environ.pop("PATCHBOARD_TEST_FAIL_ONCE", None)


@pytest.fixture(scope="module")
def cluster(fail_flag):
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    from patching.executors.rayexec import RayExecutor

    RayExecutor._shared.clear()
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model.hf("llama").save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def one_thread():
    """Local references at one torch thread, as each worker of a 2-worker pool
    on 2 CPUs runs: float sums then add up in the same order (bit for bit)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def local_grid(model_dir, tmp_path_factory):
    """The grid computed here, by the local executor (the reference)."""
    import torch

    base = Spec(model=model_dir, task="ioi", n_pairs=2, component="head")
    store = Store(tmp_path_factory.mktemp("local") / "results.sqlite")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return disagreement_grid.load_or_compute_grid(base, store, settings=SETTINGS)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pool(cluster):
    from patching.executors import get_executor

    return get_executor("ray", workers=2)


def _same(a, b) -> float:
    """Largest difference of two results' tables and per-prompt values."""
    assert list(a.table.columns) == list(b.table.columns) and len(a.table) == len(b.table)
    worst = max(float((a.table[m] - b.table[m]).abs().max()) for m in METRICS)
    worst = max([worst] + [float((a.per_prompt[m] - b.per_prompt[m]).abs().max()) for m in METRICS])
    assert a.baselines == b.baselines
    return worst


def _assert_grid_equal(got, want) -> None:
    assert got.complete and sorted(got.settings) == sorted(want.settings)
    for s in want.settings:
        assert got.results[s].key == want.results[s].key
        assert _same(got.results[s], want.results[s]) <= 1e-6, s


def test_grid_on_ray_equals_local(pool, local_grid, tmp_path):
    store = Store(tmp_path / "results.sqlite")
    seen = []
    grid = disagreement_grid.load_or_compute_grid(local_grid.base, store, progress=lambda d, t: seen.append((d, t)), settings=SETTINGS, executor=pool)
    assert grid.computed == 3 and store.count() == 3
    _assert_grid_equal(grid, local_grid)
    # The one progress callback: from 0 to the whole grid, never backwards.
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] and all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    # A second call finds everything stored.
    again = disagreement_grid.load_or_compute_grid(local_grid.base, store, settings=SETTINGS, executor=pool)
    assert again.computed == 0


def test_one_sweep_in_slices_equals_local(pool, model_dir, tmp_path, one_thread):
    """One sweep on two workers is split into two slices of its cells and put
    back in order: the same table, per-prompt values and key as computed here."""
    spec = Spec(model=model_dir, task="ioi", n_pairs=3, component="head_by_pos", corruption="gn", noise_samples=2)
    assert [t.part for t in pool.plan([service.Activation(spec.validated())])] == [(0, 2), (1, 2)]
    here = service.run(spec, store=Store(tmp_path / "a.sqlite"))
    there = service.run(spec, store=Store(tmp_path / "b.sqlite"), executor=pool)
    assert not there.from_store and there.key == here.key
    assert _same(here, there) <= 1e-6
    assert here.meta["noop_cells"] == there.meta["noop_cells"]


def test_a_path_sweep_on_ray_equals_local(pool, model_dir, tmp_path, one_thread):
    """Path sweeps run whole on one actor; the geometry comes from a worker."""
    req = service.PathSweep(Spec(model=model_dir, task="ioi", n_pairs=2), "2.*:q")
    here = service.run(req, store=Store(tmp_path / "a.sqlite"))
    there = service.run(req, store=Store(tmp_path / "b.sqlite"), executor=pool)
    assert there.key == here.key and there.kind == "paths" and there.params == here.params
    assert max(float((here.table[m] - there.table[m]).abs().max()) for m in METRICS) <= 1e-6


def test_a_worker_killed_mid_grid_is_replaced(pool, local_grid, fail_flag, tmp_path):
    """The first worker to make progress finds the flag, removes it and dies
    (os._exit): Ray restarts it and retries its task; the grid completes with
    the same numbers and stores exactly one whole result per sweep."""
    store = Store(tmp_path / "results.sqlite")
    fail_flag.write_text("die once")
    grid = disagreement_grid.load_or_compute_grid(local_grid.base, store, settings=SETTINGS, executor=pool)
    assert not fail_flag.exists(), "no worker died"
    assert store.count() == 3
    _assert_grid_equal(grid, local_grid)


def test_a_failing_task_stores_nothing(pool, model_dir, tmp_path):
    store = Store(tmp_path / "results.sqlite")
    from patching.core.pairs import Pair

    # Prompts of different token lengths: refused when the worker builds the dataset.
    bad = Spec(model=model_dir, task=None, pairs=(Pair("When Mary and John went", "When Mary and Johnny Appleseed went", " Mary", " John"),))
    with pytest.raises(PatchboardError) as e:
        service.run_many([Spec(model=model_dir, task="ioi", n_pairs=2), bad], store=store, executor=pool)
    assert "\n" not in str(e.value)
    assert store.count() <= 1  # the good sweep may have finished first; never a partial one


def test_an_interrupt_cancels_and_stores_only_whole_results(pool, local_grid, tmp_path):
    """Ctrl-C (a KeyboardInterrupt in the driver) while the grid runs: the tasks
    in flight are cancelled and their actors stopped; only sweeps that had
    completed are stored, whole."""
    store = Store(tmp_path / "results.sqlite")
    n_actors = len(pool.actors())

    def interrupt(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        disagreement_grid.load_or_compute_grid(local_grid.base, store, progress=interrupt, settings=SETTINGS, executor=pool)
    assert store.count() < 3
    want = {r.key: r for r in local_grid.results.values()}
    for key in store.keys():
        got = service.lookup(local_grid.results[next(s for s in local_grid.settings if local_grid.results[s].key == key)].spec, store,
                             local_grid.results[local_grid.settings[0]].meta["model_fingerprint"])
        assert _same(got, want[key]) <= 1e-6
    assert len(pool._actors) < n_actors  # the busy ones were stopped (new ones start on the next use)


def test_two_drivers_at_once_leave_one_entry_per_sweep(cluster, pool, local_grid, model_dir, tmp_path):
    """Another process (the CLI, connected to this cluster) and this one
    compute the same grid into one store at the same time."""
    from patching.executors.rayexec import RayExecutor

    pool.close()  # free the cluster's two CPUs: one worker for each driver
    path = tmp_path / "cache"
    path.mkdir()
    env = {**os.environ, "PATCHBOARD_CACHE_DIR": str(path), "OMP_NUM_THREADS": "1"}
    env.pop("PATCHBOARD_TEST_FAIL_ONCE", None)
    cmd = [sys.executable, "-m", "patching", "compare", "--model", model_dir, "--task", "ioi", "--n-pairs", "2", "--component", "head",
           "--settings", SETTINGS, "--bootstrap", "0", "--executor", "ray", "--ray-address", cluster, "--workers", "1"]
    other = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read_stderr() -> None:
        for line in other.stderr:
            lines.append(line)
            if line.startswith("computing"):
                started.set()
        started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    here = RayExecutor(workers=1, threads=1)
    here.fingerprint(model_dir, "float32")  # our worker is up and has the model
    assert started.wait(timeout=1800), "the other driver never started computing"
    grid = disagreement_grid.load_or_compute_grid(local_grid.base, Store(path / "results.sqlite"), settings=SETTINGS, executor=here)
    assert grid.computed >= 1, "this driver found the grid stored: the two did not overlap"
    out = other.stdout.read()
    assert other.wait(timeout=1800) == 0, "".join(lines)[-2000:]
    reader.join(timeout=10)
    assert any(line.startswith("computing 3 of 3 sweep(s)") for line in lines), "".join(lines)[-2000:]
    assert "spearman" in out.splitlines()[0]
    store = Store(path / "results.sqlite")
    sweeps = store.list(kind="activation")  # beside them, the CLI stores the grid's statistics (one grid_stats row)
    assert len(sweeps) == 3 and set(store.list()["kind"]) <= {"activation", "grid_stats"}
    assert sorted(sweeps["key"]) == sorted({r.key for r in local_grid.results.values()})
    _assert_grid_equal(grid, local_grid)
    here.close()
