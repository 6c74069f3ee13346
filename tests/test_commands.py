"""Every `orchestrate` command against real databases, three dialects at once.

The shop example's three databases are spread over SQLite (a file in tmp_path),
PostgreSQL and MariaDB, and the layout is rotated so that every dialect runs every
database's revisions, data migrations included. Nothing is mocked: each command runs the
CLI in-process and the tests then look inside the databases themselves.

After every command the tests assert that no session is left connected to the PostgreSQL
or MariaDB database (see ``Stack.run``).
"""
from __future__ import annotations

import gc
import json
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import REPO, Project, mysql_connections, pg_connections, shop_config, sqlite_url
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

NAMES = ("users", "catalog", "orders")

USERS_1, USERS_HEAD = "3f9a1c2b7d40", "8e21d6f0a5b3"
CATALOG_1, CATALOG_HEAD = "5c7e0b9d2a14", "c4d18f3e6b72"
ORDERS_1, ORDERS_2, ORDERS_3, ORDERS_HEAD = "1d6b9e4a0f27", "7a3c5e81b9d0", "b92f4d06c1e8", "e05a7c3d9f61"
HEADS = {"users": USERS_HEAD, "catalog": CATALOG_HEAD, "orders": ORDERS_HEAD}
REVISIONS = {
    "users": [USERS_1, USERS_HEAD],
    "catalog": [CATALOG_1, CATALOG_HEAD],
    "orders": [ORDERS_1, ORDERS_2, ORDERS_3, ORDERS_HEAD],
}
MODEL_TABLES = {
    "users": {"users", "api_keys"},
    "catalog": {"categories", "products"},
    "orders": {"orders", "order_lines"},
}
SEED_CATEGORIES = {"Books", "Electronics", "Garden"}

# users / catalog / orders -> dialect. MIXED is the layout most tests use; ROTATIONS put
# every database on every dialect once.
MIXED = {"users": "sqlite", "catalog": "postgresql", "orders": "mysql"}
ROTATIONS = [
    pytest.param(MIXED, id="users-sqlite_catalog-pg_orders-mysql"),
    pytest.param({"users": "mysql", "catalog": "sqlite", "orders": "postgresql"}, id="users-mysql_catalog-sqlite_orders-pg"),
    pytest.param({"users": "postgresql", "catalog": "mysql", "orders": "sqlite"}, id="users-pg_catalog-mysql_orders-sqlite"),
]

SECRET = "hunter22"
DOWN_URL = f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/x"
DOWN_URL_MASKED = "postgresql+psycopg://u:***@127.0.0.1:1/x"


# ---------------------------------------------------------------------- looking inside databases


def sync_url(url: str) -> str:
    """The same database through a sync driver (for the tests' own inspection)."""
    parsed = make_url(url)
    swap = {"postgresql+psycopg_async": "postgresql+psycopg", "sqlite+aiosqlite": "sqlite"}
    name = parsed.drivername
    if name in swap:
        parsed = parsed.set(drivername=swap[name])
    return parsed.render_as_string(hide_password=False)


def _engine(url: str):
    return create_engine(sync_url(url), poolclass=NullPool)


def table_names(url: str) -> set[str]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def column_names(url: str, table: str) -> set[str]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return {c["name"] for c in inspect(connection).get_columns(table)}
    finally:
        engine.dispose()


def index_names(url: str, table: str) -> set[str]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return {i["name"] for i in inspect(connection).get_indexes(table)}
    finally:
        engine.dispose()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = _engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def heads_of(document: dict[str, Any]) -> dict[str, list[str]]:
    """database -> heads, from `heads --json`."""
    return {t["database"]: t["head"] for t in document["targets"]}


def version_rows(url: str, name: str) -> list[str] | None:
    """The revisions in ``alembic_version_<name>``; None when that table does not exist."""
    table = f"alembic_version_{name}"
    if table not in table_names(url):
        return None
    return sorted(row[0] for row in query(url, f"SELECT version_num FROM {table}"))


def version_tables(url: str) -> set[str]:
    return {t for t in table_names(url) if t.startswith("alembic_version")}


def open_sessions(url: str) -> list[dict[str, Any]]:
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return pg_connections(sync_url(url))
    if backend in ("mysql", "mariadb"):
        return mysql_connections(sync_url(url))
    return []


def assert_no_sessions(urls: list[str], after: str) -> None:
    """No session left connected. A closed session can linger in pg_stat_activity /
    processlist for a few milliseconds after the client hung up, hence the short grace."""
    deadline = time.monotonic() + 1.0
    while True:
        left = {url: open_sessions(url) for url in urls}
        left = {make_url(u).render_as_string(hide_password=True): s for u, s in left.items() if s}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"`orchestrate {after}` left sessions open: {left}"


# ---------------------------------------------------------------------- the project under test


@dataclass
class Stack:
    """A project whose three databases live on (possibly) three servers."""

    project: Project
    urls: dict[str, str]
    dialects: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.project.root

    def run(self, *args: str, code: int | None = 0) -> Result:
        """Run the CLI; check the exit code and that no connection was left open."""
        # With the cyclic garbage collector paused, a connection that was not closed
        # explicitly stays open (instead of being closed by chance during the check).
        gc.disable()
        try:
            result = self.project.cli(*args)
            shown = " ".join(args)
            problems = []
            if code is not None and result.exit_code != code:
                problems.append(f"`orchestrate {shown}` exited {result.exit_code}, expected {code}")
            try:
                assert_no_sessions(list(self.urls.values()), shown)
            except AssertionError as exc:
                problems.append(str(exc))
        finally:
            gc.enable()
        assert not problems, "\n".join(problems) + f"\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        return result

    def json(self, *args: str, code: int | None = 0) -> Any:
        """The command's --json document; for reading commands, its list of targets."""
        result = self.run(*args, "--json", code=code)
        document = json.loads(result.stdout)
        return document["targets"] if args[0] in ("status", "current", "check") else document

    def versions(self) -> dict[str, list[str] | None]:
        return {name: version_rows(url, name) for name, url in self.urls.items()}

    def assert_versions(self, expected: dict[str, list[str] | None]) -> None:
        """Each database holds exactly its own version table (or none), at the revision given."""
        for name, url in self.urls.items():
            want = expected[name]
            present = version_tables(url)
            assert present == (set() if want is None else {f"alembic_version_{name}"}), (
                f"{name} ({self.dialects.get(name)}): version tables {present}"
            )
            assert version_rows(url, name) == want, f"{name} ({self.dialects.get(name)})"

    def tables(self, name: str) -> set[str]:
        return table_names(self.urls[name])

    def model_tables(self, name: str) -> set[str]:
        return self.tables(name) - version_tables(self.urls[name])


