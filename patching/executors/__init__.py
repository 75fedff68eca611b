"""Where computations run: in this process (``local``) or on a Ray cluster (``ray``).

An executor only computes; the service looks results up, keys them and
stores them, in the driver process alone (:func:`patching.service.run_many`).
Both executors give the same numbers: a remote worker runs the same request
code on the same model, and a sweep split into slices of its cells is put
back together in order (:func:`patching.results.merge_parts`).

* ``local``: today's code path, one computation after another in this process.
* ``ray``: :class:`patching.executors.rayexec.RayExecutor`, actors that each
  load the model once (through the model registry) and keep it. Chosen with
  ``--executor ray`` on the CLI, ``PATCHBOARD_RAY_ADDRESS`` for the app
  (``local``: start a cluster in this process; ``auto``: the cluster
  ``ray start`` runs on this machine; ``ray://head:10001``: a remote one).

Importing this module never imports Ray (or torch).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

from patching.core.errors import PatchboardError
from patching.core.progress import ProgressFn

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    local: bool
    name: str

    def fingerprint(self, model: str, dtype: str) -> str: ...

    def geometry(self, model: str, dtype: str) -> Any: ...

    def compute_many(self, requests: list, progress: ProgressFn | None, done: Callable[[int, Any], None]) -> None: ...


class LocalExecutor:
    """This process: the service's own code path (no farming)."""

    local = True
    name = "local"


def get_executor(kind: str = "local", address: str | None = None, workers: int | None = None) -> Any:
    """The executor ``kind`` (``local`` or ``ray``); for Ray, the cluster at
    ``address`` (None or ``local``: started in this process) with ``workers``
    actors (default: one per CPU, or per GPU where the cluster has GPUs)."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise PatchboardError("executor", "ray is not installed; run `make setup` (requirements.txt pins it) or use --executor local") from None
        from patching.executors.rayexec import RayExecutor

        return RayExecutor.shared(address, workers)
    raise PatchboardError("executor", f"{str(kind)[:20]!r} is not one of {', '.join(EXECUTORS)}")


def from_env() -> Any:
    """The app's executor: Ray at ``PATCHBOARD_RAY_ADDRESS`` when it is set
    (``PATCHBOARD_RAY_WORKERS`` actors), else None (this process)."""
    addr = (os.environ.get("PATCHBOARD_RAY_ADDRESS") or "").strip()
    if not addr:
        return None
    workers = (os.environ.get("PATCHBOARD_RAY_WORKERS") or "").strip()
    if workers and not workers.isdigit():
        raise PatchboardError("PATCHBOARD_RAY_WORKERS", f"{workers[:20]!r} is not a whole number")
    return get_executor("ray", addr, int(workers) if workers else None)
