"""The migration test kit (orchestrator.testing), run with pytest's own pytester on
generated projects: a clean two-database project (SQLite, PostgreSQL, MariaDB), two
heads, a downgrade that leaves a column behind, a model column no revision creates, and
a multi-tenant database whose revision makes per-tenant uuid4() values."""
from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MYSQL_URL, PG_URL, _server_or_skip
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

# Imported here, before pytester snapshots sys.modules: its in-process runs drop the modules
# they imported, and a class imported twice (Target) would not be itself any more.
import orchestrator.api
import orchestrator.cli
import orchestrator.testing.checks
import orchestrator.testing.runner
import orchestrator.testing.scratch  # noqa: F401

pytest_plugins = ["pytester"]


MODELS = '''
from sqlalchemy import Column, Integer, MetaData, String, Table

alpha_metadata = MetaData()
Table("items", alpha_metadata, Column("id", Integer, primary_key=True),
      Column("name", String(50), nullable=False), Column("price", Integer){extra_column})

beta_metadata = MetaData()
Table("notes", beta_metadata, Column("id", Integer, primary_key=True), Column("body", String(200)))
Table("tags", beta_metadata, Column("id", Integer, primary_key=True), Column("label", String(30)))

fleet_metadata = MetaData()
Table("settings", fleet_metadata, Column("id", Integer, primary_key=True), Column("token", String(36), nullable=False))
'''