def _url_for(dialect: str, name: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if dialect == "sqlite":
        return sqlite_url(tmp_path / "dbs" / f"{name}.db")
    if dialect == "postgresql":
        return request.getfixturevalue("pg_url")
    if dialect == "mysql":
        return request.getfixturevalue("mysql_url")
    raise AssertionError(dialect)


def build_stack(
    make_project: Callable[..., Project],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    layout: dict[str, str],
    overrides: dict[str, str] | None = None,
    edit_config: Callable[[dict[str, Any]], None] | None = None,
) -> Stack:
    (tmp_path / "dbs").mkdir(exist_ok=True)
    urls = {name: _url_for(layout[name], name, tmp_path, request) for name in NAMES}
    urls.update(overrides or {})
    config = shop_config(urls)
    if edit_config:
        edit_config(config)
    project = make_project(config)
    return Stack(project=project, urls=urls, dialects=dict(layout))


@pytest.fixture
def stack(make_project, tmp_path, request) -> Stack:
    """users on SQLite, catalog on PostgreSQL, orders on MariaDB."""
    return build_stack(make_project, tmp_path, request, MIXED)


@pytest.fixture(params=ROTATIONS)
def rotated(make_project, tmp_path, request) -> Stack:
    return build_stack(make_project, tmp_path, request, request.param)


def target_lines(output: str) -> dict[str, str]:
    """The per-target line of each database in a command's human output."""
    lines: dict[str, str] = {}
    for line in output.splitlines():
        word = line.split(" ", 1)[0]
        if word in NAMES and word not in lines:
            lines[word] = line
    return lines


def order_in(output: str) -> list[str]:
    """Database names in the order their result lines appear."""
    seen: list[str] = []
    for line in output.splitlines():
        word = line.split(" ", 1)[0]
        if word in NAMES and word not in seen:
            seen.append(word)
    return seen


def rev_of(source: str) -> str:
    match = re.search(r"^revision(?:: str)? = ['\"](\w+)['\"]", source, re.M)
    assert match, source
    return match.group(1)


def down_of(source: str) -> str:
    match = re.search(r"^down_revision(?:: [^=]+)? = ['\"](\w+)['\"]", source, re.M)
    assert match, source
    return match.group(1)


def write_revision(folder: Path, rev: str, down: str, body: str, message: str = "broken") -> Path:
    path = folder / f"{rev}_{message.replace(' ', '_')}.py"
    path.write_text(
        f'''"""{message}

Revision ID: {rev}
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
''',
        encoding="utf-8",
    )
    return path


# ====================================================================== upgrade / downgrade


def test_upgrade_and_downgrade_lifecycle_with_data_migrations(rotated: Stack) -> None:
    s = rotated
    urls = s.urls

    # upgrade -n NAME to a specific revision: only that database changes
    s.run("upgrade", USERS_1, "-n", "users")
    s.assert_versions({"users": [USERS_1], "catalog": None, "orders": None})
    assert s.model_tables("users") == {"users"}
    assert s.model_tables("catalog") == set() and s.model_tables("orders") == set()

    s.run("upgrade", CATALOG_1, "-n", "catalog")
    s.run("upgrade", ORDERS_2, "-n", "orders")
    s.assert_versions({"users": [USERS_1], "catalog": [CATALOG_1], "orders": [ORDERS_2]})
    assert s.model_tables("orders") == {"orders", "order_lines"}
    assert "total_cents" not in column_names(urls["orders"], "orders")

    pending = {row["database"]: row["pending"] for row in s.json("status")}
    assert pending == {"users": 1, "catalog": 1, "orders": 2}

    # data that the remaining data migrations must carry along
    execute(urls["users"], "INSERT INTO users (id, email) VALUES (1, 'ann@example.com')")
    execute(
        urls["orders"],
        "INSERT INTO orders (id, user_id, status) VALUES (1, 1, 'PAID'), (2, 1, 'Shipped'), (3, 1, 'new')",
        "INSERT INTO order_lines (id, order_id, product_id, quantity, unit_price_cents) "
        "VALUES (1, 1, 10, 2, 250), (2, 1, 11, 1, 1000), (3, 2, 10, 3, 100)",
    )

    # upgrade --all: dependency order, every database to its head
    result = s.run("upgrade", "--all")
    order = order_in(result.stdout)
    assert order.index("orders") > order.index("users")
    assert order.index("orders") > order.index("catalog")
    lines = target_lines(result.stdout)
    for name in NAMES:
        assert "upgraded" in lines[name], result.stdout
        assert HEADS[name] in lines[name], result.stdout
    s.assert_versions({name: [HEADS[name]] for name in NAMES})
    for name in NAMES:
        assert s.model_tables(name) == MODEL_TABLES[name], name

    # the data migrations ran on this dialect
    assert [bool(v) for (v,) in query(urls["users"], "SELECT is_active FROM users")] == [True]
    assert {n for (n,) in query(urls["catalog"], "SELECT name FROM categories")} == SEED_CATEGORIES
    assert "ix_products_name" in index_names(urls["catalog"], "products")
    rows = query(urls["orders"], "SELECT id, total_cents, status FROM orders ORDER BY id")
    assert rows == [(1, 1500, "paid"), (2, 300, "shipped"), (3, 0, "new")]

    # rerun: nothing to do
    result = s.run("upgrade", "--all")
    for name in NAMES:
        assert "up to date" in target_lines(result.stdout)[name], result.stdout
    report = s.json("upgrade", "--all")
    assert [t["status"] for t in report["targets"]] == ["noop", "noop", "noop"]
    assert report["ok"] is True
    s.assert_versions({name: [HEADS[name]] for name in NAMES})

    # models and databases agree on every dialect
    result = s.run("check")
    for name in NAMES:
        assert "models and database match" in target_lines(result.stdout)[name], result.stdout

    # downgrade -1 -n orders: only orders moves, one step
    result = s.run("downgrade", "-n", "orders", "--", "-1")
    assert "downgraded" in target_lines(result.stdout)["orders"]
    assert set(target_lines(result.stdout)) == {"orders"}
    s.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_HEAD], "orders": [ORDERS_3]})

    # catalog's data downgrade detaches products from the seeded categories
    execute(
        urls["catalog"],
        "INSERT INTO categories (name) VALUES ('Toys')",
        "INSERT INTO products (id, sku, name, category_id, price_cents) "
        "SELECT 1, 'B-1', 'A book', id, 999 FROM categories WHERE name = 'Books'",
    )
    s.run("downgrade", "-n", "catalog", "--", "-1")
    s.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_1], "orders": [ORDERS_3]})
    assert {n for (n,) in query(urls["catalog"], "SELECT name FROM categories")} == {"Toys"}
    assert query(urls["catalog"], "SELECT category_id FROM products") == [(None,)]
    assert "ix_products_name" not in index_names(urls["catalog"], "products")

    # downgrade base --all: dependents first, every table gone, version rows gone
    result = s.run("downgrade", "base", "--all")
    order = order_in(result.stdout)
    assert order.index("orders") < order.index("users")
    assert order.index("orders") < order.index("catalog")
    for name in NAMES:
        assert "downgraded" in target_lines(result.stdout)[name], result.stdout
        assert s.model_tables(name) == set(), name
        assert version_rows(urls[name], name) == [], name
        assert version_tables(urls[name]) == {f"alembic_version_{name}"}, name


