"""Every difference between database servers, behind one interface: one class per dialect.

The runner never asks which database it talks to; it asks the target's :class:`Dialect`
to install engine hooks, prepare a fresh connection (timeouts, schema), and add the
options Alembic needs for that server.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine

from orchestrator.blockers import (
    PollingWatch,
    mysql_blockers,
    mysql_has_metadata_lock_info,
    postgresql_blockers,
    sqlite_write_lock_holders,
)
from orchestrator.errors import TargetError
from orchestrator.targets import Target
from orchestrator.urls import mask_text, parse_url

#: How often a waiting run asks again for a migration lock that another run holds.
LOCK_POLL_SECONDS = 0.2
#: Where ``prepare`` leaves the server's id of a connection (PostgreSQL pid, MySQL thread id).
BACKEND_ID_KEY = "orchestrate.backend_id"
#: Set on a SQLite connection while it migrates: its transactions take the write lock up
#: front (BEGIN IMMEDIATE), so a busy database is waited for, up to busy_timeout.
SQLITE_IMMEDIATE_KEY = "orchestrate.sqlite_begin_immediate"
#: How soon a PostgreSQL backend notices that its client died in the middle of a statement.
CLIENT_CHECK_INTERVAL = "1s"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver error it wraps (``.orig``) and its causes and contexts."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        stack.extend([getattr(item, "orig", None), item.__cause__, item.__context__])
    return seen


def _lock_owner() -> str:
    """How a run names itself where the server lets it (PostgreSQL application_name)."""
    return f"orchestrate pid {os.getpid()} on {socket.gethostname()}"[:63]


class BlockerWatch:
    """Watches, while a migration runs, for sessions that block it; this one watches nothing.

    Used as a context manager around the migration; :meth:`describe` then says who
    blocked it (or None), for the error of a revision that hit ``lock_timeout``.
    """

    def __enter__(self) -> BlockerWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self) -> str | None:
        return None


class MigrationLock:
    """A held migration lock; :meth:`release` is safe to call more than once."""

    def __init__(self, release: Any = None) -> None:
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def lock_name(target: Target) -> str:
    """A stable name for a target's migration lock: the same version table, the same lock."""
    url = parse_url(target.url)
    place = f"{url.get_backend_name()}|{url.database or ''}|{target.schema or ''}|{target.database.version_table}"
    return "orchestrate:" + hashlib.sha256(place.encode()).hexdigest()[:40]


def _busy(target: Target, waited: float, holder: str | None) -> TargetError:
    who = f"; held by {holder}" if holder else ""
    return TargetError(
        f"{target.name}: another run is migrating {target.name} (waited {waited:.0f}s for its migration lock{who})",
        hint="wait for that run to finish, or raise `lock_wait` in orchestrate.yaml",
    )


