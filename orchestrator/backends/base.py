"""The seam between the scheduler and where targets run.

A backend runs ``(operation, target)`` pairs somewhere (this process, worker processes,
later a cluster) and hands back what finished. It knows nothing of ordering, failures
or dependencies: the scheduler decides what to submit and when.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.results import TargetResult

if TYPE_CHECKING:
    from orchestrator.operations import Workspace
    from orchestrator.targets import Target


@dataclass(frozen=True)
class Operation:
    """What to do to each target: a function of :mod:`orchestrator.operations` and its
    arguments. Plain data, so it can be sent to a worker process."""

    name: str  # "upgrade", "downgrade", "stamp", "current", "check"
    args: tuple[Any, ...] = ()

    def apply(self, ws: Workspace, target: Target) -> TargetResult:
        from orchestrator import operations

        return getattr(operations, self.name)(ws, target, *self.args)

    @property
    def revision(self) -> str | None:
        """The destination, for operations that move a version table."""
        return self.args[0] if self.args and isinstance(self.args[0], str) else None


@dataclass(frozen=True)
class Job:
    """One submitted target: ``key`` identifies it in the backend's answers."""

    key: int
    target: Target
    operation: Operation


@dataclass(frozen=True)
class Finished:
    """A job the backend is done with: its result, or ``lost`` saying why there is none
    (the worker running it died)."""

    key: int
    result: TargetResult | None = None
    lost: str | None = None


class Backend(Protocol):
    """Where targets run. ``capacity``: how many jobs may run at once."""

    capacity: int

    def submit(self, job: Job) -> None:
        """Start ``job`` (the scheduler never submits beyond ``capacity``)."""

    def wait(self, timeout: float) -> list[Finished]:
        """Jobs finished since the last call; waits up to ``timeout`` for the first."""

    def stop(self) -> None:
        """The run stops handing out targets (first Ctrl-C, SIGTERM, --fail-fast, a cancelled
        caller): jobs submitted but not started must not start. Only sets a flag (it may be
        called from a signal handler)."""

    def abort(self) -> list[int]:
        """Stop at once (second Ctrl-C): kill what runs; return the keys that were running."""

    def close(self) -> None:
        """Release workers and connections; safe to call twice."""