def test_upgrade_one_database_leaves_the_others_alone(stack: Stack) -> None:
    for name in NAMES:
        result = stack.run("upgrade", "-n", name)
        assert set(target_lines(result.stdout)) == {name}, result.stdout
        others = [n for n in NAMES if n != name]
        for other in others:
            touched = NAMES.index(other) < NAMES.index(name)
            assert stack.versions()[other] == ([HEADS[other]] if touched else None)
        assert stack.versions()[name] == [HEADS[name]]
        assert stack.model_tables(name) == MODEL_TABLES[name]
    stack.assert_versions({name: [HEADS[name]] for name in NAMES})


def test_upgrade_needs_a_selection_and_knows_the_names(stack: Stack) -> None:
    result = stack.run("upgrade", code=2)
    assert "-n NAME" in result.stderr and "--all" in result.stderr
    result = stack.run("upgrade", "-n", "nope", code=2)
    assert "nope" in result.stderr
    result = stack.run("upgrade", "-n", "users", "--all", code=2)
    stack.assert_versions({"users": None, "catalog": None, "orders": None})


def test_upgrade_to_an_unknown_revision_is_refused_before_anything_runs(stack: Stack) -> None:
    result = stack.run("upgrade", "abc123def456", "-n", "catalog", code=2)
    assert "abc123def456" in result.stdout + result.stderr
    stack.assert_versions({"users": None, "catalog": None, "orders": None})


def test_upgrade_json_and_report(stack: Stack, tmp_path: Path) -> None:
    report_path = tmp_path / "out" / "report.json"
    result = stack.run("upgrade", "--all", "--report", str(report_path))
    report = json.loads(report_path.read_text())
    assert report["command"] == "upgrade" and report["ok"] is True
    targets = {t["target"]: t for t in report["targets"]}
    assert [t["target"] for t in report["targets"]].index("orders") == 2
    for name in NAMES:
        assert targets[name]["status"] == "upgraded"
        assert targets[name]["before"] == []
        assert targets[name]["after"] == [HEADS[name]]
        assert targets[name]["applied"] == REVISIONS[name]
        assert targets[name]["failed_revision"] is None
    assert "3 targets" in result.stdout


def test_downgrade_stops_where_asked_and_reports(stack: Stack) -> None:
    stack.run("upgrade", "--all")
    report = stack.json("downgrade", ORDERS_1, "-n", "orders")
    (orders,) = report["targets"]
    assert orders["status"] == "downgraded"
    assert orders["before"] == [ORDERS_HEAD] and orders["after"] == [ORDERS_1]
    stack.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_HEAD], "orders": [ORDERS_1]})
    assert stack.model_tables("orders") == {"orders"}
    # downgrading where it already is: a no-op
    report = stack.json("downgrade", ORDERS_1, "-n", "orders")
    assert report["targets"][0]["status"] == "noop"


def test_downgrade_relative_revision_as_written_in_the_help(stack: Stack) -> None:
    """`downgrade -1 -n orders`, as the command's help suggests (REVISION e.g. -1)."""
    stack.run("upgrade", "--all")
    result = stack.run("downgrade", "-1", "-n", "orders")
    assert "downgraded" in target_lines(result.stdout)["orders"]
    stack.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_HEAD], "orders": [ORDERS_3]})
    stack.run("downgrade", "-2", "--all")
    stack.assert_versions({"users": [], "catalog": [], "orders": [ORDERS_1]})


def test_downgrade_needs_a_revision(stack: Stack) -> None:
    stack.run("downgrade", "--all", code=2)


# ====================================================================== stamp


def test_stamp_head_writes_the_version_row_only(stack: Stack) -> None:
    result = stack.run("stamp", "head", "-n", "users")
    assert "stamped" in target_lines(result.stdout)["users"]
    stack.assert_versions({"users": [USERS_HEAD], "catalog": None, "orders": None})
    assert stack.model_tables("users") == set()

    # now "upgrade" has nothing to do for users
    report = stack.json("upgrade", "-n", "users")
    assert report["targets"][0]["status"] == "noop"
    assert stack.model_tables("users") == set()

    # stamping again to the same revision: a no-op
    report = stack.json("stamp", "head", "-n", "users")
    assert report["targets"][0]["status"] == "noop"

    stack.run("stamp", "base", "-n", "users")
    assert version_rows(stack.urls["users"], "users") == []
    assert stack.model_tables("users") == set()


def test_stamp_all_on_every_dialect(stack: Stack) -> None:
    report = stack.json("stamp", "head", "--all")
    assert {t["target"]: t["status"] for t in report["targets"]} == {n: "stamped" for n in NAMES}
    stack.assert_versions({name: [HEADS[name]] for name in NAMES})
    for name in NAMES:
        assert stack.model_tables(name) == set()
    stack.run("stamp", CATALOG_1, "-n", "catalog")
    stack.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_1], "orders": [ORDERS_HEAD]})
    stack.run("stamp", "base", "--all")
    stack.assert_versions({name: [] for name in NAMES})


@pytest.mark.parametrize("name", ["users", "catalog", "orders"])
def test_stamp_purge_replaces_an_unknown_revision(stack: Stack, name: str) -> None:
    url = stack.urls[name]
    stack.run("stamp", "head", "-n", name)
    execute(url, f"UPDATE alembic_version_{name} SET version_num = '0000deadbeef'")

    result = stack.run("stamp", "head", "-n", name, code=1)
    assert "0000deadbeef" in result.stdout + result.stderr
    assert version_rows(url, name) == ["0000deadbeef"]

    result = stack.run("stamp", "head", "-n", name, "--purge")
    assert "stamped" in target_lines(result.stdout)[name]
    assert version_rows(url, name) == [HEADS[name]]
    assert stack.model_tables(name) == set()


# ====================================================================== reading commands