class Dialect:
    """Behaviour shared by every server; subclasses override what differs."""

    name: ClassVar[str] = "default"
    #: May one engine serve several databases of this server (a connection routed to each)?
    #: Not where the dialect remembers the first connection's database (MySQL's default schema).
    engine_serves_many_databases: ClassVar[bool] = True

    def engine_url(self, target: Target) -> URL:
        return parse_url(target.url)

    def install(self, engine: Engine, target: Target) -> None:
        """Hook into a new (sync) engine before its first connection."""

    def before_connect(self, target: Target) -> None:
        """Anything the target needs before a connection to it is opened."""

    def prepare(self, connection: Connection, target: Target) -> None:
        """Set up a fresh connection: timeouts, schema. The caller commits afterwards."""

    def configure_options(self, target: Target) -> dict[str, Any]:
        """Extra options for Alembic's ``context.configure`` on this server."""
        return {}

    def use_schema(self, connection: Connection, target: Target, create: bool) -> None:
        """Point a fresh connection at the target's schema (schema-per-tenant), creating
        it when ``create``; a missing schema is a TargetError."""
        raise TargetError(f"{target.name}: schemas per tenant are not supported on {self.name}")

    def ensure_database(self, target: Target) -> None:
        """Create the target's own database before connecting, where the server needs that
        (MySQL database-per-tenant with ``create: true``)."""

    @staticmethod
    def quote(connection: Connection, identifier: str) -> str:
        """An identifier quoted by the dialect's own rules (names are validated before)."""
        return connection.dialect.identifier_preparer.quote_identifier(identifier)

    def file_missing(self, target: Target) -> bool:
        """Is the target a database file that does not exist yet? (Reading it must not create it.)"""
        return False

    def offline_preamble(self, target: Target) -> str:
        """What an offline (--sql) script must run first for this target (e.g. pick its schema)."""
        return ""

    def read_version_tables(self, targets: list[Target], version_table: str) -> dict[str, list[str] | None] | None:
        """Target name -> revisions, read in bulk without the ceremony of a migration
        connection; None where this server has no such fast path."""
        return None

    def schema_fingerprint(self, connection: Connection) -> str | None:
        """A digest of the connection's current schema (tables, columns, indexes,
        constraints), without its own name; None where replay is not supported."""
        return None

    def is_catalog_query(self, statement: str) -> bool:
        """Does ``statement`` only read the catalog (reflection)?"""
        return False

    def partial_failure_note(self) -> str | None:
        """What a person must know when a revision fails halfway on this server."""
        return None

    def watch_blockers(self, watcher: Connection | None, connection: Connection, target: Target) -> BlockerWatch:
        """A :class:`BlockerWatch` for ``connection``; ``watcher`` is a spare connection
        to the same server (the migration lock's) that the watch may use, or None."""
        return BlockerWatch()

    def is_lock_timeout(self, exc: BaseException) -> bool:
        """Did ``exc`` come from waiting longer than ``lock_timeout`` for a lock?"""
        return False

    #: Does the migration lock live on a server connection of its own?
    lock_needs_connection: ClassVar[bool] = False

    def migration_lock(self, connection: Connection | None, target: Target, wait: float) -> MigrationLock:
        """Take the target's migration lock, waiting at most ``wait`` seconds.

        Raises TargetError("another run is migrating ...") naming the holder if it can.
        """
        return MigrationLock()


