"""SQLite (pysqlite, aiosqlite): the BEGIN recipe for transactional DDL, flock migration locks."""
from __future__ import annotations

import fcntl
import functools
import os
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext

from orchestrator.dialects.base import (
    LOCK_POLL_SECONDS,
    TENANT_PLACEHOLDER,
    BlockerWatch,
    Dialect,
    MigrationLock,
    ansi_quote,
    busy,
    causes,
    digest,
    sound_version_table,
)
from orchestrator.dialects.blockers import sqlite_readers, sqlite_write_lock_holders
from orchestrator.urls import parse_url

if TYPE_CHECKING:
    from orchestrator.targets import Target

#: Set on a SQLite connection while it migrates: its transactions take the write lock up
#: front (BEGIN IMMEDIATE), so a busy database is waited for, up to busy_timeout.
SQLITE_IMMEDIATE_KEY = "orchestrate.sqlite_begin_immediate"


class SQLite(Dialect):
    """pysqlite and aiosqlite, with the documented BEGIN recipe so DDL is transactional."""

    name = "sqlite"
    file_based = True
    batch = "each"

    def server_key(self, url: URL) -> tuple[Any, ...]:
        return ("sqlite",)  # files on this machine

    def version_table_place(self, url: URL, schema: str | None, table: str) -> tuple[Any, ...] | None:
        if not url.database or url.database == ":memory:":
            return None
        return ("sqlite", os.path.realpath(url.database), schema, table)

    def tenant_place(self, url: URL, mode: str, table: str) -> Callable[[str], tuple[Any, ...]] | None:
        template = url.database or ""
        at = template.find(TENANT_PLACEHOLDER)
        if mode != "database" or at < 0:
            return None
        cut = template.rfind("/", 0, at) + 1
        folder, rest = os.path.realpath(template[:cut] or "."), template[cut:]
        return lambda name: ("sqlite", os.path.normpath(f"{folder}/{rest.replace(TENANT_PLACEHOLDER, name)}"), None, table)

    def tenant_name_problem(self, name: str) -> str | None:
        # A tenant is a file in the folder of the URL's template: one plain file name.
        if name in (".", "..") or any(ch in name for ch in "/\\\0") or name.startswith("-"):
            return f"tenant name {name!r} is not a safe file name (no '/', '\\', '..', or leading '-')"
        if len(name.encode("utf-8")) > 200:
            return f"tenant name {name!r} is too long for a file name (at most 200 bytes)"
        return super().tenant_name_problem(name)

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

        @event.listens_for(engine, "handle_error")
        def _end_a_failed_commit(context: ExceptionContext) -> None:
            # A COMMIT that fails (SQLITE_BUSY: a reader keeps it from taking the EXCLUSIVE
            # lock; SQLITE_FULL) leaves SQLite's transaction open, while SQLAlchemy holds
            # it ended: the next BEGIN would fail with "cannot start a transaction within a
            # transaction" and blame the wrong revision. End it where it failed.
            if context.statement is None and context.connection is not None and not context.is_disconnect:
                rollback_open_transaction(context.connection)

    def prepare(self, connection: Connection, target: Target) -> None:
        timeout_ms = int(target.database.lock_timeout * 1000)
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {timeout_ms:d}")  # an int, never user text

    def configure_options(self, target: Target) -> dict[str, Any]:
        return {"transactional_ddl": True}

    _CATALOG = re.compile(r"^\s*(PRAGMA\b|SELECT\b.*\bsqlite_(?:master|schema|temp_master|temp_schema)\b)", re.I | re.S)

    # What SQLite itself knows of each table (the pragma functions), whatever order or spelling
    # the CREATE TABLE text has: batch mode (which recreates a table) writes constraints in
    # the order it reflected them, and quotes and spaces as SQLAlchemy does.
    _TABLES = (  # the tables of the schema: not SQLite's own (sqlite_sequence, sqlite_stat1)
        "FROM sqlite_master s {} WHERE s.type = 'table' AND s.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "AND s.sql NOT LIKE 'CREATE VIRTUAL%'"
    )
    _COLUMNS = "SELECT s.name, c.name, c.type, c.\"notnull\", c.dflt_value, c.pk, c.hidden " + _TABLES.format(
        "JOIN pragma_table_xinfo(s.name) c")
    _INDEXES = (  # key columns only; an index made by CREATE INDEX is also compared by its text
        "SELECT s.name, l.name, l.\"unique\", l.origin, l.partial, x.seqno, x.name, x.\"desc\", x.coll "
        + _TABLES.format("JOIN pragma_index_list(s.name) l JOIN pragma_index_xinfo(l.name) x") + " AND x.key"
    )
    _FOREIGN_KEYS = (
        "SELECT s.name, f.id, f.seq, f.\"table\", f.\"from\", f.\"to\", f.on_update, f.on_delete, f.\"match\" "
        + _TABLES.format("JOIN pragma_foreign_key_list(s.name) f")
    )
    _OBJECTS = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"

    def schema_fingerprint(self, connection: Connection) -> str | None:
        # The driver's cursor: four reads, no statement events (nor a recorder's attention).
        cursor = connection.connection.cursor()
        try:
            def rows(sql: str) -> list[tuple[Any, ...]]:
                cursor.execute(sql)
                return [tuple(row) for row in cursor.fetchall()]

            objects = sorted(rows(self._OBJECTS), key=repr)
            # sqlite_master's text is the whole schema (SQLite rebuilds it from that text): a
            # text seen before has the canonical digest computed then. A fleet migrated by one
            # process writes the same text, so the four catalog reads are paid once per shape.
            raw = digest(objects)
            known = _CANONICAL.get(raw)
            if known is not None:
                return known
            columns, indexes, keys = rows(self._COLUMNS), rows(self._INDEXES), rows(self._FOREIGN_KEYS)
        finally:
            cursor.close()
        canonical = digest(canonical_schema(objects, columns, indexes, keys))
        if len(_CANONICAL) >= 4096:
            _CANONICAL.clear()
        _CANONICAL[raw] = canonical
        return canonical

    def is_catalog_query(self, statement: str) -> bool:
        return bool(self._CATALOG.match(statement))

    def read_version_tables(self, targets: list[Target], version_table: str, *,
                            sound_only: bool = False) -> dict[str, list[str] | None] | None:
        """Read-only, straight through sqlite3: a missing file stays missing (None); with
        ``sound_only`` a version table that is not Alembic's shape is left out."""
        import sqlite3

        found: dict[str, list[str] | None] = {}
        query = f"SELECT version_num FROM {ansi_quote(version_table)}"  # a validated table name, quoted
        for target in targets:
            database = parse_url(target.url).database or ""
            if not database or database == ":memory:" or database.startswith("file:"):
                return None
            if not Path(database).exists():
                found[target.name] = None
                continue
            connection = sqlite3.connect(f"{Path(database).as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                if sound_only and not _sound_version_table(connection, version_table):
                    continue
                found[target.name] = sorted((row[0] for row in connection.execute(query)), key=str)
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                found[target.name] = []
            finally:
                connection.close()
        return found

    def empty_twin(self) -> str | None:
        return "sqlite://"  # in memory: gone with its connection

    def file_missing(self, target: Target) -> bool:
        database = parse_url(target.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return False
        return not Path(database).exists()

    def is_lock_timeout(self, exc: BaseException) -> bool:
        for e in causes(exc):
            if getattr(e, "sqlite_errorcode", None) in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
                return True
            if type(e).__name__ == "OperationalError" and "database is locked" in str(e):
                return True
        return False

    def watch_blockers(self, connection: Connection, target: Target) -> BlockerWatch:
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
                        raise busy(target, time.monotonic() - started, holder) from None
                    time.sleep(LOCK_POLL_SECONDS)
            # Say who holds it, for the next run that has to wait.
            since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S%z")
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


#: sqlite_master digest -> canonical schema digest (see SQLite.schema_fingerprint).
_CANONICAL: dict[str, str] = {}


def _sound_version_table(connection: Any, table: str) -> bool:
    """Is ``table`` absent, or a table whose only column is a text version_num? (sqlite3)"""
    kind = connection.execute("SELECT type FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    if kind is None:
        return True
    columns = connection.execute("SELECT name, type FROM pragma_table_info(?)", (table,)).fetchall()
    return sound_version_table(kind[0] == "table", [(str(name), str(type_)) for name, type_ in columns])


def rollback_open_transaction(connection: Connection) -> None:
    """Roll back, at the driver, a transaction SQLite still holds open (pysqlite and the
    aiosqlite adapter only send ROLLBACK when one is open); errors are left to the caller's."""
    try:
        raw = connection.connection.dbapi_connection
        if raw is not None:
            raw.rollback()
    except Exception:  # noqa: BLE001 - the first error is the one to report
        pass


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
        if holders:
            return f"another connection holds a write lock on {database} ({'; '.join(holders)})"
        readers = sqlite_readers(database)
        if readers:
            # A read transaction left open keeps a COMMIT from taking the EXCLUSIVE lock.
            return f"a read transaction is open on {database} ({'; '.join(readers)})"
        return f"another connection holds a lock on {database}"


# -- a canonical SQLite schema ----------------------------------------------------------

_TOKEN = re.compile(r"""--[^\n]*|/\*.*?(?:\*/|\Z)|'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|[\w$]+|\S""", re.S)
_BARE = re.compile(r"[A-Za-z_][\w$]*\Z")


def sql_tokens(sql: str | None) -> list[str]:
    """The tokens of ``sql``, spelled one way: no comments or spaces, identifiers unquoted
    where they can be, words in upper case (SQLite's identifiers and keywords ignore case);
    string literals kept exactly."""
    tokens: list[str] = []
    for token in _TOKEN.findall(sql or ""):
        first = token[0]
        if token.startswith(("--", "/*")):
            continue
        if first in "\"`[":
            inner = token[1:-1].replace(first * 2, first) if first != "[" else token[1:-1]
            token = inner.upper() if _BARE.match(inner) else '"' + inner.replace('"', '""') + '"'
        elif first != "'":
            token = token.upper()
        tokens.append(token)
    return tokens


def _group(tokens: list[str], start: int) -> tuple[str, int]:
    """The parenthesised group opening at ``tokens[start]``, normalized; and the index after it."""
    depth, at = 0, start
    while at < len(tokens):
        depth += {"(": 1, ")": -1}.get(tokens[at], 0)
        at += 1
        if depth == 0:
            break
    return " ".join(tokens[start:at]), at


@functools.lru_cache(maxsize=4096)  # a fleet's tenants share their texts: parsed once
def _table_text_facts(sql: str | None) -> tuple[tuple[str, ...], ...]:
    """What only the CREATE TABLE text says (the pragmas cover columns, keys, indexes):
    CHECK constraints, constraint names, column collations, generated-column expressions,
    AUTOINCREMENT, DEFERRABLE clauses and table options; sorted, so neither the order of
    the items nor whether a CHECK was written on its column or at the end matters."""
    tokens = sql_tokens(sql)
    if "(" not in tokens:
        return (("text", " ".join(tokens)),)  # CREATE TABLE ... AS SELECT
    open_at = tokens.index("(")
    body, end = _group(tokens, open_at)
    facts: list[tuple[str, ...]] = [("options", " ".join(tokens[end:]))]  # WITHOUT ROWID, STRICT
    items: list[list[str]] = [[]]
    depth = 0
    for token in tokens[open_at + 1:end - 1]:
        depth += {"(": 1, ")": -1}.get(token, 0)
        if token == "," and depth == 0:
            items.append([])
        else:
            items[-1].append(token)
    for item in items:
        if not item:
            continue
        column = "" if item[0] in ("CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN") else item[0]
        at, name = 0, ""
        while at < len(item):
            token = item[at]
            following = item[at + 1] if at + 1 < len(item) else ""
            if token == "CONSTRAINT" and following:
                name = following
                facts.append(("named", following, item[at + 2] if at + 2 < len(item) else ""))
                at += 2
                continue
            if token == "CHECK" and following == "(":
                expression, at = _group(item, at + 1)
                facts.append(("check", name, expression))
                name = ""
                continue
            if token == "AS" and following == "(" and column:  # a generated column
                expression, at = _group(item, at + 1)
                facts.append(("generated", column, expression))
                continue
            if token == "COLLATE" and following and column:
                facts.append(("collate", column, following))
            elif token in ("AUTOINCREMENT", "DEFERRABLE"):
                facts.append((token.lower(), column, " ".join(item[at:at + 4])))
            elif token in ("PRIMARY", "UNIQUE", "NOT", "DEFAULT", "REFERENCES", "FOREIGN"):
                name = ""  # a CONSTRAINT name belongs to the constraint right after it
            at += 1
    return tuple(sorted(facts))


@functools.lru_cache(maxsize=4096)
def _normalized(sql: str | None) -> str:
    return " ".join(sql_tokens(sql)) if sql is not None else ""


def canonical_schema(
    objects: list[tuple[Any, ...]],
    columns: list[tuple[Any, ...]],
    indexes: list[tuple[Any, ...]],
    keys: list[tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    """A SQLite schema as sorted facts, from ``sqlite_master`` rows (type, name, tbl_name,
    sql) and the pragma rows of :class:`SQLite`'s fingerprint queries."""
    text = _normalized
    facts: list[tuple[Any, ...]] = []
    for kind, name, table, sql in objects:
        if kind == "table" and not str(sql or "").upper().lstrip().startswith("CREATE VIRTUAL"):
            facts.append(("table", name, _table_text_facts(sql)))
        elif kind == "index" and sql is None:
            continue  # a UNIQUE / PRIMARY KEY constraint's index: named by its place in the text
        else:  # indexes made by CREATE INDEX, views, triggers, virtual tables
            facts.append((kind, name, table, text(sql)))
    for table, name, type_, notnull, default, pk, hidden in columns:
        facts.append(("column", table, name, text(type_), notnull, text(default), pk, hidden))
    by_index: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for table, name, unique, origin, partial, seqno, column, desc, coll in indexes:
        by_index.setdefault((table, name, unique, origin, partial), []).append((seqno, column, desc, coll))
    for (table, name, unique, origin, partial), parts in by_index.items():
        # sqlite_autoindex_<table>_<n> is numbered by the constraint's place in the text
        facts.append(("index", table, name if origin == "c" else "", unique, origin, partial, tuple(sorted(parts))))
    foreign: dict[tuple[Any, Any], list[tuple[Any, ...]]] = {}
    for table, id_, seq, target, source, dest, on_update, on_delete, match in keys:
        foreign.setdefault((table, id_), []).append((seq, target, source, dest, on_update, on_delete, match))
    for (table, _id), parts in foreign.items():
        parts.sort()
        facts.append(("foreign key", table, parts[0][1], tuple(p[2] for p in parts), tuple(str(p[3]) for p in parts),
                      *parts[0][4:]))
    return sorted(facts, key=repr)
