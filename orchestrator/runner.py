"""Stage 5: run Alembic for one target at a time, on warm ScriptDirectories.

Each operation is a short function in the manner of ``alembic/command.py``: it composes a
ScriptDirectory (loaded once per database and kept) with an EnvironmentContext, hands the
target and an open connection to env.py through ``config.attributes``, and returns a
:class:`TargetResult`. Operations never raise for a target's failure: the error becomes
the result, so one bad target cannot stop the others. Connections are opened and closed
here, and every engine is disposed, whatever happens.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from alembic import command
from alembic.autogenerate import produce_migrations
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import bindparam, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from orchestrator.config import DatabaseConfig, Project
from orchestrator.dialects import Dialect, dialect_for, is_async_url
from orchestrator.env import CONNECTION_KEY, OPTIONS_KEY, TARGET_KEY
from orchestrator.errors import OrchestrateError, TargetError
from orchestrator.replay import Replayer
from orchestrator.results import Status, TargetResult
from orchestrator.targets import Target, make_target
from orchestrator.urls import mask_text, parse_url

T = TypeVar("T")

#: Where a migration's connection finds the spare connection that holds its migration lock.
LOCK_CONNECTION_KEY = "orchestrate.lock_connection"
#: First pause before retrying a target that hit lock_timeout; doubles each retry (max 30s).
RETRY_PAUSE_SECONDS = 2.0


@dataclass
class _Tracker:
    """Follows a migration as it runs, so a failure can name the revision it stopped in
    and the result can say where the version table was before and after."""

    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    planned: list[tuple[str, str]] = field(default_factory=list)  # (revision, message)
    applied: list[str] = field(default_factory=list)
    replay: Any = None  # the Replayer's state for this target (replay: true)
    _steps: tuple[tuple[str, ...], list[Any]] | None = None

    def steps(self, script: ScriptDirectory, revision: str, heads: tuple[str, ...], upgrade: bool) -> list[Any]:
        """The steps from ``heads`` to ``revision``, computed once per starting point."""
        if self._steps is None or self._steps[0] != heads:
            self._steps = (heads, _path(script, revision, heads, upgrade))
        steps = self._steps[1]
        self.planned = [(step.revision.revision, step.revision.doc or "") for step in steps]
        return steps

    def on_version_apply(self, *, step: Any, **_: Any) -> None:
        self.applied.append(step.up_revision_id if step.is_upgrade else step.down_revision_ids)

    def failing(self) -> tuple[str, str] | None:
        return self.planned[len(self.applied)] if len(self.applied) < len(self.planned) else None


def current_heads(connection: Connection, target: Target) -> list[str]:
    """The revisions in a target's version table (empty when it has none)."""
    context = MigrationContext.configure(
        connection,
        opts={"version_table": target.database.version_table, "version_table_schema": target.schema},
    )
    return sorted(context.get_current_heads())


