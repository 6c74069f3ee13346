"""Every target runs its revisions as plain Alembic would (issue 15), compared with plain Alembic.

Each comparison runs the plain ``alembic`` command once per target (a subprocess each, with a
minimal env.py of the test's own) and orchestrate (serial, and ``--parallel 2`` so that a
worker migrates at least two targets) on the same small history, then compares every
target's schema (tables, columns, indexes) and rows, on SQLite files, PostgreSQL schemas
and MariaDB databases.

The history (5 revisions) is laid out in nested folders, ``versions/app/<release>/<branch>/``,
read with ``recursive_version_locations: true``; it has expand/contract branches; and its
first revision keeps module state: a ``ROWS`` list whose dicts ``upgrade()`` pops from, and a
``TOKEN = uuid4()`` made at import. Plain Alembic imports the file afresh per run, so every
target gets its rows and a token of its own; orchestrate must too.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result
from conftest import MYSQL_URL, Project
from sqlalchemy import column, create_engine, inspect, select, table, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

PYTHON = sys.executable

# ---------------------------------------------------------------------- the history

_HEADER = '''"""{doc}"""
import uuid

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = {labels!r}
depends_on = None
'''

HISTORY: dict[str, tuple[str, str | None, tuple[str, ...] | None, str, str]] = {
    # rev: (folder under versions/app, down_revision, branch_labels, body, doc)
    "f1000000000a": ("r1/base", None, None, '''
ROWS = [{"id": 1, "note": "x"}, {"id": 2, "note": "y"}]
TOKEN = uuid.uuid4().hex  # made at import: one per run of plain Alembic


def upgrade():
    items = op.create_table(
        "items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("note", sa.String(20)),
        sa.Column("token", sa.String(32)),
    )
    op.create_index("ix_items_note", "items", ["note"])
    op.bulk_insert(items, [{"id": row["id"], "note": row.pop("note"), "token": TOKEN} for row in ROWS])


def downgrade():
    op.drop_index("ix_items_note", table_name="items")
    op.drop_table("items")
''', "items, from module state"),
    "f2000000000b": ("r1/base", "f1000000000a", None, '''

def upgrade():
    op.add_column("items", sa.Column("qty", sa.Integer(), nullable=True))
    op.execute("UPDATE items SET qty = id * 10")


def downgrade():
    with op.batch_alter_table("items") as batch:
        batch.drop_column("qty")
''', "qty"),
    "e1000000000c": ("r2/expand", "f2000000000b", ("expand",), '''

def upgrade():
    audit = op.create_table("audit", sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
                            sa.Column("what", sa.String(20)))
    op.bulk_insert(audit, [{"id": 1, "what": "expand"}])


def downgrade():
    op.drop_table("audit")
''', "audit table"),
    "e2000000000d": ("r2/expand", "e1000000000c", None, '''

def upgrade():
    op.add_column("audit", sa.Column("at", sa.Integer(), nullable=True))
    op.create_index("ix_audit_what", "audit", ["what"], unique=True)


def downgrade():
    op.drop_index("ix_audit_what", table_name="audit")
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("at")
''', "audit column"),
    "c1000000000e": ("r2/contract", "f2000000000b", ("contract",), '''

def upgrade():
    op.create_index("ix_items_qty", "items", ["qty"])
    op.execute("UPDATE items SET qty = qty + 1")


def downgrade():
    op.drop_index("ix_items_qty", table_name="items")
''', "qty index"),
}


def write_history(versions: Path) -> None:
    for rev, (folder, down, labels, body, doc) in HISTORY.items():
        where = versions / "app" / folder
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{rev}_{doc.split(',')[0].replace(' ', '_')}.py").write_text(
            _HEADER.format(doc=doc, rev=rev, down=down, labels=labels) + body, encoding="utf-8")


# ---------------------------------------------------------------------- plain Alembic

PLAIN_ENV = '''
from alembic import context
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import NullPool

x = context.get_x_argument(as_dictionary=True)
if context.is_offline_mode():
    context.configure(url=x["url"], literal_binds=True, version_table=x.get("version_table", "alembic_version"))
    with context.begin_transaction():
        context.run_migrations()
    raise SystemExit(0)
engine = create_engine(x["url"], poolclass=NullPool)
options = {}
if engine.dialect.name == "sqlite":  # SQLAlchemy's documented pysqlite recipe: DDL in transactions
    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")

    options["transactional_ddl"] = True
with engine.connect() as connection:
    if x.get("schema"):
        connection.execute(text('SET search_path TO "%s"' % x["schema"]))
        connection.commit()
    context.configure(connection=connection, transaction_per_migration=True,
                      version_table=x.get("version_table", "alembic_version"), **options)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
engine.dispose()
'''


def plain_alembic(folder: Path, versions: Path, recursive: bool = True) -> Path:
    """A minimal Alembic project of the test's own: its env.py, an ini naming ``versions``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "env.py").write_text(PLAIN_ENV, encoding="utf-8")
    ini = folder / "alembic.ini"
    ini.write_text(textwrap.dedent(f"""\
        [alembic]
        script_location = {folder}
        version_locations = {versions}
        path_separator = os
        recursive_version_locations = {"true" if recursive else "false"}
        """), encoding="utf-8")
    return ini


