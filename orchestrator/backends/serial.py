"""The serial backend: each job runs in this process, on the caller's workspace."""
from __future__ import annotations

from orchestrator.backends.base import Finished, Job
from orchestrator.operations import Workspace


class SerialBackend:
    """Runs one job at a time, in the calling thread, when the scheduler waits for it."""

    capacity = 1

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._queued: list[Job] = []

    def submit(self, job: Job) -> None:
        self._queued.append(job)

    def wait(self, timeout: float) -> list[Finished]:
        if not self._queued:
            return []
        job = self._queued.pop(0)
        return [Finished(job.key, job.operation.apply(self.ws, job.target))]

    def stop(self) -> None:
        pass  # never more submitted than runs: nothing is queued behind a running job

    def abort(self) -> list[int]:
        keys = [job.key for job in self._queued]
        self._queued.clear()
        return keys

    def close(self) -> None:
        self._queued.clear()
