"""The dask backend: targets run on the workers of a Dask ``distributed`` cluster.

The scheduler of orchestrate (:mod:`orchestrator.scheduler`) stays in this process: it
decides what runs and when. Dask only runs ``job.operation.apply(ws, job.target)`` on a
worker and hands back the :class:`~orchestrator.results.TargetResult`.

- **Workers need only the package.** :class:`ProjectPlugin` (a ``distributed.WorkerPlugin``)
  carries the project to every worker, once: the :class:`~orchestrator.config.Project` as
  loaded (the config already expanded; its passwords never reach a log: the plugin's repr
  shows none and :func:`~orchestrator.config.activate` registers them with the mask) and
  an in-memory archive of env.py's folder, every version location and the top-level
  packages under ``sys_path`` that hold the ``metadata:`` modules. A worker unpacks it
  into a temporary folder, points the project's paths there, activates it and keeps one
  :class:`~orchestrator.operations.Workspace` (warm ScriptDirectories, engines, and in
  schema mode one PostgreSQL session moved from tenant to tenant, as a process worker
  does) for every target it runs. A worker started in an empty folder on another machine works; SQLite
  files must be reachable at the same path there (a shared disk), servers by their URL.
- **One target at a time per worker process** (Alembic's module-level proxies are not
  thread-safe): the plugin's lock serialises jobs. ``capacity`` is two jobs per worker:
  one running and one queued behind it, so a worker starts its next target as soon as one
  ends instead of idling through the round trips (result to the scheduler and this
  process, the next task back) between them. A job's task carries only the target and
  the operation (the project went once, with the plugin), under a key of its own
  (``pure=False``: nothing is hashed).
- **Per-server limits:** ``max_per_server: N`` caps how many targets run at once against
  one database server (``backend://host:port``; SQLite files count as one server), across
  the whole cluster: jobs wait in this process until their server has a free slot, so no
  worker is held waiting and no more than N sessions ever migrate on one primary.
- **Worker loss:** Dask reruns a task whose worker died on another worker. The task marks
  its start on the cluster (a ``distributed.Event`` per job); a rerun sees the mark and
  returns at once, and the job comes back as lost: the scheduler reads its version table
  again. A worker that died before starting a job just lets another worker run it. The
  migration lock makes sure no revision ever runs twice, whatever the timing.
- **Stopping:** :meth:`DaskBackend.stop` (first Ctrl-C or SIGTERM: the backend chains
  itself before the run's handler) stops handing out: jobs not yet started, here or
  queued on a worker, come back NOT_RUN (the workers are told; a queued task that starts
  anyway returns at once); running ones finish. :meth:`DaskBackend.abort`
  (second Ctrl-C) cancels every future and restarts the workers running them (the
  servers roll back the killed sessions).
- **No address:** a ``LocalCluster`` of worker processes on this machine (1 thread each),
  without Dask's statistical profiler and with slower monitors (:data:`LOCAL_CLUSTER_CONFIG`).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import queue
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.backends.base import Finished, Job, Operation
from orchestrator.config import Project
from orchestrator.dialects import dialect_for
from orchestrator.errors import OrchestrateError
from orchestrator.results import Status, TargetResult
from orchestrator.targets import Target
from orchestrator.urls import mask_text, parse_url

if TYPE_CHECKING:
    from orchestrator.operations import Workspace

try:  # an optional extra: `pip install 'orchestrate[dask]'`
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - the error is raised when the backend is asked for
    _WorkerPlugin = object  # type: ignore[assignment,misc]

#: Longest wait for a scheduler to answer when connecting (ORCHESTRATE_DASK_CONNECT_TIMEOUT changes it).
CONNECT_TIMEOUT_SECONDS = 30.0
#: How often the number of workers (``capacity``) is asked again.
CAPACITY_REFRESH_SECONDS = 2.0
#: Workers of the LocalCluster started when no scheduler address is given.
LOCAL_WORKERS = 2
#: Dask settings of the LocalCluster's workers: no statistical profiler (it samples the
#: running target's stack 100 times a second, for a dashboard nobody looks at here), and
#: the system monitor (psutil every 500 ms) and event-loop tick (every 20 ms) slowed down:
#: together they cost a worker ~20 ms of CPU per target, on the CPUs the targets need.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.tick.interval": "1s",
}
_SKIPPED_NAMES = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache", "node_modules"}
_LOST = "orchestrate:lost"  # what a task returns when it finds its job started before (its worker died)
_NOT_RUN = "orchestrate:not-run"  # what a task returns when the run was stopped before it started
#: Jobs on the cluster per worker: one running, one queued behind it.
PIPELINE_DEPTH = 2


def _require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise OrchestrateError(
            "--backend dask needs Dask's `distributed` package, which is not installed",
            hint="pip install 'orchestrate[dask]' (on this machine and on every worker)",
        ) from None


# ---------------------------------------------------------------------- shipping the project


def _add_tree(archive: tarfile.TarFile, source: Path, name: str) -> None:
    """``source`` (a file or a folder) into ``archive`` under ``name``; caches and VCS folders left out."""
    if source.is_file():
        archive.add(str(source), arcname=name, recursive=False)
        return
    archive.add(str(source), arcname=name, recursive=False)
    for entry in sorted(source.iterdir()):
        if entry.name in _SKIPPED_NAMES or entry.suffix == ".pyc":
            continue
        if entry.is_dir():
            _add_tree(archive, entry, f"{name}/{entry.name}")
        elif entry.is_file():
            archive.add(str(entry), arcname=f"{name}/{entry.name}", recursive=False)


def _metadata_packages(project: Project) -> dict[tuple[int, str], Path]:
    """(sys_path index, top-level name) -> the package folder or module file holding a
    ``metadata:`` module, for each one found under the project's ``sys_path``."""
    found: dict[tuple[int, str], Path] = {}
    for database in project.databases.values():
        if database.metadata_ref is None:
            continue
        top = database.metadata_ref.partition(":")[0].split(".")[0]
        for index, entry in enumerate(project.sys_path):
            for candidate in (entry / top, entry / f"{top}.py"):
                if (candidate.is_dir() and candidate.name == top) or candidate.is_file():
                    found.setdefault((index, top), candidate)
                    break
            else:
                continue
            break
    return found


