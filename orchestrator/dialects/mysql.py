"""MySQL and MariaDB: GET_LOCK, lock_wait_timeout, a database per tenant; DDL is never transactional."""
from __future__ import annotations

import os
import re
import socket
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from orchestrator.dialects.base import (
    BACKEND_ID_KEY,
    BlockerWatch,
    Dialect,
    MigrationLock,
    busy,
    causes,
    digest,
    lender,
    lock_name,
)
from orchestrator.dialects.blockers import PollingWatch, mysql_blockers, mysql_has_metadata_lock_info
from orchestrator.urls import parse_url

if TYPE_CHECKING:
    from orchestrator.targets import Target


class MySQL(Dialect):
    name = "mysql"
    engine_serves_many_databases = False
    identifier_limit = 64
    default_port = 3306
    schema_tenants = True  # a database per tenant on one server

    def own_name(self, target: Target) -> str | None:
        return parse_url(target.url).database if target.tenant is not None else None
    probes_server = True

    def socket_of(self, raw: Any) -> socket.socket | None:
        sock = getattr(raw, "_sock", None)  # PyMySQL keeps its socket there
        try:
            return socket.socket(fileno=os.dup(sock.fileno())) if sock is not None else None
        except Exception:  # noqa: BLE001 - closed already
            return None

    def connect_args(self, target: Target) -> dict[str, Any]:
        # PyMySQL: connect_timeout bounds the TCP connect only; the handshake that follows
        # (and the SET NAMES it sends) waits for the server as long as read_timeout allows.
        # So both are bounded by connect_timeout; `connected` lifts the read bound of a
        # session's connection (its statements may run long; the Watchdog bounds silence),
        # while probes and blocker watches keep it.
        seconds = max(1, round(getattr(target.database, "connect_timeout", 10.0)))
        if parse_url(target.url).get_driver_name() != "pymysql":
            return {"connect_timeout": seconds}
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}

    def connected(self, raw: Any) -> None:
        driver = getattr(raw, "driver_connection", raw)
        if hasattr(driver, "_read_timeout") and hasattr(driver, "_write_timeout"):  # PyMySQL
            driver._read_timeout = driver._write_timeout = None  # applied at its next read / write

    _FINGERPRINT = text(
        "SELECT 'c', table_name, column_name, column_type, is_nullable, column_default, extra "
        "FROM information_schema.columns WHERE table_schema = DATABASE() "
        "UNION ALL SELECT 'i', table_name, index_name, column_name, CAST(seq_in_index AS CHAR), "
        "CAST(non_unique AS CHAR), '' FROM information_schema.statistics WHERE table_schema = DATABASE() "
        "UNION ALL SELECT 'k', table_name, constraint_name, constraint_type, '', '', '' "
        "FROM information_schema.table_constraints WHERE table_schema = DATABASE() "
        # what a foreign key points at (a table of this database: not named, it is the tenant)
        "UNION ALL SELECT 'f', table_name, constraint_name, column_name, referenced_table_name, "
        "referenced_column_name, CASE WHEN referenced_table_schema = DATABASE() THEN '' "
        "ELSE referenced_table_schema END FROM information_schema.key_column_usage "
        "WHERE table_schema = DATABASE() AND referenced_table_name IS NOT NULL "
        "UNION ALL SELECT 'r', table_name, constraint_name, referenced_table_name, update_rule, delete_rule, '' "
        "FROM information_schema.referential_constraints WHERE constraint_schema = DATABASE() "
        "ORDER BY 1, 2, 3, 4, 5"
    )
    # Every read filtered by the current database (information_schema looks a database's
    # tables up by that filter, it does not scan the server's), and no row names it.
    _CATALOG = re.compile(r"^\s*(SHOW\b|DESCRIBE\b|SELECT\b.*\binformation_schema\.)", re.I | re.S)

    def schema_fingerprint(self, connection: Connection) -> str | None:
        return digest(connection.execute(self._FINGERPRINT).all())

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
                # no_parameters: the driver sends the text as it is (`pct%s` stays `pct%s`)
                connection.execution_options(no_parameters=True).exec_driver_sql(
                    "CREATE DATABASE IF NOT EXISTS `" + name.replace("`", "``") + "`")  # (the preparer doubles %)
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
        for e in causes(exc):
            args = getattr(e, "args", ())
            if args and isinstance(args[0], int) and args[0] == 1205:
                return True
        return False

    def watch_blockers(self, connection: Connection, target: Target) -> BlockerWatch:
        me = connection.info.get(BACKEND_ID_KEY)
        if me is None:
            return BlockerWatch()
        database = parse_url(target.url).database
        plugin: list[bool] = []

        def poll(spare: Connection) -> list[str]:
            if not plugin:
                plugin.append(mysql_has_metadata_lock_info(spare))
            return mysql_blockers(spare, int(me), database, plugin[0])

        return PollingWatch(target.name, lender(target), poll, target.database.lock_timeout)


    def migration_lock(self, connection: Connection | None, target: Target, wait: float) -> MigrationLock:
        assert connection is not None
        name = lock_name(target)[:64]  # GET_LOCK names are server-wide and at most 64 characters
        started = time.monotonic()
        got = connection.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": max(0.0, float(wait))}).scalar()
        connection.commit()
        if got != 1:
            raise busy(target, time.monotonic() - started, self._holder(connection, name))

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