def run_plain(ini: Path, targets: list[tuple[str, str | None]], *args: str,
              version_table: str = "alembic_version") -> list[int]:
    """``alembic -c ini -x url=... ARGS`` once per target (concurrently); their exit codes."""
    processes = []
    for url, schema in targets:
        command = [PYTHON, "-m", "alembic", "-c", str(ini), "-x", f"url={url}", "-x", f"version_table={version_table}"]
        if schema:
            command += ["-x", f"schema={schema}"]
        processes.append(subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          cwd=ini.parent))
    codes = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        codes.append(process.returncode)
        if process.returncode not in (0, 1, 255):
            raise AssertionError(f"alembic exited {process.returncode}: {err.decode(errors='replace')[-2000:]}")
    return codes


# ---------------------------------------------------------------------- places and fleets


@dataclass
class Place:
    """Where a dialect's tenants live: SQLite files, PostgreSQL schemas, MariaDB databases."""

    kind: str
    server_url: str | None  # pg/mysql: the test's own database
    root: Path
    prefix: str = ""
    created: list[str] = field(default_factory=list)

    def names(self, letter: str, count: int = 4) -> list[str]:
        return [f"{self.prefix}{letter}{i}" for i in range(1, count + 1)]

    def fleet_url(self, folder: str = "tenants") -> str:
        """The url of a multi-tenant database in orchestrate.yaml."""
        if self.kind == "sqlite":
            return f"sqlite:///{folder}/{{tenant}}.db"
        assert self.server_url is not None
        return self.server_url

    def tenants_block(self, names: list[str]) -> dict[str, Any]:
        if self.kind == "sqlite":
            return {"mode": "database", "names": names}
        return {"mode": "schema", "names": names, "create": True}

    def target(self, tenant: str, project: Path | None = None, folder: str = "tenants") -> tuple[str, str | None]:
        """(url, schema) of one tenant, as plain Alembic and the snapshot reach it."""
        if self.kind == "sqlite":
            base = project if project is not None else self.root
            return f"sqlite:///{base / folder / f'{tenant}.db'}", None
        assert self.server_url is not None
        if self.kind == "mysql":
            return make_url(self.server_url).set(database=tenant).render_as_string(hide_password=False), None
        return self.server_url, tenant

    def create(self, tenants: list[str]) -> None:
        """Make the containers plain Alembic migrates into (orchestrate creates its own)."""
        if self.kind == "sqlite":
            (self.root / "tenants").mkdir(parents=True, exist_ok=True)
            return
        assert self.server_url is not None
        engine = create_engine(self.server_url, poolclass=NullPool)
        with engine.begin() as connection:
            for name in tenants:
                connection.execute(text(f'CREATE SCHEMA "{name}"' if self.kind == "pg" else f"CREATE DATABASE `{name}`"))
        engine.dispose()


