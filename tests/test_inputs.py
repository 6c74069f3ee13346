"""Every wrong configuration input is a clean ConfigError: exit 2, ``file:line``, a hint,
bounded in time and memory, and never a password.

Each case is checked twice where it can be: ``load_project`` raises ConfigError naming the
file and line, and ``orchestrate heads`` exits 2 printing the same message and no traceback.
"""
from __future__ import annotations

import json
import os
import pickle
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from orchestrator import urls
from orchestrator.config import (
    DEFAULT_TENANT_PATTERN,
    Project,
    activate,
    first_mismatch,
    load_project,
    parse_duration,
)
from orchestrator.errors import ConfigError
from tests.conftest import Project as CliProject

# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(urls, "_known_secrets", set())
    monkeypatch.delenv("ORCHESTRATE_CONFIG", raising=False)
    for name in list(os.environ):
        if name.startswith("ORCHESTRATE_MAX_"):
            monkeypatch.delenv(name)


def write(folder: Path, text: str, name: str = "orchestrate.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(path: Path, environ: dict[str, str] | None = None) -> Project:
    return load_project(path, environ={} if environ is None else environ)


def rejected(path: Path, line: int | None, environ: dict[str, str] | None = None, cli: bool = True) -> ConfigError:
    """``path`` is refused with a message starting ``<path>:<line>:`` (or ``<path>:`` when
    ``line`` is None), by load_project and by the CLI (exit 2, same message, no traceback)."""
    with pytest.raises(ConfigError) as info:
        load(path, environ)
    err = info.value
    assert err.exit_code == 2
    where = f"{path.resolve()}:{line}: " if line is not None else f"{path.resolve()}"
    assert err.message.startswith(where), err.message
    if cli:
        result = CliProject(path.parent).cli("heads", env=environ)
        assert result.exit_code == 2, result.output
        assert f"error: {err.message.splitlines()[0]}" in result.stderr
        assert "Traceback" not in result.stderr
    return err


def one_database(extra: str = "", url: str = "sqlite:///users.db") -> str:
    return f"databases:\n  users:\n    url: {url}\n" + textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ")


# --------------------------------------------------------------------------- purity and pickling


def test_load_project_is_pure_and_activate_has_the_side_effects(tmp_path: Path) -> None:
    path = write(tmp_path, """
        sys_path: [lib]
        databases:
          users:
            url: postgresql+psycopg://app:s3cret-pw@db.example.com/app
            tenants:
              mode: schema
              names: [acme]
              query_url: postgresql+psycopg://reader:r3ader-pw@db.example.com/app
              query: SELECT 1
    """.replace("names: [acme]\n              ", ""))
    before = list(sys.path)
    project = load(path)
    assert sys.path == before
    assert urls._known_secrets == set()
    assert project.secrets == {"s3cret-pw", "r3ader-pw"}
    assert "s3cret-pw" not in repr(project)

    activate(project)
    assert sys.path[0] == str(tmp_path.resolve() / "lib")
    assert urls.mask_text("echo s3cret-pw and r3ader-pw") == "echo *** and ***"
    activate(project)
    assert sys.path.count(str(tmp_path.resolve() / "lib")) == 1


def test_a_project_pickles_and_imports_its_models_after_unpickling(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "models_pickled_x1.py").write_text("from sqlalchemy import MetaData\nmetadata = MetaData()\n")
    path = write(tmp_path, """
        sys_path: [lib]
        databases:
          users:
            url: sqlite:///users.db
            metadata: models_pickled_x1:metadata
    """)
    project = load(path)
    copy = pickle.loads(pickle.dumps(project))
    assert copy == project
    assert copy.secrets == project.secrets
    activate(copy)
    models = copy.load_models()
    assert models["users"] is sys.modules["models_pickled_x1"].metadata
    assert copy.databases["users"].metadata is models["users"]


def test_a_broken_models_module_fails_load_models_not_load_project(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "models_broken_x2.py").write_text("raise RuntimeError('broken models')\n")
    path = write(tmp_path, """
        sys_path: [lib]
        databases:
          users:
            url: sqlite:///users.db

            metadata: models_broken_x2:metadata
    """)
    project = load(path)
    activate(project)
    with pytest.raises(ConfigError) as info:
        project.load_models()
    assert info.value.message.startswith(f"{path.resolve()}:6: databases.users.metadata: cannot import")
    assert "RuntimeError: broken models" in info.value.message
    with pytest.raises(ConfigError):
        project.databases["users"].metadata  # noqa: B018 - the property imports


# --------------------------------------------------------------------------- reading the file


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "orchestrate.yaml"
    os.mkfifo(path)
    started = time.monotonic()
    err = rejected(path, None)
    assert time.monotonic() - started < 5
    assert "is a FIFO (named pipe), not a regular file" in err.message


def test_a_device_or_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(Path("/dev/zero"))
    assert "/dev/zero: is a device, not a regular file" in info.value.message
    (tmp_path / "orchestrate.yaml").mkdir()
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "orchestrate.yaml")
    assert "is a folder, not a regular file" in info.value.message


