"""Every wrong command-line input is exit 2 before any target runs, naming the option, the
file and line, or the revision; never a traceback or "unexpected" (issue 14, rules 1-5, 9).

Everything goes through the CLI (``Project.cli``, in-process); "nothing ran" is checked
on the databases themselves (no SQLite file created, no schema on PostgreSQL).
"""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from orchestrator import urls
from tests.conftest import Project, shop_config


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(urls, "_known_secrets", set())
    for name in list(os.environ):
        if name.startswith("ORCHESTRATE_"):
            monkeypatch.delenv(name)


def clean(result: Result, code: int, *needles: str) -> str:
    """``result`` exited with ``code``, printed every needle, and no traceback."""
    out = result.stdout + result.stderr
    assert result.exit_code == code, out
    assert "Traceback" not in out and "unexpected" not in out, out
    for needle in needles:
        assert needle in out, (needle, out)
    return out


def fleet_config(tmp: Path, names: list[str] | None = None, **tenants: Any) -> dict[str, Any]:
    """The shop example with `orders` one SQLite file per tenant."""
    config = shop_config()
    config["databases"]["orders"]["url"] = "sqlite:///var/tenants/{tenant}.db"
    config["databases"]["orders"]["tenants"] = {"mode": "database", **({"names": names} if names else {}), **tenants}
    return config


@pytest.fixture
def fleet(make_project) -> Project:
    return make_project(fleet_config(Path(), ["acme", "globex"]))


def ran_nothing(project: Project) -> None:
    var = project.root / "var"
    assert not var.exists() or not any(var.rglob("*.db")), list(var.rglob("*"))


# --------------------------------------------------------------------------- options that do not go together


@pytest.mark.parametrize("extra, named", [
    (["--json"], "--json"), (["--report", "r.json"], "--report"), (["--parallel", "2"], "--parallel"),
    (["--fail-fast"], "--fail-fast"),
])
def test_sql_refuses_run_options(shop: Project, extra: list[str], named: str) -> None:
    clean(shop.cli("upgrade", "--all", "--sql", *extra), 2, f"does not go with {named}")


@pytest.mark.parametrize("args, needle", [
    (["upgrade", "head:base", "--sql"], "runs the wrong way"),
    (["downgrade", "base:head", "--sql"], "runs the wrong way"),
    (["upgrade", "8e21d6f0a5b3:3f9a1c2b7d40", "--sql", "-n", "users"], "runs the wrong way"),
    (["upgrade", "base:head"], "only goes with --sql"),
    (["upgrade", "a:b:c", "--sql"], "one ':'"),
    (["upgrade", ":head", "--sql"], "both ends"),
    (["downgrade", "head", "--sql"], "needs a FROM:TO range"),
])
def test_revision_ranges(shop: Project, args: list[str], needle: str) -> None:
    if "-n" not in args:
        args = [*args, "--all"]
    clean(shop.cli(*args), 2, needle)
    ran_nothing(shop)


def test_a_forward_sql_range_still_prints_sql(shop: Project) -> None:
    out = clean(shop.cli("upgrade", "base:head", "--sql", "-n", "catalog"), 0)
    assert "CREATE TABLE" in out


@pytest.mark.parametrize("shard", ["", " ", "0/4", "5/4", "1/0", "a/b", "1", "1/2/3", "-1/2", "١/٢", "1/" + "9" * 30])
def test_malformed_shards(shop: Project, shard: str) -> None:
    clean(shop.cli("upgrade", "--all", "--shard", shard), 2, "--shard")
    ran_nothing(shop)


def test_tenant_with_a_named_database_without_tenants(fleet: Project) -> None:
    clean(fleet.cli("upgrade", "-n", "users", "-n", "orders", "--tenant", "acme"), 2,
          "`users` (named with -n) has no tenants")
    clean(fleet.cli("upgrade", "-n", "users", "--tenant", "acme"), 2, "none is selected")
    ran_nothing(fleet)
    clean(fleet.cli("upgrade", "--all", "--tenant", "acme"), 0)  # --all: databases without tenants drop out