class PostgreSQL(Dialect):
    name = "postgresql"
    lock_needs_connection = True

    _FINGERPRINT = text(
        "SELECT 'c' AS k, c.relname AS a, c.relkind::text AS b, a.attname::text AS c, "
        "format_type(a.atttypid, a.atttypmod) AS d, a.attnotnull::text AS e, "
        "pg_get_expr(ad.adbin, ad.adrelid) AS f "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum "
        "WHERE n.nspname = current_schema() "
        "UNION ALL "
        "SELECT 'k', t.relname, co.conname, co.contype::text, pg_get_constraintdef(co.oid), '', '' "
        "FROM pg_constraint co JOIN pg_class t ON t.oid = co.conrelid JOIN pg_namespace n ON n.oid = co.connamespace "
        "WHERE n.nspname = current_schema() "
        "UNION ALL "
        "SELECT 'i', t.relname, i.relname, '', pg_get_indexdef(x.indexrelid), '', '' "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = current_schema() "
        "ORDER BY 1, 2, 3, 4"
    )
    _CATALOG = re.compile(r"\b(pg_catalog|information_schema)\.|\bpg_(class|namespace|attribute|index|constraint|type|"
                          r"attrdef|description|inherits|depend|sequence|proc|collation|get_\w+|table_is_visible)\b", re.I)

    def schema_fingerprint(self, connection: Connection) -> str | None:
        schema = connection.execute(text("SELECT current_schema()")).scalar() or ""
        rows = connection.execute(self._FINGERPRINT).all()
        # Definitions qualified with the tenant's own schema would differ between tenants.
        for prefix in (f'"{schema}".', f"{schema}."):
            rows = [tuple(str(v).replace(prefix, "") if v is not None else None for v in row) for row in rows]
        return _digest(rows)

    def is_catalog_query(self, statement: str) -> bool:
        return statement.lstrip().upper().startswith(("SELECT", "WITH")) and bool(self._CATALOG.search(statement))

    def offline_preamble(self, target: Target) -> str:
        if target.schema is None:
            return ""
        # Online the connection's search_path is pinned to the tenant; offline the script says so.
        return f"SET search_path TO {_ansi_quote(target.schema)};\n\n"

    def use_schema(self, connection: Connection, target: Target, create: bool) -> None:
        schema = target.schema or ""
        exists = connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first()
        if not exists:
            if not create:
                raise TargetError(
                    f"{target.name}: schema {schema!r} does not exist in {target.display_url}",
                    hint="create it, or set `create: true` under the database's `tenants:`",
                )
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {self.quote(connection, schema)}"))
        # Only the tenant's schema: an unqualified name can never reach another tenant's table.
        connection.execute(text("SELECT set_config('search_path', quote_ident(:s), false)"), {"s": schema})

    @staticmethod
    def _key(target: Target) -> int:
        return int.from_bytes(hashlib.sha256(lock_name(target).encode()).digest()[:8], "big", signed=True)

    def migration_lock(self, connection: Connection | None, target: Target, wait: float) -> MigrationLock:
        assert connection is not None
        key = self._key(target)
        # Name this run in pg_stat_activity, so that a run kept waiting can say who holds the
        # lock (unless the URL chose an application_name of its own).
        connection.execute(
            text("SELECT set_config('application_name', :v, false) WHERE current_setting('application_name') = ''"),
            {"v": _lock_owner()},
        )
        started = time.monotonic()
        while True:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            connection.commit()  # a session lock outlives the transaction; don't sit idle in one
            if got:
                break
            if time.monotonic() - started >= wait:
                raise _busy(target, time.monotonic() - started, self._holder(connection, key))
            time.sleep(LOCK_POLL_SECONDS)

        def release() -> None:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            connection.commit()

        return MigrationLock(release)

    @staticmethod
    def _holder(connection: Connection, key: int) -> str | None:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        row = connection.execute(
            text(
                "SELECT a.pid, a.application_name, host(a.client_addr) AS addr, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.classid::bigint = :hi AND l.objid::bigint = :lo"
            ),
            {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
        ).mappings().first()
        connection.commit()
        if row is None:
            return None
        parts = [f"pid {row['pid']}"]
        if row["application_name"]:
            parts.append(repr(row["application_name"]))
        parts.append(f"from {row['addr'] or 'local socket'}")
        parts.append(f"connected since {row['backend_start']:%Y-%m-%d %H:%M:%S%z}")
        return " ".join(parts)

    def prepare(self, connection: Connection, target: Target) -> None:
        pid, version = connection.execute(
            text("SELECT pg_backend_pid(), current_setting('server_version_num')::int")
        ).one()
        connection.info[BACKEND_ID_KEY] = pid
        timeout_ms = max(1, int(target.database.lock_timeout * 1000))  # 0 would mean "wait forever"
        connection.execute(text("SELECT set_config('lock_timeout', :v, false)"), {"v": f"{timeout_ms}ms"})
        if target.database.statement_timeout:
            statement_ms = max(1, int(target.database.statement_timeout * 1000))
            connection.execute(text("SELECT set_config('statement_timeout', :v, false)"), {"v": f"{statement_ms}ms"})
        if version >= 140000:
            # A run killed in the middle of a long statement must not leave its backend
            # working (and holding locks) until the statement ends.
            connection.execute(
                text("SELECT set_config('client_connection_check_interval', :v, false)"), {"v": CLIENT_CHECK_INTERVAL}
            )

    def is_lock_timeout(self, exc: BaseException) -> bool:
        # 55P03 lock_not_available: lock_timeout ran out (or NOWAIT found the lock taken).
        return any(
            getattr(e, "sqlstate", None) == "55P03" or getattr(e, "pgcode", None) == "55P03" for e in _causes(exc)
        )

    def watch_blockers(self, watcher: Connection | None, connection: Connection, target: Target) -> BlockerWatch:
        pid = connection.info.get(BACKEND_ID_KEY)
        if pid is None:
            return BlockerWatch()
        return PollingWatch(
            target.name,
            _lender(watcher, target),
            lambda spare: postgresql_blockers(spare, pid),
            target.database.lock_timeout,
        )


class MySQL(Dialect):
    name = "mysql"
    engine_serves_many_databases = False

    _FINGERPRINT = text(
        "SELECT 'c', table_name, column_name, column_type, is_nullable, column_default, extra "
        "FROM information_schema.columns WHERE table_schema = DATABASE() "
        "UNION ALL SELECT 'i', table_name, index_name, column_name, CAST(seq_in_index AS CHAR), "
        "CAST(non_unique AS CHAR), '' FROM information_schema.statistics WHERE table_schema = DATABASE() "
        "UNION ALL SELECT 'k', table_name, constraint_name, constraint_type, '', '', '' "
        "FROM information_schema.table_constraints WHERE table_schema = DATABASE() "
        "ORDER BY 1, 2, 3, 4"
    )
    _CATALOG = re.compile(r"^\s*(SHOW\b|DESCRIBE\b|SELECT\b.*\binformation_schema\.)", re.I | re.S)

    def schema_fingerprint(self, connection: Connection) -> str | None:
        return _digest(connection.execute(self._FINGERPRINT).all())

    def is_catalog_query(self, statement: str) -> bool:
        return bool(self._CATALOG.match(statement))

    def ensure_database(self, target: Target) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        url = parse_url(target.url)
        engine = create_engine(url._replace(database=None), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                name = url.database or ""
                connection.execute(text(f"CREATE DATABASE IF NOT EXISTS {self.quote(connection, name)}"))
                connection.commit()
        finally:
            engine.dispose()

    def prepare(self, connection: Connection, target: Target) -> None:
        connection.info[BACKEND_ID_KEY] = connection.execute(text("SELECT CONNECTION_ID()")).scalar()
        seconds = max(1, round(target.database.lock_timeout))  # MySQL counts whole seconds, at least 1
        connection.execute(text("SET SESSION lock_wait_timeout = :v"), {"v": seconds})
        connection.execute(text("SET SESSION innodb_lock_wait_timeout = :v"), {"v": seconds})
        statement_timeout = target.database.statement_timeout
        if statement_timeout:
            if getattr(connection.dialect, "is_mariadb", False):
                connection.execute(text("SET SESSION max_statement_time = :v"), {"v": float(statement_timeout)})
            else:  # MySQL: milliseconds, and for SELECT statements only
                connection.execute(text("SET SESSION max_execution_time = :v"), {"v": max(1, int(statement_timeout * 1000))})

    def is_lock_timeout(self, exc: BaseException) -> bool:
        # 1205 ER_LOCK_WAIT_TIMEOUT: lock_wait_timeout (table metadata locks) or
        # innodb_lock_wait_timeout (row locks) ran out.
        for e in _causes(exc):
            args = getattr(e, "args", ())
            if args and isinstance(args[0], int) and args[0] == 1205:
                return True
        return False

    def watch_blockers(self, watcher: Connection | None, connection: Connection, target: Target) -> BlockerWatch:
        me = connection.info.get(BACKEND_ID_KEY)
        if me is None:
            return BlockerWatch()
        database = parse_url(target.url).database
        plugin: list[bool] = []

        def poll(spare: Connection) -> list[str]:
            if not plugin:
                plugin.append(mysql_has_metadata_lock_info(spare))
            return mysql_blockers(spare, int(me), database, plugin[0])

        return PollingWatch(target.name, _lender(watcher, target), poll, target.database.lock_timeout)

    lock_needs_connection = True

    def migration_lock(self, connection: Connection | None, target: Target, wait: float) -> MigrationLock:
        assert connection is not None
        name = lock_name(target)[:64]  # GET_LOCK names are server-wide and at most 64 characters
        started = time.monotonic()
        got = connection.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": max(0.0, float(wait))}).scalar()
        connection.commit()
        if got != 1:
            raise _busy(target, time.monotonic() - started, self._holder(connection, name))

        def release() -> None:
            connection.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
            connection.commit()

        return MigrationLock(release)

    @staticmethod
    def _holder(connection: Connection, name: str) -> str | None:
        row = connection.execute(
            text(
                "SELECT p.id, p.user, p.host, p.time, p.command FROM information_schema.processlist p "
                "WHERE p.id = IS_USED_LOCK(:n)"
            ),
            {"n": name},
        ).mappings().first()
        connection.commit()
        if row is None:
            return None
        return f"connection {row['id']} ({row['user']}@{row['host']}, {row['command']} for {row['time']}s)"

    def partial_failure_note(self) -> str:
        return (
            "MySQL/MariaDB commit DDL implicitly, so this revision may be partly applied; "
            "the version table still names the last revision that completed"
        )


class SQLite(Dialect):
    """pysqlite and aiosqlite, with the documented BEGIN recipe so DDL is transactional."""

    name = "sqlite"

    def before_connect(self, target: Target) -> None:
        database = parse_url(target.url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)

    def install(self, engine: Engine, target: Target) -> None:
        # The driver's own transaction handling issues no BEGIN before DDL, so a failed
        # revision would leave half its tables behind. Take over: no implicit
        # transactions from the driver, an explicit BEGIN from SQLAlchemy.
        @event.listens_for(engine, "connect")
        def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # A migration takes the write lock when it begins: a deferred BEGIN that has
            # read would get "database is locked" at its first write at once, without
            # waiting busy_timeout for the writer to finish.
            connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get(SQLITE_IMMEDIATE_KEY) else "BEGIN")

    def prepare(self, connection: Connection, target: Target) -> None:
        timeout_ms = int(target.database.lock_timeout * 1000)
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {timeout_ms:d}")  # an int, never user text

    def configure_options(self, target: Target) -> dict[str, Any]:
        return {"transactional_ddl": True}

    _CATALOG = re.compile(r"^\s*(PRAGMA\b|SELECT\b.*\bsqlite_(?:master|schema|temp_master|temp_schema)\b)", re.I | re.S)

    def schema_fingerprint(self, connection: Connection) -> str | None:
        rows = connection.exec_driver_sql(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).all()
        return _digest(rows)

    def is_catalog_query(self, statement: str) -> bool:
        return bool(self._CATALOG.match(statement))

    def read_version_tables(self, targets: list[Target], version_table: str) -> dict[str, list[str] | None] | None:
        """Read-only, straight through sqlite3: a missing file stays missing (None)."""
        import sqlite3

        found: dict[str, list[str] | None] = {}
        query = f"SELECT version_num FROM {_ansi_quote(version_table)}"  # a validated table name, quoted
        for target in targets:
            database = parse_url(target.url).database or ""
            if not database or database == ":memory:" or database.startswith("file:"):
                return None
            if not Path(database).exists():
                found[target.name] = None
                continue
            connection = sqlite3.connect(f"{Path(database).as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                found[target.name] = sorted(row[0] for row in connection.execute(query))
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                found[target.name] = []
            finally:
                connection.close()
        return found

    def file_missing(self, target: Target) -> bool:
        database = parse_url(target.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return False
        return not Path(database).exists()

    def is_lock_timeout(self, exc: BaseException) -> bool:
        for e in _causes(exc):
            if getattr(e, "sqlite_errorcode", None) in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
                return True
            if type(e).__name__ == "OperationalError" and "database is locked" in str(e):
                return True
        return False

    def watch_blockers(self, watcher: Connection | None, connection: Connection, target: Target) -> BlockerWatch:
        return _SQLiteWriteWatch(connection, parse_url(target.url).database)

    def migration_lock(self, connection: Connection | None, target: Target, wait: float) -> MigrationLock:
        """An OS lock (flock) on a file beside the database: the OS drops it if we die."""
        database = parse_url(target.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return MigrationLock()  # nothing another process could share
        path = Path(database + ".orchestrate-lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - started >= wait:
                        holder = path.read_text(encoding="utf-8", errors="replace").strip() or None
                        raise _busy(target, time.monotonic() - started, holder) from None
                    time.sleep(LOCK_POLL_SECONDS)
            # Say who holds it, for the next run that has to wait.
            since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S%z")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise

        def release() -> None:
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

        return MigrationLock(release)


class _SQLiteWriteWatch(BlockerWatch):
    """While a SQLite migration runs: its transactions begin IMMEDIATE (so busy_timeout
    bounds the wait for the write lock); afterwards, who held that lock."""

    def __init__(self, connection: Connection, database: str | None) -> None:
        self._connection = connection
        self._database = database

    def __enter__(self) -> _SQLiteWriteWatch:
        self._connection.info[SQLITE_IMMEDIATE_KEY] = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection.info.pop(SQLITE_IMMEDIATE_KEY, None)

    def describe(self) -> str | None:
        database = self._database
        if not database or database == ":memory:" or database.startswith("file:"):
            return "another connection holds a write lock on the database"
        holders = sqlite_write_lock_holders(database)
        return f"another connection holds a write lock on {database}" + (
            f" ({'; '.join(holders)})" if holders else ""
        )


def _lender(watcher: Connection | None, target: Target) -> Any:
    """How a blocker watch gets its connection: the migration lock's spare connection when
    there is one (lent, not closed), else a short-lived sync one of its own (async drivers)."""

    def lend() -> tuple[Connection, Any]:
        if watcher is not None:
            return watcher, lambda: None
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        url = parse_url(target.url)
        sync = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}
        engine = create_engine(url.set(drivername=sync.get(url.get_backend_name(), url.drivername)), poolclass=NullPool)
        try:
            connection = engine.connect()
        except BaseException:
            engine.dispose()
            raise

        def give_back() -> None:
            try:
                connection.close()
            finally:
                engine.dispose()

        return connection, give_back

    return lend


def _digest(rows: Any) -> str:
    return hashlib.sha256(repr([tuple(row) for row in rows]).encode()).hexdigest()


def _ansi_quote(identifier: str) -> str:
    """A "quoted" identifier, for SQL written without a connection (PostgreSQL and SQLite rules)."""
    return '"' + identifier.replace('"', '""') + '"'


_DIALECTS: dict[str, type[Dialect]] = {
    "postgresql": PostgreSQL,
    "mysql": MySQL,
    "mariadb": MySQL,
    "sqlite": SQLite,
}


_INSTANCES: dict[type[Dialect], Dialect] = {}


def dialect_for(target: Target) -> Dialect:
    """The :class:`Dialect` for a target's URL (a generic one for servers we know nothing of).

    Dialects keep no state, so each class has one instance.
    """
    cls = _DIALECTS.get(target.dialect, Dialect)
    instance = _INSTANCES.get(cls)
    if instance is None:
        instance = _INSTANCES[cls] = cls()
    return instance


def is_async_url(url: URL) -> bool:
    """Does this URL name an asyncio driver (psycopg_async, asyncpg, aiosqlite, aiomysql...)?"""
    try:
        return bool(url.get_dialect().is_async)
    except Exception:  # an unknown driver: create_engine will say so clearly
        return False


__all__ = ["Dialect", "dialect_for", "is_async_url"]