def test_current_status_heads_before_and_after(stack: Stack) -> None:
    # before anything ran
    current = {row["target"]: row for row in stack.json("current")}
    assert set(current) == set(NAMES)
    assert all(row["after"] == [] and row["error"] is None for row in current.values())

    status = {row["database"]: row for row in stack.json("status")}
    for name in NAMES:
        assert status[name]["after"] == []
        assert status[name]["head"] == [HEADS[name]]
        assert status[name]["pending"] == len(REVISIONS[name])
        assert status[name]["error"] is None
        assert "***" not in status[name]["url"]  # no password here: nothing to mask

    result = stack.run("status")
    for name in NAMES:
        assert name in result.stdout
    assert "behind" in result.stdout

    result = stack.run("current")
    assert "4 behind" in target_lines(result.stdout)["orders"]

    # part way
    stack.run("upgrade", USERS_1, "-n", "users")
    stack.run("upgrade", ORDERS_2, "-n", "orders")
    status = {row["database"]: row for row in stack.json("status")}
    assert (status["users"]["after"], status["users"]["pending"]) == ([USERS_1], 1)
    assert (status["catalog"]["after"], status["catalog"]["pending"]) == ([], 2)
    assert (status["orders"]["after"], status["orders"]["pending"]) == ([ORDERS_2], 2)
    result = stack.run("current")
    lines = target_lines(result.stdout)
    assert USERS_1 in lines["users"] and "1 behind" in lines["users"]
    assert ORDERS_2 in lines["orders"] and "2 behind" in lines["orders"]
    assert "base" in lines["catalog"] and "2 behind" in lines["catalog"]

    # -n narrows the reading commands
    assert [row["target"] for row in stack.json("current", "-n", "orders")] == ["orders"]
    assert [row["database"] for row in stack.json("status", "-n", "users")] == ["users"]

    # after
    stack.run("upgrade", "--all")
    status = {row["database"]: row for row in stack.json("status")}
    for name in NAMES:
        assert status[name]["after"] == [HEADS[name]] == status[name]["head"]
        assert status[name]["pending"] == 0
    current = {row["target"]: row["after"] for row in stack.json("current")}
    assert current == {name: [HEADS[name]] for name in NAMES}
    result = stack.run("current")
    for name in NAMES:
        assert HEADS[name] in target_lines(result.stdout)[name]
        assert "(head)" in target_lines(result.stdout)[name]
    result = stack.run("status")
    assert "behind" not in result.stdout

    # reading never wrote anything
    stack.assert_versions({name: [HEADS[name]] for name in NAMES})


def test_reading_commands_do_not_create_version_tables(stack: Stack) -> None:
    stack.run("current")
    stack.run("status")
    stack.run("heads")
    stack.run("history")
    stack.assert_versions({"users": None, "catalog": None, "orders": None})
    for name in NAMES:
        assert stack.tables(name) == set()
    stack.run("check", code=1)  # models differ from empty databases
    stack.assert_versions({"users": None, "catalog": None, "orders": None})
    for name in NAMES:
        assert stack.tables(name) == set()


def test_heads_json(stack: Stack) -> None:
    assert heads_of(stack.json("heads")) == {name: [HEADS[name]] for name in NAMES}
    assert heads_of(stack.json("heads", "-n", "catalog")) == {"catalog": [CATALOG_HEAD]}
    result = stack.run("heads")
    for name in NAMES:
        assert HEADS[name] in target_lines(result.stdout)[name]


def test_history_plain_verbose_and_json(stack: Stack) -> None:
    result = stack.run("history")
    out = result.stdout
    for name in NAMES:
        assert name in out
        for rev in REVISIONS[name]:
            assert rev in out, rev
    # newest first, per database, in the order of the file
    entries = [line.strip() for line in out.splitlines() if "->" in line]
    newest = [line.split("->")[1].split(",")[0].split()[0] for line in entries]
    assert newest == [*reversed(REVISIONS["users"]), *reversed(REVISIONS["catalog"]), *reversed(REVISIONS["orders"])]
    assert out.index("users (") < out.index("catalog (") < out.index("orders (")
    assert "create users table" in out
    assert "(head)" in out

    verbose = stack.run("history", "--verbose").stdout
    assert "Revision ID: " + ORDERS_HEAD in verbose
    assert "Revises: " + ORDERS_3 in verbose
    assert "Path:" in verbose
    assert "normalise orders.status to lowercase" in verbose
    assert len(verbose) > len(out)

    only = stack.run("history", "-n", "orders").stdout
    assert ORDERS_1 in only and USERS_1 not in only and CATALOG_1 not in only

    data = {t["database"]: t["revisions"] for t in stack.json("history")["targets"]}
    assert [e["revision"] for e in data["orders"]] == list(reversed(REVISIONS["orders"]))
    assert [e["is_head"] for e in data["users"]] == [True, False]
    assert data["catalog"][0]["down_revision"] == CATALOG_1


# ====================================================================== check


def test_check_passes_after_upgrade(stack: Stack) -> None:
    stack.run("upgrade", "--all")
    result = stack.run("check")
    for name in NAMES:
        assert "models and database match" in target_lines(result.stdout)[name]
    data = stack.json("check")
    assert [(row["database"], row["status"], row["differences"], row["error"]) for row in data] == [
        (name, "ok", [], None) for name in NAMES
    ]
    stack.run("check", "-n", "orders")


def test_check_lists_the_differences_of_a_database_that_lags(stack: Stack) -> None:
    stack.run("upgrade", "--all")
    # orders two steps behind: orders.total_cents is missing
    stack.run("downgrade", ORDERS_2, "-n", "orders")
    result = stack.run("check", code=1)
    lines = target_lines(result.stdout)
    assert "models and database match" in lines["users"]
    assert "models and database match" in lines["catalog"]
    stack.run("check", "-n", "users", "-n", "catalog")
    data = {row["database"]: row for row in stack.json("check", code=1)}
    assert data["users"]["status"] == data["catalog"]["status"] == "ok"
    # the difference itself is listed, not just "not up to date"
    assert "difference" in lines["orders"], result.stdout
    assert "orders.total_cents" in result.stdout
    assert data["orders"]["status"] == "different", data["orders"]
    assert any("total_cents" in d and d.startswith("+") for d in data["orders"]["differences"])


def test_check_on_empty_databases_lists_every_table(stack: Stack, tmp_path: Path) -> None:
    data = {row["database"]: row for row in stack.json("check", code=1)}
    # users is a SQLite file that does not exist yet: compared with an empty database, not created
    assert data["users"]["missing"] is True and not (tmp_path / "dbs" / "users.db").exists()
    for name in NAMES:
        assert data[name]["status"] == "different", data[name]
        tables = {d.removeprefix("+ table ") for d in data[name]["differences"] if d.startswith("+ table ")}
        assert tables == MODEL_TABLES[name], data[name]
        assert all(d.startswith("+") for d in data[name]["differences"]), data[name]
    stack.assert_versions({"users": None, "catalog": None, "orders": None})


def test_check_after_a_data_only_downgrade_says_the_database_lags(stack: Stack) -> None:
    """e05a7c3d9f61 changes data only: one step down the schema still matches the models,
    but the database lags its head, so `check` must not pass it."""
    stack.run("upgrade", "--all")
    stack.run("downgrade", "-n", "orders", "--", "-1")
    stack.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_HEAD], "orders": [ORDERS_3]})
    result = stack.run("check", code=1)
    lines = target_lines(result.stdout)
    assert "models and database match" in lines["users"] and "models and database match" in lines["catalog"]
    out = result.stdout + result.stderr
    assert ORDERS_HEAD in out or "behind" in out or "not up to date" in out
    data = {row["database"]: row for row in stack.json("check", code=1)}
    assert data["orders"]["status"] != "ok"
    assert data["users"]["status"] == data["catalog"]["status"] == "ok"