@pytest.mark.parametrize("args", [["downgrade", "--bad-opt"], ["upgrade", "--bad"], ["stamp", "--nope"],
                                  ["downgrade", "-x"], ["upgrade", "-1"]])
def test_an_unknown_option_is_never_a_revision(shop: Project, args: list[str]) -> None:
    clean(shop.cli(*args, "--all"), 2)
    ran_nothing(shop)


# --------------------------------------------------------------------------- revision arguments


@pytest.mark.parametrize("args, needle", [
    (["upgrade", "nosuchrev", "--all"], "'nosuchrev'"),
    (["upgrade", "8e21d6f0a5b3", "--all"], "`catalog`"),  # users' revision, unknown to the others
    (["stamp", "nosuch", "-n", "users"], "'nosuch'"),
    (["upgrade", "nosuch@head", "-n", "users"], "'nosuch@head'"),
    (["upgrade", "nosuch@+1", "-n", "users"], "'nosuch'"),
    (["upgrade", "", "-n", "users"], "empty"),
    (["downgrade", "nosuch", "--all"], "'nosuch'"),
])
def test_an_unknown_revision_is_exit_2_before_any_target(shop: Project, args: list[str], needle: str) -> None:
    clean(shop.cli(*args), 2, needle)
    ran_nothing(shop)


def test_an_unknown_revision_with_sql(shop: Project) -> None:
    clean(shop.cli("upgrade", "base:nosuch", "--sql", "-n", "users"), 2, "'nosuch'")


@pytest.mark.parametrize("revision", ["heads", "head", "+1", "8e21d6f0a5b3@head", "3f9a@head", "3f9a1c2b7d40",
                                      "lbl@head", "lbl"])
def test_revision_forms_that_stay_valid(shop: Project, revision: str) -> None:
    label = shop.root / "versions" / "users" / "aaaa00000001_label.py"
    label.write_text('"""label"""\nrevision = "aaaa00000001"\ndown_revision = "8e21d6f0a5b3"\n'
                     'branch_labels = ("lbl",)\ndepends_on = None\n\n\ndef upgrade():\n    pass\n\n\n'
                     'def downgrade():\n    pass\n', encoding="utf-8")
    result = shop.cli("upgrade", revision, "-n", "users")
    clean(result, 0)
    for down in ("-1", "base"):
        clean(shop.cli("downgrade", down, "-n", "users"), 0)


# --------------------------------------------------------------------------- revision files


def new_files(project: Project, before: set[Path]) -> set[Path]:
    return {p for p in project.root.rglob("*") if p.is_file() and "__pycache__" not in p.parts} - before


@pytest.mark.parametrize("rev_id", ["../../evil", "a/b", "a-b", "a.b", "", "x" * 65, "héllo", "a b", "head",
                                    "8e21d6f0a5b3"])
def test_rev_id_rules(shop: Project, rev_id: str) -> None:
    before = new_files(shop, set())
    clean(shop.cli("revision", "-n", "users", "-m", "x", "--rev-id", rev_id), 2, "--rev-id")
    assert not new_files(shop, before)


MESSAGES = ['quote " and \'', 'triple """ quotes', "trailing backslash \\", "a \\N{bogus} \\x escape",
            "new\nlines\r\nand\ttabs", "nul \x00 byte", "emoji 🎉 ünïcödé", "x" * 10_000, "\udcff surrogate",
            "${message} % %(rev)s {tenant}", "\u2028 line separator"]


