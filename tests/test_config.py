"""orchestrate.yaml -> Project: loading, expansion, resolution, and every configuration error.

Every error must name the file and the exact line, and say how to fix it (in the message or
the hint). Loading is pure: models are imported by ``activate`` + ``Project.load_models()``. YAML is written as literal text so that line numbers are known; ``write()``
strips the leading newline, so the first line of each literal is line 1.
"""
from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy import MetaData

from orchestrator import urls
from orchestrator.config import Project, activate, load_project
from orchestrator.errors import ConfigError

# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """activate() prepends to sys.path and remembers passwords: undo both after each test,
    so that no test passes (or fails) because of what another one loaded."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(urls, "_known_secrets", set())
    monkeypatch.delenv("ORCHESTRATE_CONFIG", raising=False)


def write(folder: Path, text: str, name: str = "orchestrate.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(path: Path, environ: dict[str, str] | None = None) -> Project:
    return load_project(path, environ={} if environ is None else environ)


def error_of(path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, environ)
    return info.value


def models_error_of(path: Path) -> ConfigError:
    """Loading succeeds (metadata is imported on first use); importing the models fails."""
    project = load(path)
    activate(project)
    with pytest.raises(ConfigError) as info:
        project.load_models()
    return info.value


def assert_at(err: ConfigError, path: Path, line: int) -> None:
    """The message starts with ``<absolute path>:<line>: ``."""
    assert err.message.startswith(f"{path.resolve()}:{line}: "), err.message


def module_name(prefix: str = "models") -> str:
    """A module name no other test uses (sys.modules keeps what was imported)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def write_module(folder: Path, name: str, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


# --------------------------------------------------------------------------- a valid file


def test_a_full_valid_file_loads_with_every_value_resolved(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "lib", mod, "from sqlalchemy import MetaData\nusers = MetaData()\norders = MetaData()\n")
    path = write(tmp_path, f"""
        script_location: migrations/env
        sys_path: [lib]
        defaults:
          lock_timeout: 500ms
          transaction_per_migration: false
        databases:
          users:
            url: sqlite:///var/users.db
            metadata: {mod}:users
            version_table: alembic_version_users
          orders:
            url: sqlite:///var/orders.db
            metadata: {mod}:orders
            version_path: migrations/orders_versions
            lock_timeout: 2m
            transaction_per_migration: true
            depends_on:
              - users
    """)
    before = list(sys.path)
    project = load(path)
    assert sys.path == before and mod not in sys.modules  # loading is pure
    activate(project)
    activate(project)  # idempotent
    assert sys.path[:1] == [str(tmp_path.resolve() / "lib")] and sys.path.count(str(tmp_path.resolve() / "lib")) == 1

    assert project.path == path.resolve()
    assert project.root == tmp_path.resolve()
    assert project.script_location == tmp_path.resolve() / "migrations" / "env"
    assert project.sys_path == (tmp_path.resolve() / "lib",)
    assert list(project.databases) == ["users", "orders"]  # file order

    users, orders = project.databases["users"], project.databases["orders"]
    assert users.url == f"sqlite:///{tmp_path.resolve()}/var/users.db"
    assert users.metadata is sys.modules[mod].users
    assert users.metadata_ref == f"{mod}:users"
    assert users.version_table == "alembic_version_users"
    assert users.version_path == tmp_path.resolve() / "versions" / "users"
    assert users.depends_on == ()
    assert users.lock_timeout == 0.5  # from defaults:
    assert users.transaction_per_migration is False  # from defaults:
    assert users.line == 7

    assert orders.metadata is sys.modules[mod].orders
    assert orders.version_table == "alembic_version"
    assert orders.version_path == tmp_path.resolve() / "migrations" / "orders_versions"
    assert orders.lock_timeout == 120.0  # its own value wins over defaults:
    assert orders.transaction_per_migration is True
    assert orders.depends_on == ("users",)
    assert orders.line == 11


def test_built_in_defaults_without_a_defaults_section(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
    """)
    project = load(path)
    users = project.databases["users"]
    assert users.lock_timeout == 10.0
    assert users.transaction_per_migration is True
    assert users.version_table == "alembic_version"
    assert users.metadata is None and users.metadata_ref is None
    assert project.script_location == tmp_path.resolve() / "envs"
    assert project.sys_path == (tmp_path.resolve(),)


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("3", 3.0), ("1.5", 1.5), ("0", 0.0)],
)
def test_lock_timeout_durations(tmp_path: Path, written: str, seconds: float) -> None:
    path = write(tmp_path, f"""
        databases:
          users:
            url: sqlite:///users.db
            lock_timeout: {written}
    """)
    assert load(path).databases["users"].lock_timeout == seconds


