"""A backend in front of a run's own, for targets whose result is known before they run
(an upgrade's targets already at the destination, read in bulk by ``commands``)."""
from __future__ import annotations

from collections.abc import Callable

from orchestrator.backends.base import Backend, Finished, Job
from orchestrator.results import TargetResult


class Answered:
    """A backend in front of the run's own: jobs whose result is already known (targets
    already at the destination) are answered at once, in the order submitted, without
    reaching it; the rest go to it. It is made when the first such job comes, so a run
    with nothing pending starts no worker at all.

    ``capacity`` counts the answered jobs not yet collected on top of the real backend's,
    so they never take a real job's place and the scheduler hands them all out in a round.
    """

    def __init__(self, known: dict[str, TargetResult], make: Callable[[], Backend], capacity: int) -> None:
        self._known = known
        self._make = make
        self._capacity = capacity
        self._inner: Backend | None = None
        self._ready: list[Finished] = []

    @property
    def capacity(self) -> int:
        return (self._inner.capacity if self._inner is not None else self._capacity) + len(self._ready)

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = value

    def submit(self, job: Job) -> None:
        result = self._known.get(job.target.name)
        if result is not None:
            self._ready.append(Finished(job.key, result))
            return
        if self._inner is None:
            self._inner = self._make()
        self._inner.submit(job)

    def wait(self, timeout: float) -> list[Finished]:
        if self._ready:
            ready, self._ready = self._ready, []
            return ready
        return self._inner.wait(timeout) if self._inner is not None else []

    def stop(self) -> None:
        if self._inner is not None:
            self._inner.stop()

    def abort(self) -> list[int]:
        return self._inner.abort() if self._inner is not None else []

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
