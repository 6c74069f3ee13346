"""Helpers for the fleet tests (tests/test_fleet.py): small lineages written to tmp, tenant
fleets on PostgreSQL (a schema each), MariaDB (a database each) and SQLite (a file each),
and bulk looks inside every tenant without going through orchestrate.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conftest import MYSQL_URL
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

# ---------------------------------------------------------------------- lineages

# The "items" lineage: a table, a column plus a data migration, then a unique index that
# tenants holding duplicate codes cannot take.
REV_A, REV_B, REV_C = "a1f00000000a", "b2f00000000b", "c3f00000000c"
ITEMS_REVS = [REV_A, REV_B, REV_C]

_ITEMS = {
    REV_A: (
        None,
        "create items",
        '''    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("code", sa.String(40), nullable=False),
    )
    # which process ran this tenant's migration (tells a pool of workers from one process)
    op.create_table("migrated_by", sa.Column("pid", sa.Integer(), nullable=False))
    op.execute(sa.text("INSERT INTO migrated_by (pid) VALUES (:pid)").bindparams(pid=os.getpid()))''',
        '''    op.drop_table("migrated_by")
    op.drop_table("items")''',
    ),
    REV_B: (
        REV_A,
        "add qty and seed",
        '''    op.add_column("items", sa.Column("qty", sa.Integer(), nullable=True))
    items = sa.table("items", sa.column("id", sa.Integer()), sa.column("code", sa.String()),
                     sa.column("qty", sa.Integer()))
    op.bulk_insert(items, [{"id": 1, "code": "seed-1", "qty": 1}, {"id": 2, "code": "seed-2", "qty": 2}])''',
        '''    op.execute("DELETE FROM items WHERE id IN (1, 2)")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("qty")''',
    ),
    REV_C: (
        REV_B,
        "unique item code",
        '''    op.create_index("uq_items_code", "items", ["code"], unique=True)''',
        '''    op.drop_index("uq_items_code", table_name="items")''',
    ),
}

# The "slow" lineage for interruption tests: two revisions that each take a while.
SLOW_A, SLOW_B = "d4f00000000d", "e5f00000000e"
SLOW_REVS = [SLOW_A, SLOW_B]


def _slow(sleep_a: float, sleep_b: float) -> dict[str, tuple[str | None, str, str, str]]:
    return {
        SLOW_A: (
            None,
            "slow table",
            f'''    time.sleep({sleep_a})
    op.create_table("slow", sa.Column("id", sa.Integer(), primary_key=True))''',
            '''    op.drop_table("slow")''',
        ),
        SLOW_B: (
            SLOW_A,
            "slow column",
            f'''    op.add_column("slow", sa.Column("extra", sa.Integer(), nullable=True))
    time.sleep({sleep_b})''',
            '''    with op.batch_alter_table("slow") as batch:
        batch.drop_column("extra")''',
        ),
    }


# The "core" lineage: one plain database a fleet depends on.
CORE_A, CORE_BAD = "f6f00000000f", "f7f0000000ff"


def write_revision(
    folder: Path, rev: str, down: str | None, message: str, up: str, downgrade: str = "    pass"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{rev}_{message.replace(' ', '_')}.py"
    path.write_text(
        f'''"""{message}