REVISION = '''"""{message}

Revision ID: {rev}
Revises: {down}
"""
import uuid

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down_value}
branch_labels = None
depends_on = None
{extra}

def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


def write_revision(root: Path, database: str, rev: str, down: str | tuple[str, ...] | None, upgrade: str,
                   downgrade: str, extra: str = "") -> None:
    folder = root / "versions" / database
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rev}_{database}.py").write_text(REVISION.format(
        message=f"{database} {rev}", rev=rev, down=down, down_value=repr(down), extra=extra,
        upgrade=textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
        downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    ")))


def make_project(root: Path, *, urls: dict[str, str] | None = None, fleet: bool = False, extra_column: str = "",
                 forgetful_downgrade: bool = False, second_head: bool = False, tests: bool = True) -> str:
    """A project with databases alpha and beta (beta depends on alpha and has a merged
    history), optionally a multi-tenant `fleet`; returns the models module's name."""
    urls = urls or {}
    module = f"kitmodels_{uuid.uuid4().hex[:8]}"  # in-process runs share sys.modules
    (root / f"{module}.py").write_text(MODELS.format(extra_column=extra_column))
    databases = {
        "alpha": {"url": urls.get("alpha", "sqlite:///var/alpha.db"), "metadata": f"{module}:alpha_metadata"},
        "beta": {"url": urls.get("beta", "sqlite:///var/beta.db"), "metadata": f"{module}:beta_metadata",
                 "depends_on": ["alpha"]},
    }
    if fleet and "fleet" in urls:  # schema per tenant on a server
        databases["fleet"] = {"url": urls["fleet"], "metadata": f"{module}:fleet_metadata",
                              "tenants": {"mode": "schema", "names": ["acme", "globex", "initech"]}}
    elif fleet:
        databases["fleet"] = {"url": "sqlite:///var/fleet/{tenant}.db", "metadata": f"{module}:fleet_metadata",
                              "tenants": {"mode": "database", "names": ["acme", "globex", "initech"]}}
    import yaml

    for name, entry in databases.items():
        entry["version_table"] = f"alembic_version_{name}"

    (root / "orchestrate.yaml").write_text(yaml.safe_dump({"sys_path": ["."], "databases": databases}, sort_keys=False))
    write_revision(root, "alpha", "a1", None,
                   "op.create_table('items', sa.Column('id', sa.Integer, primary_key=True), "
                   "sa.Column('name', sa.String(50), nullable=False))",
                   "op.drop_table('items')")
    write_revision(root, "alpha", "a2", "a1",
                   "op.add_column('items', sa.Column('price', sa.Integer))",
                   "pass" if forgetful_downgrade else
                   "with op.batch_alter_table('items') as batch:\n    batch.drop_column('price')")
    if second_head:
        write_revision(root, "alpha", "a3", "a1", "pass", "pass")
    write_revision(root, "beta", "b1", None,
                   "op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True))", "op.drop_table('notes')")
    write_revision(root, "beta", "b2a", "b1", "op.add_column('notes', sa.Column('body', sa.String(200)))",
                   "with op.batch_alter_table('notes') as batch:\n    batch.drop_column('body')")
    write_revision(root, "beta", "b2b", "b1",
                   "op.create_table('tags', sa.Column('id', sa.Integer, primary_key=True), "
                   "sa.Column('label', sa.String(30)))", "op.drop_table('tags')")
    write_revision(root, "beta", "bm", ("b2a", "b2b"), "pass", "pass")
    if fleet:
        write_revision(root, "fleet", "f1", None,
                       "op.create_table('settings', sa.Column('id', sa.Integer, primary_key=True), "
                       "sa.Column('token', sa.String(36), nullable=False))", "op.drop_table('settings')")
        write_revision(root, "fleet", "f2", "f1",
                       "settings = sa.table('settings', sa.column('id', sa.Integer), sa.column('token', sa.String))\n"
                       "op.bulk_insert(settings, [{'id': 1, 'token': str(uuid.uuid4())}])",
                       "op.execute('DELETE FROM settings')",
                       extra="orchestrate_replay = False  # a per-tenant uuid4(): never replay it\n")
    from orchestrator.cli import cli

    args = ["-c", str(root / "orchestrate.yaml"), "init"] + (["--tests"] if tests else [])
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return module


def kit_databases(admin_url: str) -> set[str]:
    engine = create_engine(admin_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                rows = connection.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'orch_kit%'"))
            else:
                rows = connection.execute(text("SELECT schema_name FROM information_schema.schemata "
                                               "WHERE schema_name LIKE 'orch_kit%'"))
            return {r[0] for r in rows}
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- clean projects


def test_clean_project_on_sqlite_passes_every_generated_test(pytester: pytest.Pytester) -> None:
    make_project(pytester.path, fleet=True)
    assert (pytester.path / "tests" / "test_migrations.py").is_file()  # init --tests wrote it
    result = pytester.runpytest("tests", "-p", "no:cacheprovider", "-rA", "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 8 and "failed" not in outcomes and "error" not in outcomes, result.stdout.str()
    out = result.stdout.str()
    for name in ("test_single_head[alpha]", "test_upgrade[beta]", "test_stairway[beta]", "test_models_match[alpha]",
                 "test_depends_on_order[beta]", "test_replay_vs_live[fleet]", "test_upgrade_async[alpha]"):
        assert f"{name} PASSED" in out, name
    # the merged history (beta: b1 -> b2a, b2b -> bm) passed the stairway; the uuid4 revision ran live
    assert "fleet/acme: 2 revisions, 0 replayed, 2 ran live" in out  # the first tenant records
    assert "fleet/initech: 2 revisions, 1 replayed, 1 ran live" in out  # f2 (uuid4) ran live there too
    assert "always live (orchestrate_replay = False): f2" in out
    assert not list(pytester.path.glob(".orch_kit_*.yaml"))  # scratch configs removed


def test_plugin_is_off_unless_enabled(pytester: pytest.Pytester) -> None:
    make_project(pytester.path, tests=False)
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    off = pytester.runpytest("-p", "no:cacheprovider")
    off.assert_outcomes(passed=1)
    pytester.makeini("[pytest]\norchestrate_tests = true\n")
    on = pytester.runpytest("-p", "no:cacheprovider", "-k", "single_head")
    on.assert_outcomes(passed=2)


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_clean_project_on_a_server_passes_and_drops_what_it_made(pytester: pytest.Pytester, server: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    admin = PG_URL if server == "postgresql" else MYSQL_URL
    _server_or_skip(admin, server)
    configured = ("postgresql+psycopg://app@db.invalid:5432/app" if server == "postgresql"
                  else "mysql+pymysql://app@db.invalid:3306/app")
    make_project(pytester.path, urls={"alpha": configured, "beta": configured, "fleet": configured}, fleet=True,
                 tests=False)
    before = kit_databases(admin)
    skipped = pytester.runpytest("-p", "no:cacheprovider", "--orchestrate", "-k", "upgrade and not async", "-rs")
    skipped.assert_outcomes(skipped=3)
    assert "ORCHESTRATE_TEST_ALPHA_URL" in skipped.stdout.str()
    monkeypatch.setenv("ORCHESTRATE_TEST_FLEET_URL", admin)  # the variable, or --orchestrate-url
    result = pytester.runpytest("-p", "no:cacheprovider", "--orchestrate", f"--orchestrate-url=alpha={admin}",
                                f"--orchestrate-url=beta={admin}", "-rA", "-k", "not fleet or replay or stairway")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 13 and "failed" not in outcomes and "skipped" not in outcomes, result.stdout.str()
    assert "fleet/" in result.stdout.str() and "ran live" in result.stdout.str()  # schema tenants, replay compared
    assert kit_databases(admin) == before


# ---------------------------------------------------------------------- failures name what is wrong


def test_two_heads_fail_the_single_head_test_naming_both(pytester: pytest.Pytester) -> None:
    make_project(pytester.path, second_head=True, tests=False)
    result = pytester.runpytest("-p", "no:cacheprovider", "--orchestrate", "-k", "single_head")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_single_head?alpha?: alpha: 2 heads: a2, a3*"])


def test_a_downgrade_that_leaves_a_column_fails_the_stairway_naming_revision_and_column(
        pytester: pytest.Pytester) -> None:
    make_project(pytester.path, forgetful_downgrade=True, tests=False)
    result = pytester.runpytest("-p", "no:cacheprovider", "--orchestrate", "-k", "stairway")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*alpha: revision a2 (alpha a2): its downgrade did not undo its upgrade:*",
        "*+ column items.price INTEGER was left behind*",
    ])


def test_a_model_column_no_revision_creates_fails_models_match(pytester: pytest.Pytester) -> None:
    make_project(pytester.path, extra_column=', Column("color", String(20))', tests=False)
    result = pytester.runpytest("-p", "no:cacheprovider", "--orchestrate", "-k", "models_match")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*alpha: the models and the migrations differ*", "*+ column items.color*"])


def test_fixtures_for_tests_of_ones_own(pytester: pytest.Pytester) -> None:
    make_project(pytester.path, tests=False)
    pytester.makepyfile(test_data='''
        from sqlalchemy import text

        def test_seeded_rows_survive_the_next_revision(orchestrate_runner, orchestrate_project):
            assert set(orchestrate_project.databases) == {"alpha", "beta"}
            runner = orchestrate_runner("alpha")
            runner.upgrade("a1")
            with runner.connection() as connection:
                connection.execute(text("INSERT INTO items (id, name) VALUES (1, 'pen')"))
            runner.upgrade("a2")
            with runner.connection() as connection:
                assert connection.execute(text("SELECT name, price FROM items")).all() == [("pen", None)]
            assert "price" in runner.schema()["items"]["columns"]

        def test_empty_target_is_empty(empty_target):
            scratch = empty_target("beta")
            assert scratch.database.url.startswith("sqlite:///") and "orch_kit" in scratch.database.url
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
