"""Stage 4: run one operation over a plan's targets, serially or on a pool of worker processes.

- Targets are handed out as workers free up, one at a time, never in fixed chunks.
- A database's targets start only once every target of the databases it waits for has
  succeeded; if one of those failed, they are SKIPPED.
- Failures are isolated: the other targets go on (unless ``fail_fast``).
- Ctrl-C or SIGTERM stops handing out targets, lets running ones finish, and marks the
  rest NOT_RUN; a second Ctrl-C aborts at once.
- Workers are spawned (not forked) processes; each loads the project once and keeps its
  ScriptDirectories warm for every target it runs. Alembic's module-level proxies are not
  thread-safe, so processes, not threads.
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.plan import Plan
from orchestrator.results import Status, TargetResult
from orchestrator.targets import Target, make_target


@dataclass(frozen=True)
class Operation:
    """What to do to each target: a Runner method and its arguments (picklable for workers)."""

    name: str  # "upgrade", "downgrade", "stamp", "current", "check"
    args: tuple[Any, ...] = ()

    def apply(self, runner: Any, target: Target) -> TargetResult:
        return getattr(runner, self.name)(target, *self.args)

    def aborted(self, runner: Any, target: Target) -> TargetResult:
        """The result of ``target`` when the run was aborted while it ran."""
        revision = self.args[0] if self.args and isinstance(self.args[0], str) else None
        return runner.aborted(target, self.name, revision)


@dataclass
class Outcome:
    """Every target's result, in the order they finished, and whether the run was cut short."""

    results: list[TargetResult] = field(default_factory=list)
    interrupted: bool = False

    @property
    def failed(self) -> list[TargetResult]:
        return [r for r in self.results if r.status.is_failure]

    @property
    def ok(self) -> bool:
        return not self.interrupted and not any(
            r.status.is_failure or r.status in (Status.SKIPPED, Status.NOT_RUN) for r in self.results
        )


OnResult = Callable[[TargetResult], None]


class _Stop:
    """First SIGINT/SIGTERM: stop handing out targets. Second SIGINT: abort (KeyboardInterrupt)."""

    def __init__(self, on_stop: Callable[[str], None] | None) -> None:
        self.requested = False
        self.by_signal = False
        self.reason = ""
        self._on_stop = on_stop

    def request(self, reason: str, by_signal: bool = False) -> None:
        if not self.requested:
            self.requested, self.reason, self.by_signal = True, reason, by_signal
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


# ---------------------------------------------------------------------- workers

_worker_runner: Any = None


