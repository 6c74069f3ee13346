"""The Python API: the CLI's commands for application code, sync and async.

    import orchestrator

    outcome = orchestrator.upgrade("orchestrate.yaml", all_=True, parallel=4, report="run.json")
    outcome = await orchestrator.upgrade_async("orchestrate.yaml", all_=True)     # in async code

Every function goes through :mod:`orchestrator.commands`, exactly as ``orchestrate`` does.
The first positional argument is the config path (default: ``$ORCHESTRATE_CONFIG``, else
``./orchestrate.yaml``). ``upgrade``/``downgrade``/``stamp`` take the fleet options
``parallel``, ``tenants``, ``shard``, ``fail_fast`` and ``report`` and return the run's
:class:`~orchestrator.results.Outcome`; with ``check=True`` (the default) a run that did
not fully succeed raises :class:`MigrationFailed`, so an application does not start on
half-migrated databases. ``current``/``status``/``check`` return an Outcome too.

Event loops: the sync functions block until every target is done, so they refuse to run
on a thread whose event loop is running. The ``*_async`` twins do ALL the work (imports,
loading the config, migrating) in a worker thread, so the caller's loop never stalls;
async drivers run on a private loop in that thread. Alembic keeps module-level state
while it runs, so calls from several threads of one process take turns.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.errors import OrchestrateError

if TYPE_CHECKING:
    from orchestrator.results import Outcome

T = TypeVar("T")
#: One Alembic run at a time per process (its proxies are module globals).
_ALEMBIC = threading.Lock()


class MigrationFailed(OrchestrateError):
    """A run did not fully succeed; ``outcome`` holds every target's result."""

    def __init__(self, outcome: Outcome) -> None:
        from orchestrator.urls import mask_text

        bad = [r for r in outcome.results if not r.status.succeeded]
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


def _run(command: str, config_path: str | Path | None, names: str | Iterable[str], all_: bool,
         tenants: Iterable[str], shard: str | None, parallel: int | None, fail_fast: bool,
         report: str | Path | None, check: bool, cancelled: threading.Event | None, args: tuple[Any, ...]) -> Outcome:
    """The work of every changing command, on whatever thread calls it."""
    from orchestrator import commands
    from orchestrator.config import load_project

    project = load_project(config_path)
    selection = commands.Selection(_names(names), all_, tuple(tenants), None, shard)
    options = commands.RunOptions(parallel=parallel, fail_fast=fail_fast,
                                  report_path=Path(report) if report else None, cancelled=cancelled)
    with _ALEMBIC:
        outcome = getattr(commands, command)(project, selection, options, *args).outcome
    if cancelled is not None and cancelled.is_set():
        outcome.interrupted = True
    if check and not outcome.ok:
        raise MigrationFailed(outcome)
    return outcome


def _read(command: str, config_path: str | Path | None, names: str | Iterable[str], tenants: Iterable[str],
          check: bool) -> Outcome:
    from orchestrator import commands
    from orchestrator.config import load_project

    project = load_project(config_path)
    with _ALEMBIC:
        outcome: Outcome = getattr(commands, command)(project, commands.Selection(_names(names), False, tuple(tenants)))
    if check and not outcome.ok:
        raise MigrationFailed(outcome)
    return outcome


async def _off_the_loop(work: Callable[[threading.Event], T]) -> T:
    """Run ``work`` in a worker thread; if the awaiting task is cancelled, no further target
    starts and the running one finishes first (its connections and lock are released)."""
    cancel = threading.Event()
    running = asyncio.ensure_future(asyncio.to_thread(work, cancel))
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


def _changing(command: str, doc: str) -> tuple[Callable[..., Outcome], Callable[..., Any]]:
    """The sync function of a changing command and its async twin, from one signature."""

    def sync(config_path: str | Path | None = None, names: str | Iterable[str] = (), all_: bool = False,
             *args: Any, tenants: Iterable[str] = (), shard: str | None = None, parallel: int | None = None,
             fail_fast: bool = False, report: str | Path | None = None, check: bool = True, **kw: Any) -> Outcome:
        _refuse_on_running_loop(command)
        return _run(command, config_path, names, all_, tenants, shard, parallel, fail_fast, report, check, None,
                    _arguments(command, args, kw))

    async def asynchronous(config_path: str | Path | None = None, names: str | Iterable[str] = (),
                           all_: bool = False, *args: Any, tenants: Iterable[str] = (), shard: str | None = None,
                           parallel: int | None = None, fail_fast: bool = False, report: str | Path | None = None,
                           check: bool = True, **kw: Any) -> Outcome:
        tenants = tuple(tenants)
        arguments = _arguments(command, args, kw)
        return await _off_the_loop(
            lambda cancel: _run(command, config_path, names, all_, tenants, shard, parallel, fail_fast, report,
                                check, cancel, arguments))

    sync.__name__, sync.__qualname__, sync.__doc__ = command, command, doc
    asynchronous.__name__ = asynchronous.__qualname__ = f"{command}_async"
    asynchronous.__doc__ = f":func:`{command}` for async code: the work runs in a worker thread, the loop runs on."
    return sync, asynchronous