def pack_project(project: Project) -> tuple[bytes, dict[str, str]]:
    """The files a worker needs, as a gzipped tar in memory, and where each client folder
    went in it (client path -> archive name)."""
    places: dict[str, str] = {}

    def place(path: Path, fallback: str) -> str:
        try:
            return "root/" + path.relative_to(project.root).as_posix() if path != project.root else "root"
        except ValueError:
            return fallback

    folders: list[tuple[Path, str]] = [(project.script_location, place(project.script_location, "ext/envs"))]
    for database in project.databases.values():
        for index, location in enumerate(database.version_locations):
            folders.append((location, place(location, f"ext/{database.name}/{index}")))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for (index, _top), source in _metadata_packages(project).items():
            _add_tree(archive, source, f"sys/{index}/{source.name}")
        for source, name in folders:
            if str(source) in places or not source.exists():
                continue  # a missing versions folder fails the target on the worker, as locally
            places[str(source)] = name
            _add_tree(archive, source, name)
    return buffer.getvalue(), places


def relocate(project: Project, folder: Path, places: dict[str, str]) -> Project:
    """``project`` with its env.py, version and ``sys_path`` folders moved under ``folder``
    (where a worker unpacked :func:`pack_project`'s archive)."""
    ordered = sorted(places.items(), key=lambda kv: len(kv[0]), reverse=True)

    def move(path: Path) -> Path:
        for source, name in ordered:
            source_path = Path(source)
            if path == source_path or path.is_relative_to(source_path):
                return folder / name / path.relative_to(source_path)
        return path

    databases = {
        name: dataclasses.replace(
            db, version_path=move(db.version_path), version_locations=tuple(move(p) for p in db.version_locations)
        )
        for name, db in project.databases.items()
    }
    return dataclasses.replace(
        project,
        root=folder / "root",
        script_location=move(project.script_location),
        sys_path=tuple(folder / "sys" / str(index) for index in range(len(project.sys_path))),
        databases=databases,
    )


