"""The processes backend: N spawned worker processes on this machine.

- Each worker is started from the pickled :class:`~orchestrator.config.Project` (never a
  config path read again from disk), activates it once, and keeps one
  :class:`~orchestrator.operations.Workspace` (warm ScriptDirectories, engines) for every
  target it runs. Spawned, not forked: Alembic's module-level proxies and open
  connections must not be shared.
- A job goes to a free worker over its own pipe; the answer comes back on the same pipe.
- A worker that dies (killed, out of memory, ``os._exit`` in a revision) loses only its
  job: the scheduler is told, a new worker takes its place, and the run goes on.
- Workers exit when the parent dies (its pipe closes, or a watcher thread sees the
  parent's pid change), so a killed run never leaves workers behind.
- Workers ignore Ctrl-C and SIGTERM (sent to the whole process group they would kill a
  target mid-revision); the parent lets running targets finish, or kills the workers on
  a second Ctrl-C (:meth:`ProcessBackend.abort`).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from orchestrator.backends.base import Finished, Job
from orchestrator.config import Project

#: How often a worker checks that its parent is still alive.
PARENT_CHECK_SECONDS = 0.5


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(70)  # the parent is gone: nobody will read our result; the server rolls back


def _worker_main(project: Project, pipe: Connection, parent: int) -> None:
    """A worker's life: activate the project once, then run jobs until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), name="orchestrate-parent-watch", daemon=True).start()
    from orchestrator.config import activate
    from orchestrator.operations import Workspace

    activate(project)
    with Workspace(project, keep_sessions=True) as ws:
        while True:
            try:
                job: Job = pipe.recv()
            except (EOFError, OSError):
                return
            result = job.operation.apply(ws, job.target)
            try:
                pipe.send((job.key, result))
            except (BrokenPipeError, OSError):
                return


class _Worker:
    def __init__(self, context: Any, project: Project) -> None:
        self.pipe, child = context.Pipe(duplex=True)
        self.process: BaseProcess = context.Process(
            target=_worker_main, args=(project, child, os.getpid()), name="orchestrate-worker", daemon=True
        )
        self.process.start()
        child.close()
        self.job: Job | None = None


class ProcessBackend:
    """See the module docstring."""

    def __init__(self, project: Project, size: int) -> None:
        self.capacity = max(1, size)
        self._project = project
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def _idle_worker(self) -> _Worker:
        for worker in self._workers:
            if worker.job is None and worker.process.is_alive():
                return worker
        self._workers = [w for w in self._workers if w.process.is_alive() or w.job is not None]
        worker = _Worker(self._context, self._project)
        self._workers.append(worker)
        return worker

    def submit(self, job: Job) -> None:
        worker = self._idle_worker()
        worker.job = job
        try:
            worker.pipe.send(job)
        except (BrokenPipeError, OSError):
            pass  # it died already: wait() reports the job lost

    def wait(self, timeout: float) -> list[Finished]:
        busy = [w for w in self._workers if w.job is not None]
        if not busy:
            return []
        handles: list[Any] = [w.pipe for w in busy] + [w.process.sentinel for w in busy]
        ready = wait(handles, timeout=timeout)
        finished: list[Finished] = []
        for worker in busy:
            job = worker.job
            assert job is not None
            if worker.pipe in ready:
                try:
                    key, result = worker.pipe.recv()
                except (EOFError, OSError):
                    pass  # died while answering: handled as lost below
                else:
                    worker.job = None
                    finished.append(Finished(key, result))
                    continue
            if worker.process.sentinel in ready or not worker.process.is_alive():
                worker.process.join(timeout=1)
                code = worker.process.exitcode
                worker.job = None
                self._forget(worker)
                finished.append(Finished(job.key, lost=f"the worker running it died (exit code {code})"))
        return finished

    def _forget(self, worker: _Worker) -> None:
        worker.pipe.close()
        self._workers = [w for w in self._workers if w is not worker]

    def stop(self) -> None:
        pass  # never more submitted than runs: nothing is queued behind a running job

    def abort(self) -> list[int]:
        keys = [w.job.key for w in self._workers if w.job is not None]
        for worker in self._workers:
            worker.process.kill()  # the server rolls back a killed session and drops its locks
        self._shutdown()
        return keys

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.pipe.close()  # EOF: an idle worker returns from recv() and exits
            except OSError:
                pass
        self._shutdown()

    def _shutdown(self) -> None:
        for worker in self._workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
        self._workers = []