def test_check_sees_a_column_dropped_by_hand(stack: Stack) -> None:
    stack.run("upgrade", "--all")
    execute(stack.urls["catalog"], "ALTER TABLE products DROP COLUMN price_cents")
    execute(stack.urls["users"], "ALTER TABLE users DROP COLUMN display_name")
    execute(stack.urls["orders"], "DROP TABLE order_lines")
    data = {row["database"]: row for row in stack.json("check", code=1)}
    assert data["catalog"]["differences"] and all(
        "products.price_cents" in d for d in data["catalog"]["differences"]
    ), data["catalog"]
    assert any("users.display_name" in d for d in data["users"]["differences"]), data["users"]
    assert any("table order_lines" in d for d in data["orders"]["differences"]), data["orders"]
    result = stack.run("check", code=1)
    assert "products.price_cents" in result.stdout
    assert "--autogenerate" in result.stdout  # the hint


# ====================================================================== revision


MODEL_ADDITIONS = '''

# ---- added by the test: one column and one table more in the catalog
from sqlalchemy import Column, Table

Product.weight_grams = mapped_column(Integer, nullable=True)

suppliers = Table(
    "suppliers",
    catalog_metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(120), nullable=False),
)
'''


def _models_copy(tmp_path: Path) -> str:
    """A copy of the example's models, with their own MetaData, plus a column and a table."""
    module = f"shop_models_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "models_copy"
    folder.mkdir()
    source = (REPO / "examples" / "shop" / "models.py").read_text(encoding="utf-8")
    (folder / f"{module}.py").write_text(source + MODEL_ADDITIONS, encoding="utf-8")
    return module


@pytest.fixture
def copied_models(tmp_path: Path):
    modules: list[str] = []

    def make() -> tuple[str, Path]:
        module = _models_copy(tmp_path)
        modules.append(module)
        return module, tmp_path / "models_copy"

    yield make
    for module in modules:
        sys.modules.pop(module, None)


@pytest.mark.parametrize("layout", [
    pytest.param(MIXED, id="catalog-pg"),
    pytest.param({"users": "postgresql", "catalog": "mysql", "orders": "sqlite"}, id="catalog-mysql"),
    pytest.param({"users": "mysql", "catalog": "sqlite", "orders": "postgresql"}, id="catalog-sqlite"),
])
def test_revision_autogenerate_writes_only_this_databases_changes(
    make_project, tmp_path, request, copied_models, layout
) -> None:
    module, folder = copied_models()

    def edit(config: dict[str, Any]) -> None:
        config["sys_path"].append(str(folder))
        config["databases"]["catalog"]["metadata"] = f"{module}:catalog_metadata"

    s = build_stack(make_project, tmp_path, request, layout, edit_config=edit)
    s.run("upgrade", "--all")
    data = {row["database"]: row for row in s.json("check", code=1)}
    assert data["users"]["status"] == data["orders"]["status"] == "ok"
    assert sorted(data["catalog"]["differences"]) == sorted(
        ["+ table suppliers", "+ column products.weight_grams INTEGER"]
    ), data["catalog"]

    folders = {name: set((s.root / "versions" / name).glob("*.py")) for name in NAMES}
    result = s.run("revision", "-n", "catalog", "-m", "add x", "--autogenerate")
    assert "catalog: wrote" in result.stdout
    new = set((s.root / "versions" / "catalog").glob("*.py")) - folders["catalog"]
    assert len(new) == 1, new
    (path,) = new
    assert path.name.endswith("_add_x.py")
    assert f"versions/catalog/{path.name}" in result.stdout
    source = path.read_text()
    assert down_of(source) == CATALOG_HEAD
    assert "create_table('suppliers'" in source or 'create_table("suppliers"' in source
    assert "weight_grams" in source
    assert "add_column" in source
    assert "drop_table('suppliers')" in source or 'drop_table("suppliers")' in source
    for other in ("users", "api_keys", "orders", "order_lines", "categories"):
        assert f"'{other}'" not in source and f'"{other}"' not in source, other
    for name in ("users", "orders"):
        assert set((s.root / "versions" / name).glob("*.py")) == folders[name]

    new_rev = rev_of(source)
    assert heads_of(s.json("heads"))["catalog"] == [new_rev]

    # writing a revision does not touch the database
    s.assert_versions({name: [HEADS[name]] for name in NAMES})
    assert "suppliers" not in s.tables("catalog")

    result = s.run("upgrade", "-n", "catalog")
    assert new_rev in target_lines(result.stdout)["catalog"]
    assert "suppliers" in s.tables("catalog")
    assert "weight_grams" in column_names(s.urls["catalog"], "products")
    s.assert_versions({"users": [USERS_HEAD], "catalog": [new_rev], "orders": [ORDERS_HEAD]})
    s.run("check")

    # and it downgrades cleanly too
    s.run("downgrade", "-n", "catalog", "--", "-1")
    assert "suppliers" not in s.tables("catalog")
    assert "weight_grams" not in column_names(s.urls["catalog"], "products")


def test_revision_autogenerate_refuses_a_database_behind(stack: Stack) -> None:
    stack.run("upgrade", CATALOG_1, "-n", "catalog")
    before = set((stack.root / "versions" / "catalog").glob("*.py"))
    result = stack.run("revision", "-n", "catalog", "-m", "too early", "--autogenerate", code=1)
    assert "upgrade" in result.stderr
    assert set((stack.root / "versions" / "catalog").glob("*.py")) == before


def test_revision_plain_writes_an_empty_revision_on_the_head(stack: Stack) -> None:
    before = {name: set((stack.root / "versions" / name).glob("*.py")) for name in NAMES}
    result = stack.run("revision", "-n", "users", "-m", "hand written")
    assert "users: wrote" in result.stdout
    new = set((stack.root / "versions" / "users").glob("*.py")) - before["users"]
    assert len(new) == 1
    (path,) = new
    source = path.read_text()
    assert "hand written" in source
    assert down_of(source) == USERS_HEAD
    assert "def upgrade()" in source and "def downgrade()" in source
    assert "op.create_table" not in source
    for name in ("catalog", "orders"):
        assert set((stack.root / "versions" / name).glob("*.py")) == before[name]
    new_rev = rev_of(source)
    assert heads_of(stack.json("heads"))["users"] == [new_rev]
    # no database was touched (users' SQLite file need not even exist)
    stack.assert_versions({"users": None, "catalog": None, "orders": None})

    # --rev-id is honoured
    stack.run("revision", "-n", "orders", "-m", "fixed id", "--rev-id", "abc000000001")
    assert heads_of(stack.json("heads"))["orders"] == ["abc000000001"]
    stack.run("upgrade", "--all")
    stack.assert_versions({"users": [new_rev], "catalog": [CATALOG_HEAD], "orders": ["abc000000001"]})