Revision ID: {rev}
Revises: {down or ""}
"""
import os
import time

from alembic import op
import sqlalchemy as sa

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{up}


def downgrade() -> None:
{downgrade}
''',
        encoding="utf-8",
    )
    return path


def write_items_lineage(folder: Path) -> None:
    for rev, (down, message, up, downgrade) in _ITEMS.items():
        write_revision(folder, rev, down, message, up, downgrade)


def write_slow_lineage(folder: Path, sleep_a: float = 0.1, sleep_b: float = 0.1, replayable: bool = False) -> None:
    """``replayable``: let replay skip the sleeps on all but the first tenants (by default the
    sleep stands for a long statement, which a replay would run too: never replayed)."""
    for rev, (down, message, up, downgrade) in _slow(sleep_a, sleep_b).items():
        path = write_revision(folder, rev, down, message, up, downgrade)
        if not replayable:
            with path.open("a", encoding="utf-8") as handle:
                handle.write("\norchestrate_replay = False\n")


def write_core_lineage(folder: Path, failing: bool) -> None:
    write_revision(folder, CORE_A, None, "core table",
                   '''    op.create_table("core", sa.Column("id", sa.Integer(), primary_key=True))''')
    if failing:
        write_revision(folder, CORE_BAD, CORE_A, "core broken",
                       '''    op.create_table("core2", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("SELECT * FROM no_such_table_xyz")''')


# ---------------------------------------------------------------------- names and urls


def tenant_names(count: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


def mysql_prefix() -> str:
    """MariaDB databases are server-wide: tenants of one test share a unique prefix."""
    return f"ft{uuid.uuid4().hex[:8]}_"


def with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def engine_for(url: str):
    return create_engine(url, poolclass=NullPool)


def run_sql(url: str, *statements: str, params: dict[str, Any] | None = None) -> None:
    engine = engine_for(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), params or {})
    finally:
        engine.dispose()


def fetch(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def drop_mysql_databases(prefix: str) -> None:
    engine = create_engine(MYSQL_URL, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            names = connection.execute(
                text("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE :p"),
                {"p": prefix.replace("_", "\\_") + "%"},
            ).scalars().all()
            for name in names:
                connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        engine.dispose()


def pg_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def mysql_quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def mysql_tenant_url(tenant: str) -> str:
    return make_url(MYSQL_URL).set(database=tenant).render_as_string(hide_password=False)


# ---------------------------------------------------------------------- fleets


class Fleet:
    """Where a test's tenants live and how to look inside all of them at once."""

    kind: str  # "pg", "mysql", "sqlite"

    def __init__(self, kind: str, url: str, tenants: list[str], root: Path | None = None) -> None:
        self.kind = kind
        self.url = url  # the url as written in orchestrate.yaml
        self.tenants = tenants
        self.root = root

    # -- config

    def tenants_block(self, **extra: Any) -> dict[str, Any]:
        block: dict[str, Any] = {"mode": "database" if self.kind == "sqlite" else "schema"}
        block.update(extra)
        if not {"names", "file", "query"} & set(extra):
            block["names"] = list(self.tenants)
        return block

    def database_entry(self, version_path: str, **tenant_extra: Any) -> dict[str, Any]:
        return {"url": self.url, "version_path": version_path, "tenants": self.tenants_block(**tenant_extra)}

    def container_url(self, tenant: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.sqlite_path(tenant)}"
        if self.kind == "mysql":
            return mysql_tenant_url(tenant)
        return self.url

    def sqlite_path(self, tenant: str) -> Path:
        assert self.root is not None
        return self.root / f"{tenant}.db"

    # -- setting up data

    def create_containers(self, tenants: Iterable[str]) -> None:
        tenants = list(tenants)
        if self.kind == "pg":
            run_sql(self.url, *[f"CREATE SCHEMA {pg_quote(t)}" for t in tenants])
        elif self.kind == "mysql":
            run_sql(MYSQL_URL, *[f"CREATE DATABASE {mysql_quote(t)}" for t in tenants])
        else:
            for t in tenants:
                self.sqlite_path(t).parent.mkdir(parents=True, exist_ok=True)
                sqlite3.connect(self.sqlite_path(t)).close()

    def drop_containers(self, tenants: Iterable[str]) -> None:
        tenants = list(tenants)
        if self.kind == "pg":
            run_sql(self.url, *[f"DROP SCHEMA IF EXISTS {pg_quote(t)} CASCADE" for t in tenants])
        elif self.kind == "mysql":
            run_sql(MYSQL_URL, *[f"DROP DATABASE IF EXISTS {mysql_quote(t)}" for t in tenants])
        else:
            for t in tenants:
                for suffix in ("", ".orchestrate-lock", "-journal"):
                    Path(str(self.sqlite_path(t)) + suffix).unlink(missing_ok=True)

    def execute_in(self, tenant: str, *statements: str) -> None:
        """Run SQL inside one tenant (its schema / database / file)."""
        if self.kind == "pg":
            run_sql(self.url, f"SET search_path TO {pg_quote(tenant)}", *statements)
        elif self.kind == "mysql":
            run_sql(mysql_tenant_url(tenant), *statements)
        else:
            connection = sqlite3.connect(self.sqlite_path(tenant))
            try:
                for statement in statements:
                    connection.execute(statement)
                connection.commit()
            finally:
                connection.close()

    # -- looking inside every tenant

    def existing(self) -> set[str]:
        """Tenants whose schema / database / file exists."""
        if self.kind == "pg":
            rows = fetch(self.url, "SELECT nspname FROM pg_namespace WHERE nspname = ANY(:n)", n=list(self.tenants))
            return {r[0] for r in rows}
        if self.kind == "mysql":
            engine = engine_for(MYSQL_URL)
            try:
                with engine.connect() as connection:
                    return set(connection.execute(
                        text("SELECT schema_name FROM information_schema.schemata WHERE schema_name IN :n").bindparams(
                            bindparam("n", expanding=True)
                        ),
                        {"n": list(self.tenants)},
                    ).scalars())
            finally:
                engine.dispose()
        return {t for t in self.tenants if self.sqlite_path(t).exists()}

    def versions(self, tenants: Iterable[str] | None = None) -> dict[str, list[str] | None]:
        """tenant -> revisions in its alembic_version; None when there is no version table."""
        return {t: s["version"] for t, s in self.snapshot(tenants).items()}

    def snapshot(self, tenants: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Everything a migration leaves behind in each tenant: version rows, tables,
        columns, indexes, and the rows of `items`/`slow`. Tenants without a container map
        to {"exists": False, "version": None, ...}."""
        tenants = list(self.tenants if tenants is None else tenants)
        if self.kind == "sqlite":
            return {t: self._sqlite_snapshot(t) for t in tenants}
        if self.kind == "pg":
            return self._pg_snapshot(tenants)
        return self._mysql_snapshot(tenants)

    @staticmethod
    def _empty(exists: bool) -> dict[str, Any]:
        return {"exists": exists, "version": None, "tables": {}, "indexes": set(), "items": None, "slow": None,
                "pids": None}

    def _sqlite_snapshot(self, tenant: str) -> dict[str, Any]:
        path = self.sqlite_path(tenant)
        if not path.exists():
            return self._empty(False)
        out = self._empty(True)
        connection = sqlite3.connect(path)
        try:
            tables = [r[0] for r in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
            for table in tables:
                out["tables"][table] = sorted(r[1] for r in connection.execute(f'PRAGMA table_info("{table}")'))
            out["indexes"] = {r[0] for r in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'")}
            if "alembic_version" in tables:
                out["version"] = sorted(r[0] for r in connection.execute("SELECT version_num FROM alembic_version"))
            if "items" in tables:
                out["items"] = sorted(tuple(r) for r in connection.execute("SELECT * FROM items"))
            if "slow" in tables:
                out["slow"] = sorted(tuple(r) for r in connection.execute("SELECT * FROM slow"))
            if "migrated_by" in tables:
                out["pids"] = sorted(r[0] for r in connection.execute("SELECT pid FROM migrated_by"))
        finally:
            connection.close()
        return out

    def _pg_snapshot(self, tenants: list[str]) -> dict[str, dict[str, Any]]:
        engine = engine_for(self.url)
        try:
            with engine.connect() as connection:
                existing = set(connection.execute(
                    text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:n)"), {"n": tenants}).scalars())
                out = {t: self._empty(t in existing) for t in tenants}
                for schema, table, column in connection.execute(text(
                    "SELECT table_schema, table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = ANY(:n) ORDER BY 1, 2, 3"), {"n": tenants}):
                    out[schema]["tables"].setdefault(table, []).append(column)
                for schema, index in connection.execute(text(
                    "SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE NOT i.indisprimary AND n.nspname = ANY(:n)"), {"n": tenants}):
                    out[schema]["indexes"].add(index)
                self._read_rows(connection, out, lambda s, t: f"{pg_quote(s)}.{pg_quote(t)}")
        finally:
            engine.dispose()
        return out

    def _mysql_snapshot(self, tenants: list[str]) -> dict[str, dict[str, Any]]:
        engine = engine_for(MYSQL_URL)
        try:
            with engine.connect() as connection:
                existing = set(connection.execute(
                    text("SELECT schema_name FROM information_schema.schemata WHERE schema_name IN :n").bindparams(
                        bindparam("n", expanding=True)), {"n": tenants}).scalars())
                out = {t: self._empty(t in existing) for t in tenants}
                for schema, table, column in connection.execute(text(
                    "SELECT table_schema, table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema IN :n ORDER BY 1, 2, 3").bindparams(bindparam("n", expanding=True)),
                        {"n": tenants}):
                    out[schema]["tables"].setdefault(table, []).append(column)
                for schema, index in connection.execute(text(
                    "SELECT DISTINCT table_schema, index_name FROM information_schema.statistics "
                    "WHERE table_schema IN :n AND index_name <> 'PRIMARY'").bindparams(
                        bindparam("n", expanding=True)), {"n": tenants}):
                    out[schema]["indexes"].add(index)
                self._read_rows(connection, out, lambda s, t: f"{mysql_quote(s)}.{mysql_quote(t)}")
        finally:
            engine.dispose()
        return out

    @staticmethod
    def _read_rows(connection: Any, out: dict[str, dict[str, Any]], qualified: Any) -> None:
        for tenant, state in out.items():
            tables = state["tables"]
            for table in tables:
                tables[table] = sorted(tables[table])
            if "alembic_version" in tables:
                state["version"] = sorted(r[0] for r in connection.execute(
                    text(f"SELECT version_num FROM {qualified(tenant, 'alembic_version')}")))
            for table in ("items", "slow"):
                if table in tables:
                    state[table] = sorted(tuple(r) for r in connection.execute(
                        text(f"SELECT * FROM {qualified(tenant, table)}")))
            if "migrated_by" in tables:
                state["pids"] = sorted(r[0] for r in connection.execute(
                    text(f"SELECT pid FROM {qualified(tenant, 'migrated_by')}")))


# ---------------------------------------------------------------------- reports


def load_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def by_tenant(report: dict[str, Any], database: str | None = None) -> dict[str | None, dict[str, Any]]:
    targets = [t for t in report["targets"] if database is None or t["database"] == database]
    out = {t["tenant"]: t for t in targets}
    assert len(out) == len(targets), "a target appears twice in the report"
    return out


def items_state_at(rev: str | None) -> tuple[dict[str, list[str]], set[str]]:
    """What the items lineage leaves at ``rev`` (tables with their columns, indexes)."""
    tables: dict[str, list[str]] = {}
    indexes: set[str] = set()
    if rev is None:
        return tables, indexes
    tables["alembic_version"] = ["version_num"]
    tables["items"] = ["code", "id"]
    tables["migrated_by"] = ["pid"]
    if rev in (REV_B, REV_C):
        tables["items"] = ["code", "id", "qty"]
    if rev == REV_C:
        indexes.add("uq_items_code")
    return tables, indexes
