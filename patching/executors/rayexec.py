"""The Ray executor: a pool of actors that each load the model once and keep it.

The driver (the CLI, or the app's server) sends requests; each actor computes
with the same code the local path runs (:mod:`patching.service`'s request
classes) and returns the Result, which the driver alone stores. Work is split
so every actor is busy:

* a grid of N sweeps on W actors: one task per sweep when N >= W;
* fewer sweeps than actors (one large sweep): each exact, unwindowed sweep is
  split into ceil(W / N) contiguous slices of its cells, put back in order
  (``results.merge_parts``), so the numbers are those of the local executor.

Faults: an actor whose process dies is restarted by Ray and its task retried
(``max_restarts``, ``max_task_retries``); a result is stored only once every
slice of it has returned, so nothing partial is ever stored. Ctrl-C cancels
the tasks in flight and kills the busy actors.

Progress: each actor records its engine's ``(done, total)`` (a second,
concurrent "poll" method reads it); the driver folds every task's share into
the one progress callback.

Ray moves requests and results between the processes of one cluster with its
own serializer; a cluster is one trust domain. Nothing here reads pickles from
a file or from outside the cluster.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

# Keep Ray's current behaviour (and quiet its warning): CPU-only actors see no GPU.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import ray  # noqa: E402

from patching.core.errors import PatchboardError
from patching.core.progress import ProgressFn

#: Restarts of a dead actor and retries of its task before the grid fails.
MAX_RESTARTS = 3
#: Seconds between two progress polls while waiting for results.
POLL_S = 0.25
#: Test hook: a worker that finds this file removes it and dies mid-task (once).
FAIL_ONCE_ENV = "PATCHBOARD_TEST_FAIL_ONCE"


def _worker_env() -> dict[str, str]:
    """The driver's Patchboard settings, handed to every actor (cache folder,
    memory budget, device, device map, allowed models)."""
    keep = ("PATCHBOARD_", "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE")
    return {k: v for k, v in os.environ.items() if k.startswith(keep) and k not in ("PATCHBOARD_RAY_ADDRESS",)}


@ray.remote(concurrency_groups={"compute": 1, "poll": 1})
class Worker:
    """One actor: the models it has loaded stay loaded (the process's
    registry); ``compute`` runs one request (or a slice of one)."""

    def __init__(self, env: dict[str, str], threads: int):
        os.environ.update(env)
        import torch

        torch.set_num_threads(max(1, threads))
        self._progress = (0, 1)

    @ray.method(concurrency_group="poll")
    def progress(self) -> tuple[int, int]:
        return self._progress

    @ray.method(concurrency_group="compute")
    def describe(self, model: str, dtype: str) -> dict[str, Any]:
        from patching.core.registry import get_model
        from patching.methods.graph import Geometry

        lm = get_model(model, dtype)
        return {"fingerprint": lm.fingerprint, "geometry": Geometry.of(lm), "device": lm.device, "pid": os.getpid()}

    @ray.method(concurrency_group="compute")
    def compute(self, req: Any, part: tuple[int, int] | None) -> Any:
        from patching.core.registry import get_model
        from patching.engine.resources import model_lock, no_graph
        from patching.service import dataset_for

        lm = get_model(req.spec.model, req.spec.dtype)
        self._progress = (0, 1)

        def progress(done: int, total: int) -> None:
            self._progress = (done, total)
            flag = os.environ.get(FAIL_ONCE_ENV)
            if flag and done >= 1:
                try:
                    os.remove(flag)  # only one worker wins the file
                except OSError:
                    return
                os._exit(1)

        with model_lock(lm.bridge), no_graph():
            ds = dataset_for(req.spec, lm)
            res = req.compute(lm, ds, progress, part=part) if part is not None else req.compute(lm, ds, progress)
        self._progress = (1, 1)
        return res


@dataclass
class _Task:
    request: int  # index into the requests
    part: tuple[int, int] | None
    weight: int
    t0: float = 0.0
    retries: int = 0


class RayExecutor:
    """A pool of :class:`Worker` actors on the cluster at ``address``."""

    local = False
    name = "ray"
    _shared: dict[tuple, "RayExecutor"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, address: str | None = None, workers: int | None = None, num_cpus: int | None = None, threads: int | None = None):
        self.address = address or "local"
        if not ray.is_initialized():
            try:
                if self.address == "local":
                    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                             logging_level=logging.ERROR, log_to_driver=False)
                else:
                    ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                msg = (str(e).splitlines() or [type(e).__name__])[0]
                raise PatchboardError("ray-address", f"cannot reach a Ray cluster at {self.address!r} ({msg[:160]}); start one with "
                                      "`ray start --head` or use local") from None
        res = ray.cluster_resources()
        self.gpus_per_worker = 1 if res.get("GPU", 0) >= 1 else 0
        cpus = max(1, int(res.get("CPU", 1)))
        self.n_workers = int(workers or (int(res["GPU"]) if self.gpus_per_worker else cpus))
        if self.n_workers < 1:
            raise PatchboardError("workers", f"{self.n_workers}: give at least one worker")
        self.threads = threads or (max(1, cpus // self.n_workers) if not self.gpus_per_worker else 1)
        # More workers than CPUs share them (fractional CPUs), so every actor is placed.
        self.cpus_per_worker = 1 if self.gpus_per_worker else min(1.0, cpus / self.n_workers)
        self._actors: list[Any] = []
        self._info: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()  # one grid at a time per pool (the actors are shared)

    @classmethod
    def shared(cls, address: str | None = None, workers: int | None = None) -> "RayExecutor":
        """One pool per address and size in a process (the app's server keeps it)."""
        key = (address or "local", workers)
        with cls._shared_lock:
            ex = cls._shared.get(key)
            if ex is None:
                ex = cls._shared[key] = cls(address, workers)
            return ex

    # ------------------------------------------------------------ actors

    def actors(self) -> list[Any]:
        while len(self._actors) < self.n_workers:
            self._actors.append(Worker.options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=MAX_RESTARTS,
                                               max_task_retries=MAX_RESTARTS).remote(_worker_env(), self.threads))
        return self._actors

    def _describe(self, model: str, dtype: str) -> dict:
        key = (model, dtype)
        if key not in self._info:
            self._info[key] = _get(self.actors()[0].describe.remote(model, dtype))
        return self._info[key]

    def fingerprint(self, model: str, dtype: str = "float32") -> str:
        """The weights' fingerprint as a worker loaded them (the worker keeps the model)."""
        return self._describe(model, dtype)["fingerprint"]

    def geometry(self, model: str, dtype: str = "float32") -> Any:
        return self._describe(model, dtype)["geometry"]

    def close(self) -> None:
        for a in self._actors:
            ray.kill(a)
        self._actors = []

    # ------------------------------------------------------------ farming

    def plan(self, requests: list) -> list[_Task]:
        """One task per request, or slices of the splittable ones when there are
        fewer requests than workers."""
        split = max(1, math.ceil(self.n_workers / max(1, len(requests))))
        tasks = []
        for i, r in enumerate(requests):
            k = split if getattr(r, "splittable", False) else 1
            w = _cost(r)
            tasks += [_Task(i, (j, k) if k > 1 else None, max(1, w // k)) for j in range(k)]
        return tasks

    def compute_many(self, requests: list, progress: ProgressFn | None, done: Callable[[int, Any], None]) -> None:
        """Compute every request on the pool; ``done(i, result)`` is called in
        this thread as each whole request completes (in completion order)."""
        from patching.results import merge_parts

        with self._lock:
            tasks = self.plan(requests)
            total = sum(t.weight for t in tasks)
            parts: dict[int, list] = {}
            need = {i: sum(1 for t in tasks if t.request == i) for i in range(len(requests))}
            t_first: dict[int, float] = {}
            pending = deque(tasks)
            idle = list(self.actors())
            inflight: dict[Any, tuple[_Task, Any]] = {}
            finished = shown = 0
            if progress:
                progress(0, total)
            try:
                while pending or inflight:
                    while pending and idle:
                        t, a = pending.popleft(), idle.pop(0)
                        t.t0 = time.time()
                        t_first.setdefault(t.request, t.t0)
                        inflight[a.compute.remote(requests[t.request], t.part)] = (t, a)
                    ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
                    for ref in ready:
                        t, a = inflight.pop(ref)
                        try:
                            res = _get(ref)
                        except ray.exceptions.RayActorError:
                            # Ray's restarts of this actor are spent: drop it and
                            # give its task to another (a fresh one if none is left).
                            t.retries += 1
                            if t.retries > MAX_RESTARTS:
                                raise
                            self._actors = [x for x in self._actors if x is not a]
                            ray.kill(a, no_restart=True)
                            known = {id(x) for x in self._actors}
                            idle += [x for x in self.actors() if id(x) not in known]  # its replacement
                            pending.appendleft(t)
                            continue
                        idle.append(a)
                        finished += t.weight
                        parts.setdefault(t.request, []).append((t.part, res))
                        if len(parts[t.request]) == need[t.request]:
                            got = [r for _, r in sorted(parts.pop(t.request), key=lambda pr: pr[0] or (0, 1))]
                            whole = got[0] if len(got) == 1 else merge_parts(got, time.time() - t_first[t.request])
                            done(t.request, whole)
                    if progress:
                        shown = max(shown, min(total, finished + self._running_share(inflight)))  # never backwards
                        progress(shown, total)
            except BaseException:
                busy = [a for _, a in inflight.values()]
                for ref in inflight:
                    try:
                        ray.cancel(ref)
                    except Exception:  # noqa: BLE001 - best effort on the way out
                        pass
                for a in busy:  # a running task may ignore the cancel: stop its actor, start fresh ones next time
                    ray.kill(a, no_restart=True)
                self._actors = [a for a in self._actors if a not in busy]
                raise

    def _running_share(self, inflight: dict) -> int:
        """The finished share of the tasks in flight, in task weights."""
        if not inflight:
            return 0
        items = list(inflight.values())
        try:
            states = ray.get([a.progress.remote() for _, a in items], timeout=POLL_S)
        except Exception:  # noqa: BLE001 - a restarting actor: no news this time
            return 0
        return int(sum(t.weight * (d / tot if tot else 0.0) for (t, _), (d, tot) in zip(items, states)))


def _cost(req: Any) -> int:
    """A request's weight for the progress bar: its rows (prompts x samples)."""
    s = req.spec
    rows = s.n_pairs * (s.noise_samples if s.corruption in ("gn", "resample") else 1)
    return max(1, int(rows)) * 100


def _get(ref: Any) -> Any:
    """ray.get, with a task's own error raised as itself (a bad input stays one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
