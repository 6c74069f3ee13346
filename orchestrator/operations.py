"""What can be done to one target: flat compositions of scripts + session + EnvironmentContext.

Each operation reads like a function of ``alembic/command.py``: take the database's warm
ScriptDirectory (:mod:`orchestrator.scripts`), open the target's :class:`~orchestrator.
session.Session`, hand env.py the target and the connection through ``config.attributes``,
and return a :class:`~orchestrator.results.TargetResult`. They never raise for a target's
failure: :func:`attempt` turns it into a result, once, here. Expected failures (the
database said no, Alembic refused, an orchestrate check) keep a short message; anything
else also keeps its traceback, which the CLI shows with ``--debug``.

A :class:`Workspace` holds what operations share within one process: the project, the
script cache, the engines and the replayer. A worker process keeps one for every target
it runs.
"""
from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from alembic import command
from alembic.autogenerate import produce_migrations
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from orchestrator import alembic_compat
from orchestrator import replay as replaying
from orchestrator import scripts as planning
from orchestrator.config import DatabaseConfig, Project
from orchestrator.dialects import dialect_for
from orchestrator.env import CONNECTION_KEY, OPTIONS_KEY, TARGET_KEY, apply_x_arguments
from orchestrator.errors import OrchestrateError, TargetError
from orchestrator.replay import Replayer
from orchestrator.results import Status, TargetResult
from orchestrator.scripts import ScriptCache
from orchestrator.session import Engines, Session, host_and_pid
from orchestrator.targets import Target, make_target
from orchestrator.urls import mask_text

#: First pause before retrying a target that hit lock_timeout; doubles each retry (max 30s).
RETRY_PAUSE_SECONDS = 2.0


class Workspace:
    """What the operations of one process share: scripts, engines, recordings."""

    def __init__(self, project: Project, *, keep_sessions: bool = False) -> None:
        """``keep_sessions``: a schema tenant's session may move on to the next tenant of its
        database (the owner closes the Workspace when its run ends, closing them)."""
        self.project = project
        self.scripts = ScriptCache(project)
        self.engines = Engines(keep_sessions=keep_sessions)
        self.replayer = Replayer()
        #: Schema fingerprints that passed the checks before an upgrade (the version table's
        #: shape; no model tables without a version table): a tenant with the same fingerprint
        #: has the same tables, so it needs no catalog reads to say so.
        self.shapes_ok: set[str] = set()

    def session(self, target: Target, *, lock: bool = False, create: bool = False) -> Session:
        return Session(self.engines, target, lock=lock, create=create)

    def close(self) -> None:
        self.engines.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Tracker:
    """Follows a migration, so a failure can name its revision and the result can say
    where the version table was before and after (None: not known)."""

    before: list[str] | None = None
    after: list[str] | None = None
    planned: list[tuple[str, str]] = field(default_factory=list)  # (revision, message)
    callbacks: int = 0  # revisions Alembic reported as applied (before their COMMIT)
    after_read: bool = False  # the version table was read again after a failure (maybe to no avail)
    replay: Any = None
    _steps: tuple[tuple[str, ...], list[Any]] | None = None

    def plan(self, script: ScriptDirectory, revision: str, heads: tuple[str, ...], upgrade: bool) -> list[Any]:
        """The steps from ``heads`` to ``revision``, computed once per starting point."""
        if self._steps is None or self._steps[0] != heads:
            self._steps = (heads, planning.steps(script, revision, heads, upgrade))
        steps = self._steps[1]
        self.planned = [(step.revision.revision, step.revision.doc or "") for step in steps]
        return steps

    def on_version_apply(self, **_: Any) -> None:
        self.callbacks += 1

    def mine(self, committed: list[str]) -> list[str]:
        """Of the planned revisions the version table shows as done, those THIS run did:
        never one Alembic did not reach here. (A run whose session died may find the table
        moved on by another run that took the migration lock after it.)"""
        reached = {rev for rev, _ in self.planned[: self.callbacks]}
        return [rev for rev in committed if rev in reached]

    def failing(self, committed: list[str] | None) -> tuple[str, str] | None:
        """The planned revision that did not commit: known from the version table when it
        was read, else Alembic's own count."""
        if committed is None:
            index = self.callbacks
            return self.planned[index] if index < len(self.planned) else None
        return next(((rev, doc) for rev, doc in self.planned if rev not in committed), None)