def test_a_file_over_the_size_bound_names_the_bound_and_its_setting(tmp_path: Path) -> None:
    path = write(tmp_path, one_database("# " + "x" * 2000))
    err = rejected(path, None, {"ORCHESTRATE_MAX_CONFIG_BYTES": "1000"})
    assert "larger than 1000 bytes" in err.message
    assert "ORCHESTRATE_MAX_CONFIG_BYTES" in (err.hint or "")
    assert load(path, {"ORCHESTRATE_MAX_CONFIG_BYTES": "100000"}).databases


def test_a_bound_setting_that_is_not_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, one_database())
    with pytest.raises(ConfigError) as info:
        load(path, {"ORCHESTRATE_MAX_YAML_NODES": "lots"})
    assert "ORCHESTRATE_MAX_YAML_NODES='lots' is not a valid bound" in info.value.message


def test_non_utf8_names_the_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "orchestrate.yaml"
    path.write_bytes(b"databases:\n  users:\n    url: sqlite:///caf\xe9.db\n")
    err = rejected(path, 3)
    assert "not UTF-8 text (byte 42, 0xe9)" in err.message
    assert "UTF-8" in (err.hint or "")


def test_a_control_character_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "orchestrate.yaml"
    path.write_text("databases:\n  users:\n    url: sqlite:///a\x07.db\n", encoding="utf-8")
    err = rejected(path, 3)
    assert "invalid YAML" in err.message


# --------------------------------------------------------------------------- YAML bounds


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
databases:
  users:
    url: sqlite:///users.db
"""


def test_billion_laughs_fails_fast(tmp_path: Path) -> None:
    path = write(tmp_path, BILLION_LAUGHS)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load(path)
    assert time.monotonic() - started < 2
    err = info.value
    assert err.message.startswith(f"{path.resolve()}:7: more than 2000000 YAML nodes")
    assert "ORCHESTRATE_MAX_YAML_NODES" in (err.hint or "")
    rejected(path, 7)


def test_the_node_bound_counts_aliases_each_time_they_are_used(tmp_path: Path) -> None:
    path = write(tmp_path, """
        x: &x [1, 2, 3, 4, 5, 6, 7, 8, 9]
        y: [*x, *x, *x, *x, *x, *x, *x, *x, *x, *x]
        databases:
          users:
            url: sqlite:///users.db
    """)
    err = rejected(path, 2, {"ORCHESTRATE_MAX_YAML_NODES": "60"})
    assert "more than 60 YAML nodes" in err.message
    # raised, the same file gets past the bound (to the unknown key)
    assert "unknown key `x`" in rejected(path, 1, {"ORCHESTRATE_MAX_YAML_NODES": "200"}).message


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_refused_before_anything_recurses(tmp_path: Path, style: str) -> None:
    depth = 5000
    if style == "flow":
        nested = "[" * depth + "]" * depth
    else:
        nested = "".join(" " * i + "- \n" for i in range(depth)).replace("- \n", "-\n")
        nested = "\n" + "\n".join(" " * i + "-" for i in range(depth))
    path = tmp_path / "orchestrate.yaml"
    path.write_text(f"deep: {nested}\ndatabases:\n  users:\n    url: sqlite:///users.db\n", encoding="utf-8")
    started = time.monotonic()
    err = rejected(path, None)
    assert time.monotonic() - started < 10
    assert "nested more than 64 levels deep" in err.message
    assert "ORCHESTRATE_MAX_YAML_DEPTH" in (err.hint or "")


def test_nesting_through_aliases_counts_as_nesting(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 80)]
    path = write(tmp_path, "\n".join(lines) + "\ndatabases:\n  users:\n    url: sqlite:///users.db\n")
    err = rejected(path, 64)
    assert "nested more than 64 levels deep (aliases expanded)" in err.message


def test_a_recursive_alias(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users: &loop
            url: sqlite:///users.db
            depends_on: [*loop]
    """)
    err = rejected(path, 4)
    assert "recursive alias" in err.message


def test_a_string_over_the_bound(tmp_path: Path) -> None:
    path = write(tmp_path, one_database(f"version_table: {'v' * 70000}"))
    err = rejected(path, 4)
    assert "a string of 70000 characters (at most 65536)" in err.message
    assert "ORCHESTRATE_MAX_STRING" in (err.hint or "")


