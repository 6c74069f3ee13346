"""The interface every server dialect implements, and the helpers the dialects share.

The engine never asks which database it talks to; it asks the target's :class:`Dialect`
to install engine hooks, prepare a fresh connection (timeouts, schema), take the
migration lock, read version tables in bulk, validate tenant names, and add the options
Alembic needs for that server. One subclass per server lives beside this module.
"""
from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import bindparam, text
from sqlalchemy.engine import URL, Connection, Engine

from orchestrator.errors import TargetError
from orchestrator.urls import parse_url

if TYPE_CHECKING:
    from orchestrator.targets import Target

#: How often a waiting run asks again for a migration lock that another run holds.
LOCK_POLL_SECONDS = 0.2
#: Where ``prepare`` leaves the server's id of a connection (PostgreSQL pid, MySQL thread id).
BACKEND_ID_KEY = "orchestrate.backend_id"
#: How a database's URL names a tenant's own database (mode: database).
TENANT_PLACEHOLDER = "{tenant}"
#: Version tables read per UNION ALL statement by the bulk reader.
BULK_CHUNK = 500
#: Schema or database names no tenant may take, whatever its pattern says.
RESERVED_NAMES = frozenset({"public", "pg_catalog", "pg_toast", "information_schema", "mysql", "sys",
                            "performance_schema", "template0", "template1", "postgres"})


def causes(exc: BaseException) -> list[BaseException]:
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


def lock_owner() -> str:
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


