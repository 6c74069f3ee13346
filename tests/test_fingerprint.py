"""Schema fingerprints (replay's key, issue 8): equal for identical tenants whatever their
own name, their file, or the order and spelling a table's text happens to have; different
for anything a migration could see (columns, types, nullability, defaults, keys, indexes,
checks, views, enums); on PostgreSQL one statement that reads the tenant's own objects only.

Real SQLite files, real PostgreSQL schemas (a database of this module's own, `fpx_...`),
a real MariaDB database `fpx_...`.
"""
from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import MYSQL_URL, PG_URL, _server_or_skip, unique_name
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from orchestrator.dialects.mysql import MySQL
from orchestrator.dialects.postgresql import PostgreSQL
from orchestrator.dialects.sqlite import SQLite

# ---------------------------------------------------------------------------- SQLite

SQLITE_BASE = """
CREATE TABLE users (
    id INTEGER NOT NULL PRIMARY KEY,
    email VARCHAR(200) NOT NULL,
    plan VARCHAR(20) DEFAULT 'free' NOT NULL,
    age INTEGER CHECK (age >= 0),
    CONSTRAINT uq_users_email UNIQUE (email),
    CHECK (plan IN ('free', 'paid'))
);
CREATE TABLE orders (
    id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    total NUMERIC(10, 2),
    PRIMARY KEY (id),
    FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_orders_user ON orders (user_id);
CREATE VIEW paid AS SELECT id, email FROM users WHERE plan = 'paid';
"""

# The same schema as another writer (batch mode, a person) could have spelled it: items in
# another order, a column's CHECK at the end of the table, other quoting, case and spaces.
SQLITE_REORDERED = """
create table "users" (
    "id" integer not null primary key,
    "email" varchar (200) not null,
    "plan" varchar(20) default 'free' not null,
    "age" integer,
    check ("plan" in ('free','paid')),
    constraint "uq_users_email" unique ("email"),
    check ( age >= 0 )
);
CREATE TABLE orders (
    total NUMERIC(10,2),
    user_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (id)
);
CREATE INDEX ix_orders_user ON "orders" ("user_id");
CREATE VIEW paid AS SELECT id, email FROM users WHERE plan = 'paid';
"""

# One change each, to the base schema: every one must change the digest.
SQLITE_CHANGES = {
    "column added": ("age INTEGER CHECK (age >= 0),", "age INTEGER CHECK (age >= 0),\n    extra TEXT,"),
    "column type": ("total NUMERIC(10, 2)", "total NUMERIC(12, 2)"),
    "nullability": ("total NUMERIC(10, 2)", "total NUMERIC(10, 2) NOT NULL"),
    "default": ("DEFAULT 'free'", "DEFAULT 'paid'"),
    "primary key": ("PRIMARY KEY (id),\n    FOREIGN", "PRIMARY KEY (id, user_id),\n    FOREIGN"),
    "unique": ("CONSTRAINT uq_users_email UNIQUE (email),", ""),
    "unique's name": ("CONSTRAINT uq_users_email UNIQUE", "CONSTRAINT uq_email UNIQUE"),
    "foreign key target": ("REFERENCES users (id) ON DELETE CASCADE", "REFERENCES users (age) ON DELETE CASCADE"),
    "foreign key rule": ("ON DELETE CASCADE", "ON DELETE SET NULL"),
    "index": ("CREATE INDEX ix_orders_user ON orders (user_id);", "CREATE INDEX ix_orders_user ON orders (total);"),
    "unique index": ("CREATE INDEX ix_orders_user", "CREATE UNIQUE INDEX ix_orders_user"),
    "check": ("CHECK (age >= 0)", "CHECK (age > 0)"),
    "check dropped": ("age INTEGER CHECK (age >= 0),", "age INTEGER,"),
    "view": ("WHERE plan = 'paid'", "WHERE plan <> 'free'"),
    "string literal": ("IN ('free', 'paid')", "IN ('free', 'Paid')"),
}


def sqlite_file(path: Path, script: str) -> Path:
    connection = sqlite3.connect(path)
    try:
        connection.executescript(script)
    finally:
        connection.close()
    return path


def sqlite_fingerprint(path: Path) -> str:
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            fingerprint = SQLite().schema_fingerprint(connection)
            assert fingerprint is not None
            return fingerprint
    finally:
        engine.dispose()


