"""Every difference between database servers, behind one interface: one class per dialect.

The runner never asks which database it talks to; it asks the target's :class:`Dialect`
to install engine hooks, prepare a fresh connection (timeouts, schema), and add the
options Alembic needs for that server.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine

from orchestrator.targets import Target
from orchestrator.urls import parse_url


class Dialect:
    """Behaviour shared by every server; subclasses override what differs."""

    name: ClassVar[str] = "default"
    #: Does DDL take part in transactions here (so a failed revision rolls back whole)?
    transactional_ddl: ClassVar[bool] = True

    def engine_url(self, target: Target) -> URL:
        return parse_url(target.url)

    def install(self, engine: Engine, target: Target) -> None:
        """Hook into a new (sync) engine before its first connection."""

    def prepare(self, connection: Connection, target: Target) -> None:
        """Set up a fresh connection: timeouts, schema. The caller commits afterwards."""

    def configure_options(self, target: Target) -> dict[str, Any]:
        """Extra options for Alembic's ``context.configure`` on this server."""
        return {}

    def partial_failure_note(self) -> str | None:
        """What a person must know when a revision fails halfway on this server."""
        return None


class PostgreSQL(Dialect):
    name = "postgresql"

    def prepare(self, connection: Connection, target: Target) -> None:
        timeout_ms = int(target.database.lock_timeout * 1000)
        connection.execute(text("SELECT set_config('lock_timeout', :v, false)"), {"v": f"{timeout_ms}ms"})


class MySQL(Dialect):
    name = "mysql"
    transactional_ddl = False

    def prepare(self, connection: Connection, target: Target) -> None:
        seconds = max(1, round(target.database.lock_timeout))  # MySQL counts whole seconds, at least 1
        connection.execute(text("SET SESSION lock_wait_timeout = :v"), {"v": seconds})
        connection.execute(text("SET SESSION innodb_lock_wait_timeout = :v"), {"v": seconds})

    def partial_failure_note(self) -> str:
        return (
            "MySQL/MariaDB commit DDL implicitly, so this revision may be partly applied; "
            "the version table still names the last revision that completed"
        )


class SQLite(Dialect):
    """pysqlite and aiosqlite, with the documented BEGIN recipe so DDL is transactional."""

    name = "sqlite"

    def install(self, engine: Engine, target: Target) -> None:
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)

        # The driver's own transaction handling issues no BEGIN before DDL, so a failed
        # revision would leave half its tables behind. Take over: no implicit
        # transactions from the driver, an explicit BEGIN from SQLAlchemy.
        @event.listens_for(engine, "connect")
        def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

    def prepare(self, connection: Connection, target: Target) -> None:
        timeout_ms = int(target.database.lock_timeout * 1000)
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {timeout_ms:d}")  # an int, never user text

    def configure_options(self, target: Target) -> dict[str, Any]:
        return {"transactional_ddl": True}


_DIALECTS: dict[str, type[Dialect]] = {
    "postgresql": PostgreSQL,
    "mysql": MySQL,
    "mariadb": MySQL,
    "sqlite": SQLite,
}


def dialect_for(target: Target) -> Dialect:
    """The :class:`Dialect` for a target's URL (a generic one for servers we know nothing of)."""
    return _DIALECTS.get(target.dialect, Dialect)()


def is_async_url(url: URL) -> bool:
    """Does this URL name an asyncio driver (psycopg_async, asyncpg, aiosqlite, aiomysql...)?"""
    try:
        return bool(url.get_dialect().is_async)
    except Exception:  # an unknown driver: create_engine will say so clearly
        return False


__all__ = ["Dialect", "dialect_for", "is_async_url"]
