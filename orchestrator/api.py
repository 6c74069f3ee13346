"""The Python API: migrate from application code, sync or async.

    import orchestrator

    outcome = orchestrator.upgrade(config_path="orchestrate.yaml", all_=True)       # plain code, a thread
    outcome = await orchestrator.upgrade_async(config_path="orchestrate.yaml", all_=True)  # async code

Both run the same work as ``orchestrate upgrade``: every target under its migration lock,
with its timeouts, in ``depends_on`` order, and both return the run's
:class:`~orchestrator.executor.Outcome` (one :class:`~orchestrator.results.TargetResult`
per target). With ``check=True`` (the default) a run that did not fully succeed raises
:class:`MigrationFailed`, so that an application does not start on half-migrated databases.

Event loops: the sync :func:`upgrade` blocks until every target is done, so it refuses to
run on a thread whose event loop is running (it would freeze that loop; async drivers
could not even run there). :func:`upgrade_async` runs the same sync work in a worker
thread (``asyncio.to_thread``), so the loop keeps serving while databases migrate; async
drivers (``postgresql+psycopg_async://``, ``sqlite+aiosqlite://``) run on a private loop in
that thread, through the same env.py.

Alembic keeps module-level state while it runs (``alembic.context``, ``alembic.op``), so
calls from several threads of one process are serialised here: they wait their turn.
"""
from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterable
from pathlib import Path

from orchestrator.config import load_project
from orchestrator.errors import OrchestrateError
from orchestrator.executor import Outcome, run_serial
from orchestrator.plan import select
from orchestrator.results import Status, TargetResult
from orchestrator.runner import Runner
from orchestrator.targets import Target
from orchestrator.urls import mask_text

#: One Alembic run at a time per process (its proxies are module globals).
_ALEMBIC = threading.Lock()


class MigrationFailed(OrchestrateError):
    """A run did not fully succeed; ``outcome`` holds every target's result."""

    def __init__(self, outcome: Outcome) -> None:
        bad = [r for r in outcome.results if r.status.is_failure or r.status in (Status.SKIPPED, Status.NOT_RUN)]
        head = f"{len(bad)} of {len(outcome.results)} targets did not succeed"
        if outcome.interrupted:
            head += " (the run was interrupted)"
        lines = [head + ":"] + [f"  {r.target}: {r.status.value}: {(r.error or '').strip()}" for r in bad]
        hint = next((r.hint for r in bad if r.hint), None)
        super().__init__(mask_text("\n".join(lines)), hint=hint and mask_text(hint))
        self.outcome = outcome


def _names(names: str | Iterable[str]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def _refuse_on_running_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop runs on this thread: blocking is fine
    raise OrchestrateError(
        f"orchestrator.{what}() was called on the thread that runs an asyncio event loop; "
        "it would block that loop until every migration finished",
        hint=f"in async code use `await orchestrator.{what}_async(...)` (it migrates in a worker thread), "
        f"or call `orchestrator.{what}(...)` from a thread: `await asyncio.to_thread(orchestrator.{what}, ...)`",
    )


def upgrade(
    config_path: str | Path | None = None,
    names: str | Iterable[str] = (),
    all_: bool = False,
    revision: str = "heads",
    *,
    tenants: Iterable[str] = (),
    check: bool = True,
) -> Outcome:
    """Upgrade the selected databases (``names``, or ``all_``) to ``revision``.

    ``config_path`` defaults to ``$ORCHESTRATE_CONFIG`` or ``./orchestrate.yaml``. Raises
    :class:`MigrationFailed` when a target failed, was skipped or not run (unless
    ``check=False``), and OrchestrateError for configuration or selection errors. Must not
    be called on a thread whose event loop is running: use :func:`upgrade_async` there.
    """
    _refuse_on_running_loop("upgrade")
    return _upgrade(config_path, _names(names), all_, revision, tuple(tenants), check, None)


async def upgrade_async(
    config_path: str | Path | None = None,
    names: str | Iterable[str] = (),
    all_: bool = False,
    revision: str = "heads",
    *,
    tenants: Iterable[str] = (),
    check: bool = True,
) -> Outcome:
    """:func:`upgrade` for async code: the work runs in a worker thread, the loop runs on.

    If the awaiting task is cancelled, no further target starts; the target being migrated
    finishes (or fails) first, so that its connections and migration lock are released
    before the cancellation goes on.
    """
    cancel = threading.Event()
    work = functools.partial(_upgrade, config_path, _names(names), all_, revision, tuple(tenants), check, cancel)
    running = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        cancel.set()
        if not running.done():
            try:
                await running  # a second cancellation stops this wait, not the worker thread
            except Exception:  # noqa: BLE001 - the caller was cancelled; that is what it sees
                pass
        raise


def current(config_path: str | Path | None = None, names: str | Iterable[str] = ()) -> list[TargetResult]:
    """Where each selected target is (default: every database): ``after`` is its revisions,
    ``data["head"]`` the heads of its versions folder, ``data["pending"]`` how many it lags."""
    _refuse_on_running_loop("current")
    return _current(config_path, _names(names))


async def current_async(config_path: str | Path | None = None, names: str | Iterable[str] = ()) -> list[TargetResult]:
    """:func:`current` for async code (reads in a worker thread)."""
    return await asyncio.to_thread(_current, config_path, _names(names))


# ---------------------------------------------------------------------- the work, on any thread


def _upgrade(
    config_path: str | Path | None,
    names: tuple[str, ...],
    all_: bool,
    revision: str,
    tenants: tuple[str, ...],
    check: bool,
    cancel: threading.Event | None,
) -> Outcome:
    project = load_project(config_path)
    plan = select(project, names, all_=all_, tenants=tenants)
    with Runner(project) as runner:

        def operation(target: Target) -> TargetResult:
            if cancel is not None and cancel.is_set():
                return TargetResult.for_target(
                    target, Status.NOT_RUN, error=f"{target.name}: not run: the caller was cancelled"
                )
            return runner.upgrade(target, revision)

        with _ALEMBIC:
            outcome = run_serial(plan, operation)
    if cancel is not None and cancel.is_set():
        outcome.interrupted = True
    if check and not outcome.ok:
        raise MigrationFailed(outcome)
    return outcome


def _current(config_path: str | Path | None, names: tuple[str, ...]) -> list[TargetResult]:
    project = load_project(config_path)
    plan = select(project, names, all_if_none=True)
    with Runner(project) as runner, _ALEMBIC:
        return [runner.current(target) for target in plan.targets]


__all__ = ["MigrationFailed", "current", "current_async", "upgrade", "upgrade_async"]