def test_a_variable_value_over_the_bound(tmp_path: Path) -> None:
    path = write(tmp_path, one_database(url="${USERS_URL}"))
    err = rejected(path, 3, {"USERS_URL": "sqlite:///" + "a" * 70000})
    assert "environment variable USERS_URL holds 70010 characters" in err.message
    assert "ORCHESTRATE_MAX_STRING" in (err.hint or "")


def test_a_url_over_its_bound(tmp_path: Path) -> None:
    path = write(tmp_path, one_database(url="sqlite:///" + "a" * 9000 + ".db"))
    err = rejected(path, 3)
    assert "a URL of 9013 characters is longer than 8192" in err.message
    assert "ORCHESTRATE_MAX_URL" in (err.hint or "")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("!!int abc", "cannot read 'abc' as !!int"),
        ("!!float x", "cannot read 'x' as !!float"),
        ("!!bool maybe", "cannot read 'maybe' as !!bool"),
        ("!!timestamp 2020-13-45x", "cannot read '2020-13-45x' as !!timestamp"),
        ("!!python/object:os.system ls", "the YAML tag !!python/object:os.system is not allowed"),
        ("!!python/name:os.system ''", "the YAML tag !!python/name:os.system is not allowed"),
        ("!secret abc", "the YAML tag !secret is not allowed"),
    ],
)
def test_yaml_tags_and_constructor_errors(tmp_path: Path, value: str, shown: str) -> None:
    path = write(tmp_path, one_database(f"lock_retries: {value}"))
    err = rejected(path, 4)
    assert shown in err.message


def test_an_integer_with_too_many_digits(tmp_path: Path) -> None:
    path = write(tmp_path, one_database(f"lock_retries: {'9' * 5000}"))
    assert "cannot read" in rejected(path, 4).message


@pytest.mark.parametrize(("text", "line", "shown"), [
    ("defaults:\n  5: x\n", 2, "defaults: the key `5` is not text (YAML reads it as 5)"),
    ("true: x\n", 1, "the key `true` is not text (YAML reads it as True)"),
    ("defaults:\n  ? [a, b]\n  : x\n", 2, "unhashable"),
])
def test_a_key_that_is_not_text(tmp_path: Path, text: str, line: int, shown: str) -> None:
    path = write(tmp_path, text + one_database())
    assert shown in rejected(path, line).message


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (".inf", "inf is not a finite duration"),
        ("-.inf", "-inf is not a finite duration"),
        (".nan", "nan is not a duration (not a number)"),
        ("1e400", "'1e400' is not a duration"),
        ("999999h", "'999999h' is longer than 7d"),
        ("8d", "'8d' is longer than 7d"),
        ("true", "expected a duration"),
        ("[1]", "expected a duration"),
    ],
)
def test_durations_are_finite_and_at_most_seven_days(tmp_path: Path, value: str, shown: str) -> None:
    path = write(tmp_path, one_database(f"lock_timeout: {value}"))
    err = rejected(path, 4)
    assert f"databases.users.lock_timeout: {shown}" in err.message


def test_the_duration_bound_can_be_raised(tmp_path: Path) -> None:
    path = write(tmp_path, one_database("lock_wait: 10d"))
    assert load(path, {"ORCHESTRATE_MAX_DURATION": "30d"}).databases["users"].lock_wait == 864000.0
    assert "ORCHESTRATE_MAX_DURATION" in rejected(path, 4).message


def test_parse_duration_directly() -> None:
    assert parse_duration("1d") == 86400.0
    assert parse_duration(3) == 3.0
    with pytest.raises(ValueError, match="finite"):
        parse_duration(float("inf"))
    with pytest.raises(ValueError, match="not a number"):
        parse_duration(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        parse_duration(10**400, maximum=60)
    with pytest.raises(ValueError, match="longer than 1m"):
        parse_duration("61s", maximum=60)


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ("lock_retries: true", "expected a whole number (got True)"),
        ("lock_retries: 1.0", "expected a whole number (got 1.0)"),
        ("lock_retries: '2'", "expected a whole number (got '2')"),
        ("transaction_per_migration: 1", "expected true or false (got 1)"),
        ("transaction_per_migration: 'yes'", "expected true or false (got 'yes')"),
        ("replay: 'true'", "expected auto, true or false (got 'true')"),
        ("replay: sometimes", "expected auto, true or false (got 'sometimes')"),
        ("recursive_version_locations: 0", "expected true or false (got 0)"),
    ],
)
def test_no_silent_coercion(tmp_path: Path, setting: str, shown: str) -> None:
    path = write(tmp_path, one_database(setting))
    assert shown in rejected(path, 4).message