class ProjectPlugin(_WorkerPlugin):
    """Installs the shipped project on a worker once, and keeps its workspace warm."""

    idempotent = False

    def __init__(self, project: Project, archive: bytes, places: dict[str, str], x: list[str] | None = None) -> None:
        from orchestrator.env import x_arguments

        self.project = project
        self.archive = archive
        self.places = places
        self.x = x_arguments() if x is None else x  # the run's -x arguments, for env.py on the workers
        self.folder: Path | None = None
        self.ws: Workspace | None = None
        self.lock = threading.Lock()
        self.stopped = False  # the run was stopped: queued jobs return without starting

    def __repr__(self) -> str:  # never the project: its config holds passwords
        return f"<orchestrate project plugin: {self.project.path.name}, {len(self.archive)} bytes of files>"

    def __getstate__(self) -> dict[str, Any]:
        return {"project": self.project, "archive": self.archive, "places": self.places, "x": self.x}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["project"], state["archive"], state["places"], state.get("x", []))  # type: ignore[misc]

    def setup(self, worker: Any = None) -> None:
        from orchestrator.config import activate
        from orchestrator.operations import Workspace

        self.folder = Path(tempfile.mkdtemp(prefix="orchestrate-project-"))
        with tarfile.open(fileobj=io.BytesIO(self.archive), mode="r:gz") as archive:
            archive.extractall(self.folder, filter="data")
        self.project = relocate(self.project, self.folder, self.places)
        self._forget_modules()  # an earlier run on this worker may have imported older copies
        activate(self.project)
        from orchestrator.env import X_ENV

        # context.get_x_argument() in env.py sees on a worker what it sees locally
        if self.x:
            os.environ[X_ENV] = json.dumps(self.x)
        else:
            os.environ.pop(X_ENV, None)
        # one target at a time here, as in a process worker: a schema tenant's session may
        # move on to the next tenant (reset in between) instead of connecting per tenant
        self.ws = Workspace(self.project, keep_sessions=True)

    def _shipped_modules(self) -> set[str]:
        with tarfile.open(fileobj=io.BytesIO(self.archive), mode="r:gz") as archive:
            names = {Path(name).parts[2] for name in archive.getnames() if name.startswith("sys/")
                     and len(Path(name).parts) == 3}
        return {name.removesuffix(".py") for name in names}

    def _forget_modules(self) -> None:
        import importlib
        import sys

        for top in self._shipped_modules():
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[name]
        importlib.invalidate_caches()

    def teardown(self, worker: Any = None) -> None:
        import sys

        if self.ws is not None:
            self.ws.close()
            self.ws = None
        for entry in self.project.sys_path:
            while str(entry) in sys.path:
                sys.path.remove(str(entry))
        self._forget_modules()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def run(self, marker: str, target: Target, operation: Operation) -> TargetResult | str:
        """Run one job here, unless it started before on a worker that died (then: lost)."""
        from distributed import Event

        with self.lock:  # one target at a time in this process
            if self.stopped:
                return _NOT_RUN
            started = Event(marker)
            if started.is_set():
                return _LOST
            started.set()
            assert self.ws is not None, "the project plugin was not set up on this worker"
            here = dataclasses.replace(target, database=self.project.databases[target.database.name])
            return operation.apply(self.ws, here)


def run_job(plugin: str, marker: str, target: Target, operation: Operation) -> TargetResult | str:
    """The task Dask runs on a worker: hand the job to the project plugin."""
    from distributed import get_worker

    installed = get_worker().plugins.get(plugin)
    if not isinstance(installed, ProjectPlugin):
        raise RuntimeError(f"the orchestrate project plugin {plugin} is not installed on this worker")
    return installed.run(marker, target, operation)


def stop_plugin(plugin: str, dask_worker: Any = None) -> None:
    """Run on each worker by :meth:`DaskBackend.wait` once the run is stopped."""
    installed = dask_worker.plugins.get(plugin) if dask_worker is not None else None
    if isinstance(installed, ProjectPlugin):
        installed.stopped = True


# ---------------------------------------------------------------------- the backend


def server_of(target: Target) -> str:
    """The database server a target lives on, for ``max_per_server``: ``backend://host:port``."""
    url = parse_url(target.url)
    family, *place = dialect_for(target).server_key(url)  # mariadb:// and mysql:// are one server
    return f"{family}://" + ":".join(str(p) for p in place if p is not None)


