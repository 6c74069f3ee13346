"""Hands a plan's targets to a backend, in order; knows nothing of processes.

- A database's targets start only once every target of the databases it waits for has
  succeeded; if one of those failed, they are SKIPPED, with the dependency named.
- Failures are isolated: the other targets go on (unless ``fail_fast``).
- Ctrl-C or SIGTERM stops handing out targets, lets running ones finish, and marks the
  rest NOT_RUN; a second Ctrl-C aborts: the backend kills what runs, and each aborted
  target's version table is read again (``recover``).
- A target whose worker died is LOST: ``recover`` reads where its version table is; the
  run goes on.
"""
from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.backends.base import Backend, Job, Operation
from orchestrator.plan import Plan
from orchestrator.results import Outcome, Status, TargetResult
from orchestrator.targets import Target

OnResult = Callable[[TargetResult], None]
#: recover(operation, target, why, status) -> the result of a target that has no result of
#: its own: LOST (its worker died) or FAILED (the run was aborted while it ran).
Recover = Callable[[Operation, Target, str, Status], TargetResult]


class Stop:
    """First SIGINT/SIGTERM: stop handing out targets. Second SIGINT: abort (KeyboardInterrupt)."""

    def __init__(self, on_stop: Callable[[str], None] | None, backend_stop: Callable[[], None] | None = None) -> None:
        self.requested = False
        self.by_signal = False
        self.reason = ""
        self._on_stop = on_stop
        self._backend_stop = backend_stop

    def request(self, reason: str, by_signal: bool = False) -> None:
        if not self.requested:
            self.requested, self.reason, self.by_signal = True, reason, by_signal
            if self._backend_stop:
                self._backend_stop()  # whatever the reason: jobs queued on workers do not start
            if self._on_stop:
                self._on_stop(reason)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set on the main thread
            return

        def on_signal(signum: int, _frame: Any) -> None:
            if signum == signal.SIGINT and self.requested:
                raise KeyboardInterrupt
            self.request("the run was interrupted" if signum == signal.SIGINT else "the run was terminated", True)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Scheduler:
    """Runs one operation over a plan on a backend (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        operation: Operation,
        backend: Backend,
        recover: Recover,
        *,
        on_result: OnResult | None = None,
        on_stop: Callable[[str], None] | None = None,
        respect_dependencies: bool = True,
        fail_fast: bool = False,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.plan, self.operation, self.backend, self.recover = plan, operation, backend, recover
        self.on_result = on_result
        self.respect_dependencies = respect_dependencies
        self.fail_fast = fail_fast
        self.cancelled = cancelled
        self.outcome = Outcome()
        self.stop = Stop(on_stop, backend.stop)
        self.queues: dict[str, deque[Target]] = {db.name: deque() for db in plan.databases}
        for target in plan.targets:
            self.queues[target.database.name].append(target)
        self.unfinished = {name: len(queue) for name, queue in self.queues.items()}
        self.troubled: dict[str, str] = {}  # database -> why it did not fully succeed
        self.running: dict[int, Target] = {}

    def record(self, result: TargetResult) -> None:
        self.outcome.results.append(result)
        self.unfinished[result.database] -= 1
        if result.status.is_failure or result.status in (Status.SKIPPED, Status.NOT_RUN):
            self.troubled.setdefault(result.database, result.status.value)
            if self.fail_fast and result.status.is_failure:
                self.stop.request("stopped at the first failure (--fail-fast)")
        if self.on_result:
            self.on_result(result)

    def next_target(self) -> Target | None:
        """The next target whose dependencies are done; SKIPPED ones are recorded on the way."""
        for name, queue in self.queues.items():
            if not queue:
                continue
            waits = self.plan.waits_for(name) if self.respect_dependencies else ()
            failed = [d for d in waits if d in self.troubled]
            if failed:
                why = ", ".join(f"{d} ({self.troubled[d]})" for d in failed)
                while queue:
                    target = queue.popleft()
                    self.record(TargetResult.for_target(
                        target, Status.SKIPPED, error=f"{target.name}: {self.plan.skip_reason(why)}"
                    ))
                continue
            if any(self.unfinished[d] for d in waits):
                continue
            return queue.popleft()
        return None

    def run(self) -> Outcome:
        """Run everything; never raises for a target's failure."""
        keys = iter(range(1, 1 << 62))
        try:
            with self.stop.installed():
                while True:
                    if self.cancelled is not None and self.cancelled.is_set():
                        self.stop.request("the caller was cancelled")
                    while not self.stop.requested and len(self.running) < self.backend.capacity:
                        target = self.next_target()
                        if target is None:
                            break
                        job = Job(next(keys), target, self.operation)
                        self.running[job.key] = target
                        self.backend.submit(job)
                    if not self.running:
                        break
                    for done in self.backend.wait(timeout=0.5):
                        target = self.running.pop(done.key)
                        result = done.result
                        if result is None:
                            result = self.recover(self.operation, target, done.lost or "its worker died", Status.LOST)
                        self.record(result)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            self.stop.request("the run was aborted", True)
            aborted = set(self.backend.abort())
            for key, target in list(self.running.items()):
                why = "aborted while migrating" if key in aborted else "aborted"
                self.record(self.recover(self.operation, target, why, Status.FAILED))
            self.running.clear()
        finally:
            self.backend.close()
        self.outcome.interrupted = self.outcome.interrupted or self.stop.by_signal
        for queue in self.queues.values():
            while queue:
                target = queue.popleft()
                self.record(TargetResult.for_target(
                    target, Status.NOT_RUN, error=f"{target.name}: not run: {self.stop.reason}"
                ))
        return self.outcome