@pytest.mark.parametrize("args", [
    ["--all"],
    ["-n", "users", "-n", "catalog"],
    [],
    ["-n", "nope"],
])
def test_revision_selection_is_a_usage_error(stack: Stack, args: list[str]) -> None:
    before = {name: set((stack.root / "versions" / name).glob("*.py")) for name in NAMES}
    result = stack.run("revision", *args, "-m", "x", code=2)
    assert "error:" in result.stderr
    after = {name: set((stack.root / "versions" / name).glob("*.py")) for name in NAMES}
    assert after == before


def test_revision_needs_a_message(stack: Stack) -> None:
    stack.run("revision", "-n", "users", code=2)


# ====================================================================== offline SQL


def _sections(output: str) -> dict[str, str]:
    parts = re.split(r"^-- orchestrate: (\w+).*$", output, flags=re.M)
    assert parts[0].strip() == "", parts[0][:200]
    names = parts[1::2]
    assert len(names) == len(set(names)), names
    return dict(zip(names, parts[2::2]))


# users on MariaDB, catalog on SQLite, orders on PostgreSQL. (The example's users and
# orders revisions use batch "move and copy" on SQLite, which needs a live connection to
# reflect the table, so they cannot be rendered offline for SQLite: see the test below.)
OFFLINE = {"users": "mysql", "catalog": "sqlite", "orders": "postgresql"}


@pytest.fixture
def offline(make_project, tmp_path, request) -> Stack:
    return build_stack(make_project, tmp_path, request, OFFLINE)


def test_upgrade_sql_prints_one_script_per_database_and_touches_nothing(offline: Stack, tmp_path: Path) -> None:
    s = offline
    result = s.run("upgrade", "--all", "--sql")
    headers = re.findall(r"^-- orchestrate: (\w+)", result.stdout, flags=re.M)
    assert headers.index("orders") == 2 and sorted(headers) == sorted(NAMES)
    sections = _sections(result.stdout)

    users, catalog, orders = sections["users"], sections["catalog"], sections["orders"]
    # each script creates its own version table, its own tables, and nothing else
    for name, sql in sections.items():
        assert f"CREATE TABLE alembic_version_{name}" in sql, name
        for other in NAMES:
            if other != name:
                assert f"alembic_version_{other}" not in sql, (name, other)
        for rev in REVISIONS[name]:
            assert rev in sql, (name, rev)
    assert "CREATE TABLE users" in users and "CREATE TABLE api_keys" in users
    assert "CREATE TABLE products" in catalog and "CREATE TABLE orders" not in catalog
    assert "CREATE TABLE order_lines" in orders and "CREATE TABLE products" not in orders

    # the dialect of each database
    assert "AUTO_INCREMENT" in users and "SERIAL" not in users  # MariaDB
    assert "SERIAL" in orders and "AUTO_INCREMENT" not in orders  # PostgreSQL
    assert "BEGIN;" in orders and "COMMIT;" in orders  # transactional DDL on PostgreSQL
    assert "SERIAL" not in catalog and "AUTO_INCREMENT" not in catalog  # SQLite
    assert "id INTEGER NOT NULL," in catalog
    # the data migrations are rendered with literal values
    assert "INSERT INTO categories (name) VALUES ('Books')" in catalog
    assert "lower(orders.status)" in orders.replace("LOWER", "lower")
    assert "UPDATE orders SET total_cents" in orders

    # no database touched
    s.assert_versions({"users": None, "catalog": None, "orders": None})
    for name in NAMES:
        assert s.tables(name) == set()
    assert not (tmp_path / "dbs" / "catalog.db").exists() or table_names(s.urls["catalog"]) == set()


def test_upgrade_sql_batch_on_sqlite_fails_that_database_only(stack: Stack) -> None:
    """users on SQLite: revision 8e21d6f0a5b3 adds a column with an expression default in
    batch mode, which SQLite can only do by copying the table; offline there is no table to
    reflect. That database fails with Alembic's explanation; catalog still prints, and
    orders, which depends on users, writes no SQL and is skipped naming users, as online."""
    result = stack.run("upgrade", "--all", "--sql", code=1)
    sections = _sections(result.stdout)
    assert list(sections) == ["users", "catalog"]
    assert "users" in result.stderr and "--sql" in result.stderr
    assert CATALOG_HEAD in sections["catalog"] and ORDERS_HEAD not in result.stdout
    assert "SERIAL" in sections["catalog"]
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert skipped and any("users" in line for line in skipped), result.stderr
    stack.assert_versions({"users": None, "catalog": None, "orders": None})


def test_upgrade_sql_with_a_range(stack: Stack) -> None:
    result = stack.run("upgrade", f"{CATALOG_1}:head", "-n", "catalog", "--sql")
    sections = _sections(result.stdout)
    assert list(sections) == ["catalog"]
    sql = sections["catalog"]
    assert CATALOG_HEAD in sql
    assert "CREATE TABLE products" not in sql
    assert "CREATE INDEX ix_products_name" in sql
    assert "CREATE TABLE alembic_version_catalog" not in sql
    stack.assert_versions({"users": None, "catalog": None, "orders": None})


def test_downgrade_sql_needs_a_range(offline: Stack) -> None:
    s = offline
    s.run("upgrade", "--all")
    result = s.run("downgrade", "head:base", "--all", "--sql")
    headers = re.findall(r"^-- orchestrate: (\w+)", result.stdout, flags=re.M)
    assert headers[0] == "orders" and sorted(headers) == sorted(NAMES)
    sections = _sections(result.stdout)
    assert "DROP TABLE order_lines" in sections["orders"]
    assert "DROP TABLE products" in sections["catalog"]
    assert "DELETE FROM categories" in sections["catalog"]
    assert "DROP TABLE api_keys" in sections["users"]
    # offline: the databases are still at head, every table still there
    s.assert_versions({name: [HEADS[name]] for name in NAMES})
    for name in NAMES:
        assert s.model_tables(name) == MODEL_TABLES[name]

    result = s.run("downgrade", "-n", "orders", "--sql", "--", "-1", code=None)
    assert result.exit_code != 0
    assert "FROM:TO" in result.stderr
    assert "DROP TABLE" not in result.stdout
    result = s.run("downgrade", "base", "--all", "--sql", code=None)
    assert result.exit_code != 0
    assert "FROM:TO" in result.stderr
    assert "DROP TABLE" not in result.stdout
    s.assert_versions({name: [HEADS[name]] for name in NAMES})


# ====================================================================== unversioned databases


@pytest.mark.parametrize("name", ["users", "catalog", "orders"])
def test_tables_without_a_version_table_ask_for_stamp(stack: Stack, name: str) -> None:
    stack.run("upgrade", "-n", name)
    url = stack.urls[name]
    execute(url, f"DROP TABLE alembic_version_{name}")
    tables_before = stack.tables(name)

    result = stack.run("upgrade", "--all", code=1)
    out = result.stdout + result.stderr
    assert f"orchestrate stamp -n {name} head" in out
    assert "version table" in out
    assert stack.tables(name) == tables_before  # nothing created, nothing dropped
    assert version_rows(url, name) is None
    if name != "orders":
        assert target_lines(result.stdout)["orders"].split()[1] == "skipped"

    result = stack.run("status")
    assert f"orchestrate stamp -n {name} head" in result.stdout
    result = stack.run("current")
    assert f"orchestrate stamp -n {name} head" in result.stdout

    # following the hint works
    stack.run("stamp", "head", "-n", name)
    stack.run("upgrade", "--all")
    stack.assert_versions({n: [HEADS[n]] for n in NAMES})
    stack.run("check")