class Runner:
    """Runs Alembic operations per target; keeps one ScriptDirectory per database warm."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._scripts: dict[str, ScriptDirectory] = {}
        self.replayer = Replayer()
        self._engines: dict[str, Engine] = {}
        self._route = threading.local()  # the URL the engine's next connection goes to

    # ------------------------------------------------------------------ Alembic plumbing

    def alembic_config(self, database: DatabaseConfig, output: IO[str] | None = None) -> Config:
        """An in-memory Alembic Config for one database: shared env.py, its own versions folder."""
        config = Config(output_buffer=output)
        config.set_main_option("script_location", str(self.project.script_location))
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", str(database.version_path))
        return config

    def script(self, database: DatabaseConfig) -> ScriptDirectory:
        """The database's ScriptDirectory, loaded once and reused for every target."""
        script = self._scripts.get(database.name)
        if script is None:
            if not (self.project.script_location / "env.py").is_file():
                raise OrchestrateError(
                    f"no env.py in {self.project.script_location}",
                    hint="run `orchestrate init` to generate it",
                )
            if not database.version_path.is_dir():
                raise OrchestrateError(
                    f"{database.name}: the versions folder {database.version_path} does not exist",
                    hint=f"run `orchestrate init`, or check `version_path:` of `{database.name}` "
                    f"in {self.project.where(database.line)}",
                )
            script = ScriptDirectory.from_config(self.alembic_config(database))
            self._scripts[database.name] = script
        return script

    def forget_scripts(self, database: DatabaseConfig) -> None:
        """Drop the cached ScriptDirectory (after a new revision file was written)."""
        self._scripts.pop(database.name, None)

    def _run_env(
        self,
        target: Target,
        fn: Callable[[Any, MigrationContext], list[Any]],
        connection: Connection | None,
        options: dict[str, Any] | None = None,
        output: IO[str] | None = None,
        **environment: Any,
    ) -> None:
        config = self.alembic_config(target.database, output)
        config.attributes[TARGET_KEY] = target
        config.attributes[CONNECTION_KEY] = connection
        config.attributes[OPTIONS_KEY] = {**dialect_for(target).configure_options(target), **(options or {})}
        script = self.script(target.database)
        with EnvironmentContext(config, script, fn=fn, as_sql=connection is None, **environment):
            script.run_env()

    # ------------------------------------------------------------------ connections

    def with_connection(self, target: Target, work: Callable[[Connection], T], lock: bool = False) -> T:
        """Open a prepared connection to ``target``, run ``work`` on it, close everything.

        With ``lock``, the target's migration lock is held around ``work`` (on a connection
        of its own where the server keeps it), so two runs never migrate one target at once.
        Sync and async drivers alike: with an async driver, ``work`` runs inside
        ``AsyncConnection.run_sync`` on a private event loop. ``work`` is committed when it
        returns and rolled back when it raises.
        """
        dialect = dialect_for(target)
        url = dialect.engine_url(target)
        tenants = target.database.tenants
        if target.tenant is not None and tenants is not None and tenants.create and lock:
            try:
                dialect.ensure_database(target)
            except SQLAlchemyError as exc:
                raise _connect_error(target, exc) from exc
        if is_async_url(url):
            return _run_coroutine(self._with_async_connection(target, dialect, work, lock), target)
        engine = self._engine(target, dialect)
        dialect.before_connect(target)

        def connect() -> Connection:
            try:
                return engine.connect()
            except SQLAlchemyError as exc:
                raise _connect_error(target, exc) from exc

        self._route.url = url
        try:
            lock_connection = connect() if lock and dialect.lock_needs_connection else None
            try:
                held = dialect.migration_lock(lock_connection, target, target.database.lock_wait) if lock else None
                try:
                    with connect() as connection:
                        connection.info[LOCK_CONNECTION_KEY] = lock_connection
                        return _work_on(connection, target, dialect, work)
                finally:
                    if held:
                        held.release()
            finally:
                if lock_connection is not None:
                    lock_connection.close()
        finally:
            self._route.url = None
            if not dialect.engine_serves_many_databases and target.database.tenants is not None:
                self._engines.pop(target.url, engine).dispose()  # one engine per tenant: don't keep thousands

    def _engine(self, target: Target, dialect: Dialect) -> Engine:
        """One engine per database per process, shared by its targets.

        It pools nothing (NullPool: every connection is closed when released), and a
        ``do_connect`` hook points each new connection at the target being run, so the
        engine's dialect, event hooks and compiled-statement cache (Alembic's version-table
        updates, reflection queries) are set up once, not once per tenant.
        """
        key = target.database.name if dialect.engine_serves_many_databases else target.url
        engine = self._engines.get(key)
        if engine is None:
            try:
                engine = create_engine(dialect.engine_url(target), poolclass=NullPool)
            except (SQLAlchemyError, ImportError) as exc:
                raise _connect_error(target, exc) from exc
            dialect.install(engine, target)
            route = self._route

            @event.listens_for(engine, "do_connect")
            def _to_current_target(sa_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
                if getattr(route, "url", None) is not None:
                    new_args, new_params = sa_dialect.create_connect_args(route.url)
                    cargs[:] = new_args
                    cparams.clear()
                    cparams.update(new_params)

            self._engines[key] = engine
        return engine

    def close(self) -> None:
        """Dispose of every engine (they hold no connection between targets anyway)."""
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _with_async_connection(
        self, target: Target, dialect: Dialect, work: Callable[[Connection], T], lock: bool
    ) -> T:
        from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine  # needs greenlet: import when used

        try:
            engine = create_async_engine(dialect.engine_url(target), poolclass=NullPool)
        except (SQLAlchemyError, ImportError) as exc:
            raise _connect_error(target, exc) from exc
        dialect.install(engine.sync_engine, target)
        dialect.before_connect(target)

        async def connect() -> AsyncConnection:
            connection = engine.connect()
            try:
                await connection.start()
            except SQLAlchemyError as exc:
                raise _connect_error(target, exc) from exc
            return connection

        try:
            lock_connection = await connect() if lock and dialect.lock_needs_connection else None
            try:
                held = None
                if lock:
                    held = await (
                        lock_connection.run_sync(
                            lambda sync: dialect.migration_lock(sync, target, target.database.lock_wait)
                        )
                        if lock_connection is not None
                        else _immediate(dialect.migration_lock(None, target, target.database.lock_wait))
                    )
                try:
                    connection = await connect()
                    try:
                        return await connection.run_sync(lambda sync: _work_on(sync, target, dialect, work))
                    finally:
                        await connection.close()
                finally:
                    if held is not None:
                        if lock_connection is not None:
                            await lock_connection.run_sync(lambda _sync: held.release())
                        else:
                            held.release()
            finally:
                if lock_connection is not None:
                    await lock_connection.close()
        finally:
            await engine.dispose()

    # ------------------------------------------------------------------ operations

    def attempt(self, target: Target, operation: Callable[[], TargetResult]) -> TargetResult:
        """Run one operation for ``target``; any failure becomes a FAILED result."""
        started = time.perf_counter()
        try:
            result = operation()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            result = failure(target, exc)
        result.duration = time.perf_counter() - started
        return result

    def upgrade(self, target: Target, revision: str = "heads") -> TargetResult:
        return self._retrying(target, lambda: self.attempt(target, lambda: self._migrate(target, revision, True)))

    def downgrade(self, target: Target, revision: str) -> TargetResult:
        return self._retrying(target, lambda: self.attempt(target, lambda: self._migrate(target, revision, False)))

    def _retrying(self, target: Target, run: Callable[[], TargetResult]) -> TargetResult:
        """Run again, after a pause, a target that failed on lock_timeout (``lock_retries`` times)."""
        retries = target.database.lock_retries
        result = run()
        for attempt in range(retries):
            if not result.data.get("lock_timeout"):
                break
            time.sleep(min(RETRY_PAUSE_SECONDS * 2**attempt, 30.0))
            previous = result
            result = run()
            result.duration += previous.duration
            result.data["attempts"] = attempt + 2
        return result

    def _migrate(self, target: Target, revision: str, upgrade: bool) -> TargetResult:
        script = self.script(target.database)
        tracker = _Tracker()

        def plan(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
            steps = tracker.steps(script, revision, heads, upgrade)
            if target.database.replay and steps:
                steps, tracker.replay = self.replayer.wrap(steps, context.connection, target, dialect_for(target))
            return steps

        def work(connection: Connection) -> None:
            tracker.before = current_heads(connection, target)
            if upgrade and not tracker.before:
                _refuse_unversioned(connection, target)
            connection.rollback()  # Alembic must start outside a transaction to manage its own
            try:  # plan now, so that a lock wait before Alembic plans still names the revision
                tracker.steps(script, revision, tuple(tracker.before), upgrade)
            except CommandError:
                pass  # Alembic raises it again, in its place
            self._run_watched(
                target, connection, tracker, plan, {"on_version_apply": tracker.on_version_apply},
                destination_rev=revision,
            )

        try:
            self.with_connection(target, work, lock=True)
        except Exception as exc:
            result = failure(target, exc)
        else:
            done = Status.UPGRADED if upgrade else Status.DOWNGRADED
            result = TargetResult.for_target(target, done if tracker.applied else Status.NOOP)
        result.before, result.after = tracker.before, tracker.after
        result.applied = [rev for rev, _ in tracker.planned[: len(tracker.applied)]]
        if tracker.replay is not None:
            result.data["replayed"] = tracker.replay.replayed
        return result

    def _run_watched(
        self,
        target: Target,
        connection: Connection,
        tracker: _Tracker,
        fn: Callable[[Any, MigrationContext], list[Any]],
        options: dict[str, Any] | None = None,
        **environment: Any,
    ) -> None:
        """Run env.py for a changing operation, watched for sessions that block it; leaves
        the version table's revisions in ``tracker.after``, and on failure raises the error
        that names the revision, the blocker of a lock timeout, and what was rolled back."""
        dialect = dialect_for(target)
        watch = dialect.watch_blockers(connection.info.get(LOCK_CONNECTION_KEY), connection, target)
        try:
            with watch:
                self._run_env(target, fn, connection, options, **environment)
        except Exception as exc:
            connection.rollback()
            tracker.after = current_heads(connection, target)
            blocked = dialect.is_lock_timeout(exc)
            raise _migration_error(
                target, exc, tracker, blocked_by=watch.describe() if blocked else None, lock_timeout=blocked
            ) from exc
        tracker.after = current_heads(connection, target)

    def stamp(self, target: Target, revision: str, purge: bool = False) -> TargetResult:
        def run() -> TargetResult:
            script = self.script(target.database)
            tracker = _Tracker()

            def plan(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
                tracker.before = sorted(heads)
                return script._stamp_revs((revision,), heads)

            def work(connection: Connection) -> None:
                # Watched like a migration: it waits for locks (SQLite: busy_timeout) and names blockers.
                self._run_watched(target, connection, tracker, plan, destination_rev=(revision,), purge=purge)

            self.with_connection(target, work, lock=True)
            status = Status.NOOP if tracker.before == tracker.after else Status.STAMPED
            return TargetResult.for_target(target, status, before=tracker.before, after=tracker.after)

        return self.attempt(target, run)

    def current(self, target: Target) -> TargetResult:
        """The target's revisions and, for reports, its head and how many revisions it lags."""

        def run() -> TargetResult:
            script = self.script(target.database)
            if dialect_for(target).file_missing(target):  # not migrated yet; don't create it by looking
                return TargetResult.for_target(target, Status.OK, data={**_position(script, []), "missing": True})

            def read(connection: Connection) -> tuple[list[str], list[str]]:
                heads = current_heads(connection, target)
                return heads, ([] if heads else _unversioned_tables(connection, target))

            current, unversioned = self.with_connection(target, read)
            try:
                position = _position(script, current)
            except CommandError as exc:
                raise TargetError(
                    f"{target.name}: the database is at {', '.join(current)}, which {target.database.version_path} "
                    f"does not have ({exc})",
                    hint="is this checkout older than the database? pull the missing revision files",
                ) from exc
            return TargetResult.for_target(
                target, Status.OK, before=current, after=current,
                data={**position, "unversioned_tables": unversioned},
            )

        return self.attempt(target, run)

    def aborted(self, target: Target, operation: str, revision: str | None) -> TargetResult:
        """The result of a target whose run was aborted mid-way (second Ctrl-C, a killed
        worker): where its version table really is, and the revision that was running."""
        message = f"{target.name}: aborted while migrating; " + (
            dialect_for(target).partial_failure_note() or "its open revision was rolled back"
        )
        try:
            after = self.with_connection(target, lambda connection: current_heads(connection, target))
        except Exception as exc:  # the server may be the reason for the abort
            return TargetResult.for_target(target, Status.FAILED, error=f"{message}; state unknown: {_error_text(exc)}")
        running = None
        if operation in ("upgrade", "downgrade") and revision:
            script = self.script(target.database)
            try:
                steps = _path(script, revision, tuple(after), operation == "upgrade")
                running = steps[0].revision.revision if steps else None
            except CommandError:
                running = None
        return TargetResult.for_target(
            target, Status.FAILED, after=after, failed_revision=running,
            error=message + f"; the version table is at {', '.join(after) or 'base'}",
        )

    def read_versions(self, database: DatabaseConfig, targets: list[Target]) -> list[TargetResult]:
        """``current`` for many targets of one database; schema-per-tenant fleets are read in
        bulk, in one connection and a few queries per server instead of one connection each."""
        tenants = database.tenants
        if not targets:
            return []
        if tenants is None or len(targets) == 1:
            return [self.current(t) for t in targets]
        started = time.perf_counter()
        script = self.script(database)
        missing_ok = False
        try:
            if tenants.mode == "schema":
                by_tenant = self.with_connection(
                    make_target(database), lambda connection: _bulk_versions(connection, database, targets)
                )
                versions = {t.name: by_tenant.get(t.tenant or "") for t in targets}
            else:
                found = dialect_for(targets[0]).read_version_tables(targets, database.version_table)
                if found is None:  # no fast path on this server: one connection per tenant database
                    return [self.current(t) for t in targets]
                versions, missing_ok = found, True  # a missing file is a tenant not migrated yet
        except Exception as exc:
            return [failure(t, exc) for t in targets]
        position_of: dict[tuple[str, ...], dict[str, Any]] = {}  # fleets sit at a few revisions: compute each once
        results = []
        for target in targets:
            current = versions.get(target.name)
            if current is None and missing_ok:
                current = []
            if current is None:
                results.append(TargetResult.for_target(
                    target, Status.FAILED,
                    error=f"{target.name}: {'schema' if target.schema else 'database'} {target.tenant!r} does not exist",
                    hint="create it (or set `create: true` under tenants) and upgrade",
                ))
                continue
            key = tuple(current)
            if key not in position_of:
                try:
                    position_of[key] = _position(script, current)
                except CommandError:  # a revision this checkout does not have
                    position_of[key] = {"head": sorted(script.get_heads()), "pending": None}
            results.append(TargetResult.for_target(
                target, Status.OK, before=current, after=current,
                data={**position_of[key], "unversioned_tables": []},
            ))
        elapsed = (time.perf_counter() - started) / len(targets)
        for result in results:
            result.duration = elapsed
        return results

    def sql(self, target: Target, revision: str, upgrade: bool, output: IO[str]) -> TargetResult:
        """Offline mode (``--sql``): write the target's migration SQL to ``output``."""

        def run() -> TargetResult:
            script = self.script(target.database)
            start, _, end = revision.rpartition(":")
            if not upgrade and not start:
                raise TargetError(
                    "downgrade --sql needs a range FROM:TO, e.g. head:base",
                    hint="offline SQL cannot read where the database is; say where it starts",
                )

            def plan(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
                return _path(script, end, heads, upgrade)

            self._run_env(target, plan, None, output=output, starting_rev=start or None, destination_rev=end)
            return TargetResult.for_target(target, Status.OK)

        return self.attempt(target, run)

    def check(self, target: Target) -> TargetResult:
        """Compare the models with the database as it is (the options env.py configures,
        such as include_object, apply): DIFFERENT with the differences, or OK."""

        def run() -> TargetResult:
            _require_metadata(target.database, "check")
            script = self.script(target.database)
            found: list[Any] = []
            current: list[str] = []

            def compare(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
                current.extend(sorted(heads))
                migration = produce_migrations(context, target.database.metadata)
                found.extend(migration.upgrade_ops.as_diffs())
                return []

            self.with_connection(
                target, lambda connection: self._run_env(target, compare, connection, dont_mutate=True)
            )
            position = _position(script, current)
            return TargetResult.for_target(
                target,
                Status.DIFFERENT if found or position["pending"] else Status.OK,
                before=current,
                after=current,
                details=[describe_diff(d) for d in found],
                data=position,
            )

        return self.attempt(target, run)

    def revision(
        self, target: Target, message: str, autogenerate: bool = False, rev_id: str | None = None
    ) -> Script:
        """Write a new revision file into the database's versions folder; raises on failure."""
        database = target.database
        if autogenerate:
            _require_metadata(database, "revision --autogenerate")
        self.script(database)  # clear errors for a missing env.py or versions folder
        config = self.alembic_config(database)
        config.attributes[TARGET_KEY] = target
        config.attributes[OPTIONS_KEY] = dialect_for(target).configure_options(target)

        def write(connection: Connection | None) -> Script:
            config.attributes[CONNECTION_KEY] = connection
            made = command.revision(config, message=message, autogenerate=autogenerate, rev_id=rev_id)
            return made[0] if isinstance(made, list) else made

        try:
            made = self.with_connection(target, write) if autogenerate else write(None)
        except CommandError as exc:
            hint = f"run `orchestrate upgrade -n {database.name}` first" if "not up to date" in str(exc) else None
            raise TargetError(f"{target.name}: {mask_text(str(exc))}", hint=hint) from exc
        finally:
            self.forget_scripts(database)
        if made is None:
            raise TargetError(f"{target.name}: no revision was written")
        return made


# ---------------------------------------------------------------------- helpers


def _work_on(connection: Connection, target: Target, dialect: Dialect, work: Callable[[Connection], T]) -> T:
    dialect.prepare(connection, target)
    if target.schema is not None:
        tenants = target.database.tenants
        dialect.use_schema(connection, target, create=bool(tenants and tenants.create))
    connection.commit()  # Alembic must not see our set-up as an outer transaction
    try:
        result = work(connection)
    except BaseException:
        try:
            if connection.in_transaction():
                connection.rollback()
        except Exception:  # noqa: BLE001 - a broken connection (Ctrl-C mid-query): keep the first error
            pass
        raise
    if connection.in_transaction():
        connection.commit()
    return result


async def _immediate(value: T) -> T:
    return value


def _run_coroutine(coroutine: Any, target: Target) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise OrchestrateError(
        f"{target.name}: cannot migrate an async database from inside a running event loop on its own thread",
        hint="use `await orchestrator.upgrade_async(...)`, or call from a worker thread",
    )


def _connect_error(target: Target, exc: BaseException) -> TargetError:
    detail = getattr(exc, "orig", None) or exc
    first = str(detail).strip().splitlines()[0] if str(detail).strip() else type(detail).__name__
    hint = "is the server running and the URL right? (URLs come from orchestrate.yaml and its ${VARIABLES})"
    if target.tenant is not None:
        hint = (
            f"does the tenant's database exist? create it, or set `create: true` under the tenants "
            f"of `{target.database.name}` (schema mode); " + hint
        )
    return TargetError(f"{target.name}: cannot connect to {target.display_url}: {mask_text(first)}", hint=hint)


BULK_CHUNK = 500  # version tables read per UNION ALL statement


def _bulk_versions(connection: Connection, database: DatabaseConfig, targets: list[Target]) -> dict[str, list[str]]:
    """tenant -> revisions, for schema-per-tenant targets on one server; a tenant whose
    schema (MySQL: database) is missing is left out, one with no version table maps to []."""
    table = database.version_table
    containers = {t.schema or parse_url(t.url).database or "": t.tenant or "" for t in targets}
    existing = set(
        connection.execute(
            text("SELECT schema_name FROM information_schema.schemata WHERE schema_name IN :names").bindparams(
                bindparam("names", expanding=True)
            ),
            {"names": list(containers)},
        ).scalars()
    )
    versioned = set(
        connection.execute(
            text(
                "SELECT table_schema FROM information_schema.tables "
                "WHERE table_name = :table AND table_schema IN :names"
            ).bindparams(bindparam("names", expanding=True)),
            {"table": table, "names": sorted(existing)},
        ).scalars()
    ) if existing else set()
    found: dict[str, list[str]] = {containers[c]: [] for c in existing}
    quote = connection.dialect.identifier_preparer.quote_identifier
    chunk: list[str] = sorted(versioned)
    for start in range(0, len(chunk), BULK_CHUNK):
        part = chunk[start:start + BULK_CHUNK]
        # Identifiers quoted by the dialect (and validated against the tenant pattern before);
        # the tenant each row belongs to travels as a bound parameter.
        union = " UNION ALL ".join(
            f"SELECT :c{i} AS container, version_num FROM {quote(name)}.{quote(table)}" for i, name in enumerate(part)
        )
        rows = connection.execute(text(union), {f"c{i}": name for i, name in enumerate(part)})
        for container, version in rows:
            found[containers[container]].append(version)
    connection.rollback()
    return {tenant: sorted(revs) for tenant, revs in found.items()}


def _unversioned_tables(connection: Connection, target: Target) -> list[str]:
    """Tables of this database's models that exist although its version table does not."""
    metadata = target.database.metadata
    if metadata is None:
        return []
    present = set(inspect(connection).get_table_names(schema=target.schema))
    return sorted(present & {table.name for table in metadata.tables.values()})


def _refuse_unversioned(connection: Connection, target: Target) -> None:
    """Refuse to upgrade a database that holds this database's tables but no version table."""
    ours = _unversioned_tables(connection, target)
    if ours:
        raise TargetError(
            f"{target.name}: tables {', '.join(ours)} exist but the version table "
            f"`{target.database.version_table}` does not, so orchestrate cannot tell which revision they match",
            hint=f"if the schema already matches the latest revision, adopt it with "
            f"`orchestrate stamp -n {target.database.name} head`; then upgrade",
        )


def _require_metadata(database: DatabaseConfig, what: str) -> None:
    if database.metadata is None:
        raise TargetError(
            f"{database.name}: `{what}` compares models with the database, but `{database.name}` has no `metadata:`",
            hint=f"set `metadata: package.module:metadata` for `{database.name}` in orchestrate.yaml",
        )
    if not database.metadata.tables:
        raise TargetError(
            f"{database.name}: the metadata `{database.metadata_ref}` has no tables, so `{what}` would drop everything",
            hint="are the models imported? the module named in `metadata:` must import every model module",
        )


def _migration_error(
    target: Target,
    exc: Exception,
    tracker: _Tracker,
    blocked_by: str | None = None,
    lock_timeout: bool = False,
) -> TargetError:
    if isinstance(exc, TargetError):
        return exc
    failing = tracker.failing()
    detail = _error_text(exc)
    what = f"revision {failing[0]} ({failing[1]})" if failing else None
    if lock_timeout:
        message = (
            f"{target.name}: {what + ' ' if what else ''}waited longer than lock_timeout "
            f"({target.database.lock_timeout:g}s) for a lock: {detail}"
        )
        message += f"\nblocked by: {blocked_by}" if blocked_by else ""
        hint = "end or commit the blocking session, or raise `lock_timeout` / `lock_retries`, then rerun"
    elif what:
        message = f"{target.name}: {what} failed: {detail}"
        hint = "fix the revision or the data, then rerun"
    else:
        hint = f"see `orchestrate history -n {target.database.name}` for known revisions" if isinstance(
            exc, CommandError
        ) else None
        return TargetError(f"{target.name}: {detail}", hint=hint)
    if what:
        at = ", ".join(tracker.after) or "base (no revision)"
        note = dialect_for(target).partial_failure_note()
        message += f"\n{note} ({at})" if note else f"\nrolled back; the version table is at {at}"
    return TargetError(
        mask_text(message), revision=failing[0] if failing else None, hint=hint, lock_timeout=lock_timeout
    )


def _path(script: ScriptDirectory, revision: str, heads: tuple[str, ...], upgrade: bool) -> list[Any]:
    """Alembic's steps from ``heads`` to ``revision``, up or down (as command.upgrade/downgrade plan them)."""
    return script._upgrade_revs(revision, heads) if upgrade else script._downgrade_revs(revision, heads)


def _position(script: ScriptDirectory, current: list[str]) -> dict[str, Any]:
    """Where ``current`` stands: the head revisions and how many revisions lie between."""
    return {"head": sorted(script.get_heads()), "pending": len(script._upgrade_revs("heads", tuple(current)))}


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        text = f"{type(orig).__name__}: {str(orig).strip()}"
        if exc.statement:
            statement = " ".join(exc.statement.split())
            text += f"\n  statement: {statement[:500]}"
        return mask_text(text)
    if isinstance(exc, (OrchestrateError, CommandError)):
        return mask_text(str(exc))
    return mask_text(f"{type(exc).__name__}: {exc}")


def failure(target: Target, exc: BaseException) -> TargetResult:
    """A FAILED result for ``exc``; its text is masked."""
    if isinstance(exc, OrchestrateError):
        message, hint = exc.message, exc.hint
        revision = getattr(exc, "revision", None)
    else:
        message, hint, revision = f"{target.name}: {_error_text(exc)}", None, None
    return TargetResult.for_target(
        target,
        Status.FAILED,
        error=mask_text(message),
        hint=hint and mask_text(hint),
        failed_revision=revision,
        data={"lock_timeout": True} if getattr(exc, "lock_timeout", False) else {},
    )


def describe_diff(diff: Any) -> str:
    """One line per autogenerate difference, for people."""
    if isinstance(diff, list):
        return "; ".join(describe_diff(d) for d in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        sign = "+" if kind == "add_table" else "-"
        return f"{sign} table {diff[1].name}"
    if kind in ("add_column", "remove_column"):
        sign = "+" if kind == "add_column" else "-"
        column = diff[3]
        return f"{sign} column {diff[2]}.{column.name} {column.type}"
    if kind in ("add_index", "remove_index"):
        sign = "+" if kind == "add_index" else "-"
        index = diff[1]
        return f"{sign} index {index.name} on {index.table.name} ({', '.join(c.name for c in index.columns)})"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        sign = "+" if kind.startswith("add") else "-"
        constraint = diff[1]
        what = type(constraint).__name__
        return f"{sign} {what} {constraint.name or ''} on {constraint.table.name}".replace("  ", " ")
    if kind.startswith("modify_"):
        _, schema, table, column, _existing, old, new = diff
        return f"~ column {table}.{column} {kind.removeprefix('modify_')}: {old} -> {new}"
    return " ".join(str(part) for part in diff)