def test_execution_parallel_is_a_whole_number(tmp_path: Path) -> None:
    path = write(tmp_path, "execution:\n  parallel: 2.0\n" + one_database())
    assert "execution.parallel: expected a whole number (got 2.0)" in rejected(path, 2).message


def test_values_from_variables_are_read_as_their_setting(tmp_path: Path) -> None:
    # the environment only holds text: "3" and "false" from ${VAR} are a number and a boolean
    path = write(tmp_path, one_database("""
        lock_retries: ${RETRIES}
        replay: ${REPLAY}
        connect_timeout: ${CONNECT}
    """))
    users = load(path, {"RETRIES": "3", "REPLAY": "false", "CONNECT": "250ms"}).databases["users"]
    assert (users.lock_retries, users.replay, users.connect_timeout) == (3, False, 0.25)
    assert "expected a whole number" in rejected(path, 4, {"RETRIES": "3.5", "REPLAY": "false", "CONNECT": "1s"}).message
    assert "expected auto, true or false" in rejected(path, 5, {"RETRIES": "3", "REPLAY": "yes", "CONNECT": "1s"}).message


def test_connect_and_server_timeouts(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults:
          server_timeout: 5m
        databases:
          users:
            url: sqlite:///users.db
          orders:
            url: sqlite:///orders.db
            connect_timeout: 3s
            server_timeout: 30s
    """)
    project = load(path)
    users, orders = project.databases["users"], project.databases["orders"]
    assert (users.connect_timeout, users.server_timeout) == (10.0, 300.0)
    assert (orders.connect_timeout, orders.server_timeout) == (3.0, 30.0)
    path = write(tmp_path, one_database("connect_timeout: 0s"))
    assert "connect_timeout: must be more than 0" in rejected(path, 4).message


@pytest.mark.parametrize("name", ["sqlite_master", "sqlite_sequence", "pg_class", "PG_Stat", "information_schema", "mysql"])
def test_a_version_table_named_like_a_system_table(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, one_database(f"version_table: {name}"))
    err = rejected(path, 4)
    assert "named like a system table" in err.message


def test_a_name_with_a_trailing_newline_is_not_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, one_database('version_table: "alembic_version\\n"'))
    assert "is not a plain table name" in rejected(path, 4).message
    path = write(tmp_path, 'databases:\n  "users\\n":\n    url: sqlite:///users.db\n')
    assert "is not a valid database name" in rejected(path, 2).message


# --------------------------------------------------------------------------- URLs


def test_a_tenant_placeholder_without_tenants(tmp_path: Path) -> None:
    path = write(tmp_path, one_database(url="sqlite:///var/{tenant}.db"))
    err = rejected(path, 3)
    assert "holds {tenant} but the database declares no tenants" in err.message
    assert "tenants:" in (err.hint or "")


@pytest.mark.parametrize("url", ['"sqlite:///a\\nb.db"', '"sqlite:///a\\0b.db"', '"postgresql+psycopg://h/a\\tb"'])
def test_a_url_with_a_control_character(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, one_database(url=url))
    assert "the URL holds a control character" in rejected(path, 3).message


def test_a_url_with_a_newline_from_a_variable(tmp_path: Path) -> None:
    path = write(tmp_path, one_database(url="${URL}"))
    assert "control character" in rejected(path, 3, {"URL": "sqlite:///a.db\n"}).message


def test_a_sqlite_path_that_is_a_folder_or_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    path = write(tmp_path, one_database(url="sqlite:///var"))
    assert "is a folder, not a SQLite database file" in rejected(path, 3).message
    (tmp_path / "notes.txt").write_text("hello, not a database\n")
    path = write(tmp_path, one_database(url="sqlite:///notes.txt"))
    assert "exists and is not a SQLite database" in rejected(path, 3).message
    os.mkfifo(tmp_path / "pipe.db")
    path = write(tmp_path, one_database(url="sqlite:///pipe.db"))
    assert "not a regular file" in rejected(path, 3).message
    # an empty file and a real database are fine
    (tmp_path / "empty.db").touch()
    sqlite3.connect(tmp_path / "real.db").execute("CREATE TABLE t (x)").connection.close()
    for name in ("empty.db", "real.db", "new.db"):
        load(write(tmp_path, one_database(url=f"sqlite:///{name}")))


SPECIAL_PASSWORD = "p@ss:w/rd#?% x&y=z"


def test_a_url_given_as_parts_takes_any_password(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        databases:
          users:
            url:
              drivername: postgresql+psycopg
              username: app
              password: "{SPECIAL_PASSWORD}"
              host: db.example.com
              port: 6432
              database: app
              query: {{sslmode: require}}
    """)
    project = load(path)
    parsed = urls.parse_url(project.databases["users"].url)
    assert parsed.password == SPECIAL_PASSWORD
    assert (parsed.username, parsed.host, parsed.port, parsed.database) == ("app", "db.example.com", 6432, "app")
    assert dict(parsed.query) == {"sslmode": "require"}
    assert SPECIAL_PASSWORD in project.secrets
    assert SPECIAL_PASSWORD not in project.databases["users"].display_url
    activate(project)
    rendered = project.databases["users"].url
    assert SPECIAL_PASSWORD not in urls.mask_text(f"failed: {rendered} and {SPECIAL_PASSWORD}")
    assert "p%40ss" not in urls.mask_text(f"failed: {rendered}")