def test_the_password_is_kept_in_the_url_but_hidden_in_display_and_repr(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: postgresql+psycopg://app:s3cretpw@db.example.com/app
    """)
    users = load(path).databases["users"]
    assert users.url == "postgresql+psycopg://app:s3cretpw@db.example.com/app"
    assert "s3cretpw" not in users.display_url
    assert "s3cretpw" not in repr(users)


def test_path_defaults_to_orchestrate_yaml_in_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
    """)
    monkeypatch.chdir(tmp_path)
    assert load_project(environ={}).path == (tmp_path / "orchestrate.yaml").resolve()


def test_a_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope" / "orchestrate.yaml")
    assert str((tmp_path / "nope" / "orchestrate.yaml").resolve()) in err.message
    assert "no such file" in err.message
    assert "orchestrate init" in (err.hint or "")


# --------------------------------------------------------------------------- invalid YAML


def test_invalid_yaml_unclosed_quote_names_the_line_where_the_quote_opens(tmp_path: Path) -> None:
    # PyYAML only notices at the end of the file (line 6); the line to fix is 3.
    path = write(tmp_path, """
        databases:
          users:
            url: "sqlite:///users.db
            version_table: alembic_version

    """)
    err = error_of(path)
    assert_at(err, path, 3)
    assert "invalid YAML" in err.message
    assert "quot" in (err.hint or "")


