"""Where targets run: ``serial`` (this process) or ``processes`` (spawned workers).

:func:`make_backend` picks one for a run; the scheduler only sees the
:class:`~orchestrator.backends.base.Backend` interface.
"""
from __future__ import annotations

from orchestrator.backends.base import Backend, Finished, Job, Operation
from orchestrator.operations import Workspace


def make_backend(ws: Workspace, parallel: int) -> Backend:
    """``parallel`` > 1: that many worker processes; else this process."""
    if parallel > 1:
        from orchestrator.backends.processes import ProcessBackend

        return ProcessBackend(ws.project, parallel)
    from orchestrator.backends.serial import SerialBackend

    return SerialBackend(ws)


__all__ = ["Backend", "Finished", "Job", "Operation", "make_backend"]