def test_url_parts_with_a_variable_port_and_a_tenant_template(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          fleet:
            url: {drivername: sqlite, database: "var/{tenant}.db"}
            tenants:
              mode: database
              names: [acme]
          users:
            url: {drivername: postgresql+psycopg, host: h, port: "${PORT}", database: app}
    """)
    project = load(path, {"PORT": "5433"})
    assert project.databases["fleet"].url == f"sqlite:///{tmp_path.resolve()}/var/{{tenant}}.db"
    assert urls.parse_url(project.databases["users"].url).port == 5433


@pytest.mark.parametrize(
    ("parts", "line", "shown"),
    [
        ("{username: app, password: x}", 3, "databases.users.url: missing required key `drivername`"),
        ("{drivername: sqlite, pasword: x}", 3, "databases.users.url: unknown key `pasword`"),
        ("{drivername: postgresql, port: abc}", 3, "databases.users.url.port: expected a whole number"),
        ("{drivername: postgresql, port: 70000}", 3, "databases.users.url.port:"),
        ("{drivername: nosuchdb, host: h}", 3, "unknown database dialect or driver `nosuchdb`"),
    ],
)
def test_url_parts_errors(tmp_path: Path, parts: str, line: int, shown: str) -> None:
    path = write(tmp_path, f"databases:\n  users:\n    url: {parts}\n")
    err = rejected(path, line)
    assert shown in err.message


def test_url_parts_unknown_key_hint_lists_the_parts(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  users:\n    url: {drivername: sqlite, pasword: x}\n")
    assert "did you mean `password`?" in (rejected(path, 3).hint or "")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:Qx9@Zr7/w#Kd@db.example.com/app",
        "postgresql+psycopg://app:Qx9@Zr7@Kd5@db.example.com/app",
        "postgresql+psycopg://app:Qx9@Z r7@db.example.com/app",
    ],
)
def test_a_password_that_breaks_the_url_is_never_shown(tmp_path: Path, url: str) -> None:
    password = url.split("app:", 1)[1].rsplit("@", 1)[0]
    path = write(tmp_path, one_database(url=f'"{url}"'))
    err = rejected(path, 3)
    result = CliProject(tmp_path).cli("heads")
    for text in (str(err), result.output):
        assert password not in text
        for piece in password.split("@"):
            if len(piece) >= 2:
                assert piece not in text, text
    assert "%40" in (err.hint or "") and "parts" in (err.hint or "")


def test_a_password_is_hidden_from_every_message_of_the_load(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: postgresql+psycopg://app:hunter2x@h/app
            version_table: "hunter2x; drop table users"
    """)
    err = rejected(path, 4)
    assert "hunter2x" not in str(err)


# --------------------------------------------------------------------------- version locations


def _revision(folder: Path, name: str = "0001_first.py") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("revision = 'x'\ndown_revision = None\n")