def _arguments(command: str, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[Any, ...]:
    """The command's own arguments: ``revision`` (and ``purge`` for stamp)."""
    revision = kw.pop("revision", args[0] if args else ("heads" if command == "upgrade" else None))
    if revision is None:
        raise OrchestrateError(f"orchestrator.{command}() needs a revision, e.g. revision=\"base\"")
    extra = (bool(kw.pop("purge", args[1] if len(args) > 1 else False)),) if command == "stamp" else ()
    if kw:
        raise TypeError(f"orchestrator.{command}() got unexpected keyword arguments: {', '.join(kw)}")
    return (revision, *extra)


def _reading(command: str, doc: str, check_default: bool) -> tuple[Callable[..., Outcome], Callable[..., Any]]:
    def sync(config_path: str | Path | None = None, names: str | Iterable[str] = (), *,
             tenants: Iterable[str] = (), check: bool = check_default) -> Outcome:
        _refuse_on_running_loop(command)
        return _read(command, config_path, names, tenants, check)

    async def asynchronous(config_path: str | Path | None = None, names: str | Iterable[str] = (), *,
                           tenants: Iterable[str] = (), check: bool = check_default) -> Outcome:
        tenants = tuple(tenants)
        return await _off_the_loop(lambda _cancel: _read(command, config_path, names, tenants, check))

    sync.__name__, sync.__qualname__, sync.__doc__ = command, command, doc
    asynchronous.__name__ = asynchronous.__qualname__ = f"{command}_async"
    asynchronous.__doc__ = f":func:`{command}` for async code (reads in a worker thread)."
    return sync, asynchronous


upgrade, upgrade_async = _changing(
    "upgrade", "Upgrade the selected databases (``names``, or ``all_``) to ``revision`` (default heads).")
downgrade, downgrade_async = _changing("downgrade", "Downgrade the selected databases to ``revision``.")
stamp, stamp_async = _changing("stamp", "Record ``revision`` in the version tables (``purge=True`` empties them first).")
current, current_async = _reading(
    "current", "Where each selected target stands: ``after`` its revisions, ``head``, ``pending``.", False)
status, status_async = _reading("status", "Like :func:`current` (fleets read in bulk).", False)
check, check_async = _reading(
    "check", "Compare models and databases; raises MigrationFailed on differences unless check=False.", True)



def _report(command: str, config_path: str | Path | None, names: str | Iterable[str], tenants: Iterable[str],
            shard: str | None, check: bool, args: tuple[Any, ...]) -> dict[str, Any]:
    """lint/preflight: the report document (findings, time classes, checks per target)."""
    from orchestrator import commands
    from orchestrator.config import load_project

    project = load_project(config_path)
    selection = commands.Selection(_names(names), False, tuple(tenants), None, shard)
    with _ALEMBIC:
        result = getattr(commands, command)(project, selection, *args)
    if check and not result.outcome.ok:
        raise MigrationFailed(result.outcome)
    document: dict[str, Any] = result.document
    return document


def lint(config_path: str | Path | None = None, names: str | Iterable[str] = (), *, range: str | None = None,
         check: bool = False) -> dict[str, Any]:
    """``orchestrate lint``: the report document, each database's ``findings`` (rule, level,
    revision, statement, reason, safer). ``range="FROM:TO"`` lints those revisions instead of
    the pending ones; ``check=True`` raises MigrationFailed on an error-level finding."""
    _refuse_on_running_loop("lint")
    return _report("lint", config_path, names, (), None, check, (range,))


async def lint_async(config_path: str | Path | None = None, names: str | Iterable[str] = (), *,
                     range: str | None = None, check: bool = False) -> dict[str, Any]:
    """:func:`lint` for async code (in a worker thread)."""
    return await _off_the_loop(lambda _cancel: _report("lint", config_path, names, (), None, check, (range,)))


def preflight(config_path: str | Path | None = None, names: str | Iterable[str] = (), *,
              tenants: Iterable[str] = (), shard: str | None = None, check: bool = False) -> dict[str, Any]:
    """``orchestrate preflight``, read-only: the report document, per target ``time_class``,
    ``statements`` (lock, rows, bytes, findings), ``checks`` (``passed``, ``rows``);
    ``check=True`` raises MigrationFailed when a target fails a check or exceeds max_risk."""
    _refuse_on_running_loop("preflight")
    return _report("preflight", config_path, names, tenants, shard, check, ())


async def preflight_async(config_path: str | Path | None = None, names: str | Iterable[str] = (), *,
                          tenants: Iterable[str] = (), shard: str | None = None,
                          check: bool = False) -> dict[str, Any]:
    """:func:`preflight` for async code (in a worker thread)."""
    tenants = tuple(tenants)
    return await _off_the_loop(lambda _cancel: _report("preflight", config_path, names, tenants, shard, check, ()))


__all__ = [
    "MigrationFailed", "check", "check_async", "current", "current_async", "downgrade", "downgrade_async",
    "lint", "lint_async", "preflight", "preflight_async",
    "stamp", "stamp_async", "status", "status_async", "upgrade", "upgrade_async",
]
