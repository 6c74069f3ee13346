"""Shared fixtures: real servers, throwaway databases, and projects written to tmp_path.

PostgreSQL and MariaDB are reached through ORCH_TEST_PG_URL / ORCH_TEST_MYSQL_URL
(defaults: the servers on 127.0.0.1). Each test that asks for one gets a database of its
own, dropped afterwards. With ORCH_REQUIRE_SERVERS=1 an unreachable server fails the test
instead of skipping it.
"""
from __future__ import annotations

import os
import shutil
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("ORCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("ORCH_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_SERVERS = os.environ.get("ORCH_REQUIRE_SERVERS") == "1"


def _server_or_skip(url: str, what: str) -> None:
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        message = f"{what} at {make_url(url).render_as_string(hide_password=True)} is not reachable: {exc}"
        if REQUIRE_SERVERS:
            pytest.fail(message + " (ORCH_REQUIRE_SERVERS=1)")
        pytest.skip(message)
    finally:
        engine.dispose()


def unique_name(prefix: str = "orch_t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own; its URL."""
    _server_or_skip(PG_URL, "PostgreSQL")
    name = unique_name()
    admin = create_engine(PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB/MySQL database of this test's own; its URL."""
    _server_or_skip(MYSQL_URL, "MariaDB")
    name = unique_name()
    admin = create_engine(MYSQL_URL, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE DATABASE `{name}`"))
    try:
        yield make_url(MYSQL_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


def _sessions(admin_url: str, sql: str, url: str) -> list[dict[str, Any]]:
    admin = create_engine(admin_url, poolclass=NullPool)
    try:
        with admin.connect() as connection:
            return [dict(r) for r in connection.execute(text(sql), {"db": make_url(url).database}).mappings()]
    finally:
        admin.dispose()


def pg_connections(url: str) -> list[dict[str, Any]]:
    """Sessions other than ours connected to the database of ``url`` (pg_stat_activity)."""
    return _sessions(
        PG_URL,
        "SELECT pid, state, query FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()",
        url,
    )


def mysql_connections(url: str) -> list[dict[str, Any]]:
    """Sessions other than ours using the database of ``url`` (information_schema.processlist)."""
    return _sessions(
        MYSQL_URL,
        "SELECT id, command, info FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()",
        url,
    )


@dataclass
class Project:
    """A project written to a temporary folder: orchestrate.yaml, envs/, versions/."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "orchestrate.yaml"

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run `orchestrate -c <this project> ARGS` in-process; stdout and stderr kept apart."""
        from orchestrator.cli import cli

        runner = CliRunner()
        return runner.invoke(cli, ["-c", str(self.config), *args], env=env, catch_exceptions=False)

    def write_config(self, data: dict[str, Any] | str) -> None:
        text_ = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        self.config.write_text(textwrap.dedent(text_), encoding="utf-8")


def shop_config(urls: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """The bundled example's configuration, with URLs (default: SQLite files under var/)."""
    urls = urls or {}
    databases: dict[str, Any] = {}
    for name, deps in (("users", []), ("catalog", []), ("orders", ["users", "catalog"])):
        databases[name] = {
            "url": urls.get(name, f"sqlite:///var/{name}.db"),
            "metadata": f"examples.shop.models:{name}_metadata",
            "version_table": f"alembic_version_{name}",
        }
        if deps:
            databases[name]["depends_on"] = deps
    return {"sys_path": [str(REPO)], **extra, "databases": databases}


@pytest.fixture
def make_project(tmp_path: Path):
    """Factory: a project in tmp_path with the example's revisions and a generated env.py."""

    def make(config: dict[str, Any] | str | None = None, init: bool = True, versions: bool = True) -> Project:
        project = Project(tmp_path / "project")
        project.root.mkdir(exist_ok=True)
        project.write_config(config if config is not None else shop_config())
        if versions:
            shutil.copytree(REPO / "versions", project.root / "versions", dirs_exist_ok=True)
        if init:
            result = project.cli("init")
            assert result.exit_code == 0, result.output
        return project

    return make


@pytest.fixture
def shop(make_project) -> Project:
    """The example project on SQLite files."""
    return make_project()


def sqlite_url(path: Path) -> str:
    return URL.create("sqlite", database=str(path)).render_as_string()