# ---------------------------------------------------------------------- plumbing


def run_env(
    ws: Workspace,
    target: Target,
    fn: Callable[[Any, MigrationContext], list[Any]],
    connection: Connection | None,
    options: dict[str, Any] | None = None,
    output: IO[str] | None = None,
    **environment: Any,
) -> None:
    """Run the shared env.py for ``target`` (online with ``connection``, else offline)."""
    config = ws.scripts.alembic_config(target.database, output)
    apply_x_arguments(config)
    config.attributes[TARGET_KEY] = target
    config.attributes[CONNECTION_KEY] = connection
    config.attributes[OPTIONS_KEY] = {**dialect_for(target).configure_options(target), **(options or {})}
    script = ws.scripts.script(target.database)
    with EnvironmentContext(config, script, fn=fn, as_sql=connection is None, **environment):
        script.run_env()


def current_heads(
    connection: Connection, target: Target, script: ScriptDirectory | None = None, *, shape: bool = False,
    rows: bool = True,
) -> list[str]:
    """The revisions in a target's version table (empty when it has none or is empty).

    A table Alembic cannot work with is a :class:`TargetError` naming the target and the
    table: checked always for its rows (``rows``: NULLs, non-text values, duplicates), with
    ``script`` for a revision beside its own ancestor, and with ``shape`` for what it is
    (a view, a version_num column that is not text, columns Alembic does not know).
    """
    if shape:
        problem = version_table_shape_problem(connection, target)
        if problem:
            raise broken_version_table(target, problem, shape=True)
    found = version_rows(connection, target)
    problem = (version_rows_problem(found) or version_overlap_problem(script, found)) if rows else None
    if problem:
        raise broken_version_table(target, problem)
    return sorted(found, key=str)


def version_rows(connection: Connection, target: Target) -> list[Any]:
    """The rows of the target's version table as they are (none when there is no table):
    what ``MigrationContext.get_current_heads`` reads, through one compiled statement."""
    table = target.database.version_table
    if not dialect_for(target).has_table(connection, table):
        return []
    version = alembic_compat.version_table(table)
    return list(connection.execute(select(version.c.version_num)).scalars())


def version_rows_problem(found: list[Any]) -> str | None:
    """What is wrong with a version table's rows, for Alembic (None: nothing)."""
    if any(rev is None for rev in found):
        return "holds a NULL row"
    odd = [rev for rev in found if not isinstance(rev, str)]
    if odd:
        return f"holds {', '.join(repr(rev) for rev in odd)}, which is not a revision id (a text value)"
    if any(rev.strip() != rev or not rev for rev in found):
        return f"holds an empty or padded revision id ({', '.join(repr(rev) for rev in found)})"
    if len(set(found)) != len(found):
        return f"holds the same revision more than once ({', '.join(sorted(found))})"
    return None


def version_overlap_problem(script: ScriptDirectory | None, found: list[Any]) -> str | None:
    """A version table holds heads only: never a revision beside one of its ancestors."""
    if script is None or len(found) < 2:
        return None
    for rev in found:
        try:
            below = planning.ancestry(script, [rev]) - {rev}
        except CommandError:
            return None  # an unknown revision: said where the table is placed in the history
        overlapping = sorted(below & set(found))
        if overlapping:
            return (f"holds {rev} and its ancestor {', '.join(overlapping)}; a version table holds only the "
                    "heads it reached, so one of the rows is wrong")
    return None


def version_table_shape_problem(connection: Connection, target: Target) -> str | None:
    """What makes a target's version table something other than Alembic's own table (one
    text column, version_num); None when it is, or does not exist."""
    from sqlalchemy import String
    from sqlalchemy.exc import NoSuchTableError

    name = target.database.version_table
    inspector = inspect(connection)
    try:
        columns = inspector.get_columns(name)
    except NoSuchTableError:
        return None
    if name in inspector.get_view_names():
        return "is a view, not a table"
    version = next((c for c in columns if c["name"] == "version_num"), None)
    if version is None:
        return f"has no version_num column (it has {', '.join(c['name'] for c in columns) or 'none'})"
    if not isinstance(version["type"], String):
        return f"has a version_num column of type {version['type']}, not a text type"
    extra = [c["name"] for c in columns if c["name"] != "version_num"]
    if extra:
        return f"has columns that Alembic's version table does not have: {', '.join(extra)}"
    return None