@pytest.mark.parametrize("message", MESSAGES, ids=range(len(MESSAGES)))
def test_any_message_gives_a_file_that_loads_or_a_clean_refusal(shop: Project, message: str) -> None:
    before = new_files(shop, set())
    result = shop.cli("revision", "-n", "users", "-m", message)
    out = clean(result, result.exit_code)
    assert result.exit_code in (0, 2), out
    made = new_files(shop, before)
    if result.exit_code == 2:
        assert not made, made
        return
    assert len(made) == 1, made
    (path,) = made
    assert path.parent == shop.root / "versions" / "users"
    compile(path.read_bytes(), str(path), "exec")
    clean(shop.cli("heads", "-n", "users"), 0)
    clean(shop.cli("upgrade", "-n", "users"), 0)


# --------------------------------------------------------------------------- --report


def test_report_paths_that_cannot_be_written(shop: Project, tmp_path: Path) -> None:
    clean(shop.cli("upgrade", "--all", "--report", str(tmp_path)), 2, "--report")
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    clean(shop.cli("upgrade", "--all", "--report", str(regular / "r.json")), 2, "--report", "not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        where = locked if not os.access(locked, os.W_OK) else Path("/proc/sys")  # root writes anywhere else
        clean(shop.cli("upgrade", "--all", "--report", str(where / "r.json")), 2, "--report", "not writable")
    finally:
        locked.chmod(stat.S_IRWXU)
    ran_nothing(shop)


# --------------------------------------------------------------------------- --tenants-from


def test_tenants_from_a_fifo_is_refused_at_once(fleet: Project, tmp_path: Path) -> None:
    fifo = tmp_path / "names.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    clean(fleet.cli("upgrade", "-n", "orders", "--tenants-from", str(fifo)), 2, "FIFO")
    assert time.monotonic() - started < 10


def test_tenants_from_standard_input(fleet: Project) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["-c", str(fleet.config), "upgrade", "-n", "orders", "--tenants-from", "-"],
                                input="# one tenant\nacme\n")
    out = clean(result, 0, "orders/acme")
    assert "globex" not in out


@pytest.mark.parametrize("content, env, needle", [
    (b"acme\nglobex\nacme2\nacme3\n", {"ORCHESTRATE_MAX_TENANTS": "3"}, ":4: more than 3 lines"),
    (b"acme\n\xff\xfe\n", {}, ":2: not UTF-8"),
    (b"acme\n../escape\n", {}, ":2: tenant name '../escape' is not a safe file name"),
    (b"acme\npg_catalog\n", {}, ":2: tenant name 'pg_catalog' is reserved"),
    (b"# nothing\n\n", {}, "lists no tenant"),
    (b"x" * 2000, {"ORCHESTRATE_MAX_TENANTS": "3"}, "ORCHESTRATE_MAX_TENANTS"),
])
def test_tenants_from_bad_files(fleet: Project, tmp_path: Path, content: bytes, env: dict[str, str],
                                needle: str) -> None:
    path = tmp_path / "names.txt"
    path.write_bytes(content)
    clean(fleet.cli("upgrade", "-n", "orders", "--tenants-from", str(path), env=env), 2, needle)
    ran_nothing(fleet)


def test_tenants_from_a_missing_file_or_a_folder(fleet: Project, tmp_path: Path) -> None:
    clean(fleet.cli("upgrade", "-n", "orders", "--tenants-from", str(tmp_path / "none.txt")), 2)
    clean(fleet.cli("upgrade", "-n", "orders", "--tenants-from", str(tmp_path)), 2)


@pytest.mark.parametrize("name, needle", [("a/b", "not a safe file name"), ("pg_x", "reserved"),
                                          ("UPPER", "does not match the tenant pattern"), ("x" * 300, "longer"),
                                          ("a\nb", "control character"), ("zzz", "unknown tenant")])
def test_bad_tenant_names_on_the_command_line(fleet: Project, name: str, needle: str) -> None:
    clean(fleet.cli("upgrade", "-n", "orders", "--tenant", name), 2, needle)
    ran_nothing(fleet)


# --------------------------------------------------------------------------- --retry-failed