def test_invalid_yaml_bad_indentation(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
           version_table: alembic_version
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "invalid YAML" in err.message
    assert "indentation" in (err.hint or "")


def test_invalid_yaml_value_indented_too_far(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
              version_table: alembic_version
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "mapping values are not allowed here" in err.message


def test_invalid_yaml_unclosed_bracket_names_the_line_where_it_opens(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            depends_on: [catalog
          catalog:
            url: sqlite:///catalog.db
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "invalid YAML" in err.message


def test_invalid_yaml_a_tab_used_for_indentation(tmp_path: Path) -> None:
    path = tmp_path / "orchestrate.yaml"
    path.write_text("databases:\n  users:\n\turl: sqlite:///users.db\n", encoding="utf-8")
    err = error_of(path)
    assert_at(err, path, 3)
    assert "'\\t'" in err.message


def test_a_key_written_twice_is_an_error_not_silently_the_last_one(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          users:
            url: sqlite:///other.db
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "`users` is written twice (first on line 2)" in err.message
    assert err.hint


def test_a_setting_written_twice_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            version_table: a
            version_table: b
    """)
    err = error_of(path)
    assert_at(err, path, 5)
    assert "databases.users: `version_table` is written twice (first on line 4)" in err.message


def test_yaml_anchors_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults: &common
          lock_timeout: 5s
        databases:
          users:
            <<: *common
            url: sqlite:///users.db
          orders:
            <<: *common
            url: sqlite:///orders.db
            lock_timeout: 7s
    """)
    project = load(path)
    assert project.databases["users"].lock_timeout == 5.0
    assert project.databases["orders"].lock_timeout == 7.0


# --------------------------------------------------------------------------- shape of the file


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n"])
def test_an_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "orchestrate.yaml"
    path.write_text(text, encoding="utf-8")
    err = error_of(path)
    assert_at(err, path, 1)
    assert "the file is empty" in err.message
    assert "databases:" in (err.hint or "")


def test_a_file_that_is_a_list_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, """
        # a list by mistake

        - users
        - orders
    """)
    err = error_of(path)
    assert_at(err, path, 3)
    assert "expected a mapping with a `databases:` key, found a list" in err.message
    assert "databases:" in (err.hint or "")


def test_a_file_that_is_a_plain_string(tmp_path: Path) -> None:
    path = write(tmp_path, """
        hello
    """)
    err = error_of(path)
    assert_at(err, path, 1)
    assert "found a string" in err.message


def test_missing_databases_section(tmp_path: Path) -> None:
    path = write(tmp_path, """
        # nothing but a script location
        script_location: envs
    """)
    err = error_of(path)
    assert_at(err, path, 2)
    assert "missing required key `databases`" in err.message
    assert "databases:" in (err.hint or "")


@pytest.mark.parametrize("databases", ["databases:", "databases: {}"])
def test_an_empty_databases_section(tmp_path: Path, databases: str) -> None:
    path = write(tmp_path, f"""
        script_location: envs
        {databases}
    """)
    err = error_of(path)
    assert_at(err, path, 2)
    assert "databases: no database is declared" in err.message
    assert "url:" in (err.hint or "")


def test_databases_written_as_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          - users
          - orders
    """)
    err = error_of(path)
    assert_at(err, path, 1)
    assert "expected a mapping of database names to their settings, found a list" in err.message
    assert err.hint


def test_a_database_without_settings(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          orders:
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "database `orders` has no settings" in err.message
    assert "url:" in (err.hint or "")


def test_a_database_given_a_url_string_instead_of_settings(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users: sqlite:///users.db
    """)
    err = error_of(path)
    assert_at(err, path, 2)
    assert "expected the settings of database `users` (a mapping), found a string" in err.message
    assert "RawDatabase" not in err.message  # no internal class names
    assert "url: sqlite:///var/users.db" in (err.hint or "")


def test_missing_url(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          orders:
            version_table: alembic_version_orders
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "databases.orders: missing required key `url`" in err.message
    assert "url:" in (err.hint or "")


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_names_its_own_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        # comment
        script_location: envs
        databasez:
          users:
            url: sqlite:///users.db
    """)
    err = error_of(path)
    assert_at(err, path, 3)
    assert "unknown key `databasez` (and 1 more problem)" in err.message  # and databases: is missing
    assert "did you mean `databases`?" in (err.hint or "")
    assert "script_location, sys_path, defaults, execution, databases" in (err.hint or "")


def test_unknown_key_under_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults:
          lock_timeout: 5s
          lock_timout: 5s
        databases:
          users:
            url: sqlite:///users.db
    """)
    err = error_of(path)
    assert_at(err, path, 3)
    assert "defaults: unknown key `lock_timout`" in err.message
    assert "did you mean `lock_timeout`?" in (err.hint or "")
    # defaults: takes only the settings a database may override
    assert "allowed keys here: lock_timeout, lock_wait" in (err.hint or "") and "transaction_per_migration" in (err.hint or "")


def test_unknown_key_under_a_database(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          orders:
            metadata: shop:orders

            urll: sqlite:///orders.db
    """)
    err = error_of(path)
    assert_at(err, path, 7)
    # reported before the missing `url:` that it explains
    assert "databases.orders: unknown key `urll` (and 1 more problem)" in err.message
    assert "did you mean `url`?" in (err.hint or "")
    assert "version_table" in (err.hint or "")


def test_unknown_key_without_a_close_match_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            zzyzx: blue
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "did you mean" not in (err.hint or "")
    assert "allowed keys here:" in (err.hint or "")


def test_the_problem_nearest_the_top_of_the_file_is_reported_first(tmp_path: Path) -> None:
    # pydantic checks `defaults` before `databases`; the person reads from the top.
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            transaction_per_migration: maybe
        defaults:
          colour: blue
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "transaction_per_migration" in err.message
    assert "(and 1 more problem)" in err.message


# --------------------------------------------------------------------------- wrong types


def test_depends_on_as_a_plain_string_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          orders:
            url: sqlite:///orders.db
            depends_on: users
    """)
    err = error_of(path)
    assert_at(err, path, 6)
    assert "databases.orders.depends_on: expected a list (got 'users')" in err.message
    assert "[users]" in (err.hint or "")


def test_transaction_per_migration_not_a_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            transaction_per_migration: maybe
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "databases.users.transaction_per_migration: expected true or false (got 'maybe')" in err.message


@pytest.mark.parametrize("value", ["soon", "10 parsecs", "-5s"])
def test_lock_timeout_not_a_duration(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"""
        databases:
          users:
            url: sqlite:///users.db
            lock_timeout: {value}
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert f"databases.users.lock_timeout: '{value}' is not a duration" in err.message
    assert "10s, 500ms, 2m or 1h" in err.message


def test_lock_timeout_in_defaults_not_a_duration(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults:
          transaction_per_migration: true
          lock_timeout: true
        databases:
          users:
            url: sqlite:///users.db
    """)
    err = error_of(path)
    assert_at(err, path, 3)
    assert "defaults.lock_timeout:" in err.message
    assert "duration" in err.message


def test_a_key_with_no_value(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            depends_on:
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "databases.users.depends_on: has no value" in err.message
    assert err.hint


def test_a_depends_on_item_that_is_not_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            depends_on:
              - catalog
              - [orders]
    """)
    err = error_of(path)
    assert_at(err, path, 6)
    assert "databases.users.depends_on[1]: expected a string" in err.message


def test_defaults_written_as_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults:
          - lock_timeout: 5s
        databases:
          users:
            url: sqlite:///users.db
    """)
    err = error_of(path)
    assert_at(err, path, 1)
    assert "defaults: expected a mapping" in err.message


def test_version_table_not_a_plain_name(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            version_table: "alembic version; drop table x"
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "is not a plain table name" in err.message


def test_metadata_not_module_colon_attribute(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            metadata: shop.models.metadata
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "'shop.models.metadata' is not 'module:attribute', e.g. myapp.models:metadata" in err.message


# --------------------------------------------------------------------------- database names


@pytest.mark.parametrize(("written", "shown"), [("1abc", "1abc"), ("my-db", "my-db"), ('"my db"', "my db")])
def test_invalid_database_name(tmp_path: Path, written: str, shown: str) -> None:
    path = write(tmp_path, f"""
        databases:
          users:
            url: sqlite:///users.db
          {written}:
            url: sqlite:///other.db
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert f"`{shown}` is not a valid database name" in err.message
    assert "letters, digits and _" in (err.hint or "")


@pytest.mark.parametrize(("written", "read_as"), [("123", "123"), ("no", "False")])
def test_a_database_name_yaml_reads_as_a_number_or_boolean(tmp_path: Path, written: str, read_as: str) -> None:
    path = write(tmp_path, f"""
        databases:
          users:
            url: sqlite:///users.db
          {written}:
            url: sqlite:///other.db
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert f"`{written}` is not a valid database name (YAML reads it as {read_as}" in err.message


def test_valid_unusual_database_names(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          _private:
            url: sqlite:///a.db
            version_table: v_a
          Db2:
            url: sqlite:///a.db
            version_table: v_b
    """)
    assert list(load(path).databases) == ["_private", "Db2"]


# --------------------------------------------------------------------------- ${VAR} expansion


def _url_of(tmp_path: Path, written: str, environ: dict[str, str]) -> str:
    path = write(tmp_path, f"""
        databases:
          users:
            url: {written}
    """)
    return load(path, environ).databases["users"].url


def test_variable_set(tmp_path: Path) -> None:
    assert _url_of(tmp_path, "${USERS_URL}", {"USERS_URL": "postgresql+psycopg://h/app"}) == "postgresql+psycopg://h/app"


def test_variable_set_wins_over_its_default(tmp_path: Path) -> None:
    url = _url_of(tmp_path, "${USERS_URL:-sqlite:///x.db}", {"USERS_URL": "postgresql+psycopg://h/app"})
    assert url == "postgresql+psycopg://h/app"


def test_variable_unset_takes_the_colon_dash_default(tmp_path: Path) -> None:
    url = _url_of(tmp_path, "${USERS_URL:-sqlite:///var/users.db}", {})
    assert url == f"sqlite:///{tmp_path.resolve()}/var/users.db"


def test_variable_empty_takes_the_colon_dash_default(tmp_path: Path) -> None:
    url = _url_of(tmp_path, "${USERS_URL:-sqlite:///var/users.db}", {"USERS_URL": ""})
    assert url == f"sqlite:///{tmp_path.resolve()}/var/users.db"


def test_dash_default_applies_only_when_unset(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            version_table: alembic_version${SUFFIX-_users}
    """)
    assert load(path, {}).databases["users"].version_table == "alembic_version_users"
    # set but empty: ${VAR-default} keeps the empty value (unlike ${VAR:-default})
    assert load(path, {"SUFFIX": ""}).databases["users"].version_table == "alembic_version"
    assert load(path, {"SUFFIX": "_x"}).databases["users"].version_table == "alembic_version_x"


def test_variables_inside_a_longer_value_and_in_lists(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: postgresql+psycopg://${PGUSER}@${PGHOST:-localhost}/app_${ENV}
          orders:
            url: sqlite:///orders.db
            depends_on: ["${DEP}"]
    """)
    project = load(path, {"PGUSER": "app", "ENV": "prod", "DEP": "users"})
    assert project.databases["users"].url == "postgresql+psycopg://app@localhost/app_prod"
    assert project.databases["orders"].depends_on == ("users",)


def test_expanded_values_are_validated_as_their_setting(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            lock_timeout: ${LOCK_TIMEOUT:-10s}
            transaction_per_migration: ${TPM:-true}
    """)
    users = load(path, {"LOCK_TIMEOUT": "250ms", "TPM": "false"}).databases["users"]
    assert users.lock_timeout == 0.25
    assert users.transaction_per_migration is False
    err = error_of(path, {"LOCK_TIMEOUT": "later"})
    assert_at(err, path, 4)
    assert "'later' is not a duration" in err.message


def test_double_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    url = urls.parse_url(
        _url_of(tmp_path, "postgresql+psycopg://app:pa$$word@h/app_$${NOT_A_VAR}", {"NOT_A_VAR": "boom"})
    )
    assert url.password == "pa$word"
    assert url.database == "app_${NOT_A_VAR}"


def test_double_dollar_in_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            version_path: versions/$$HOME/$${HOME}
    """)
    assert load(path, {"HOME": "/root"}).databases["users"].version_path == tmp_path.resolve() / "versions/$HOME/${HOME}"


def test_a_lone_dollar_is_left_alone(tmp_path: Path) -> None:
    url = urls.parse_url(_url_of(tmp_path, "postgresql+psycopg://app:pa$word@h/app$", {}))
    assert (url.password, url.database) == ("pa$word", "app$")


def test_missing_variable_names_it_and_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          orders:
            metadata: shop:orders
            url: ${ORDERS_URL}
    """)
    err = error_of(path, {"USERS_URL": "x"})
    assert_at(err, path, 6)
    assert "databases.orders.url: environment variable ORDERS_URL is not set" in err.message
    assert "export ORDERS_URL=" in (err.hint or "")
    assert "${ORDERS_URL:-" in (err.hint or "")


def test_missing_variable_in_a_block_list_names_the_item_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          orders:
            url: sqlite:///orders.db
            depends_on:
              - users
              - ${EXTRA_DEP}
    """)
    err = error_of(path)
    assert_at(err, path, 8)
    assert "environment variable EXTRA_DEP is not set" in err.message


def test_a_malformed_variable_reference_is_an_error_not_literal_text(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: ${USERS_URL:sqlite:///users.db}
    """)
    err = error_of(path, {"USERS_URL": "sqlite:///x.db"})
    assert_at(err, path, 3)
    assert "`${USERS_URL:sqlite:///users.db}` is not a valid variable reference" in err.message
    assert "${NAME:-default}" in (err.hint or "")
    assert "$$" in (err.hint or "")


def test_variables_come_from_the_given_environ_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ORCH_TEST_ONLY_IN_OS_ENVIRON", "sqlite:///os.db")
    path = write(tmp_path, """
        databases:
          users:
            url: ${ORCH_TEST_ONLY_IN_OS_ENVIRON}
    """)
    err = error_of(path, {})
    assert "ORCH_TEST_ONLY_IN_OS_ENVIRON is not set" in err.message
    # without an explicit environ, os.environ is used
    assert load_project(path).databases["users"].url == f"sqlite:///{tmp_path.resolve()}/os.db"


# --------------------------------------------------------------------------- urls


def test_not_a_url(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: not a url
    """)
    err = error_of(path)
    assert_at(err, path, 3)
    assert "databases.users.url: not a valid database URL" in err.message
    assert "dialect+driver://" in (err.hint or "")


def test_unknown_dialect_is_found_when_loading(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          orders:
            url: postgress://app@db.example.com/orders
    """)
    err = error_of(path)
    assert_at(err, path, 5)
    assert "unknown database dialect or driver `postgress`" in err.message
    assert "postgresql+psycopg://" in (err.hint or "")


# --------------------------------------------------------------------------- depends_on


def test_depends_on_unknown_database_lists_the_declared_ones(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
          catalog:
            url: sqlite:///catalog.db
          orders:
            url: sqlite:///orders.db
            depends_on:
              - users
              - catalgo
    """)
    err = error_of(path)
    assert_at(err, path, 10)
    assert "`orders` depends on unknown database `catalgo`" in err.message
    assert "declared databases: users, catalog, orders" in (err.hint or "")
    assert "did you mean `catalog`?" in (err.hint or "")


def test_depends_on_itself(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///users.db
            depends_on: [users]
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "`users` depends on itself" in err.message
    assert err.hint


def test_depends_on_cycle_of_three_names_the_whole_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          a:
            url: sqlite:///a.db
            depends_on: [b]
          b:
            url: sqlite:///b.db
            depends_on: [c]
          c:
            url: sqlite:///c.db
            depends_on: [a]
    """)
    err = error_of(path)
    assert_at(err, path, 10)
    assert "depends_on forms a cycle: a -> b -> c -> a" in err.message
    assert "remove one of these dependencies" in (err.hint or "")


def test_depends_on_cycle_reached_from_outside_it(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          start:
            url: sqlite:///s.db
            depends_on: [a]
          a:
            url: sqlite:///a.db
            depends_on: [b]
          b:
            url: sqlite:///b.db
            depends_on: [a]
    """)
    err = error_of(path)
    assert_at(err, path, 10)
    assert "cycle: a -> b -> a" in err.message
    assert "start" not in err.message.split("cycle:")[1]


def test_a_diamond_is_not_a_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          base:
            url: sqlite:///base.db
          left:
            url: sqlite:///left.db
            depends_on: [base]
          right:
            url: sqlite:///right.db
            depends_on: [base]
          top:
            url: sqlite:///top.db
            depends_on: [left, right]
    """)
    assert load(path).databases["top"].depends_on == ("left", "right")


# --------------------------------------------------------------------------- metadata


def _metadata_config(tmp_path: Path, ref: str) -> Path:
    return write(tmp_path, f"""
        sys_path: [models]
        databases:
          users:
            url: sqlite:///users.db
            metadata: {ref}
    """)


def test_metadata_module_raising_import_error_shows_its_text(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "models", mod, """
        from sqlalchemy import MetaData
        import orch_no_such_dependency_xyz
        metadata = MetaData()
    """)
    path = _metadata_config(tmp_path, f"{mod}:metadata")
    err = models_error_of(path)
    assert_at(err, path, 5)
    assert f"cannot import `{mod}`" in err.message
    assert "ModuleNotFoundError: No module named 'orch_no_such_dependency_xyz'" in err.message
    assert "sys_path" in (err.hint or "")


def test_metadata_module_raising_something_else_while_importing(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "models", mod, "raise RuntimeError('models are broken on purpose')\n")
    path = _metadata_config(tmp_path, f"{mod}:metadata")
    err = models_error_of(path)
    assert_at(err, path, 5)
    assert "RuntimeError: models are broken on purpose" in err.message


def test_metadata_module_calling_sys_exit_while_importing(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "models", mod, "import sys\nsys.exit(3)\n")
    path = _metadata_config(tmp_path, f"{mod}:metadata")
    err = models_error_of(path)
    assert_at(err, path, 5)
    assert "SystemExit" in err.message


def test_metadata_module_that_does_not_exist(tmp_path: Path) -> None:
    mod = module_name()
    path = _metadata_config(tmp_path, f"{mod}:metadata")
    err = models_error_of(path)
    assert_at(err, path, 5)
    assert f"cannot import `{mod}`: ModuleNotFoundError: No module named '{mod}'" in err.message


def test_metadata_attribute_missing_lists_the_metadata_found(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "models", mod, """
        from sqlalchemy import MetaData
        users_metadata = MetaData()
        orders_metadata = MetaData()
        not_metadata = 3
    """)
    path = _metadata_config(tmp_path, f"{mod}:metadata")
    err = models_error_of(path)
    assert_at(err, path, 5)
    assert f"`{mod}` has no attribute `metadata`" in err.message
    assert "MetaData objects found there: orders_metadata, users_metadata" in (err.hint or "")


def test_metadata_attribute_missing_in_a_module_without_any_metadata(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "models", mod, "x = 1\n")
    path = _metadata_config(tmp_path, f"{mod}:metadata")
    err = models_error_of(path)
    assert_at(err, path, 5)
    assert f"`{mod}` has no attribute `metadata`" in err.message
    assert "MetaData" in (err.hint or "")


def test_metadata_attribute_that_is_not_a_metadata(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "models", mod, "metadata = {'tables': []}\n")
    path = _metadata_config(tmp_path, f"{mod}:metadata")
    err = models_error_of(path)
    assert_at(err, path, 5)
    assert f"`{mod}:metadata` is a dict, not a SQLAlchemy MetaData" in err.message
    assert "declarative Base" in (err.hint or "")


def test_metadata_a_declarative_base_is_accepted(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "models", mod, """
        from sqlalchemy import Integer
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

        class Base(DeclarativeBase):
            pass

        class User(Base):
            __tablename__ = "users"
            id: Mapped[int] = mapped_column(Integer, primary_key=True)
    """)
    project = load(_metadata_config(tmp_path, f"{mod}:Base"))
    activate(project)
    metadata = project.databases["users"].metadata
    assert isinstance(metadata, MetaData)
    assert metadata is sys.modules[mod].Base.metadata
    assert list(metadata.tables) == ["users"]


def test_metadata_dotted_attribute_path(tmp_path: Path) -> None:
    mod = module_name()
    write_module(tmp_path / "models", mod, """
        from sqlalchemy import MetaData
        class registry:
            users = MetaData()
    """)
    project = load(_metadata_config(tmp_path, f"{mod}:registry.users"))
    activate(project)
    assert project.databases["users"].metadata is sys.modules[mod].registry.users


def test_metadata_in_a_package_module(tmp_path: Path) -> None:
    pkg = module_name("pkg")
    write_module(tmp_path / "models" / pkg, "__init__", "")
    write_module(tmp_path / "models" / pkg, "tables", "from sqlalchemy import MetaData\nmetadata = MetaData()\n")
    project = load(_metadata_config(tmp_path, f"{pkg}.tables:metadata"))
    activate(project)
    assert project.databases["users"].metadata is sys.modules[f"{pkg}.tables"].metadata


# --------------------------------------------------------------------------- shared version tables


def test_two_databases_sharing_one_version_table_in_one_sqlite_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///var/shared.db
          catalog:
            url: sqlite:///var/catalog.db
          orders:
            url: sqlite:///var/shared.db
    """)
    err = error_of(path)
    assert_at(err, path, 6)
    assert "`orders` and `users` would share the version table `alembic_version`" in err.message
    assert "version_table:" in (err.hint or "")


def test_same_sqlite_file_with_different_version_tables_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///var/shared.db
            version_table: alembic_version_users
          orders:
            url: sqlite:///var/shared.db
            version_table: alembic_version_orders
    """)
    project = load(path)
    assert project.databases["users"].url == project.databases["orders"].url


@pytest.mark.parametrize("other", ["./var/a.db", "var/../var/a.db", "var//a.db", "{root}/var/a.db"])
def test_different_spellings_of_one_sqlite_file_share_a_version_table(tmp_path: Path, other: str) -> None:
    path = write(tmp_path, f"""
        databases:
          users:
            url: sqlite:///var/a.db
          orders:
            url: sqlite:///{other.format(root=tmp_path.resolve())}
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "`orders` and `users` would share the version table `alembic_version`" in err.message


def test_a_symlinked_sqlite_file_shares_a_version_table(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "a.db").touch()
    (tmp_path / "link.db").symlink_to(tmp_path / "var" / "a.db")
    path = write(tmp_path, """
        databases:
          users:
            url: sqlite:///var/a.db
          orders:
            url: sqlite:///link.db
    """)
    assert "would share the version table" in error_of(path).message


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_sqlite_database_cannot_be_migrated(tmp_path: Path, url: str) -> None:
    # (it used to be accepted: its version table vanished with the connection)
    path = write(tmp_path, f"""
        databases:
          users:
            url: sqlite:///users.db
          orders:
            url: "{url}"
    """)
    err = error_of(path)
    assert_at(err, path, 5)
    assert "databases.orders.url: an in-memory SQLite database" in err.message
    assert "sqlite:///var/" in (err.hint or "")


def test_server_urls_sharing_a_version_table_with_and_without_the_default_port(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: postgresql+psycopg://app@DB.example.com/shop
          orders:
            url: postgresql+psycopg://other@db.example.com:5432/shop
          catalog:
            url: postgresql+psycopg://app@db.example.com:5432/catalog
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "`orders` and `users` would share the version table" in err.message


def test_server_urls_on_different_databases_or_ports_do_not_share(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: postgresql+psycopg://app@db.example.com/shop
          orders:
            url: postgresql+psycopg://app@db.example.com:5433/shop
          catalog:
            url: postgresql+psycopg://app@db.example.com/catalog
          legacy:
            url: mysql+pymysql://app@db.example.com/shop
    """)
    assert len(load(path).databases) == 4


# --------------------------------------------------------------------------- relative paths


def test_relative_paths_are_relative_to_the_config_folder_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    project_dir = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mod = module_name()
    write_module(project_dir / "src", mod, "from sqlalchemy import MetaData\nmetadata = MetaData()\n")
    write(project_dir, f"""
        script_location: migrations/envs
        sys_path: [src]
        databases:
          users:
            url: sqlite:///var/users.db
            metadata: {mod}:metadata
          orders:
            url: sqlite:///./data/../var/orders.db
            version_path: migrations/orders
    """)
    monkeypatch.chdir(elsewhere)
    project = load(Path("..") / "project" / "orchestrate.yaml")
    activate(project)

    root = project_dir.resolve()
    assert project.root == root
    assert project.script_location == root / "migrations" / "envs"
    assert project.sys_path == (root / "src",)
    users, orders = project.databases["users"], project.databases["orders"]
    assert users.url == f"sqlite:///{root}/var/users.db"
    assert users.metadata is sys.modules[mod].metadata  # imported through sys_path: [src]
    assert users.version_path == root / "versions" / "users"
    assert orders.version_path == root / "migrations" / "orders"
    assert urls.parse_url(orders.url).database is not None
    assert Path(urls.parse_url(orders.url).database).resolve() == root / "var" / "orders.db"
    assert not (elsewhere / "var").exists()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    root = (tmp_path / "project").resolve()
    other = (tmp_path / "other").resolve()
    path = write(tmp_path / "project", f"""
        script_location: {root}/envs
        databases:
          users:
            url: sqlite:///{other}/users.db
            version_path: {root}/versions/users
    """)
    project = load(path)
    assert project.script_location == root / "envs"
    assert project.databases["users"].url == f"sqlite:///{other}/users.db"  # a database may live anywhere
    assert project.databases["users"].version_path == root / "versions" / "users"


@pytest.mark.parametrize("key", ["script_location", "version_path"])
def test_env_and_version_folders_outside_the_project_are_errors(tmp_path: Path, key: str) -> None:
    other = (tmp_path / "other").resolve()
    settings = {"script_location": "", "version_path": ""}
    settings[key] = f"{key}: {other}/{key}"
    path = write(tmp_path / "project", f"""
        {settings["script_location"]}
        databases:
          users:
            url: sqlite:///users.db
            {settings["version_path"]}
    """)
    err = error_of(path)
    assert_at(err, path, 1 if key == "script_location" else 4)
    assert f"{key}: {other}/{key} is outside the project folder" in err.message


# --------------------------------------------------------------------------- passwords


def test_no_password_in_an_error_about_something_else(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: postgresql+psycopg://app:s3cretpw@host/db
            lock_timeout: soon
    """)
    err = error_of(path)
    assert_at(err, path, 4)
    assert "s3cretpw" not in str(err)


def test_no_password_in_an_invalid_url(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: postgresql+psycopg://app:s3cretpw@host:port/db
    """)
    err = error_of(path)
    assert_at(err, path, 3)
    assert "not a valid database URL" in err.message
    assert "s3cretpw" not in str(err)
    assert "app:***@host" in err.message


def test_no_password_when_a_database_is_given_its_url_as_settings(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users: postgresql+psycopg://app:s3cretpw@host/db
    """)
    err = error_of(path)
    assert_at(err, path, 2)
    assert "s3cretpw" not in str(err)


def test_no_password_from_a_url_given_by_a_variable(tmp_path: Path) -> None:
    path = write(tmp_path, """
        databases:
          users:
            url: ${USERS_URL}
          orders:
            url: ${USERS_URL}
    """)
    err = error_of(path, {"USERS_URL": "postgresql+psycopg://app:s3cretpw@host/db"})
    assert_at(err, path, 4)
    assert "would share the version table" in err.message
    assert "s3cretpw" not in str(err)
    assert "app:***@host" in err.message


def test_no_password_echoed_by_a_models_module_of_another_database(tmp_path: Path) -> None:
    # The first database's models echo the second's password, in text that does not look
    # like a URL: it is hidden only if every password is known before anything is imported.
    mod = module_name()
    write_module(tmp_path / "models", mod, "raise RuntimeError('login failed with password s3cretpw')\n")
    path = write(tmp_path, f"""
        sys_path: [models]
        databases:
          users:
            url: sqlite:///users.db
            metadata: {mod}:metadata
          orders:
            url: postgresql+psycopg://app:s3cretpw@host/db
    """)
    project = load(path)
    assert project.secrets == {"s3cretpw"}
    sys.path.insert(0, str(tmp_path / "models"))  # as activate() would, but no password registered
    with pytest.raises(ConfigError) as info:
        project.load_models()
    err = info.value
    assert_at(err, path, 5)
    assert "RuntimeError: login failed with password ***" in err.message
    assert "s3cretpw" not in str(err)


# --------------------------------------------------------------------------- through the CLI


BROKEN = """\
databases:
  users:
    url: postgresql+psycopg://app:s3cretpw@host/db
    urll: sqlite:///users.db
"""


def test_cli_config_error_exits_2_with_error_and_hint_on_stderr(make_project) -> None:
    project = make_project(BROKEN, init=False, versions=False)
    result = project.cli("upgrade", "--all")
    assert result.exit_code == 2
    assert f"error: {project.config.resolve()}:4: databases.users: unknown key `urll`" in result.stderr
    assert "hint: did you mean `url`?" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cretpw" not in result.output
    assert result.stdout == ""


def test_cli_config_error_with_debug_shows_the_traceback(make_project) -> None:
    project = make_project(BROKEN, init=False, versions=False)
    result = project.cli("--debug", "status")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert "ConfigError" in result.stderr
    assert f"error: {project.config.resolve()}:4:" in result.stderr
    assert "s3cretpw" not in result.output


def test_cli_config_error_without_a_hint_prints_no_hint_line(make_project) -> None:
    project = make_project(
        """\
        databases:
          users:
            url: sqlite:///users.db
            metadata: not-a-ref
        """,
        init=False,
        versions=False,
    )
    result = project.cli("current")
    assert result.exit_code == 2
    assert f"error: {project.config.resolve()}:4: databases.users.metadata:" in result.stderr
    assert "hint:" not in result.stderr


def test_cli_missing_variable(make_project) -> None:
    project = make_project(
        """\
        databases:
          users:
            url: ${ORCH_TEST_SURELY_UNSET_URL}
        """,
        init=False,
        versions=False,
    )
    result = project.cli("heads")
    assert result.exit_code == 2
    assert (
        f"error: {project.config.resolve()}:3: databases.users.url: "
        "environment variable ORCH_TEST_SURELY_UNSET_URL is not set"
    ) in result.stderr
    assert "hint: export ORCH_TEST_SURELY_UNSET_URL=" in result.stderr


def test_cli_unknown_name_exits_2_and_lists_the_declared_names(shop) -> None:
    result = shop.cli("upgrade", "-n", "nope")
    assert result.exit_code == 2
    assert "error: unknown database: nope" in result.stderr
    assert "users, catalog, orders" in result.stderr
    assert "Traceback" not in result.stderr