class DaskBackend:
    """See the module docstring."""

    def __init__(self, project: Project, address: str | None = None, local_workers: int = LOCAL_WORKERS) -> None:
        _require_distributed()
        from distributed import Client, LocalCluster

        self._cluster: Any = None
        try:
            if address:
                timeout = float(os.environ.get("ORCHESTRATE_DASK_CONNECT_TIMEOUT", CONNECT_TIMEOUT_SECONDS))
                self._client = Client(address, timeout=timeout, set_as_default=False)
            else:
                import dask

                with dask.config.set(LOCAL_CLUSTER_CONFIG):
                    self._cluster = LocalCluster(
                        n_workers=max(1, local_workers), threads_per_worker=1, processes=True,
                        dashboard_address=None, silence_logs=logging.ERROR,
                    )
                self._client = Client(self._cluster, set_as_default=False)
        except OSError as exc:
            if self._cluster is not None:
                self._cluster.close()
            raise OrchestrateError(
                f"cannot reach the Dask scheduler at {mask_text(address or 'a local cluster')}: {mask_text(str(exc))}",
                hint="check --scheduler / ORCHESTRATE_DASK_SCHEDULER / execution.scheduler, and that it runs",
            ) from None
        self._run = uuid.uuid4().hex[:12]
        self._plugin = f"orchestrate-{self._run}"
        archive, places = pack_project(project)
        self._client.register_plugin(ProjectPlugin(project, archive, places), name=self._plugin)
        self._done: queue.Queue[Any] = queue.Queue()
        self._futures: dict[int, Any] = {}  # key -> future on the cluster
        self._jobs: dict[int, Job] = {}  # every job not finished yet (on the cluster or waiting here)
        self._waiting: deque[Job] = deque()  # jobs whose server has no free slot yet
        self._per_server: Counter[str] = Counter()
        self._servers: dict[int, str] = {}
        self._stopping = False
        self._told_workers = False
        self._closed = False
        self._markers: list[str] = []
        self._workers = 0
        self._checked = 0.0
        self.capacity = 1
        self._refresh_capacity(force=True)

    # -- capacity and limits

    def _refresh_capacity(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < CAPACITY_REFRESH_SECONDS:
            return
        self._checked = now
        try:
            self._workers = len(self._client.nthreads())
        except Exception:  # noqa: BLE001 - the scheduler is busy or gone: keep the last count
            return
        # One job running and one queued per worker (with per-server limits, the queued
        # ones may wait here for a slot instead).
        self.capacity = max(1, self._workers * PIPELINE_DEPTH)

    @staticmethod
    def _limit(job: Job) -> int | None:
        return getattr(job.target.database, "max_per_server", None)

    def _may_start(self, job: Job) -> bool:
        limit = self._limit(job)
        return limit is None or self._per_server[server_of(job.target)] < limit

    # -- the protocol

    def submit(self, job: Job) -> None:
        self._jobs[job.key] = job
        if self._may_start(job) and not self._waiting:
            self._start(job)
        else:
            self._waiting.append(job)
            self._start_waiting()

    def _start(self, job: Job) -> None:
        server = server_of(job.target)
        self._servers[job.key] = server
        self._per_server[server] += 1
        marker = f"{self._plugin}-{job.key}"
        self._markers.append(marker)
        future = self._client.submit(
            run_job, self._plugin, marker, job.target, job.operation,
            key=f"orchestrate-{job.target.name}-{self._run}-{job.key}", pure=False, retries=0,
        )
        self._futures[job.key] = future
        future.add_done_callback(lambda _f, key=job.key: self._done.put(key))

    def _start_waiting(self) -> None:
        if self._stopping:
            return
        for job in list(self._waiting):
            if self._may_start(job):
                self._waiting.remove(job)
                self._start(job)

    def stop(self) -> None:
        """Stop handing out (first Ctrl-C): jobs not started yet come back NOT_RUN.
        Only sets a flag: it may be called from a signal handler."""
        self._stopping = True

    def _tell_workers(self) -> None:
        """The run is stopped: a job queued on a worker returns NOT_RUN instead of starting."""
        self._told_workers = True
        try:
            self._client.run(stop_plugin, self._plugin, on_error="ignore")
        except Exception:  # noqa: BLE001 - a worker that cannot be told runs its queued job
            pass

    def wait(self, timeout: float) -> list[Finished]:
        finished: list[Finished] = []
        if self._stopping:
            if not self._told_workers and self._futures:
                self._tell_workers()
            while self._waiting:
                job = self._waiting.popleft()
                self._jobs.pop(job.key, None)
                finished.append(Finished(job.key, TargetResult.for_target(
                    job.target, Status.NOT_RUN, error=f"{job.target.name}: not run: the run was stopped"
                )))
        if not self._futures:
            return finished
        keys: list[int] = []
        try:
            keys.append(self._done.get(timeout=0 if finished else timeout))
        except queue.Empty:
            pass
        while True:
            try:
                keys.append(self._done.get_nowait())
            except queue.Empty:
                break
        for key in keys:
            done = self._collect(key)
            if done is not None:
                finished.append(done)
        self._start_waiting()
        self._refresh_capacity()
        return finished

    def _collect(self, key: int) -> Finished | None:
        future = self._futures.pop(key, None)
        job = self._jobs.pop(key, None)
        if future is None or job is None:
            return None
        server = self._servers.pop(key, None)
        if server is not None:
            self._per_server[server] -= 1
        status = future.status
        try:
            if status == "finished":
                value = future.result()
                if value == _LOST:
                    return Finished(key, lost="the Dask worker running it died (it left the cluster)")
                if value == _NOT_RUN:
                    return Finished(key, TargetResult.for_target(
                        job.target, Status.NOT_RUN, error=f"{job.target.name}: not run: the run was stopped"
                    ))
                return Finished(key, value)
            if status == "cancelled":
                return Finished(key, lost="its task was cancelled on the Dask cluster")
            error = future.exception()
        except Exception as exc:  # noqa: BLE001 - the result could not be fetched: its worker is gone
            error = exc
        finally:
            future.release()
        if type(error).__name__ == "KilledWorker":
            return Finished(key, lost="the Dask workers running it kept dying (KilledWorker)")
        from orchestrator.operations import failure

        return Finished(key, failure(job.target, error if isinstance(error, BaseException) else RuntimeError(str(error))))

    def abort(self) -> list[int]:
        keys = list(self._jobs)
        ours = {future.key for future in self._futures.values()}
        try:
            processing = self._client.processing()
            busy = [worker for worker, tasks in processing.items() if ours & set(tasks)]
        except Exception:  # noqa: BLE001 - aborting: do what can be done
            busy = []
        for future in self._futures.values():
            future.cancel()
        if busy:  # a running target stops only with its process; the server rolls its session back
            try:
                self._client.restart_workers(busy, timeout=30, raise_for_error=False)
            except Exception:  # noqa: BLE001 - workers without a nanny cannot be restarted
                pass
        self._futures.clear()
        self._jobs.clear()
        self._waiting.clear()
        return keys

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        try:
            self._client.unregister_worker_plugin(self._plugin)
        except Exception:  # noqa: BLE001 - workers gone or already without it
            pass
        self._clear_markers()
        try:
            self._client.close(timeout=10)
        finally:
            if self._cluster is not None:
                self._cluster.close(timeout=20)

    def _clear_markers(self) -> None:
        """Forget the started-marks of this run on the scheduler (set Events are never dropped otherwise)."""
        try:
            self._client.run_on_scheduler(_clear_events, list(self._markers))
        except Exception:  # noqa: BLE001 - a scheduler that is gone forgot them anyway
            pass
        self._markers.clear()


def _clear_events(names: list[str], dask_scheduler: Any = None) -> None:
    clear = dask_scheduler.handlers.get("event_clear") if dask_scheduler is not None else None
    if clear is not None:
        for name in names:
            clear(name=name)


def local_workers(parallel: int) -> int:
    """Workers of the LocalCluster: ``--parallel`` when given (> 1), else two."""
    return parallel if parallel > 1 else LOCAL_WORKERS


__all__ = ["DaskBackend", "ProjectPlugin", "local_workers", "pack_project", "relocate", "run_job", "server_of",
           "stop_plugin"]