def failed_report(project: Project, tmp_path: Path) -> Path:
    """A real report with a failure: orders/globex's file is a folder."""
    (project.root / "var" / "tenants" / "globex.db").mkdir(parents=True)
    path = tmp_path / "run.json"
    result = project.cli("upgrade", "--all", "--report", str(path))
    assert result.exit_code == 1, result.output
    return path


def edit_report(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))
    return path


def test_retry_failed_reports_that_are_refused(fleet: Project, tmp_path: Path) -> None:
    report = failed_report(fleet, tmp_path)
    original = report.read_text()

    def failed(data: dict[str, Any]) -> dict[str, Any]:
        return next(t for t in data["targets"] if t["status"] == "failed")

    def rename(data: dict[str, Any]) -> None:
        failed(data)["tenant"], failed(data)["target"] = "initech", "orders/initech"

    clean(fleet.cli("upgrade", "--retry-failed", str(edit_report(report, rename))), 2,
          "tenant 'initech' of `orders` is not declared", f"{report}:")
    report.write_text(original)

    def null(data: dict[str, Any]) -> None:
        failed(data)["tenant"] = None

    clean(fleet.cli("upgrade", "--retry-failed", str(edit_report(report, null))), 2, "names no tenant", f"{report}:")
    for bad, needle in [("not json", "not an orchestrate report"), ("[1, 2]", "not an orchestrate report"),
                        ('{"targets": 5}', "not an orchestrate report"), ("[" * 100_000, "not an orchestrate report"),
                        ('{"targets": [{"status": ["failed"]}]}', "nothing to retry"),
                        ('{"targets": [{"status": "failed", "database": ["x"]}]}', "does not declare")]:
        report.write_text(bad)
        clean(fleet.cli("upgrade", "--retry-failed", str(report)), 2, needle)
    report.write_bytes(b'{\n"targets": "\xcb')
    clean(fleet.cli("upgrade", "--retry-failed", str(report)), 2, f"{report}:2: not UTF-8")
    report.write_text(original)
    clean(fleet.cli("upgrade", "--retry-failed", str(report), env={"ORCHESTRATE_MAX_REPORT_BYTES": "100"}), 2,
          "ORCHESTRATE_MAX_REPORT_BYTES")
    assert not (fleet.root / "var" / "tenants" / "initech.db").exists()