def _init_worker(config_path: str) -> None:
    """Runs once in each worker process: load the project; leave Ctrl-C and SIGTERM to the
    parent (sent to the whole process group, they would kill a target mid-revision); the
    parent lets running targets finish, or kills the workers on a second Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from orchestrator.config import load_project
    from orchestrator.runner import Runner

    global _worker_runner
    _worker_runner = Runner(load_project(config_path))


def _run_in_worker(operation: Operation, database: str, tenant: str | None) -> TargetResult:
    runner = _worker_runner
    target = make_target(runner.project.databases[database], tenant)
    return operation.apply(runner, target)


# ---------------------------------------------------------------------- scheduling


def execute(
    plan: Plan,
    operation: Operation,
    runner: Any,
    *,
    parallel: int = 1,
    config_path: Path | None = None,
    on_result: OnResult | None = None,
    on_stop: Callable[[str], None] | None = None,
    respect_dependencies: bool = True,
    fail_fast: bool = False,
) -> Outcome:
    """Run ``operation`` on every target of ``plan``; never raises for a target's failure.

    ``parallel`` > 1 needs ``config_path`` (workers load the project themselves).
    """
    outcome = Outcome()
    stop = _Stop(on_stop)
    queues: dict[str, deque[Target]] = {db.name: deque() for db in plan.databases}
    for target in plan.targets:
        queues[target.database.name].append(target)
    unfinished = {name: len(queue) for name, queue in queues.items()}
    troubled: set[str] = set()  # databases with a target that failed or was skipped

    def record(result: TargetResult) -> None:
        outcome.results.append(result)
        unfinished[result.database] -= 1
        if result.status.is_failure or result.status is Status.SKIPPED:
            troubled.add(result.database)
            if fail_fast and result.status.is_failure:
                stop.request("stopped at the first failure (--fail-fast)")
        if on_result:
            on_result(result)

    def next_target() -> Target | None:
        """The next target whose dependencies are done; SKIPPED ones are recorded on the way."""
        for name, queue in queues.items():
            if not queue:
                continue
            waits = plan.waits_for(name) if respect_dependencies else ()
            failed = [d for d in waits if d in troubled]
            if failed:
                while queue:
                    target = queue.popleft()
                    record(TargetResult.for_target(
                        target, Status.SKIPPED, error=f"{target.name}: not run because {', '.join(failed)} did not succeed"
                    ))
                continue
            if any(unfinished[d] for d in waits):
                continue
            return queue.popleft()
        return None

    pool = _Pool(parallel, config_path, runner, operation)
    running: dict[Future[TargetResult], Target] = {}
    current: Target | None = None  # handed to the pool, not yet in `running` (inline runs)
    try:
        with stop.installed():
            while True:
                while not stop.requested and len(running) < pool.size:
                    current = next_target()
                    if current is None:
                        break
                    running[pool.submit(current)] = current
                    current = None
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED, timeout=0.5)
                for future in done:
                    target = running.pop(future)
                    record(_result_of(future, target))
    except KeyboardInterrupt:
        outcome.interrupted = True
        stop.request("the run was aborted", True)
        pool.abort()
        for target in [*running.values(), *([current] if current is not None else [])]:
            if runner is not None and hasattr(operation, "aborted"):
                record(operation.aborted(runner, target))
            else:
                record(TargetResult.for_target(target, Status.FAILED, error=f"{target.name}: aborted while running"))
        running.clear()
    finally:
        pool.close()
    outcome.interrupted = outcome.interrupted or stop.by_signal
    for queue in queues.values():
        while queue:
            target = queue.popleft()
            record(TargetResult.for_target(target, Status.NOT_RUN, error=f"{target.name}: not run: {stop.reason}"))
    return outcome


def _result_of(future: Future[TargetResult], target: Target) -> TargetResult:
    try:
        return future.result()
    except BaseException as exc:  # a worker that died (killed, out of memory) fails its target only
        return TargetResult.for_target(
            target, Status.FAILED, error=f"{target.name}: the worker running it died: {type(exc).__name__}: {exc}"
        )


class _Pool:
    """N spawned worker processes, or (N == 1) the calling process itself."""

    def __init__(self, size: int, config_path: Path | None, runner: Any, operation: Operation) -> None:
        self.size = max(1, size)
        self._runner = runner
        self._operation = operation
        self._executor: ProcessPoolExecutor | None = None
        if self.size > 1:
            if config_path is None:
                raise ValueError("parallel runs need the config path for their workers")
            self._executor = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(str(config_path),),
            )

    def submit(self, target: Target) -> Future[TargetResult]:
        if self._executor is not None:
            return self._executor.submit(_run_in_worker, self._operation, target.database.name, target.tenant)
        future: Future[TargetResult] = Future()
        future.set_result(self._operation.apply(self._runner, target))
        return future

    def abort(self) -> None:
        if self._executor is not None:
            for process in list(getattr(self._executor, "_processes", {}).values()):
                process.kill()  # the server rolls back a killed session and drops its locks
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def run_serial(
    plan: Plan,
    operation: Callable[[Target], TargetResult],
    on_result: OnResult | None = None,
    respect_dependencies: bool = True,
) -> Outcome:
    """Run a plain function per target in this process (read-only commands, tests)."""

    class _Adapter:
        def apply(self, _runner: Any, target: Target) -> TargetResult:
            return operation(target)

    return execute(
        plan, _Adapter(), None, on_result=on_result, respect_dependencies=respect_dependencies  # type: ignore[arg-type]
    )