def broken_version_table(target: Target, problem: str, shape: bool = False) -> TargetError:
    table = target.database.version_table
    where = f" in schema {target.schema}" if target.schema else ""
    if shape:
        hint = (f"`{table}` must be Alembic's version table: one column version_num VARCHAR(32), the primary key; "
                f"rename it or repair it by hand, then `orchestrate stamp -n {target.database.name} REVISION`")
    else:
        hint = (f"repair it: `orchestrate stamp --purge -n {target.database.name} REVISION` empties it and "
                "writes the revision the schema really is at")
    return TargetError(mask_text(f"{target.name}: the version table `{table}`{where} {problem}"), hint=hint)


def version_table_exists(connection: Connection, target: Target) -> bool:
    return dialect_for(target).has_table(connection, target.database.version_table)


def read_after(ws: Workspace, target: Target, connection: Connection | None) -> list[str] | None:
    """What the version table holds now: on ``connection`` if it still works, else on a
    fresh one; None when neither can tell."""
    if target.name in ws.engines.silent:
        return None  # the server stopped answering: any read would only wait on it again
    if connection is not None:
        try:
            if connection.in_transaction():
                connection.rollback()
            return current_heads(connection, target)
        except Exception:  # noqa: BLE001 - the connection died with the failure
            pass
    try:
        return ws.session(target).run(lambda fresh: current_heads(fresh, target))
    except Exception:  # noqa: BLE001 - the server is gone: unknown, said as such
        return None


def attempt(target: Target, operation: Callable[[], TargetResult]) -> TargetResult:
    """Run one operation for ``target``: every failure becomes a result, here and only here."""
    started = time.perf_counter()
    try:
        result = operation()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a revision is a failed target too
        result = failure(target, exc)
    result.duration = time.perf_counter() - started
    result.worker = host_and_pid()
    return result


def _retrying(target: Target, run: Callable[[], TargetResult]) -> TargetResult:
    """Run again, after a pause, a target that failed on lock_timeout (``lock_retries`` times)."""
    result = run()
    for attempt_no in range(target.database.lock_retries):
        if not result.lock_timeout:
            break
        time.sleep(min(RETRY_PAUSE_SECONDS * 2**attempt_no, 30.0))
        previous = result
        result = run()
        result.duration += previous.duration
        result.attempts = attempt_no + 2
    return result


def _creates(target: Target) -> bool:
    tenants = target.database.tenants
    return bool(target.tenant is not None and tenants is not None and tenants.create)


# ---------------------------------------------------------------------- changing operations


def upgrade(ws: Workspace, target: Target, revision: str = "heads") -> TargetResult:
    return _retrying(target, lambda: attempt(target, lambda: migrate(ws, target, revision, True)))


def downgrade(ws: Workspace, target: Target, revision: str) -> TargetResult:
    return _retrying(target, lambda: attempt(target, lambda: migrate(ws, target, revision, False)))