# ====================================================================== failing revisions


BAD_REV = "ffff00000bad"
FAILING_BODIES = {
    "sql": '''    op.create_table("refunds", sa.Column("id", sa.Integer(), primary_key=True))
    op.add_column("orders", sa.Column("refunded", sa.Integer(), nullable=True))
    op.execute("INSERT INTO no_such_table_xyz (a) VALUES (1)")''',
    "raise": '''    op.create_table("refunds", sa.Column("id", sa.Integer(), primary_key=True))
    op.add_column("orders", sa.Column("refunded", sa.Integer(), nullable=True))
    raise RuntimeError("refunds are not ready")''',
}


@pytest.mark.parametrize("dialect,kind", [
    ("postgresql", "sql"),
    ("postgresql", "raise"),
    ("sqlite", "sql"),
    ("sqlite", "raise"),
    ("mysql", "sql"),
    ("aiosqlite", "sql"),
    ("psycopg_async", "raise"),
])
def test_failing_revision(make_project, tmp_path, request, dialect: str, kind: str) -> None:
    base = {"aiosqlite": "sqlite", "psycopg_async": "postgresql"}.get(dialect, dialect)
    layout = {"users": "sqlite", "catalog": "sqlite", "orders": base}
    overrides = {}
    if dialect == "aiosqlite":
        overrides["orders"] = sqlite_url(tmp_path / "dbs" / "orders.db").replace("sqlite://", "sqlite+aiosqlite://", 1)
    if dialect == "psycopg_async":
        overrides["orders"] = request.getfixturevalue("pg_url").replace("+psycopg://", "+psycopg_async://", 1)
    s = build_stack(make_project, tmp_path, request, layout, overrides=overrides)
    write_revision(s.root / "versions" / "orders", BAD_REV, ORDERS_HEAD, FAILING_BODIES[kind])

    report_path = tmp_path / "report.json"
    result = s.run("upgrade", "--all", "--report", str(report_path), code=1)
    out = result.stdout + result.stderr
    assert BAD_REV in out
    assert "broken" in out  # the revision's message
    if kind == "raise":
        assert "refunds are not ready" in out
    else:
        assert "no_such_table_xyz" in out

    # the revisions before it were applied and committed; the failing one was not recorded
    s.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_HEAD], "orders": [ORDERS_HEAD]})
    if dialect == "mysql":
        assert "may be partly applied" in out
        assert "refunds" in s.tables("orders")  # MariaDB committed that DDL at once: partly applied
    else:
        assert "refunds" not in s.tables("orders"), "the failing revision's DDL was not rolled back"
        assert "refunded" not in column_names(s.urls["orders"], "orders")
        assert "rolled back" in out
    assert s.model_tables("orders") >= MODEL_TABLES["orders"]

    report = json.loads(report_path.read_text())
    assert report["ok"] is False
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["orders"]["status"] == "failed"
    assert targets["orders"]["failed_revision"] == BAD_REV
    assert BAD_REV in targets["orders"]["error"]
    for name in ("users", "catalog"):
        assert targets[name]["status"] == "upgraded"
        assert targets[name]["after"] == [HEADS[name]]
        assert targets[name]["failed_revision"] is None

    # a rerun fails the same way, from where it stopped
    rerun = s.json("upgrade", "-n", "orders", code=1)
    (orders,) = rerun["targets"]
    assert orders["failed_revision"] == BAD_REV
    s.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_HEAD], "orders": [ORDERS_HEAD]})

    # status: one pending revision
    status = {row["database"]: row for row in s.json("status")}
    assert status["orders"]["pending"] == 1 and status["orders"]["head"] == [BAD_REV]

    # the report says where the failed target started and where its version table is now
    assert (targets["orders"]["before"], targets["orders"]["after"]) == ([], [ORDERS_HEAD])
    assert (orders["before"], orders["after"]) == ([ORDERS_HEAD], [ORDERS_HEAD])


def test_failing_database_skips_its_dependents(stack: Stack, tmp_path: Path) -> None:
    """catalog (PostgreSQL) fails; users (SQLite) still runs; orders (MariaDB) waits for both."""
    write_revision(
        stack.root / "versions" / "catalog", BAD_REV, CATALOG_HEAD,
        '''    op.create_table("brands", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("SELECT * FROM no_such_table_xyz")''',
    )
    report_path = tmp_path / "report.json"
    result = stack.run("upgrade", "--all", "--report", str(report_path), code=1)
    lines = target_lines(result.stdout)
    assert "upgraded" in lines["users"]
    assert "failed" in lines["catalog"] and BAD_REV in lines["catalog"]
    assert "skipped" in lines["orders"]
    assert "skipped because its dependency catalog (failed) did not succeed" in result.stdout

    report = json.loads(report_path.read_text())
    targets = {t["target"]: t for t in report["targets"]}
    assert [t["target"] for t in report["targets"]] == ["users", "catalog", "orders"]
    assert targets["users"]["status"] == "upgraded"
    assert targets["users"]["before"] == [] and targets["users"]["after"] == [USERS_HEAD]
    assert targets["catalog"]["status"] == "failed"
    assert targets["catalog"]["failed_revision"] == BAD_REV
    assert targets["orders"]["status"] == "skipped"
    assert "catalog" in targets["orders"]["error"]
    assert targets["orders"]["before"] is None and targets["orders"]["after"] is None  # never read: unknown
    assert report["counts"] == {"upgraded": 1, "failed": 1, "skipped": 1}

    stack.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_HEAD], "orders": None})
    assert "brands" not in stack.tables("catalog")
    assert stack.tables("orders") == set()

    # -n orders alone does not wait for a database that is not selected
    stack.run("upgrade", "-n", "orders")
    stack.assert_versions({"users": [USERS_HEAD], "catalog": [CATALOG_HEAD], "orders": [ORDERS_HEAD]})

    # the failed target's version table is at its previous head: the report must say so
    assert targets["catalog"]["before"] == [] and targets["catalog"]["after"] == [CATALOG_HEAD]