def test_version_locations_defaults_and_combinations(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    path = write(tmp_path, """
        defaults:
          version_locations: [shared/a, shared/b]
        databases:
          plain:
            url: sqlite:///plain.db
            version_locations: []
    """)
    assert "list at least one folder" in rejected(path, 6).message
    path = write(tmp_path, """
        databases:
          plain:
            url: sqlite:///plain.db
          own:
            url: sqlite:///own.db
            version_path: migrations/own
          listed:
            url: sqlite:///listed.db
            version_locations: [migrations/l1, migrations/l2]
          both:
            url: sqlite:///both.db
            version_locations: [migrations/b1]
            version_path: migrations/b2
            recursive_version_locations: true
    """)
    dbs = load(path).databases
    assert dbs["plain"].version_path == root / "versions/plain"
    assert dbs["plain"].version_locations == (root / "versions/plain",)
    assert dbs["own"].version_locations == (root / "migrations/own",)
    assert dbs["listed"].version_path == root / "migrations/l1"
    assert dbs["listed"].version_locations == (root / "migrations/l1", root / "migrations/l2")
    assert dbs["both"].version_path == root / "migrations/b2"
    assert dbs["both"].version_locations == (root / "migrations/b1", root / "migrations/b2")
    assert dbs["both"].recursive_version_locations is True
    assert dbs["plain"].recursive_version_locations is False


def test_version_locations_from_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults:
          version_locations: [shared]
          recursive_version_locations: true
        databases:
          users:
            url: sqlite:///users.db
    """)
    users = load(path).databases["users"]
    assert users.version_locations == (tmp_path.resolve() / "shared",)
    assert users.recursive_version_locations is True


def test_a_version_location_outside_the_project(tmp_path: Path) -> None:
    path = write(tmp_path / "project", one_database("version_locations: [versions/users, ../elsewhere]"))
    err = rejected(path, 4)
    assert "is outside the project folder" in err.message


def test_a_version_location_that_is_a_symlink_out_of_the_project(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "linked").symlink_to(tmp_path / "elsewhere")
    path = write(tmp_path / "project", one_database("version_path: linked"))
    assert "is outside the project folder" in rejected(path, 4).message


def test_revision_files_in_a_subfolder_need_recursive_version_locations(tmp_path: Path) -> None:
    _revision(tmp_path / "versions/users")
    _revision(tmp_path / "versions/users/release_2/expand", "0002_expand.py")
    _revision(tmp_path / "versions/users/__pycache__", "ignored.py")
    path = write(tmp_path, one_database())
    err = rejected(path, 2)
    assert "release_2/expand" in err.message and "0002_expand.py" in err.message
    assert "recursive_version_locations" in err.message
    assert "recursive_version_locations: true" in (err.hint or "")
    path = write(tmp_path, one_database("recursive_version_locations: true"))
    assert load(path).databases["users"].recursive_version_locations is True


def test_pycache_and_init_files_are_not_nested_revisions(tmp_path: Path) -> None:
    _revision(tmp_path / "versions/users")
    _revision(tmp_path / "versions/users/__pycache__", "x.py")
    (tmp_path / "versions/users/helpers").mkdir()
    (tmp_path / "versions/users/helpers/__init__.py").write_text("")
    (tmp_path / "versions/users/helpers/README").write_text("")
    load(write(tmp_path, one_database()))


# --------------------------------------------------------------------------- tenants


def _tenants(names: list[str], pattern: str | None = ".*", url: str = "postgresql+psycopg://app@h/app") -> str:
    mode = "database" if "{tenant}" in url else "schema"
    pattern_line = f"\n      pattern: '{pattern}'" if pattern is not None else ""
    items = "".join(f"\n        - {json.dumps(name)}" for name in names) if names else " []"
    return f"""databases:
  fleet:
    url: {url}
    tenants:
      mode: {mode}{pattern_line}
      names:{items}
"""


@pytest.mark.parametrize("name", ["public", "pg_catalog", "information_schema", "mysql", "sys", "performance_schema", "pg_x"])
@pytest.mark.parametrize("url", ["postgresql+psycopg://app@h/app", "mysql+pymysql://app@h/app", "sqlite:///t/{tenant}.db"])
def test_reserved_tenant_names_whatever_the_pattern(tmp_path: Path, name: str, url: str) -> None:
    path = write(tmp_path, _tenants(["acme", name], url=url))
    err = rejected(path, 9)
    assert "reserved" in err.message
    assert "databases.fleet.tenants.names[1]" in err.message


def test_the_default_pattern_refuses_reserved_names_too(tmp_path: Path) -> None:
    path = write(tmp_path, _tenants(["public"], pattern=None))
    assert "reserved" in rejected(path, 7).message


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("postgresql+psycopg://app@h/app", "x" * 64),
        ("postgresql+psycopg://app@h/app", "é" * 32),  # 64 bytes
        ("mysql+pymysql://app@h/app", "x" * 65),
    ],
)
def test_tenant_names_over_the_identifier_limit(tmp_path: Path, url: str, name: str) -> None:
    path = write(tmp_path, _tenants([name], url=url))
    assert "limit" in rejected(path, 8).message


def test_tenant_names_at_the_identifier_limit(tmp_path: Path) -> None:
    load(write(tmp_path, _tenants(["x" * 63])))
    load(write(tmp_path, _tenants(["x" * 64], url="mysql+pymysql://app@h/app")))


@pytest.mark.parametrize("name", ["a/b", "..", ".", "a\\b", "-rf"])
def test_sqlite_tenant_names_must_be_safe_file_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, _tenants([name], url="sqlite:///t/{tenant}.db"))
    assert "safe file name" in rejected(path, 8).message


@pytest.mark.parametrize("name", ["a\nb", "a\x00b", "a\x1bb", "a\x85b"])
def test_tenant_names_with_control_characters(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, _tenants([name]))
    assert "control character" in rejected(path, 8).message


def test_a_tenant_name_that_does_not_match_the_pattern(tmp_path: Path) -> None:
    path = write(tmp_path, _tenants(["acme", "Globex"], pattern=None))
    err = rejected(path, 8)
    assert f"tenant name 'Globex' does not match the tenant pattern {DEFAULT_TENANT_PATTERN}" in err.message


def test_a_hostile_pattern_cannot_hang_a_load(tmp_path: Path) -> None:
    path = write(tmp_path, _tenants(["a" * 40 + "!"], pattern="^(a+)+$"))
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load(path)
    assert time.monotonic() - started < 3
    assert info.value.message.startswith(f"{path.resolve()}:8: ")
    assert "took more than 1s" in info.value.message
    assert "nested repeats" in (info.value.hint or "")


def test_a_hostile_pattern_cannot_hang_a_load_in_another_thread(tmp_path: Path) -> None:
    # no SIGALRM outside the main thread: the pattern runs in a child process instead
    path = write(tmp_path, _tenants(["acme", "a" * 40 + "!"], pattern="^(a+|acme)+$"))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            load(path)
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - started < 15
    assert isinstance(errors[0], ConfigError)
    assert "took more than" in errors[0].message


def test_first_mismatch_in_a_thread_still_matches() -> None:
    found: list[int] = []
    thread = threading.Thread(target=lambda: found.append(first_mismatch("^t[0-9]+$", ["t1", "t2", "x", "t3"])))
    thread.start()
    thread.join(30)
    assert found == [2]


def test_a_pattern_too_long(tmp_path: Path) -> None:
    path = write(tmp_path, _tenants(["acme"], pattern="a" * 1001))
    assert "too long (at most 1000)" in rejected(path, 6).message


def test_tenants_listed_twice(tmp_path: Path) -> None:
    path = write(tmp_path, _tenants(["acme", "globex", "acme"]))
    assert "tenant 'acme' is listed twice (first as item 1)" in rejected(path, 10).message


# --------------------------------------------------------------------------- tenants files


def _tenant_file_config(tmp_path: Path, url: str = "sqlite:///var/t/{tenant}.db", pattern: str | None = None) -> Path:
    mode = "database" if "{tenant}" in url else "schema"
    extra = f"      pattern: '{pattern}'\n" if pattern else ""
    text = f"databases:\n  fleet:\n    url: {url}\n    tenants:\n      mode: {mode}\n      file: tenants.txt\n{extra}"
    return write(tmp_path, text)


def test_a_hundred_thousand_tenants_load_fast(tmp_path: Path) -> None:
    (tmp_path / "tenants.txt").write_text("# the fleet\n" + "".join(f"tenant_{i:06d}\n" for i in range(100_000)))
    path = _tenant_file_config(tmp_path)
    write(tmp_path, path.read_text() + "  main:\n    url: sqlite:///var/main.db\n")  # one more database: checked for sharing
    started = time.monotonic()
    project = load(path)
    assert time.monotonic() - started < 2
    assert len(project.databases["fleet"].tenants.names) == 100_000  # type: ignore[union-attr, arg-type]


def test_a_hundred_thousand_tenants_with_a_custom_pattern(tmp_path: Path) -> None:
    (tmp_path / "tenants.txt").write_text("".join(f"t{i}\n" for i in range(100_000)))
    path = _tenant_file_config(tmp_path, url="postgresql+psycopg://app@h/app", pattern="^t[0-9]+$")
    started = time.monotonic()
    assert len(load(path).databases["fleet"].tenants.names) == 100_000  # type: ignore[union-attr, arg-type]
    assert time.monotonic() - started < 2


def test_a_tenants_file_over_the_line_bound(tmp_path: Path) -> None:
    (tmp_path / "tenants.txt").write_text("".join(f"t{i}\n" for i in range(11)))
    path = _tenant_file_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load(path, {"ORCHESTRATE_MAX_TENANTS": "10"})
    assert info.value.message.startswith(f"{(tmp_path / 'tenants.txt').resolve()}:11: ")
    assert "more than 10 lines" in info.value.message
    assert "ORCHESTRATE_MAX_TENANTS" in (info.value.hint or "")


def test_a_tenants_file_over_the_size_bound_fails_before_reading(tmp_path: Path) -> None:
    with open(tmp_path / "tenants.txt", "wb") as handle:
        handle.truncate(300 * 10 + 1)  # sparse: nothing to read
    path = _tenant_file_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load(path, {"ORCHESTRATE_MAX_TENANTS": "10"})
    assert "larger than 2560 bytes" in info.value.message


def test_a_tenants_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "tenants.txt").write_bytes(b"acme\nglobex\ncaf\xe9\n")
    path = _tenant_file_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.message.startswith(f"{(tmp_path / 'tenants.txt').resolve()}:3: not UTF-8 text")
    result = CliProject(tmp_path).cli("heads")
    assert result.exit_code == 2 and "tenants.txt:3: not UTF-8 text" in result.stderr


def test_a_tenants_file_that_is_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "tenants.txt")
    path = _tenant_file_config(tmp_path)
    err = rejected(path, 6)
    assert "is a FIFO (named pipe), not a regular file" in err.message


@pytest.mark.parametrize(
    ("content", "line", "shown"),
    [
        ("acme\npublic\n", 2, "reserved"),
        ("acme\n../etc\n", 2, "safe file name"),
        ("acme\n\nacme  # again\n", 3, "tenant 'acme' is listed twice (first on line 1)"),
        ("acme\nbad\x0bname\n", 2, "control character"),
        ("acme\nUPPER\n", 2, "does not match the tenant pattern"),
    ],
)
def test_a_bad_line_in_a_tenants_file_names_that_line(tmp_path: Path, content: str, line: int, shown: str) -> None:
    (tmp_path / "tenants.txt").write_text(content)
    path = _tenant_file_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.message.startswith(f"{(tmp_path / 'tenants.txt').resolve()}:{line}: ")
    assert shown in info.value.message
    assert str(path.resolve()) in (info.value.hint or "")
    result = CliProject(tmp_path).cli("heads")
    assert result.exit_code == 2 and f"tenants.txt:{line}: " in result.stderr


# --------------------------------------------------------------------------- masking


def _time(function, *args) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - started)
    return best


HOSTILE_PIECES = [
    "a",  # one long run of scheme characters
    "x://u:",  # URLs that never reach an '@'
    "password='",  # quotes never closed
    "PASSWORD = ",
    "db://user:pw@host/ ",
    "s3cret-one ",
]


@pytest.mark.parametrize("piece", HOSTILE_PIECES)
def test_masking_is_linear(monkeypatch: pytest.MonkeyPatch, piece: str) -> None:
    monkeypatch.setattr(urls, "_known_secrets", {f"secret-{i:03d}" for i in range(200)} | {"s3cret-one"})
    short = (piece * (4000 // len(piece) + 1))[:4000]
    long = (piece * (40000 // len(piece) + 1))[:40000]
    small, large = _time(urls.mask_text, short), _time(urls.mask_text, long)
    assert large <= 50 * small + 0.2, (small, large)


def test_masking_still_hides_every_kind_of_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urls, "_known_secrets", set())
    urls.register_secret("postgresql://app:registered-pw@h/db")
    text = (
        "connect postgresql+psycopg://app:url-pw@host/db failed; "
        "dsn: host=h password=kv-pw user=app; PASSWORD = 'quoted pw' and \"registered-pw\" echoed"
    )
    masked = urls.mask_text(text)
    for secret in ("url-pw", "kv-pw", "quoted pw", "registered-pw"):
        assert secret not in masked
    assert "postgresql+psycopg://app:***@host/db" in masked
    assert urls.mask_text("see https://example.com:8080/x") == "see https://example.com:8080/x"


def test_masking_an_unparseable_url() -> None:
    for url in ("postgresql://app:p@ss w/rd@host/db", "postgresql://app:pw@host:notaport/db"):
        masked = urls.mask_url(url)
        assert masked.startswith("postgresql://app:***@"), masked
        assert "p@ss" not in masked and "w/rd" not in masked and ":pw@" not in masked
    with pytest.raises(ValueError) as info:
        urls.parse_url("postgresql://app:s3cret@host:notaport/db")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql+psycopg:x//app:s3cretpw@h/app", "s3cretpw"),  # a mangled scheme
        ("mysql+pymysql:r3aderpw@h/x", "r3aderpw"),
        ("postgresql://app:Qx9@Zr7@h/db", "Qx9@Zr7"),  # parses, at the wrong '@'
    ],
)
def test_a_mangled_url_in_the_file_never_shows_its_password(tmp_path: Path, url: str, password: str) -> None:
    path = write(tmp_path, one_database(url=url))
    err = rejected(path, 3)
    assert password not in str(err)
    assert urls.unparsed_password(url) == password


def test_mask_text_with_extra_secrets() -> None:
    assert urls.mask_text("value abc-secret here", ["abc-secret"]) == "value *** here"
    assert urls.mask_text("ab here", ["ab"]) == "ab here"  # too short to mask safely