def test_sqlite_identical_files_are_equal_whatever_the_spelling(tmp_path: Path) -> None:
    base = sqlite_fingerprint(sqlite_file(tmp_path / "a.db", SQLITE_BASE))
    assert sqlite_fingerprint(sqlite_file(tmp_path / "b.db", SQLITE_BASE)) == base
    assert sqlite_fingerprint(sqlite_file(tmp_path / "c.db", SQLITE_REORDERED)) == base


@pytest.mark.parametrize("change", sorted(SQLITE_CHANGES))
def test_sqlite_any_schema_change_changes_the_digest(tmp_path: Path, change: str) -> None:
    old, new = SQLITE_CHANGES[change]
    assert old in SQLITE_BASE
    base = sqlite_fingerprint(sqlite_file(tmp_path / "a.db", SQLITE_BASE))
    changed = sqlite_fingerprint(sqlite_file(tmp_path / "b.db", SQLITE_BASE.replace(old, new)))
    assert changed != base


def test_sqlite_batch_mode_recreating_a_table_keeps_the_digest(tmp_path: Path) -> None:
    """Alembic's batch mode rewrites the CREATE TABLE text (reflected constraints, in its
    own order and spelling): the schema, and so the digest, is the same."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    # (batch mode keeps only named CHECKs, and cannot rename a table a view reads)
    script = SQLITE_BASE.replace("CHECK (age", "CONSTRAINT ck_age CHECK (age").replace(
        "CHECK (plan", "CONSTRAINT ck_plan CHECK (plan").split("CREATE VIEW")[0]
    path = sqlite_file(tmp_path / "batch.db", script)
    before = sqlite_fingerprint(path)
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.begin() as connection:
            operations = Operations(MigrationContext.configure(connection))
            for table in ("users", "orders"):
                with operations.batch_alter_table(table, recreate="always"):
                    pass
            texts = dict(connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all())
    finally:
        engine.dispose()
    assert "_alembic_tmp" not in repr(texts) and "uq_users_email" in texts["users"]
    fresh = sqlite_file(tmp_path / "fresh.db", script)
    assert sqlite3.connect(fresh).execute("SELECT sql FROM sqlite_master WHERE name = 'users'").fetchone()[0] \
        != texts["users"]  # the text did change...
    assert sqlite_fingerprint(path) == before  # ...the schema did not


def test_sqlite_fingerprint_ignores_sqlite_internal_tables(tmp_path: Path) -> None:
    path = sqlite_file(tmp_path / "a.db", SQLITE_BASE)
    before = sqlite_fingerprint(path)
    connection = sqlite3.connect(path)
    connection.executescript("INSERT INTO users (id, email) VALUES (1, 'a@x'); ANALYZE;")
    assert connection.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone() == (1,)
    connection.close()
    assert sqlite_fingerprint(path) == before  # statistics and rows are not schema


# ---------------------------------------------------------------------------- PostgreSQL

PG_SCHEMA = """
CREATE TYPE status AS ENUM ('new', 'paid', 'shipped');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE users (
    id serial PRIMARY KEY,
    email varchar(200) NOT NULL,
    plan text NOT NULL DEFAULT 'free',
    CONSTRAINT uq_users_email UNIQUE (email)
);
CREATE TABLE orders (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    user_id integer NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status status NOT NULL DEFAULT 'new',
    quantity positive,
    total numeric(10, 2) CHECK (total >= 0)
);
CREATE INDEX ix_orders_user ON orders (user_id) WHERE total > 0;
CREATE SEQUENCE invoice_numbers START 100;
CREATE VIEW paid AS SELECT o.id, u.email FROM orders o JOIN users u ON u.id = o.user_id WHERE o.status = 'paid';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
"""

PG_CHANGES = {
    "column added": ("plan text NOT NULL DEFAULT 'free',", "plan text NOT NULL DEFAULT 'free', extra int,"),
    "column type": ("numeric(10, 2)", "numeric(12, 2)"),
    "nullability": ("email varchar(200) NOT NULL", "email varchar(200)"),
    "default": ("DEFAULT 'free'", "DEFAULT 'paid'"),
    "index": ("ON orders (user_id) WHERE total > 0", "ON orders (user_id)"),
    "foreign key target": ("REFERENCES users (id) ON DELETE CASCADE", "REFERENCES users (id) ON DELETE RESTRICT"),
    "check": ("CHECK (total >= 0)", "CHECK (total > 0)"),
    "enum": ("'new', 'paid', 'shipped'", "'new', 'paid', 'sent'"),
    "domain": ("CHECK (VALUE > 0)", "CHECK (VALUE >= 0)"),
    "sequence": ("START 100", "START 1"),
    "view": ("WHERE o.status = 'paid'", "WHERE o.status <> 'new'"),
    "function": ("RETURN NEW;", "RETURN OLD;"),
    "trigger": ("BEFORE UPDATE ON orders", "BEFORE INSERT ON orders"),
    "constraint name": ("CONSTRAINT uq_users_email UNIQUE", "CONSTRAINT uq_email UNIQUE"),
}


@pytest.fixture(scope="module")
def fpx_pg() -> Iterator[Engine]:
    """A PostgreSQL database of this module's own (fpx_...), dropped afterwards."""
    _server_or_skip(PG_URL, "PostgreSQL")
    name = unique_name("fpx")
    admin = create_engine(PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(make_url(PG_URL).set(database=name), poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pg_schema(engine: Engine, schema: str, ddl: str = PG_SCHEMA) -> str:
    with engine.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        connection.execute(text("SELECT set_config('search_path', quote_ident(:s), true)"), {"s": schema})
        connection.exec_driver_sql(ddl)
    return schema


def pg_fingerprint(engine: Engine, schema: str) -> str:
    with engine.connect() as connection:
        connection.execute(text("SELECT set_config('search_path', quote_ident(:s), false)"), {"s": schema})
        fingerprint = PostgreSQL().schema_fingerprint(connection)
        assert fingerprint is not None
        return fingerprint


def test_postgresql_identical_schemas_are_equal(fpx_pg: Engine) -> None:
    # names that need quoting, and a name another one starts with
    first = pg_fingerprint(fpx_pg, pg_schema(fpx_pg, "fpx_Tenant One"))
    assert pg_fingerprint(fpx_pg, pg_schema(fpx_pg, "fpx_t")) == first
    assert pg_fingerprint(fpx_pg, pg_schema(fpx_pg, "fpx_t2")) == first


@pytest.mark.parametrize("change", sorted(PG_CHANGES))
def test_postgresql_any_schema_change_changes_the_digest(fpx_pg: Engine, change: str) -> None:
    old, new = PG_CHANGES[change]
    assert old in PG_SCHEMA
    base = pg_fingerprint(fpx_pg, pg_schema(fpx_pg, unique_name("fpx_base")))
    changed = pg_fingerprint(fpx_pg, pg_schema(fpx_pg, unique_name("fpx_chg"), PG_SCHEMA.replace(old, new)))
    assert changed != base


def test_postgresql_fingerprint_is_one_statement(fpx_pg: Engine) -> None:
    schema = pg_schema(fpx_pg, unique_name("fpx_one"))
    with fpx_pg.connect() as connection:
        connection.execute(text("SELECT set_config('search_path', quote_ident(:s), false)"), {"s": schema})
        sent: list[str] = []

        def count(_conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
            sent.append(statement)

        event.listen(connection, "before_cursor_execute", count)
        PostgreSQL().schema_fingerprint(connection)
        event.remove(connection, "before_cursor_execute", count)
    assert len(sent) == 1, sent


def test_postgresql_fingerprint_reads_no_other_schema(fpx_pg: Engine) -> None:
    """Other schemas' objects, however odd (same names, references into the tenant, an
    aggregate, its enum in another's table), never reach the digest. (Whether the catalogs
    are read through their indexes is the planner's choice, seen at fleet scale only: the
    benchmark's EXPLAIN, not a test.)"""
    tenant = pg_schema(fpx_pg, unique_name("fpx_own"))
    before = pg_fingerprint(fpx_pg, tenant)
    other = unique_name("fpx_other")
    with fpx_pg.begin() as connection:
        connection.exec_driver_sql(textwrap.dedent(f"""
            CREATE SCHEMA "{other}";
            CREATE TABLE "{other}".users (id int, odd "{tenant}".status);
            CREATE TABLE "{other}".refs (user_id int REFERENCES "{tenant}".users (id));
            CREATE AGGREGATE "{other}".total(int) (sfunc = int4pl, stype = int);
            CREATE VIEW "{other}".v AS SELECT * FROM "{tenant}".users;
            CREATE TYPE "{other}".status AS ENUM ('x');
        """))
    assert pg_fingerprint(fpx_pg, tenant) == before


def test_postgresql_migration_connections_prepare_nothing(make_project: Any, fpx_pg: Engine, tmp_path: Path) -> None:
    """psycopg 3 with automatic preparation off: no DEALLOCATE ALL after each DDL."""
    url = fpx_pg.url.render_as_string(hide_password=False)
    project = make_project({"databases": {"app": {"url": url, "version_table": "fpx_version"}}}, versions=False)
    folder = project.root / "versions" / "app"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a1_probe.py").write_text(textwrap.dedent('''
        from alembic import op
        import sqlalchemy as sa

        revision = "a1"
        down_revision = None
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
            raw = op.get_bind().connection.dbapi_connection
            op.create_table("fpx_probe", sa.Column("threshold", sa.Text()))
            op.execute(sa.text("INSERT INTO fpx_probe VALUES (:t)").bindparams(
                t=repr(getattr(raw, "prepare_threshold", "no such attribute"))))


        def downgrade() -> None:
            op.drop_table("fpx_probe")
    '''))
    result = project.cli("upgrade", "--all")
    assert result.exit_code == 0, result.output
    with fpx_pg.begin() as connection:
        assert connection.exec_driver_sql("SELECT threshold FROM fpx_probe").scalar() == "None"
        connection.exec_driver_sql("DROP TABLE fpx_probe; DROP TABLE fpx_version")


def test_postgresql_prepare_threshold_only_for_psycopg() -> None:
    from orchestrator.targets import Target

    def args(url: str) -> dict[str, Any]:
        return PostgreSQL().connect_args(Target(database=cast(Any, None), url=url))

    assert args("postgresql+psycopg://h/d")["prepare_threshold"] is None
    assert args("postgresql://h/d")["prepare_threshold"] is None  # psycopg is SQLAlchemy 2.1's default
    assert args("postgresql+psycopg_async://h/d")["prepare_threshold"] is None
    assert "prepare_threshold" not in args("postgresql+psycopg2://h/d")
    assert "prepare_threshold" not in args("postgresql+asyncpg://h/d")


# ---------------------------------------------------------------------------- MariaDB

MYSQL_SCHEMA = [
    "CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(200) NOT NULL, plan VARCHAR(20) NOT NULL DEFAULT 'free', "
    "CONSTRAINT uq_users_email UNIQUE (email))",
    "CREATE TABLE orders (id INT PRIMARY KEY, user_id INT NOT NULL, total DECIMAL(10, 2), "
    "CONSTRAINT fk_orders_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE)",
    "CREATE INDEX ix_orders_total ON orders (total)",
]


@pytest.fixture
def fpx_mysql() -> Iterator[Any]:
    """Factory: a MariaDB database fpx_... with the given statements; dropped afterwards."""
    _server_or_skip(MYSQL_URL, "MariaDB")
    made: list[str] = []
    admin = create_engine(MYSQL_URL, poolclass=NullPool)

    def make(statements: list[str]) -> str:
        name = unique_name("fpx")
        with admin.begin() as connection:
            connection.execute(text(f"CREATE DATABASE `{name}`"))
        made.append(name)
        engine = create_engine(make_url(MYSQL_URL).set(database=name), poolclass=NullPool)
        try:
            with engine.begin() as connection:
                for statement in statements:
                    connection.exec_driver_sql(statement)
            with engine.connect() as connection:
                fingerprint = MySQL().schema_fingerprint(connection)
                assert fingerprint is not None
                return fingerprint
        finally:
            engine.dispose()

    try:
        yield make
    finally:
        with admin.begin() as connection:
            for name in made:
                connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


def test_mysql_identical_databases_are_equal_and_changes_differ(fpx_mysql: Any) -> None:
    base = fpx_mysql(MYSQL_SCHEMA)
    assert fpx_mysql(MYSQL_SCHEMA) == base  # another database's name, the same digest
    changes = [
        ("DECIMAL(10, 2)", "DECIMAL(12, 2)"),
        ("DEFAULT 'free'", "DEFAULT 'paid'"),
        ("ON DELETE CASCADE", "ON DELETE RESTRICT"),
        ("REFERENCES users (id)", "REFERENCES orders (id)"),
        ("ON orders (total)", "ON orders (user_id)"),
    ]
    for old, new in changes:
        assert fpx_mysql([s.replace(old, new) for s in MYSQL_SCHEMA]) != base, (old, new)


@pytest.mark.parametrize("statement, catalog", [
    ("SHOW CREATE TABLE `accounts`", True),
    ("SHOW FULL TABLES FROM `fpx_db`", True),
    ("DESCRIBE `accounts`", True),
    ("SELECT TABLE_NAME FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = %(s)s", True),
    ("SELECT information_schema.columns.table_schema FROM information_schema.columns", True),
    ("SELECT count(*) FROM accounts", False),
    ("UPDATE accounts SET plan = 'free'", False),
])
def test_mysql_catalog_queries_are_those_reflection_sends(statement: str, catalog: bool) -> None:
    assert MySQL().is_catalog_query(statement) is catalog