def test_retry_failed_on_postgresql_schemas(make_project, pg_url: str, tmp_path: Path) -> None:
    config = shop_config({"orders": pg_url})
    config["databases"]["orders"]["tenants"] = {"mode": "schema", "names": ["orch_fuz_a", "orch_fuz_b"],
                                                "create": True}
    project = make_project(config)
    report = tmp_path / "run.json"
    report.write_text(json.dumps({"version": 2, "targets": [
        {"target": "orders/orch_fuz_evil", "database": "orders", "tenant": "orch_fuz_evil", "status": "failed"},
    ]}, indent=2))
    clean(project.cli("upgrade", "--retry-failed", str(report)), 2, "'orch_fuz_evil'", f"{report}:5: ")
    report.write_text(json.dumps({"targets": [{"target": "orders", "database": "orders", "tenant": None,
                                               "status": "failed"}]}))
    clean(project.cli("upgrade", "--retry-failed", str(report)), 2, "names no tenant")
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            schemas = connection.execute(text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'orch_fuz%'"))
            assert schemas.scalars().all() == []
            assert connection.execute(text("SELECT to_regclass('public.alembic_version_orders')")).scalar() is None
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- tenant names and queries


def test_a_percent_tenant_makes_the_schema_it_names(make_project, pg_url: str) -> None:
    config = shop_config({"orders": pg_url})
    config["databases"]["orders"]["tenants"] = {"mode": "schema", "names": ["pct%s", "pct%%s"], "create": True,
                                                "pattern": r"^[a-z%]{1,20}$"}
    project = make_project(config)
    clean(project.cli("upgrade", "-n", "orders"), 0)
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            schemas = connection.execute(text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pct%'"))
            assert sorted(schemas.scalars().all()) == ["pct%%s", "pct%s"]
            for schema in ("pct%s", "pct%%s"):
                table = connection.execute(text("SELECT to_regclass(:t)"), {"t": f'"{schema}".alembic_version_orders'})
                assert table.scalar() is not None, schema
    finally:
        engine.dispose()


def query_project(make_project, tmp_path: Path, rows: list[Any], query: str = "SELECT name FROM tenants") -> Project:
    source = tmp_path / "tenants.sqlite"
    with sqlite3.connect(source) as connection:
        connection.execute("CREATE TABLE tenants (name)")
        connection.executemany("INSERT INTO tenants VALUES (?)", [(r,) for r in rows])
    return make_project(fleet_config(tmp_path, query=query, query_url=f"sqlite:///{source}"))


@pytest.mark.parametrize("rows, query, env, needle", [
    (["acme", "globex", "initech"], None, {"ORCHESTRATE_MAX_TENANTS": "2"}, "more than 2 rows"),
    (["acme", 42], None, {}, "returned 42"),
    (["acme", None], None, {}, "returned None"),
    (["acme", "../x"], None, {}, "not a safe file name"),
    (["acme"], "SELECT nope FROM nowhere", {}, "the tenants query failed"),
])
def test_tenant_query_problems_name_the_query_line(make_project, tmp_path: Path, rows: list[Any],
                                                   query: str | None, env: dict[str, str], needle: str) -> None:
    project = query_project(make_project, tmp_path, rows, **({"query": query} if query else {}))
    line = next(i for i, t in enumerate(project.config.read_text().splitlines(), 1) if "query:" in t)
    clean(project.cli("upgrade", "-n", "orders", env=env), 2, needle, f"{project.config}:{line}: ")
    ran_nothing(project)


def test_tenant_query_results_are_used(make_project, tmp_path: Path) -> None:
    project = query_project(make_project, tmp_path, ["acme", "globex", "acme"])
    out = clean(project.cli("upgrade", "-n", "orders"), 0)
    assert "2 targets" in out


# --------------------------------------------------------------------------- exit codes


def test_exit_codes_are_only_0_1_2_130(make_project, tmp_path: Path) -> None:
    models = tmp_path / "exiting_models.py"
    models.write_text("import sys\nsys.exit(4)\n")
    config = shop_config()
    config["sys_path"].append(str(tmp_path))
    config["databases"]["users"]["metadata"] = "exiting_models:metadata"
    project = make_project(config)
    clean(project.cli("upgrade", "-n", "users"), 2, "SystemExit")  # a models module exiting is a config error
    for args in (["--nope"], ["nosuchcommand"], ["upgrade", "--parallel", "0"], ["upgrade", "--parallel", "x"],
                 ["--version"], ["--help"], ["revision"]):
        result = project.cli(*args)
        assert result.exit_code in (0, 2), (args, result.output)


def test_a_tenant_name_is_refused_only_when_no_selected_database_could_have_it(make_project) -> None:
    config = fleet_config(Path(), ["acme", "globex"])
    config["databases"]["users"]["url"] = "sqlite:///var/users/{tenant}.db"
    config["databases"]["users"]["tenants"] = {"mode": "database", "names": ["Acme"], "pattern": "^[A-Za-z]+$"}
    project = make_project(config)
    out = clean(project.cli("upgrade", "--all", "--tenant", "Acme"), 0, "users/Acme")
    assert "orders/" not in out
    clean(project.cli("upgrade", "--all", "--tenant", "A-b"), 2, "--tenant 'A-b'", "does not match")
    clean(project.cli("upgrade", "--all", "--tenant", "Nobody"), 2, "unknown tenant: Nobody")
