"""PostgreSQL: advisory locks, lock_timeout/statement_timeout, a schema per tenant (search_path)."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


# One statement, driven by the schema's oid, whose cost is the tenant's size and not the
# fleet's: pg_class has no index on relnamespace (nor pg_type, pg_proc, pg_constraint on
# their namespace), so a filter on the namespace reads every schema's objects. What lives
# in the schema is found instead through pg_depend, indexed by what is depended on:
# relations, sequences, views, types and functions record a dependency on their
# namespace (indexes, constraints and triggers hang off their table, found through the
# indexes on conrelid, indrelid, tgrelid; a table's columns through attrelid).
# The first row carries the schema's quoted name, cut out of the definitions below.
_FINGERPRINT = text(
    """
    WITH ns AS (
        SELECT n.oid, quote_ident(n.nspname) AS q FROM pg_namespace n WHERE n.nspname = current_schema()
    ), obj AS (
        SELECT DISTINCT d.classid, d.objid FROM pg_depend d JOIN ns ON d.refobjid = ns.oid
        WHERE d.refclassid = 'pg_namespace'::regclass
    ), typ AS (
        SELECT t.oid, t.typname, t.typtype, t.typrelid, t.typbasetype, t.typtypmod, t.typnotnull, t.typdefault
        FROM obj JOIN pg_type t ON t.oid = obj.objid JOIN ns ON t.typnamespace = ns.oid
        WHERE obj.classid = 'pg_type'::regclass
    ), rel AS (
        SELECT c.oid, c.relname, c.relkind FROM obj JOIN pg_class c ON c.oid = obj.objid
        JOIN ns ON c.relnamespace = ns.oid WHERE obj.classid = 'pg_class'::regclass
        UNION ALL  -- a composite type: its relation depends on the schema through the type
        SELECT c.oid, c.relname, c.relkind FROM typ JOIN pg_class c ON c.oid = typ.typrelid
        WHERE typ.typtype = 'c'
    )
    SELECT '' AS k, ns.q AS a, '' AS b, '' AS c, '' AS d, '' AS e, '' AS f FROM ns
    UNION ALL
    SELECT 'r', r.relname, r.relkind::text, c.relpersistence::text, array_to_string(c.reloptions, ','),
           pg_get_partkeydef(r.oid), CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, r.oid) END
    FROM rel r JOIN pg_class c ON c.oid = r.oid
    UNION ALL
    SELECT 'c', r.relname, a.attname::text,
           format_type(a.atttypid, a.atttypmod) || coalesce(
               (SELECT ' COLLATE ' || quote_ident(l.collname) FROM pg_collation l
                WHERE l.oid = a.attcollation AND a.attcollation <> t.typcollation), ''),
           CASE WHEN a.attnotnull THEN 'not null' ELSE 'null' END,
           a.attidentity::text || a.attgenerated::text || ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), ''),
           (row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum))::text  -- position among live columns
    FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE r.relkind <> 'S'
    UNION ALL
    SELECT 'k', r.relname, co.conname::text, co.contype::text, pg_get_constraintdef(co.oid), '', ''
    FROM rel r JOIN pg_constraint co ON co.conrelid = r.oid
    UNION ALL
    SELECT 'i', r.relname, i.relname::text, '', pg_get_indexdef(x.indexrelid), '', ''
    FROM rel r JOIN pg_index x ON x.indrelid = r.oid JOIN pg_class i ON i.oid = x.indexrelid
    UNION ALL
    SELECT 's', r.relname, format_type(s.seqtypid, NULL),
           concat_ws(' ', s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle),
           (SELECT o.relname || '.' || oa.attname FROM pg_depend od  -- OWNED BY (serial, identity)
            JOIN pg_class o ON o.oid = od.refobjid
            JOIN pg_attribute oa ON oa.attrelid = od.refobjid AND oa.attnum = od.refobjsubid
            WHERE od.classid = 'pg_class'::regclass AND od.objid = r.oid AND od.objsubid = 0
              AND od.refclassid = 'pg_class'::regclass AND od.deptype IN ('a', 'i') LIMIT 1), '', ''
    FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid
    UNION ALL
    SELECT 'v', r.relname, r.relkind::text, pg_get_viewdef(r.oid), '', '', ''
    FROM rel r WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'g', r.relname, tg.tgname::text, pg_get_triggerdef(tg.oid), tg.tgenabled::text, '', ''
    FROM rel r JOIN pg_trigger tg ON tg.tgrelid = r.oid AND NOT tg.tgisinternal
    UNION ALL
    SELECT 't', t.typname::text, t.typtype::text,
           CASE WHEN t.typtype = 'e' THEN (SELECT string_agg(e.enumlabel::text, ',' ORDER BY e.enumsortorder)
                                           FROM pg_enum e WHERE e.enumtypid = t.oid)
                WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
           t.typnotnull::text, t.typdefault, ''
    FROM typ t
    UNION ALL
    SELECT 'd', t.typname::text, co.conname::text, pg_get_constraintdef(co.oid), '', '', ''
    FROM typ t JOIN pg_constraint co ON co.contypid = t.oid
    UNION ALL
    SELECT 'f', p.proname::text, p.prokind::text, pg_get_function_identity_arguments(p.oid),
           CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END, '', ''
    FROM obj JOIN pg_proc p ON p.oid = obj.objid WHERE obj.classid = 'pg_proc'::regclass
    """
)


class PostgreSQL(Dialect):
    name = "postgresql"
    identifier_limit = 63
    default_port = 5432
    schema_tenants = True
    batch = "script"

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
        args: dict[str, Any] = {
            "connect_timeout": max(1, round(getattr(target.database, "connect_timeout", 10.0))),
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        }
        if parse_url(target.url).get_driver_name() in ("psycopg", "psycopg_async"):
            # psycopg 3 prepares a statement it has run 5 times, and after DDL (whose
            # changes can invalidate prepared plans) sends DEALLOCATE ALL: a round trip per
            # revision for plans a migration never reuses. Preparation off.
            args["prepare_threshold"] = None
        return args

    _CATALOG = re.compile(r"\b(pg_catalog|information_schema)\.|\bpg_(class|namespace|attribute|index|constraint|type|"
                          r"attrdef|description|inherits|depend|sequence|proc|collation|get_\w+|table_is_visible)\b", re.I)

    def schema_fingerprint(self, connection: Connection) -> str | None:
        rows = connection.execute(_FINGERPRINT).all()
        names = [row[1] for row in rows if row[0] == ""]
        if not names:
            return digest([])  # no current schema: nothing in it
        # Definitions name the tenant's own schema (pg_get_indexdef always qualifies the
        # table; a function's definition its name); another tenant's would differ there.
        own = re.compile(r'(?<![\w$"])' + re.escape(names[0]) + r"\.")
        return digest(sorted(
            tuple(own.sub("", v) if v else "" for v in row) for row in rows if row[0] != ""
        ))  # sorted here, after the cut, and by code points: not by the database's collation

    resets_sessions = True

    def reset_session(self, raw: Any) -> bool:
        # DISCARD ALL: settings (search_path, timeouts, role), temporary tables, prepared
        # statements, advisory locks, LISTENs: what a migration may have left behind.
        if not hasattr(raw, "execute"):
            return False  # psycopg 3 only
        with self.own_transactions(raw):  # DISCARD ALL cannot run inside a transaction block
            raw.execute("DISCARD ALL")
        return True

    @contextmanager
    def own_transactions(self, raw: Any) -> Iterator[None]:
        if getattr(raw, "autocommit", None) is not False:
            yield  # already in autocommit (or not a driver that begins on its own)
            return
        raw.autocommit = True
        try:
            yield
        finally:
            try:
                raw.autocommit = False
            except Exception:  # noqa: BLE001 - a broken connection: keep the first error
                pass

    def has_table(self, connection: Connection, name: str) -> bool:
        # Resolved through the search_path (the tenant's schema), as an unqualified name is:
        # one index probe, where a lookup by name visits that name in every schema of the fleet.
        found = connection.execute(text(
            "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass(quote_ident(:name)) "
            "AND c.relnamespace <> 'pg_catalog'::regnamespace"), {"name": name}).scalar()
        return found in ("r", "p", "v", "m", "f")

    def version_table_columns(self, connection: Connection, version_table: str,
                              containers: list[str]) -> list[tuple[Any, ...]]:
        # pg_catalog, by relname (indexed): information_schema's views check privileges row by row.
        return [tuple(row) for row in connection.execute(text(
            "SELECT n.nspname, c.relkind IN ('r', 'p'), a.attname::text, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE c.relname = :table AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname = ANY(:names)"
        ), {"table": version_table, "names": containers})]

    def inline(self, raw: Any, statement: str, parameters: Any, many: bool) -> str | None:
        try:
            import psycopg
        except ImportError:
            return None
        if not isinstance(raw, psycopg.Connection):
            return None  # psycopg2, asyncpg: no client-side rendering here
        cursor = psycopg.ClientCursor(raw)  # psycopg's own literal rendering, the connection's adapters
        try:
            if many:
                return ";\n".join(cursor.mogrify(statement, values) for values in parameters)
            return cursor.mogrify(statement, parameters)
        except Exception:  # noqa: BLE001 - a value it cannot render: the statements go one by one
            return None
        finally:
            cursor.close()

    def is_catalog_query(self, statement: str) -> bool:
        return statement.lstrip().upper().startswith(("SELECT", "WITH")) and bool(self._CATALOG.search(statement))

    def offline_preamble(self, target: Target) -> str:
        if target.schema is None:
            return ""
        # Online the connection's search_path is pinned to the tenant; offline the script says so.
        return f"SET search_path TO {ansi_quote(target.schema)};\n\n"

    def use_schema(self, connection: Connection, target: Target, create: bool) -> None:
        schema = target.schema or ""
        # Only the tenant's schema: an unqualified name can never reach another tenant's table.
        # Set in the same round trip as the check (names are looked up when used, so a schema
        # created just after is the one found).
        exists = connection.execute(text(
            "SELECT set_config('search_path', quote_ident(:s), false), "
            "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema}).one()[1]
        if exists:
            return
        if not create:
            raise TargetError(
                f"{target.name}: schema {schema!r} does not exist in {target.display_url}",
                hint="create it, or set `create: true` under the database's `tenants:`",
            )
        # no_parameters: the driver sends the text as it is, so `pct%s` is not spelled `pct%%s`
        connection.execution_options(no_parameters=True).exec_driver_sql(
            f"CREATE SCHEMA IF NOT EXISTS {ansi_quote(schema)}")  # (the preparer would double % too)

    @staticmethod
    def _key(target: Target) -> int:
        return int.from_bytes(hashlib.sha256(lock_name(target).encode()).digest()[:8], "big", signed=True)

    def migration_lock(self, connection: Connection | None, target: Target, wait: float) -> MigrationLock:
        assert connection is not None
        key = self._key(target)
        # Name this run in pg_stat_activity, so that a run kept waiting can say who holds the
        # lock (unless the URL chose an application_name of its own).
        name = text("SELECT CASE WHEN current_setting('application_name') = '' "
                    "THEN set_config('application_name', :v, false) END, pg_try_advisory_lock(:k)")
        started = time.monotonic()
        while True:
            got = connection.execute(name, {"v": lock_owner(), "k": key}).one()[1]
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
        # One round trip: the backend's pid (for blocker reports), the timeouts, and on 14+
        # client_connection_check_interval (a run killed in the middle of a long statement
        # must not leave its backend working, and holding locks, until the statement ends).
        timeout_ms = max(1, int(target.database.lock_timeout * 1000))  # 0 would mean "wait forever"
        statement_ms = max(1, int(target.database.statement_timeout * 1000)) if target.database.statement_timeout else 0
        pid = connection.execute(text(
            "SELECT pg_backend_pid(), set_config('lock_timeout', :lock, false), "
            "CASE WHEN :statement <> '' THEN set_config('statement_timeout', :statement, false) END, "
            "CASE WHEN current_setting('server_version_num')::int >= 140000 "
            "THEN set_config('client_connection_check_interval', :check, false) END"
        ), {"lock": f"{timeout_ms}ms", "statement": f"{statement_ms}ms" if statement_ms else "",
            "check": CLIENT_CHECK_INTERVAL}).scalar()
        connection.info[BACKEND_ID_KEY] = pid

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


