"""Where targets run: ``serial`` (this process), ``processes`` (spawned workers) or
``dask`` (the workers of a Dask cluster, :mod:`orchestrator.backends.dask`).

:func:`make_backend` picks one for a run; the scheduler only sees the
:class:`~orchestrator.backends.base.Backend` interface.
"""
from __future__ import annotations

from orchestrator.backends.answered import Answered
from orchestrator.backends.base import Backend, Finished, Job, Operation
from orchestrator.operations import Workspace


def make_backend(ws: Workspace, parallel: int, backend: str | None = None, scheduler: str | None = None) -> Backend:
    """``backend`` ``dask``: the workers of the Dask cluster at ``scheduler`` (none: a local
    cluster of ``parallel`` workers, at least two); ``processes`` or ``parallel`` > 1: that
    many worker processes; else this process."""
    if backend == "dask":
        from orchestrator.backends.dask import DaskBackend, local_workers

        return DaskBackend(ws.project, scheduler, local_workers(parallel))
    if backend == "processes" or (backend is None and parallel > 1):
        from orchestrator.backends.processes import ProcessBackend

        return ProcessBackend(ws.project, parallel)
    from orchestrator.backends.serial import SerialBackend

    return SerialBackend(ws)


__all__ = ["Answered", "Backend", "Finished", "Job", "Operation", "make_backend"]
