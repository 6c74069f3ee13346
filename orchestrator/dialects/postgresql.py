"""PostgreSQL: advisory locks, lock_timeout/statement_timeout, a schema per tenant (search_path)."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

from orchestrator.dialects.base import (
    BACKEND_ID_KEY,
    LOCK_POLL_SECONDS,
    BlockerWatch,
    Dialect,
    MigrationLock,
    ansi_quote,
    busy,
    causes,
    digest,
    lender,
    lock_name,
    lock_owner,
)
from orchestrator.dialects.blockers import PollingWatch, postgresql_blockers
from orchestrator.errors import TargetError
from orchestrator.urls import parse_url

if TYPE_CHECKING:
    from orchestrator.targets import Target

#: How soon a PostgreSQL backend notices that its client died in the middle of a statement.
CLIENT_CHECK_INTERVAL = "1s"


class PostgreSQL(Dialect):
    name = "postgresql"
    identifier_limit = 63
    default_port = 5432
    schema_tenants = True

    def schema_tenant(self, url: URL, tenant: str) -> tuple[URL, str | None]:
        return url, tenant  # one database, a schema per tenant (search_path)

    def tenant_place(self, url: URL, mode: str, table: str) -> Callable[[str], tuple[Any, ...]] | None:
        if mode == "database":
            return super().tenant_place(url, mode, table)
        server = self.server_key(url)
        return lambda name: (*server, url.database, name, table)  # a schema per tenant

    def own_name(self, target: Target) -> str | None:
        return target.schema or (parse_url(target.url).database if target.tenant is not None else None)
    probes_server = True

    def socket_of(self, raw: Any) -> socket.socket | None:
        pgconn = getattr(raw, "pgconn", None)  # psycopg 3, sync and async
        try:
            return socket.socket(fileno=os.dup(pgconn.socket)) if pgconn is not None else None
        except Exception:  # noqa: BLE001 - closed already
            return None

    def connect_args(self, target: Target) -> dict[str, Any]:
        # libpq: bounded connect, and keepalives so a peer that vanished is noticed.
        return {
            "connect_timeout": max(1, round(getattr(target.database, "connect_timeout", 10.0))),
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        }

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
        rows: list[tuple[Any, ...]] = [tuple(row) for row in connection.execute(self._FINGERPRINT).all()]
        # Definitions qualified with the tenant's own schema would differ between tenants.
        for prefix in (f'"{schema}".', f"{schema}."):
            rows = [tuple(str(v).replace(prefix, "") if v is not None else None for v in row) for row in rows]
        return digest(rows)

    def is_catalog_query(self, statement: str) -> bool:
        return statement.lstrip().upper().startswith(("SELECT", "WITH")) and bool(self._CATALOG.search(statement))

    def offline_preamble(self, target: Target) -> str:
        if target.schema is None:
            return ""
        # Online the connection's search_path is pinned to the tenant; offline the script says so.
        return f"SET search_path TO {ansi_quote(target.schema)};\n\n"

    def use_schema(self, connection: Connection, target: Target, create: bool) -> None:
        schema = target.schema or ""
        exists = connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first()
        if not exists:
            if not create:
                raise TargetError(
                    f"{target.name}: schema {schema!r} does not exist in {target.display_url}",
                    hint="create it, or set `create: true` under the database's `tenants:`",
                )
            # no_parameters: the driver sends the text as it is, so `pct%s` is not spelled `pct%%s`
            connection.execution_options(no_parameters=True).exec_driver_sql(
                f"CREATE SCHEMA IF NOT EXISTS {ansi_quote(schema)}")  # (the preparer would double % too)
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
            {"v": lock_owner()},
        )
        started = time.monotonic()
        while True:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            connection.commit()  # a session lock outlives the transaction; don't sit idle in one
            if got:
                break
            if time.monotonic() - started >= wait:
                raise busy(target, time.monotonic() - started, self._holder(connection, key))
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
            getattr(e, "sqlstate", None) == "55P03" or getattr(e, "pgcode", None) == "55P03" for e in causes(exc)
        )

    def watch_blockers(self, connection: Connection, target: Target) -> BlockerWatch:
        pid = connection.info.get(BACKEND_ID_KEY)
        if pid is None:
            return BlockerWatch()
        return PollingWatch(
            target.name,
            lender(target),
            lambda spare: postgresql_blockers(spare, pid),
            target.database.lock_timeout,
        )