def migrate(ws: Workspace, target: Target, revision: str, upgrading: bool) -> TargetResult:
    script = ws.scripts.script(target.database)
    tracker = Tracker()
    dialect = dialect_for(target)
    mode = replaying.mode_of(target)
    replay = tracker.replay = replaying.ReplayState(mode=mode) if mode else None

    def plan(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
        steps = ws.scripts.fresh(target.database, tracker.plan(script, revision, heads, upgrading))
        if replay is not None and steps and context.connection is not None:
            steps = ws.replayer.wrap(steps, context.connection, target, dialect, replay)
        return steps

    def work(connection: Connection) -> None:
        known = False
        if replay is not None:  # one catalog read keys recordings and vouches for the table's shape
            replay.fingerprint, replay.fingerprinted = dialect.schema_fingerprint(connection), True
            known = replay.fingerprint is not None and replay.fingerprint in ws.shapes_ok
        tracker.before = current_heads(connection, target, script, shape=not known)
        unversioned = not tracker.before and not version_table_exists(connection, target)
        if upgrading and unversioned and not known:
            refuse_unversioned(connection, target)
        if replay is not None and replay.fingerprint is not None and upgrading:
            ws.shapes_ok.add(replay.fingerprint)  # the same schema passes the same checks
        if not upgrading and len(tracker.before) > 1 and revision.startswith("-"):
            raise TargetError(
                f"{target.name}: `downgrade {revision}` is ambiguous from the heads {', '.join(tracker.before)}",
                hint=f"name the revision to go down to, e.g. `orchestrate downgrade -n {target.database.name} REVISION`",
            )
        connection.rollback()  # Alembic must start outside a transaction to manage its own
        try:  # plan now, so that a lock wait before Alembic plans still names the revision
            steps = tracker.plan(script, revision, tuple(tracker.before), upgrading)
        except CommandError:
            steps = None  # Alembic raises it again, in its place
        batch = ws.replayer.batch(target, dialect, steps or [], tracker.before, replay.fingerprint) if (
            replay is not None and upgrading) else None
        if batch is not None and replay is not None:
            run_batched(ws, target, connection, tracker, replay, batch, create_table=unversioned)
            return
        run_watched(ws, target, connection, tracker, lambda: run_env(
            ws, target, plan, connection, {"on_version_apply": tracker.on_version_apply}, destination_rev=revision))

    try:
        ws.session(target, lock=True, create=_creates(target)).run(work)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a revision fails this target only
        if tracker.before is not None and tracker.after is None and not tracker.after_read:
            tracker.after = read_after(ws, target, None)
        result = failure(target, migration_error(ws, target, exc, tracker, upgrading))
        if result.traceback is None and not isinstance(exc, (*EXPECTED, LockTimeout)):
            result.traceback = mask_text("".join(traceback.format_exception(exc)))  # for --debug
    else:
        result = TargetResult.for_target(target, Status.NOOP)
    result.before, result.after = tracker.before, tracker.after
    if tracker.after is not None:
        result.applied = planning.committed(script, [r for r, _ in tracker.planned], tracker.after, upgrading)
        if result.status is Status.FAILED:
            result.applied = tracker.mine(result.applied)
    if result.status is Status.NOOP and result.applied:
        result.status = Status.UPGRADED if upgrading else Status.DOWNGRADED
    if replay is not None:
        result.replayed = replay.replayed
        result.live = dict(replay.live) or None
    return result


def run_batched(ws: Workspace, target: Target, connection: Connection, tracker: Tracker,
                replay: replaying.ReplayState, batch: list[tuple[Any, replaying.Recording]], *, create_table: bool) -> None:
    """Migrate ``target`` as a whole-tenant batch (:mod:`orchestrator.replay`), watched like
    a live migration: each revision's recorded statements, then the version table update
    Alembic would make (the table created first where there is none yet)."""
    table, sa_dialect = target.database.version_table, connection.dialect
    old = tracker.before[0] if tracker.before else None
    blocks: list[replaying.Block] = []
    for step, recording in batch:
        new, first = step.revision.revision, create_table and not blocks
        statements = list(recording.statements)
        if first:
            statements.insert(0, (alembic_compat.version_sql(sa_dialect, table, None, None), None, False))
        statements.append((alembic_compat.version_sql(sa_dialect, table, old, new), None, False))
        blocks.append(replaying.Block(new, statements, (id(recording), old, new, first)))
        old = new
    try:
        run_watched(ws, target, connection, tracker, lambda: replaying.run_batch(
            connection, dialect_for(target), blocks, per_revision=target.database.transaction_per_migration,
            committed=lambda _rev: tracker.on_version_apply(), texts=ws.replayer.texts))
    finally:
        replay.replayed = tracker.callbacks  # the revisions whose transaction committed


def run_watched(
    ws: Workspace,
    target: Target,
    connection: Connection,
    tracker: Tracker,
    body: Callable[[], None],
) -> None:
    """Run ``body`` (env.py, or a batch) for a changing operation, watched for sessions that
    block it; leaves the version table's revisions in ``tracker.after`` (read again after a
    failure)."""
    dialect = dialect_for(target)
    watch = dialect.watch_blockers(connection, target)
    try:
        with watch:
            body()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        tracker.after = read_after(ws, target, connection)
        tracker.after_read = True
        if dialect.is_lock_timeout(exc):
            raise LockTimeout(exc, watch.describe()) from exc
        raise
    tracker.after = current_heads(connection, target)


class LockTimeout(Exception):
    """A revision waited longer than lock_timeout; ``blocked_by`` names who held the lock."""

    def __init__(self, cause: BaseException, blocked_by: str | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.blocked_by = blocked_by


def migration_error(
    ws: Workspace, target: Target, exc: BaseException, tracker: Tracker, upgrading: bool
) -> BaseException:
    """The error of a failed migration: the revision that did not commit, who blocked it,
    what was rolled back and where the version table is (or that it is unknown)."""
    if isinstance(exc, TargetError):
        return exc
    blocked_by: str | None = None
    lock_timeout = False
    if isinstance(exc, LockTimeout):
        blocked_by, lock_timeout = exc.blocked_by, True
        exc = exc.cause
    committed = others = None
    if tracker.after is not None:
        shown = planning.committed(
            ws.scripts.script(target.database), [r for r, _ in tracker.planned], tracker.after, upgrading
        )
        committed = tracker.mine(shown)
        others = [rev for rev in shown if rev not in committed]
    failing = tracker.failing(committed) if tracker.planned else None
    detail = error_text(exc)
    what = f"revision {failing[0]} ({failing[1]})" if failing else None
    dialect = dialect_for(target)
    if lock_timeout:
        message = (f"{target.name}: {what + ' ' if what else ''}waited longer than lock_timeout "
                   f"({target.database.lock_timeout:g}s) for a lock: {detail}")
        message += f"\nblocked by: {blocked_by}" if blocked_by else ""
        hint: str | None = "end or commit the blocking session, or raise `lock_timeout` / `lock_retries`, then rerun"
    elif what:
        message = f"{target.name}: {what} failed: {detail}"
        # The server or the network (a cut session, a silent server) has its own advice.
        hint = exc.hint if isinstance(exc, OrchestrateError) and exc.hint else "fix the revision or the data, then rerun"
    else:
        if not isinstance(exc, (OrchestrateError, SQLAlchemyError, CommandError)):
            return exc  # unexpected: keep it (and its traceback)
        hint = f"see `orchestrate history -n {target.database.name}` for known revisions" if isinstance(
            exc, CommandError) else None
        return TargetError(f"{target.name}: {detail}", hint=hint, lock_timeout=lock_timeout)
    note = dialect.partial_failure_note()
    if tracker.after is None:
        message += "\nthe version table could not be read again: where it stands is unknown"
    elif note:
        message += f"\n{note} ({', '.join(tracker.after) or 'base (no revision)'})"
    else:
        message += f"\nrolled back; the version table is at {', '.join(tracker.after) or 'base (no revision)'}"
    if others:
        message += f" ({'applied' if upgrading else 'undone'} meanwhile by another run: {', '.join(others)})"
    return TargetError(mask_text(message), revision=failing[0] if failing else None, hint=hint,
                       lock_timeout=lock_timeout, partial=bool(note and failing))


def stamp(ws: Workspace, target: Target, revision: str, purge: bool = False) -> TargetResult:
    def run() -> TargetResult:
        script = ws.scripts.script(target.database)
        tracker = Tracker()

        def plan(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
            tracker.before = sorted(heads)
            from orchestrator import alembic_compat

            return alembic_compat.stamp_steps(script, (revision,), heads)

        def work(connection: Connection) -> None:
            # --purge rewrites the rows (the repair of a broken one); the table itself must be Alembic's.
            current_heads(connection, target, script, shape=True, rows=not purge)
            connection.rollback()  # Alembic must start outside a transaction to manage its own
            # Watched like a migration: it waits for locks (SQLite: busy_timeout) and names blockers.
            run_watched(ws, target, connection, tracker, lambda: run_env(
                ws, target, plan, connection, destination_rev=(revision,), purge=purge))

        try:
            ws.session(target, lock=True, create=_creates(target)).run(work)
        except LockTimeout as exc:
            raise migration_error(ws, target, exc, tracker, True) from exc
        status = Status.NOOP if tracker.before == tracker.after else Status.STAMPED
        return TargetResult.for_target(target, status, before=tracker.before, after=tracker.after)

    return attempt(target, run)


# ---------------------------------------------------------------------- reading


def current(ws: Workspace, target: Target) -> TargetResult:
    """Where a target stands: its revisions, its head and how many revisions it lags."""

    def run() -> TargetResult:
        script = ws.scripts.script(target.database)
        if dialect_for(target).file_missing(target):  # not migrated yet; don't create it by looking
            head, pending = planning.position(script, [])
            return TargetResult.for_target(target, Status.OK, before=[], after=[], head=head, pending=pending,
                                           missing=True, version_table_exists=False)

        def read(connection: Connection) -> tuple[list[str], bool, list[str]]:
            heads = current_heads(connection, target, script, shape=True)
            exists = bool(heads) or version_table_exists(connection, target)
            return heads, exists, ([] if exists else unversioned_tables(connection, target))

        heads, exists, unversioned = ws.session(target).run(read)
        return positioned(target, script, heads, exists, unversioned)

    return attempt(target, run)


def positioned(
    target: Target, script: ScriptDirectory, heads: list[str], exists: bool | None, unversioned: list[str]
) -> TargetResult:
    problem = version_rows_problem(heads) or version_overlap_problem(script, heads)
    if problem:  # read in bulk: the rows were not checked yet
        raise broken_version_table(target, problem)
    try:
        head, pending = planning.position(script, heads)
    except CommandError as exc:
        raise TargetError(
            f"{target.name}: the version table `{target.database.version_table}` holds {', '.join(heads)}, "
            f"which the versions folder {target.database.version_path} does not have ({exc})",
            hint="is this checkout older than the database? pull the missing revision files",
        ) from exc
    return TargetResult.for_target(target, Status.OK, before=heads, after=heads, head=head, pending=pending,
                                   version_table_exists=exists, unversioned_tables=unversioned)


def _bulk_read(ws: Workspace, database: DatabaseConfig, targets: list[Target],
               sound_only: bool = False) -> dict[str, list[str] | None] | None:
    """Target name -> its version table's rows, read in bulk: one connection and a few
    queries per server for schema tenants, straight read-only file reads for SQLite; None
    where the server has no such path. A target whose schema is missing maps to None (its
    file: left out). Raises what the server raised."""
    dialect = dialect_for(targets[0])
    if database.tenants is not None and database.tenants.mode == "schema":
        by_tenant = ws.session(make_target(database)).run(
            lambda connection: dialect.bulk_versions(connection, database.version_table, targets, sound_only=sound_only)
        )
        return {t.name: by_tenant.get(t.tenant or "") for t in targets}
    return dialect.read_version_tables(targets, database.version_table, sound_only=sound_only)


def read_versions(ws: Workspace, database: DatabaseConfig, targets: list[Target]) -> list[TargetResult]:
    """:func:`current` for many targets of one database; schema-per-tenant fleets are read
    in bulk, in one connection and a few queries per server instead of one connection each."""
    tenants = database.tenants
    if not targets:
        return []
    if tenants is None or len(targets) == 1:
        return [current(ws, t) for t in targets]
    started = time.perf_counter()
    script = ws.scripts.script(database)
    try:
        versions = _bulk_read(ws, database, targets)
    except Exception as exc:  # noqa: BLE001 - the server: every target of it failed to read
        return [failure(t, exc) for t in targets]
    if versions is None:  # no fast path on this server: one connection per tenant database
        return [current(ws, t) for t in targets]
    missing_ok = tenants.mode != "schema"  # a missing file is a tenant not migrated yet
    results = []
    for target in targets:
        heads = versions.get(target.name)
        if heads is None and not missing_ok:
            results.append(TargetResult.for_target(
                target, Status.FAILED,
                error=f"{target.name}: {'schema' if target.schema else 'database'} {target.tenant!r} does not exist",
                hint="create it (or set `create: true` under tenants) and upgrade",
            ))
            continue
        results.append(attempt(target, functools.partial(positioned, target, script, heads or [], None, [])))
    elapsed = (time.perf_counter() - started) / len(targets)
    for result in results:
        result.duration = elapsed
    return results


def bulk_heads(ws: Workspace, database: DatabaseConfig, targets: list[Target]) -> dict[str, list[str]]:
    """Target name -> its version table's revisions, read in bulk as :func:`read_versions`
    reads them, for the targets this read can vouch for: a target is left out when the server
    has no bulk path, the read failed, its schema or file is missing, its version table is
    not Alembic's shape, or its rows are not something Alembic could work with
    (:func:`version_rows_problem`, :func:`version_overlap_problem`). Never raises: what it
    leaves out takes the normal path."""
    if database.tenants is None or not targets:
        return {}
    try:
        script = ws.scripts.script(database)
        found = _bulk_read(ws, database, targets, sound_only=True)
    except Exception:  # noqa: BLE001 - unknown here: each target reads (and reports) it on its own
        return {}
    return {
        name: sorted(heads, key=str)
        for name, heads in (found or {}).items()
        if heads is not None and not (version_rows_problem(heads) or version_overlap_problem(script, heads))
    }


def lost(ws: Workspace, target: Target, operation: str, revision: str | None, why: str,
         status: Status = Status.LOST) -> TargetResult:
    """The result of a target whose worker died (LOST) or whose run was aborted (FAILED)
    while it ran: where its version table really is, read again, and the revision that
    was running."""
    dialect = dialect_for(target)
    message = f"{target.name}: {why}; " + (dialect.partial_failure_note() or "its open revision was rolled back")
    after = read_after(ws, target, None)
    if after is None:
        return TargetResult.for_target(target, status, after=None,
                                       error=f"{message}; where its version table stands is unknown")
    running = None
    if operation in ("upgrade", "downgrade") and revision:
        try:
            steps = planning.steps(ws.scripts.script(target.database), revision, tuple(after), operation == "upgrade")
            running = steps[0].revision.revision if steps else None
        except (CommandError, OrchestrateError):
            running = None
    return TargetResult.for_target(
        target, status, after=after, failed_revision=running, partial=bool(running and dialect.partial_failure_note()),
        error=message + f"; the version table is at {', '.join(after) or 'base'}",
    )


def sql(ws: Workspace, target: Target, revision: str, upgrading: bool, output: IO[str]) -> TargetResult:
    """Offline mode (``--sql``): write the target's migration SQL to ``output``."""

    def run() -> TargetResult:
        script = ws.scripts.script(target.database)
        start, _, end = revision.rpartition(":")
        if not upgrading and not start:
            raise TargetError(
                "downgrade --sql needs a range FROM:TO, e.g. head:base",
                hint="offline SQL cannot read where the database is; say where it starts",
            )

        def plan(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
            return ws.scripts.fresh(target.database, planning.steps(script, end, heads, upgrading))

        run_env(ws, target, plan, None, output=output, starting_rev=start or None, destination_rev=end)
        return TargetResult.for_target(target, Status.OK)

    return attempt(target, run)


def check(ws: Workspace, target: Target) -> TargetResult:
    """Compare the models with the database as it is (the options env.py configures, such
    as include_object, apply): DIFFERENT with the differences, or OK. Creates nothing."""

    def run() -> TargetResult:
        require_metadata(target.database, "check")
        script = ws.scripts.script(target.database)
        found: list[Any] = []
        heads: list[str] = []

        def compare(current_: tuple[str, ...], context: MigrationContext) -> list[Any]:
            heads.extend(sorted(current_))
            metadata = target.database.metadata
            assert metadata is not None  # require_metadata said so
            ops = produce_migrations(context, metadata).upgrade_ops
            found.extend(ops.as_diffs() if ops is not None else [])
            return []

        twin = dialect_for(target).empty_twin() if dialect_for(target).file_missing(target) else None
        if twin is not None:
            # Not migrated yet: compared with an empty database of its kind, never created by looking.
            from sqlalchemy import create_engine

            empty = create_engine(twin)
            try:
                with empty.connect() as connection:
                    run_env(ws, target, compare, connection, dont_mutate=True)
            finally:
                empty.dispose()
        else:
            ws.session(target).run(lambda connection: run_env(ws, target, compare, connection, dont_mutate=True))
        result = positioned(target, script, heads, None, [])
        result.missing = twin is not None
        result.differences = [describe_diff(d) for d in found]
        if found or result.pending:
            result.status = Status.DIFFERENT
        return result

    return attempt(target, run)


def revision(ws: Workspace, target: Target, message: str, autogenerate: bool = False,
             rev_id: str | None = None, **options: Any) -> Script:
    """Write a new revision file into the database's versions folder; raises on failure.
    ``options`` are Alembic's: head, splice, branch_label, depends_on."""
    database = target.database
    if autogenerate:
        require_metadata(database, "revision --autogenerate")
    ws.scripts.script(database)  # clear errors for a missing env.py or versions folder
    config = ws.scripts.alembic_config(database)
    apply_x_arguments(config)
    config.attributes[TARGET_KEY] = target
    config.attributes[OPTIONS_KEY] = dialect_for(target).configure_options(target)

    def write(connection: Connection | None) -> Script | None:
        config.attributes[CONNECTION_KEY] = connection
        made = command.revision(config, message=message, autogenerate=autogenerate, rev_id=rev_id, **options)
        return made[0] if isinstance(made, list) else made

    try:
        made = ws.session(target).run(write) if autogenerate else write(None)
    except CommandError as exc:
        hint = f"run `orchestrate upgrade -n {database.name}` first" if "not up to date" in str(exc) else None
        raise TargetError(f"{target.name}: {mask_text(str(exc))}", hint=hint) from exc
    finally:
        ws.scripts.forget(database)
    if made is None:
        raise TargetError(f"{target.name}: no revision was written")
    return made


# ---------------------------------------------------------------------- helpers


def unversioned_tables(connection: Connection, target: Target) -> list[str]:
    """Tables of this database's models that exist although its version table does not.
    The models are imported here if they were not yet, so the answer never depends on
    what the process happened to import before."""
    metadata = target.database.metadata
    if metadata is None:
        return []
    present = set(inspect(connection).get_table_names())
    return sorted(present & {table.name for table in metadata.tables.values()})


def refuse_unversioned(connection: Connection, target: Target) -> None:
    """Refuse to upgrade a database that holds this database's tables but no version table
    (an EMPTY version table is base: a `stamp base` after create_all() upgrades)."""
    ours = unversioned_tables(connection, target)
    if ours:
        raise TargetError(
            f"{target.name}: tables {', '.join(ours)} exist but the version table "
            f"`{target.database.version_table}` does not, so orchestrate cannot tell which revision they match",
            hint=f"if the schema already matches the latest revision, adopt it with "
            f"`orchestrate stamp -n {target.database.name} head`; then upgrade",
        )


def require_metadata(database: DatabaseConfig, what: str) -> None:
    if database.metadata_ref is None:
        raise TargetError(
            f"{database.name}: `{what}` compares models with the database, but `{database.name}` has no `metadata:`",
            hint=f"set `metadata: package.module:metadata` for `{database.name}` in orchestrate.yaml",
        )
    metadata = database.metadata
    if metadata is None or not metadata.tables:
        raise TargetError(
            f"{database.name}: the metadata `{database.metadata_ref}` has no tables, so `{what}` would drop everything",
            hint="are the models imported? the module named in `metadata:` must import every model module",
        )


def error_text(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        text = f"{type(orig).__name__}: {str(orig).strip()}"
        if exc.statement:
            statement = " ".join(exc.statement.split())
            text += f"\n  statement: {statement[:500]}"
        return mask_text(text)
    if isinstance(exc, (OrchestrateError, CommandError)):
        return mask_text(str(exc))
    if isinstance(exc, SystemExit):
        return f"the revision called sys.exit({mask_text(repr(exc.code))})"
    return mask_text(f"{type(exc).__name__}: {exc}")


EXPECTED = (OrchestrateError, SQLAlchemyError, CommandError)


def failure(target: Target, exc: BaseException) -> TargetResult:
    """A FAILED result for ``exc``; its text is masked. An unexpected error keeps its
    (masked) traceback for ``--debug``."""
    trace = None
    if isinstance(exc, OrchestrateError):
        message, hint = exc.message, exc.hint
        revision_ = getattr(exc, "revision", None)
    else:
        message, hint, revision_ = f"{target.name}: {error_text(exc)}", None, None
        if not isinstance(exc, EXPECTED):
            trace = mask_text("".join(traceback.format_exception(exc)))
    return TargetResult.for_target(
        target,
        Status.FAILED,
        error=mask_text(message),
        hint=hint and mask_text(hint),
        failed_revision=revision_,
        partial=bool(getattr(exc, "partial", False)),
        lock_timeout=bool(getattr(exc, "lock_timeout", False)),
        traceback=trace,
    )


def describe_diff(diff: Any) -> str:
    """One line per autogenerate difference, for people."""
    if isinstance(diff, list):
        return "; ".join(describe_diff(d) for d in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"{'+' if kind == 'add_table' else '-'} table {diff[1].name}"
    if kind in ("add_column", "remove_column"):
        column = diff[3]
        return f"{'+' if kind == 'add_column' else '-'} column {diff[2]}.{column.name} {column.type}"
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        return (f"{'+' if kind == 'add_index' else '-'} index {index.name} on {index.table.name} "
                f"({', '.join(c.name for c in index.columns)})")
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        sign = "+" if kind.startswith("add") else "-"
        return f"{sign} {type(constraint).__name__} {constraint.name or ''} on {constraint.table.name}".replace("  ", " ")
    if kind.startswith("modify_"):
        _, _schema, table, column, _existing, old, new = diff
        return f"~ column {table}.{column} {kind.removeprefix('modify_')}: {old} -> {new}"
    return " ".join(str(part) for part in diff)