@pytest.fixture(params=["sqlite", "pg", "mysql"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    kind = request.param
    if kind == "sqlite":
        yield Place("sqlite", None, tmp_path / "plain")
        return
    url = request.getfixturevalue("pg_url" if kind == "pg" else "mysql_url")
    prefix = f"orch_fid_{uuid.uuid4().hex[:6]}_" if kind == "mysql" else ""
    yield Place(kind, url, tmp_path / "plain", prefix)
    if kind == "mysql":
        engine = create_engine(MYSQL_URL, poolclass=NullPool)
        with engine.begin() as connection:
            names = connection.execute(
                text("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE :p"),
                {"p": prefix.replace("_", "\\_") + "%"},
            ).scalars().all()
            for name in names:
                connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        engine.dispose()


def make_orchestrate(root: Path, databases: dict[str, Any], history: Callable[[Path], None] = write_history,
                     **top: Any) -> Project:
    """A project in ``root``: orchestrate.yaml, envs/ from `init`, the history."""
    project = Project(root)
    root.mkdir(parents=True, exist_ok=True)
    history(root / "versions")
    for entry in databases.values():
        for location in entry.get("version_locations", []):
            (root / location).mkdir(parents=True, exist_ok=True)
    (root / "tenants").mkdir(exist_ok=True)
    project.write_config({**top, "databases": databases})
    result = project.cli("init")
    assert result.exit_code == 0, result.output
    return project


def cli(project: Project, *args: str, code: int = 0) -> Result:
    result = project.cli(*args)
    assert result.exit_code == code, (args, result.exit_code, result.stdout[-4000:], result.stderr[-3000:])
    assert "Traceback" not in result.stdout + result.stderr
    return result


# ---------------------------------------------------------------------- looking inside a target


def snapshot(url: str, schema: str | None) -> tuple[dict[str, Any], list[str]]:
    """Tables, columns, indexes and rows (the `token` column set aside), and the tokens."""
    engine = create_engine(url, poolclass=NullPool)
    found: dict[str, Any] = {}
    tokens: list[str] = []
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            for name in sorted(inspector.get_table_names(schema=schema)):
                columns = inspector.get_columns(name, schema=schema)
                indexes = sorted((ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                                 for ix in inspector.get_indexes(name, schema=schema))
                names = [c["name"] for c in columns]
                rows = connection.execute(select(*[column(n) for n in names]).select_from(table(name, schema=schema)))
                shown = []
                for row in rows:
                    values = dict(zip(names, row, strict=True))
                    if "token" in values:
                        tokens.append(values.pop("token"))
                    shown.append(repr(sorted(values.items())))
                found[name] = {
                    "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in columns],
                    "indexes": indexes,
                    "rows": sorted(shown),
                }
    finally:
        engine.dispose()
    return found, tokens


def snapshots(place: Place, tenants: list[str], project: Path | None = None) -> tuple[list[Any], list[str]]:
    shots, tokens = [], []
    for tenant in tenants:
        shot, found = snapshot(*place.target(tenant, project))
        shots.append(shot)
        assert len(set(found)) == 1, found  # every row of a target got the token of its own import
        tokens.extend(set(found))
    return shots, tokens


# ---------------------------------------------------------------------- points 1, 2, 4: one history, every dialect


def test_fleet_matches_plain_alembic_fresh_modules_nested_folders_and_branches(place: Place, tmp_path: Path) -> None:
    """expand@head, then all heads: plain Alembic per target vs orchestrate serial and --parallel 2."""
    plain_versions = tmp_path / "plain-history"
    write_history(plain_versions)
    ini = plain_alembic(tmp_path / "plain-env", plain_versions / "app")
    plain_names = place.names("p")
    place.create(plain_names)
    plain_targets = [place.target(t) for t in plain_names]

    fleets = {"serial": place.names("s"), "parallel": place.names("q")}
    projects = {
        mode: make_orchestrate(tmp_path / mode, {"app": {
            "url": place.fleet_url(), "version_locations": ["versions/app"], "recursive_version_locations": True,
            "tenants": place.tenants_block(names),
        }})
        for mode, names in fleets.items()
    }
    # The nested layout is read in full: 5 revisions, two heads.
    history = json.loads(cli(projects["serial"], "history", "--json").stdout)
    assert len(history["targets"][0]["revisions"]) == len(HISTORY)
    assert sorted(history["targets"][0]["head"]) == ["c1000000000e", "e2000000000d"]

    for step in (("expand@head",), ("heads",)):
        assert run_plain(ini, plain_targets, "upgrade", *step) == [0, 0, 0, 0]
        expected, plain_tokens = snapshots(place, plain_names)
        for mode, project in projects.items():
            extra = ("--parallel", "2") if mode == "parallel" else ()
            report_path = project.root / f"report-{step[0]}.json"
            cli(project, "upgrade", *step, "-n", "app", *extra, "--report", str(report_path))
            got, tokens = snapshots(place, fleets[mode], project.root)
            assert got == expected, (mode, step)
            # A token made at import differs between targets, as with plain Alembic; the ROWS
            # popped by the first target of a process were whole again for the next one.
            assert len(set(tokens)) == len(tokens) == len(plain_tokens) == len(set(plain_tokens)), (mode, step)
            if mode == "parallel" and step == ("expand@head",):
                document = json.loads(report_path.read_text(encoding="utf-8"))
                pids = [t["worker"]["pid"] for t in document["targets"]]
                assert len(set(pids)) <= 2 and max(pids.count(p) for p in pids) >= 2, pids

    versions = {tuple(sorted(shot["alembic_version"]["rows"])) for shot in expected}
    assert versions == {("[('version_num', 'c1000000000e')]", "[('version_num', 'e2000000000d')]")}


def test_downgrade_and_offline_sql_match_plain_alembic(tmp_path: Path) -> None:
    """downgrade of one branch, and the --sql of the whole history: the same as plain Alembic."""
    place = Place("sqlite", None, tmp_path / "plain")
    versions = tmp_path / "plain-history"
    write_history(versions)
    ini = plain_alembic(tmp_path / "plain-env", versions / "app")
    names = place.names("p", 2)
    place.create(names)
    targets = [place.target(t) for t in names]
    project = make_orchestrate(tmp_path / "orch", {"app": {
        "url": place.fleet_url(), "version_locations": ["versions/app"], "recursive_version_locations": True,
        "tenants": place.tenants_block(place.names("s", 2))}})
    run_plain(ini, targets, "upgrade", "heads")
    run_plain(ini, targets, "downgrade", "expand@-1")
    cli(project, "upgrade")
    cli(project, "downgrade", "expand@-1")
    expected, _ = snapshots(place, names)
    got, tokens = snapshots(place, place.names("s", 2), project.root)
    assert got == expected and len(set(tokens)) == 2
    # Offline: each target's SQL is what `alembic upgrade --sql` prints for it, with a token of its own.
    plain_sql = subprocess.run(
        [PYTHON, "-m", "alembic", "-c", str(ini), "-x", "url=sqlite://", "upgrade", "--sql", "base:heads"],
        capture_output=True, text=True, check=True, cwd=ini.parent).stdout
    offline = cli(project, "upgrade", "--sql", "base:heads").stdout
    sections = offline.split("-- orchestrate: ")[1:]
    assert len(sections) == 2

    def inserts(sql: str) -> tuple[list[str], set[str]]:
        lines = [line for line in sql.splitlines() if line.startswith("INSERT INTO items")]
        return [TOKEN.sub("'<token>'", line) for line in lines], {m for line in lines for m in TOKEN.findall(line)}

    expected_lines, _ = inserts(plain_sql)
    found = [inserts(section) for section in sections]
    assert all(lines == expected_lines and len(tokens) == 1 for lines, tokens in found), (expected_lines, found)
    assert found[0][1] != found[1][1]


TOKEN = re.compile(r"'[0-9a-f]{32}'")


# ---------------------------------------------------------------------- point 1 alone: the reproducer


def test_reproducer_two_sqlite_tenants_and_a_popped_row(tmp_path: Path) -> None:
    def history(versions: Path) -> None:
        folder = versions / "app"
        folder.mkdir(parents=True)
        (folder / "a1_rows.py").write_text(textwrap.dedent('''\
            """rows"""
            import uuid

            import sqlalchemy as sa
            from alembic import op

            revision = "a1"
            down_revision = None
            ROWS = [{"id": 1, "note": "x"}]
            TOKEN = str(uuid.uuid4())


            def upgrade():
                rows = op.create_table("rows", sa.Column("id", sa.Integer, primary_key=True),
                                       sa.Column("note", sa.String(10)), sa.Column("token", sa.String(40)))
                op.bulk_insert(rows, [{"id": row["id"], "note": row.pop("note"), "token": TOKEN} for row in ROWS])


            def downgrade():
                op.drop_table("rows")
            '''), encoding="utf-8")

    for replay in (False, True):
        root = tmp_path / f"replay-{replay}"
        project = make_orchestrate(root, {"app": {
            "url": "sqlite:///tenants/{tenant}.db", "replay": replay,
            "tenants": {"mode": "database", "names": ["one", "two", "three"]}}}, history)
        cli(project, "upgrade")
        rows = [snapshot(f"sqlite:///{root / 'tenants' / f'{t}.db'}", None) for t in ("one", "two", "three")]
        assert all(shot["rows"]["rows"] == ["[('id', 1), ('note', 'x')]"] for shot, _ in rows), replay
        assert len({tokens[0] for _, tokens in rows}) == 3, replay  # a replayed recording would repeat it


# ---------------------------------------------------------------------- point 2: version locations


def test_nested_folders_without_recursion_are_a_config_error(tmp_path: Path) -> None:
    project = make_orchestrate(tmp_path / "orch", {"app": {
        "url": "sqlite:///tenants/app.db", "version_locations": ["versions/app"]}}, history=lambda v: None)
    write_history(project.root / "versions")
    result = project.cli("heads")
    assert result.exit_code == 2, result.output
    assert "recursive_version_locations" in result.stderr and "r1/base" in result.stderr.replace(os.sep, "/")
    result = project.cli("upgrade", "-n", "app")
    assert result.exit_code == 2 and not (project.root / "tenants" / "app.db").exists()
    # Alembic itself reads only the top folder: it would find nothing at all.
    data = yaml.safe_load(project.config.read_text(encoding="utf-8"))
    data["databases"]["app"]["recursive_version_locations"] = True
    project.write_config(data)
    assert sorted(json.loads(cli(project, "heads", "--json").stdout)["targets"][0]["head"]) == [
        "c1000000000e", "e2000000000d"]
    # defaults: works too
    data["databases"]["app"].pop("recursive_version_locations")
    data["defaults"] = {"recursive_version_locations": True}
    project.write_config(data)
    cli(project, "upgrade", "-n", "app")
    assert snapshot(f"sqlite:///{project.root / 'tenants' / 'app.db'}", None)[0]["alembic_version"]["rows"]


def test_revision_writes_to_version_path_first_location_or_version_path_option(tmp_path: Path) -> None:
    project = make_orchestrate(tmp_path / "orch", {
        "app": {"url": "sqlite:///tenants/app.db", "version_locations": ["versions/app", "versions/shared"],
                "recursive_version_locations": True},
        "other": {"url": "sqlite:///tenants/other.db", "version_locations": ["versions/o1", "versions/o2"],
                  "version_path": "versions/o2"},
    }, history=lambda versions: None)
    made = cli(project, "revision", "-n", "app", "-m", "first", "--rev-id", "aa01").stdout
    assert "versions/app/aa01_first.py" in made.replace(os.sep, "/")
    # With more than one location Alembic would write beside the head; orchestrate keeps to the first...
    cli(project, "revision", "-n", "app", "-m", "second", "--rev-id", "aa02", "--version-path", "versions/shared")
    assert (project.root / "versions" / "shared" / "aa02_second.py").is_file()
    cli(project, "revision", "-n", "app", "-m", "third", "--rev-id", "aa03")
    assert (project.root / "versions" / "app" / "aa03_third.py").is_file()
    # ... or to version_path
    cli(project, "revision", "-n", "other", "-m", "o", "--rev-id", "bb01")
    assert (project.root / "versions" / "o2" / "bb01_o.py").is_file()
    # --version-path must be one of the database's locations: exit 2, nothing written
    result = project.cli("revision", "-n", "app", "-m", "x", "--rev-id", "aa04", "--version-path", "versions/r1")
    assert result.exit_code == 2 and "version_locations" in result.stderr, result.stderr
    assert not list(project.root.rglob("aa04*"))
    history = json.loads(cli(project, "history", "-n", "app", "--json").stdout)["targets"][0]["revisions"]
    assert [r["revision"] for r in history] == ["aa03", "aa02", "aa01"]


# ---------------------------------------------------------------------- point 3: depends_on in every mode

CORE_OK = '''"""core"""
from alembic import op
import sqlalchemy as sa

revision = "c0000000001"
down_revision = None


def upgrade():
    op.create_table("core", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade():
    op.drop_table("core")
'''

CORE_BAD = '''"""core broken"""
from alembic import op
import sqlalchemy as sa

revision = "c0000000002"
down_revision = "c0000000001"


def upgrade():
    op.create_table("core2", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("SELECT * FROM no_such_table_orch_fid")


def downgrade():
    op.drop_table("core2")
'''


def _dependency_history(versions: Path) -> None:
    write_history(versions)
    (versions / "core").mkdir(parents=True)
    (versions / "core" / "c0000000001_core.py").write_text(CORE_OK, encoding="utf-8")
    (versions / "core" / "c0000000002_core_broken.py").write_text(CORE_BAD, encoding="utf-8")


def _dependency_project(place: Place, root: Path, tenants: list[str]) -> Project:
    core_url = (f"sqlite:///{root / 'core.db'}" if place.kind == "sqlite"
                else place.target(f"{place.prefix}core", root)[0] if place.kind == "mysql" else place.server_url)
    return make_orchestrate(root, {
        "core": {"url": core_url, "version_path": "versions/core", "version_table": "core_version"},
        "app": {"url": place.fleet_url(), "version_locations": ["versions/app"], "recursive_version_locations": True,
                "depends_on": ["core"], "tenants": place.tenants_block(tenants)},
    }, _dependency_history)


def test_a_failed_dependency_skips_its_dependents_like_a_careful_alembic_script(place: Place, tmp_path: Path) -> None:
    """Online (serial and --parallel 2) compared with plain Alembic run in dependency order
    that stops at the failed database; the report says skipped, naming the dependency."""
    if place.kind == "mysql":
        place.create([f"{place.prefix}core"])
    for mode in ("serial", "parallel"):
        names = place.names("s" if mode == "serial" else "q", 3)
        project = _dependency_project(place, tmp_path / mode, names)
        core_target = (f"sqlite:///{project.root / 'core.db'}", None) if place.kind == "sqlite" else (
            place.target(f"{place.prefix}core")[0], None)
        if mode == "serial":  # plain Alembic: core fails, so a careful script leaves app alone
            ini = plain_alembic(tmp_path / "plain-core", project.root / "versions" / "core", recursive=False)
            assert run_plain(ini, [core_target], "upgrade", "heads", version_table="core_version") != [0]
            expected_core = snapshot(*core_target)[0]
            for table_name in ("core", "core2", "core_version"):
                run_sql_drop(core_target, table_name)
        report_path = project.root / "report.json"
        extra = ("--parallel", "2") if mode == "parallel" else ()
        result = cli(project, "upgrade", "--all", *extra, "--report", str(report_path), code=1)
        document = json.loads(report_path.read_text(encoding="utf-8"))
        statuses = {t["target"]: (t["status"], t["error"]) for t in document["targets"]}
        assert statuses["core"][0] == "failed"
        for name in names:
            status, error = statuses[f"app/{name}"]
            assert status == "skipped" and "core" in error and "failed" in error, (status, error)
        assert "skipped because its dependency core" in result.stdout
        assert snapshot(*core_target)[0] == expected_core  # MariaDB: core2 stays, as with plain Alembic
        for name in names:  # app's tenants untouched (no version table, no items)
            url, schema = place.target(name, project.root)
            if place.kind == "sqlite":
                assert not Path(make_url(url).database or "").exists()
            else:
                try:
                    assert snapshot(url, schema)[0] == {}
                except Exception as exc:
                    assert "Unknown database" in str(exc) or "does not exist" in str(exc), exc
        for table_name in ("core", "core2", "core_version"):
            run_sql_drop(core_target, table_name)


def run_sql_drop(target: tuple[str, str | None], table_name: str) -> None:
    engine = create_engine(target[0], poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {table_name}"))
    engine.dispose()


def test_depends_on_holds_offline_in_downgrade_and_in_stamp(tmp_path: Path) -> None:
    place = Place("sqlite", None, tmp_path / "plain")
    names = place.names("s", 3)
    project = _dependency_project(place, tmp_path / "orch", names)
    # --sql --all: core's SQL fails (it reads a table offline? no: make it raise), app writes none.
    bad = project.root / "versions" / "core" / "c0000000002_core_broken.py"
    bad.write_text(CORE_BAD.replace('op.execute("SELECT * FROM no_such_table_orch_fid")',
                                    'raise RuntimeError("offline refused")'), encoding="utf-8")
    result = cli(project, "upgrade", "--all", "--sql", code=1)
    assert "CREATE TABLE items" not in result.stdout and "orchestrate: app/" not in result.stdout
    skipped = [line for line in result.stderr.splitlines() if "skipped because its dependency core (failed) did not succeed" in line]
    assert len(skipped) == len(names), result.stderr

    # downgrade: dependents first; a dependent that fails leaves core alone (skipped, naming app).
    bad.unlink()
    cli(project, "upgrade", "--all")
    first = project.root / "versions" / "app" / "r1" / "base" / "f1000000000a_items.py"
    first.write_text(first.read_text(encoding="utf-8").replace(
        'op.drop_index("ix_items_note", table_name="items")', 'raise RuntimeError("cannot go down")'),
        encoding="utf-8")
    report_path = project.root / "down.json"
    cli(project, "downgrade", "base", "--all", "--report", str(report_path), code=1)
    document = json.loads(report_path.read_text(encoding="utf-8"))
    statuses = {t["target"]: t for t in document["targets"]}
    assert [statuses[f"app/{n}"]["status"] for n in names] == ["failed"] * 3
    assert statuses["core"]["status"] == "skipped" and "app" in statuses["core"]["error"]
    assert statuses["core"]["after"] in (None, [])  # never touched: its table still says c0000000001
    assert snapshot(f"sqlite:///{project.root / 'core.db'}", None)[0]["core_version"]["rows"] == [
        "[('version_num', 'c0000000001')]"]

    # stamp: a core whose version table names a revision this checkout lacks fails; app is skipped.
    engine = create_engine(f"sqlite:///{project.root / 'core.db'}", poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("UPDATE core_version SET version_num = 'ffffffffffff'"))
    engine.dispose()
    report_path = project.root / "stamp.json"
    cli(project, "stamp", "heads", "--all", "--report", str(report_path), code=1)
    document = json.loads(report_path.read_text(encoding="utf-8"))
    statuses = {t["target"]: t for t in document["targets"]}
    assert statuses["core"]["status"] == "failed"
    for name in names:
        assert statuses[f"app/{name}"]["status"] == "skipped" and "core" in statuses[f"app/{name}"]["error"]