def busy(target: Target, waited: float, holder: str | None) -> TargetError:
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

    #: Longest identifier the server accepts, in bytes (UTF-8); None: no limit known.
    identifier_limit: ClassVar[int | None] = None
    #: The port a URL may leave out (host/db and host:PORT/db are the same place).
    default_port: ClassVar[int | None] = None
    #: Is a database a file on this machine (relative paths, in-memory URLs, file checks)?
    file_based: ClassVar[bool] = False
    #: Can tenants live in schemas of one URL (``tenants: {mode: schema}``)?
    schema_tenants: ClassVar[bool] = False
    #: How a whole-tenant replay batch reaches the server (:mod:`orchestrator.replay`):
    #: "script", a revision's transaction as one multi-statement execution; "each", one
    #: driver call per statement (in-process servers: no round trips to save); None: no
    #: batches (DDL is not transactional, so a revision is not one transaction).
    batch: ClassVar[str | None] = None

    def schema_tenant(self, url: URL, tenant: str) -> tuple[URL, str | None]:
        """The URL and schema of a tenant in schema mode: here, a database per tenant
        (MySQL's schemas are databases); PostgreSQL keeps the URL and sets the schema."""
        return url.set(database=tenant), None

    # -- where things live (same tuple = the same place) --------------------------------

    def server_key(self, url: URL) -> tuple[Any, ...]:
        """Which server a URL reaches (mariadb:// and mysql:// are one server family)."""
        family = self.name if self.name != "default" else url.get_backend_name()
        return (family, (url.host or "localhost").lower(), url.port or self.default_port)

    def version_table_place(self, url: URL, schema: str | None, table: str) -> tuple[Any, ...] | None:
        """Where a version table lives; None where nothing else could share it (in memory)."""
        return (*self.server_key(url), url.database, schema, table)

    def tenant_place(self, url: URL, mode: str, table: str) -> Callable[[str], tuple[Any, ...]] | None:
        """tenant name -> :meth:`version_table_place` of its target, derived from the
        database's URL without building each Target (fleets of 100,000 tenants)."""
        server = self.server_key(url)
        template = url.database or ""
        if mode == "database":
            return lambda name: (*server, template.replace(TENANT_PLACEHOLDER, name), None, table)
        return lambda name: (*server, name, None, table)  # a database per tenant (MySQL)

    def own_name(self, target: Target) -> str | None:
        """The tenant's own name on the server (its schema or database), which a recorded
        statement must not contain to be replayed on another tenant; None if it has none."""
        return target.schema

    def engine_url(self, target: Target) -> URL:
        return parse_url(target.url)

    def connect_args(self, target: Target) -> dict[str, Any]:
        """Driver arguments that bound a connection's life: ``connect_timeout`` for the
        connection itself, keepalives so a vanished peer is noticed."""
        return {}

    def connected(self, raw: Any) -> None:
        """A session's driver connection has just connected: lift what :meth:`connect_args`
        bounded for the handshake only (a silent server is then the Watchdog's to bound)."""

    #: Can a watchdog probe this server on connections of its own (a network server)?
    probes_server: ClassVar[bool] = False

    def sync_url(self, target: Target) -> URL:
        """The target's URL with a sync driver (probes and blocker watches use one)."""
        url = self.engine_url(target)
        sync = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}
        backend = url.get_backend_name()
        return url.set(drivername=sync[backend]) if url.get_dialect().is_async and backend in sync else url

    def probe_connect(self, target: Target, timeout: float) -> Any:
        """A raw driver connection of the watchdog's own, bounded by ``timeout``."""
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        args = {**self.connect_args(target), "connect_timeout": max(1, int(timeout))}
        engine = create_engine(self.sync_url(target), poolclass=NullPool)
        try:
            # The driver's connect alone: not the pool's, whose first connection runs
            # SQLAlchemy's set-up queries, unbounded on a silent server.
            cargs, cparams = engine.dialect.create_connect_args(engine.url)
            return engine.dialect.connect(*cargs, **{**cparams, **args})
        finally:
            engine.dispose()

    def probe_query(self, raw: Any) -> None:
        cursor = raw.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        finally:
            cursor.close()

    def socket_of(self, raw: Any) -> socket.socket | None:
        """The driver connection's socket (a duplicate the caller closes), or None."""
        return None

    def cut(self, raw: Any) -> None:
        """Shut a driver connection's socket down from another thread: a driver call
        blocked on it fails at once; the server ends the session when it notices."""
        sock = self.socket_of(raw)
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()

    def tenant_name_problem(self, name: str) -> str | None:
        """Why ``name`` cannot name a tenant on this server, or None. Checked whatever the
        tenant pattern says: reserved names, the server's identifier limit, control characters."""
        if not name:
            return "a tenant name cannot be empty"
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            return "a tenant name cannot hold control characters (newline, NUL, ...)"
        if name.lower() in RESERVED_NAMES or name.lower().startswith("pg_"):
            return f"tenant name {name!r} is reserved by the database server"
        limit = self.identifier_limit
        if limit is not None and len(name.encode("utf-8")) > limit:
            return f"tenant name {name!r} is longer than the server's identifier limit ({limit} bytes)"
        return None

    def bulk_versions(
        self, connection: Connection, version_table: str, targets: list[Target], *, sound_only: bool = False
    ) -> dict[str, list[str]]:
        """tenant -> revisions, for schema-per-tenant targets on one server, read in a few
        queries; a tenant whose schema (MySQL: database) is missing is left out, one with
        no version table maps to []. information_schema serves PostgreSQL and MySQL alike.
        ``sound_only``: also leave out a tenant whose version table is not Alembic's shape
        (a view, other columns, a version_num that is not text): its own read says why."""
        containers = {self.own_name(t) or "": t.tenant or "" for t in targets}  # its schema or database
        names: Any = bindparam("names", expanding=True)
        existing = set(connection.execute(
            text("SELECT schema_name FROM information_schema.schemata WHERE schema_name IN :names").bindparams(names),
            {"names": list(containers)},
        ).scalars())
        versioned = set(connection.execute(
            text("SELECT table_schema FROM information_schema.tables "
                 "WHERE table_name = :table AND table_schema IN :names").bindparams(names),
            {"table": version_table, "names": sorted(existing)},
        ).scalars()) if existing else set()
        if sound_only and versioned:
            unsound = self.odd_version_tables(connection, version_table, sorted(versioned))
            existing -= unsound
            versioned -= unsound
        found: dict[str, list[str]] = {containers[c]: [] for c in existing}
        quote = connection.dialect.identifier_preparer.quote_identifier
        chunk = sorted(versioned)
        for start in range(0, len(chunk), BULK_CHUNK):
            part = chunk[start:start + BULK_CHUNK]
            # Identifiers quoted by the dialect (and validated before); which tenant each row
            # belongs to travels as a bound parameter.
            union = " UNION ALL ".join(
                f"SELECT :c{i} AS container, version_num FROM {quote(name)}.{quote(version_table)}"
                for i, name in enumerate(part)
            )
            for container, version in connection.execute(text(union), {f"c{i}": n for i, n in enumerate(part)}):
                found[containers[container]].append(version)
        connection.rollback()
        return {tenant: sorted(revs, key=str) for tenant, revs in found.items()}  # a NULL row is checked later

    def has_table(self, connection: Connection, name: str) -> bool:
        """Does the connection's own schema (the tenant's) hold a table or view ``name``?"""
        from sqlalchemy import inspect

        return bool(inspect(connection).has_table(name))

    def odd_version_tables(self, connection: Connection, version_table: str, containers: list[str]) -> set[str]:
        """Of ``containers`` (schemas / databases) holding ``version_table``, those where it is
        not Alembic's shape (:func:`sound_version_table`)."""
        columns: dict[str, tuple[bool, list[tuple[str, str]]]] = {}
        for container, is_table, column, data_type in self.version_table_columns(connection, version_table, containers):
            columns.setdefault(container, (bool(is_table), []))[1].append((str(column), str(data_type)))
        return {container for container, (is_table, cols) in columns.items() if not sound_version_table(is_table, cols)}

    def version_table_columns(self, connection: Connection, version_table: str,
                              containers: list[str]) -> list[tuple[Any, ...]]:
        """(container, is a base table, column, type) for ``version_table`` in each of ``containers``."""
        names: Any = bindparam("names", expanding=True)
        return [tuple(row) for row in connection.execute(
            text("SELECT t.table_schema, t.table_type = 'BASE TABLE', c.column_name, c.data_type "
                 "FROM information_schema.tables t LEFT JOIN information_schema.columns c "
                 "ON c.table_schema = t.table_schema AND c.table_name = t.table_name "
                 "WHERE t.table_name = :table AND t.table_schema IN :names").bindparams(names),
            {"table": version_table, "names": containers},
        )]

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

    def empty_twin(self) -> str | None:
        """The URL of an empty, throwaway database of this kind (to compare models with a
        database that does not exist yet); None where there is none to make."""
        return None

    def file_missing(self, target: Target) -> bool:
        """Is the target a database file that does not exist yet? (Reading it must not create it.)"""
        return False

    def offline_preamble(self, target: Target) -> str:
        """What an offline (--sql) script must run first for this target (e.g. pick its schema)."""
        return ""

    def read_version_tables(self, targets: list[Target], version_table: str, *,
                            sound_only: bool = False) -> dict[str, list[str] | None] | None:
        """Target name -> revisions, read in bulk without the ceremony of a migration
        connection; None where this server has no such fast path (``sound_only``: see
        :meth:`bulk_versions`)."""
        return None

    def schema_fingerprint(self, connection: Connection) -> str | None:
        """A digest of the connection's current schema (tables, columns, indexes,
        constraints), without its own name; None where replay is not supported."""
        return None

    #: Can a session be reset to a fresh one's state (:meth:`reset_session`), so that it may
    #: move from one schema tenant to the next instead of a new connection per tenant?
    resets_sessions: ClassVar[bool] = False

    def reset_session(self, raw: Any) -> bool:
        """Reset the driver connection ``raw`` (outside any transaction) to what a new
        session would be; False where that is not possible."""
        return False

    @contextmanager
    def own_transactions(self, raw: Any) -> Iterator[None]:
        """While it lasts, the driver connection ``raw`` begins no transaction of its own:
        the BEGIN and COMMIT sent on it are the transactions (sqlite3 is set up so already)."""
        yield

    def inline(self, raw: Any, statement: str, parameters: Any, many: bool) -> str | None:
        """``statement`` with ``parameters`` rendered as literals by the driver ``raw`` (one
        statement per parameter set when ``many``); None where the driver cannot."""
        return None

    def is_catalog_query(self, statement: str) -> bool:
        """Does ``statement`` only read the catalog (reflection)?"""
        return False

    def partial_failure_note(self) -> str | None:
        """What a person must know when a revision fails halfway on this server."""
        return None

    def watch_blockers(self, connection: Connection, target: Target) -> BlockerWatch:
        """A :class:`BlockerWatch` for the migrating ``connection`` (it opens its own, if any)."""
        return BlockerWatch()

    def is_lock_timeout(self, exc: BaseException) -> bool:
        """Did ``exc`` come from waiting longer than ``lock_timeout`` for a lock?"""
        return False

    def migration_lock(self, connection: Connection | None, target: Target, wait: float) -> MigrationLock:
        """Take the target's migration lock, waiting at most ``wait`` seconds.

        Raises TargetError("another run is migrating ...") naming the holder if it can.
        """
        return MigrationLock()


def sound_version_table(is_table: bool, columns: list[tuple[str, str]]) -> bool:
    """Is this Alembic's version table: a table whose one column, version_num, is text?
    (``columns``: (name, type) pairs; the rule every bulk read applies.)"""
    return is_table and len(columns) == 1 and columns[0][0] == "version_num" and any(
        word in columns[0][1].lower() for word in ("char", "text", "clob"))


def lender(target: Target) -> Any:
    """How a blocker watch gets its connection: a short-lived sync one of its own (the
    migrating connection is busy), bounded like every connection; opened only when the
    watch first looks, so quick revisions open none."""

    def lend() -> tuple[Connection, Any]:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        from orchestrator.dialects import dialect_for

        dialect = dialect_for(target)
        engine = create_engine(dialect.sync_url(target), poolclass=NullPool, connect_args=dialect.connect_args(target))
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


def digest(rows: Any) -> str:
    return hashlib.sha256(repr([tuple(row) for row in rows]).encode()).hexdigest()


def ansi_quote(identifier: str) -> str:
    """A "quoted" identifier, for SQL written without a connection (PostgreSQL and SQLite rules)."""
    return '"' + identifier.replace('"', '""') + '"'