def test_failing_downgrade_skips_what_it_depends_on(stack: Stack) -> None:
    """Downgrading, users and catalog wait for orders (their dependent)."""
    stack.run("upgrade", "--all")
    execute(stack.urls["orders"], "DROP TABLE order_lines")  # downgrade of 7a3c5e81b9d0 will fail
    result = stack.run("downgrade", "base", "--all", code=1)
    lines = target_lines(result.stdout)
    assert "failed" in lines["orders"] and ORDERS_2 in lines["orders"]
    assert "skipped" in lines["users"] and "skipped" in lines["catalog"]
    assert stack.versions()["users"] == [USERS_HEAD]
    assert stack.versions()["catalog"] == [CATALOG_HEAD]
    assert stack.versions()["orders"] == [ORDERS_2]
    assert "may be partly applied" in result.stdout + result.stderr  # orders is on MariaDB


# ====================================================================== unreachable databases


def test_unreachable_database_fails_alone_and_hides_the_password(make_project, tmp_path, request) -> None:
    s = build_stack(make_project, tmp_path, request, MIXED, overrides={"catalog": DOWN_URL})
    live = {name: url for name, url in s.urls.items() if name != "catalog"}
    s.urls = live  # only check sessions on servers that exist

    outputs: list[str] = []
    report_path = tmp_path / "report.json"
    result = s.run("upgrade", "--all", "--report", str(report_path), code=1)
    outputs += [result.stdout, result.stderr]
    lines = target_lines(result.stdout)
    assert "upgraded" in lines["users"]
    assert "failed" in lines["catalog"]
    assert "skipped" in lines["orders"]
    assert "cannot connect" in result.stdout
    assert DOWN_URL_MASKED in result.stdout
    report_text = report_path.read_text()
    outputs.append(report_text)
    report = json.loads(report_text)
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["catalog"]["status"] == "failed"
    assert "cannot connect" in targets["catalog"]["error"]
    assert targets["catalog"]["url"] == DOWN_URL_MASKED
    assert version_rows(live["users"], "users") == [USERS_HEAD]

    # selected with it, orders waits for catalog; selected alone it runs
    result = s.run("upgrade", "-n", "orders", "-n", "catalog", code=1)
    outputs += [result.stdout, result.stderr]
    assert "skipped" in target_lines(result.stdout)["orders"]
    assert version_rows(live["orders"], "orders") is None
    result = s.run("upgrade", "-n", "orders")
    outputs += [result.stdout, result.stderr]
    assert "upgraded" in target_lines(result.stdout)["orders"]
    assert version_rows(live["orders"], "orders") == [ORDERS_HEAD]

    for args in (("status",), ("current",), ("check",), ("downgrade", "base", "--all"), ("stamp", "head", "--all")):
        result = s.run(*args, code=1)
        outputs += [result.stdout, result.stderr]
        assert "cannot connect" in result.stdout + result.stderr, args
        assert DOWN_URL_MASKED in result.stdout + result.stderr, args
    for args in (("status",), ("current",), ("check",)):
        result = s.run(*args, "--json", code=1)
        outputs += [result.stdout, result.stderr]
        rows = {row["database"]: row for row in json.loads(result.stdout)["targets"]}
        assert "cannot connect" in rows["catalog"]["error"]
        assert rows["users"]["error"] is None
    result = s.run("revision", "-n", "catalog", "-m", "nope", "--autogenerate", code=1)
    outputs += [result.stdout, result.stderr]
    assert "cannot connect" in result.stderr

    # offline SQL needs no connection at all
    result = s.run("upgrade", "-n", "catalog", "--sql")
    outputs += [result.stdout, result.stderr]
    assert "CREATE TABLE products" in result.stdout

    for output in outputs:
        assert SECRET not in output


def test_password_of_a_reachable_database_is_masked_too(make_project, tmp_path, request) -> None:
    """A real password on the MariaDB URL: shown as *** in status, reports, errors."""
    mysql = make_url(request.getfixturevalue("mysql_url"))
    wrong = mysql.set(password=SECRET).render_as_string(hide_password=False)
    s = build_stack(make_project, tmp_path, request, MIXED, overrides={"orders": wrong})
    s.urls = {n: u for n, u in s.urls.items() if n != "orders"} | {"orders_real": mysql.render_as_string(False)}
    result = s.run("upgrade", "-n", "orders", code=1)  # root has no password: access denied
    assert SECRET not in result.stdout + result.stderr
    assert "***" in result.stdout + result.stderr
    data = s.json("status", code=1)
    assert SECRET not in json.dumps(data)


# ====================================================================== async drivers


def test_async_drivers(make_project, tmp_path, request) -> None:
    pg = request.getfixturevalue("pg_url")
    overrides = {
        "users": sqlite_url(tmp_path / "dbs" / "users.db").replace("sqlite://", "sqlite+aiosqlite://", 1),
        "catalog": pg.replace("postgresql+psycopg://", "postgresql+psycopg_async://", 1),
    }
    assert overrides["catalog"].startswith("postgresql+psycopg_async://")
    s = build_stack(make_project, tmp_path, request, MIXED, overrides=overrides)

    result = s.run("upgrade", "--all")
    for name in NAMES:
        assert "upgraded" in target_lines(result.stdout)[name], result.stdout
    s.assert_versions({name: [HEADS[name]] for name in NAMES})
    for name in NAMES:
        assert s.model_tables(name) == MODEL_TABLES[name]
    assert {n for (n,) in query(s.urls["catalog"], "SELECT name FROM categories")} == SEED_CATEGORIES

    s.run("check")
    assert [row["after"] for row in s.json("current")] == [[HEADS[n]] for n in NAMES]
    status = {row["database"]: row["pending"] for row in s.json("status")}
    assert status == {"users": 0, "catalog": 0, "orders": 0}

    s.run("downgrade", "-n", "users", "-n", "catalog", "--", "-1")
    s.assert_versions({"users": [USERS_1], "catalog": [CATALOG_1], "orders": [ORDERS_HEAD]})
    assert "api_keys" not in s.tables("users")
    s.run("check", "-n", "users", code=1)
    s.run("upgrade", "--all")
    s.assert_versions({name: [HEADS[name]] for name in NAMES})
    report = s.json("stamp", "head", "-n", "users", "-n", "catalog")
    assert [t["status"] for t in report["targets"]] == ["noop", "noop"]
    s.run("check")
    s.run("downgrade", "base", "--all")
    for name in NAMES:
        assert s.model_tables(name) == set()


def test_async_revision_autogenerate(make_project, tmp_path, request, copied_models) -> None:
    module, folder = copied_models()
    pg = request.getfixturevalue("pg_url")
    overrides = {"catalog": pg.replace("postgresql+psycopg://", "postgresql+psycopg_async://", 1)}

    def edit(config: dict[str, Any]) -> None:
        config["sys_path"].append(str(folder))
        config["databases"]["catalog"]["metadata"] = f"{module}:catalog_metadata"

    s = build_stack(make_project, tmp_path, request, MIXED, overrides=overrides, edit_config=edit)
    s.run("upgrade", "--all")
    result = s.run("revision", "-n", "catalog", "-m", "add x", "--autogenerate")
    assert "catalog: wrote" in result.stdout
    s.run("upgrade", "-n", "catalog")
    assert "suppliers" in s.tables("catalog")
    s.run("check")
