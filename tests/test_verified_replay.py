"""`replay: auto` (the default): a recording is replayed only after two tenants ran the
revision live alike, and whole tenants whose pending revisions all have verified recordings
run as batches. Every tenant must end exactly as a live run leaves it, on SQLite files,
PostgreSQL schemas and MariaDB databases: a revision that makes a uuid4() in Python, one
with autocommit_block(), one that reads data, a tenant altered by hand, and a failure in
the middle of a batch."""
from __future__ import annotations

import json
import sqlite3
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MYSQL_URL, REPO, Project, _server_or_skip
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from orchestrator import replay as replaying

REVISIONS: list[tuple[str, str | None, str, str]] = [
    ("v1000000001", None, "items", '''
    op.create_table("items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("code", sa.String(36), nullable=True))
    op.create_index("ix_items_name", "items", ["name"])'''),
    ("v2000000002", "v1000000001", "seed", '''
    op.execute("INSERT INTO items (id, name) VALUES (1, 'seed 100%')")
    op.bulk_insert(sa.table("items", sa.column("id"), sa.column("name")),
                   [{"id": 3, "name": "bulk 50%"}, {"id": 4, "name": "o'brien; DROP"}])'''),
    ("v3000000003", "v2000000002", "note, unique names", '''
    op.add_column("items", sa.Column("note", sa.String(100), server_default="n"))
    op.create_index("uq_items_name", "items", ["name"], unique=True)'''),
    ("v4000000004", "v3000000003", "a uuid made in Python", '''
    op.bulk_insert(sa.table("items", sa.column("id"), sa.column("name"), sa.column("code")),
                   [{"id": 2, "name": "generated", "code": str(uuid.uuid4())}])'''),
    ("v5000000005", "v4000000004", "reads data", '''
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM items")).scalar()
    op.create_table("stats", sa.Column("items", sa.Integer(), nullable=False))
    op.execute(sa.text("INSERT INTO stats (items) VALUES (:n)").bindparams(n=count))'''),
    ("v6000000006", "v5000000005", "autocommit block", '''
    with op.get_context().autocommit_block():
        op.create_index("ix_items_code", "items", ["code"], postgresql_concurrently=True)'''),
    ("v7000000007", "v6000000006", "tags", '''
    op.create_table("tags", sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
                    sa.Column("label", sa.String(30), nullable=False, server_default="new"))
    op.execute("UPDATE items SET note = 'tagged' WHERE id = 1")'''),
]
HEAD = REVISIONS[-1][0]


def write_lineage(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rev, down, message, body in REVISIONS:
        (folder / f"{rev}_x.py").write_text(
            f'"""{message}"""\nimport uuid\n\nfrom alembic import op\nimport sqlalchemy as sa\n\n'
            f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
            f"def upgrade() -> None:{textwrap.indent(textwrap.dedent(body), '    ')}\n\n\n"
            "def downgrade() -> None:\n    pass\n",
            encoding="utf-8",
        )


class Fleet:
    """One dialect's fleet: where tenants live, how to reach one, how to clean up."""

    def __init__(self, kind: str, tmp_path: Path, pg_url: str | None) -> None:
        self.kind = kind
        self.tag = uuid.uuid4().hex[:6]
        self.tmp_path = tmp_path
        self.created: list[str] = []
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp_path}/dbs/{{tenant}}.db"
            (tmp_path / "dbs").mkdir()
        elif kind == "postgresql":
            assert pg_url is not None
            self.url = pg_url
        else:
            _server_or_skip(MYSQL_URL, "MariaDB")
            self.url = MYSQL_URL.rsplit("/", 1)[0] + "/{tenant}"

    def names(self, label: str, count: int) -> list[str]:
        names = [f"vr{self.tag}{label}{i}" for i in range(count)]
        self.created += names
        return names

    def project(self, label: str, tenants: list[str], replay: Any) -> Project:
        root = self.tmp_path / label
        root.mkdir()
        write_lineage(root / "versions" / "app")
        (root / "tenants.txt").write_text("\n".join(tenants) + "\n")
        mode = "schema" if self.kind == "postgresql" else "database"
        database: dict[str, Any] = {"url": self.url, "tenants": {"mode": mode, "file": "tenants.txt"}}
        if self.kind != "sqlite":
            database["tenants"]["create"] = True
        if replay is not None:
            database["replay"] = replay
        project = Project(root)
        project.write_config({"sys_path": [str(REPO)], "databases": {"app": database}})
        assert project.cli("init").exit_code == 0
        return project

    def engine(self, tenant: str) -> Any:
        if self.kind == "sqlite":
            return create_engine(f"sqlite:///{self.tmp_path}/dbs/{tenant}.db", poolclass=NullPool)
        if self.kind == "postgresql":
            return create_engine(self.url, poolclass=NullPool, connect_args={"options": f"-c search_path={tenant}"})
        return create_engine(self.url.replace("{tenant}", tenant), poolclass=NullPool)

    def execute(self, tenant: str, *statements: str) -> None:
        engine = self.engine(tenant)
        try:
            with engine.begin() as connection:
                for statement in statements:
                    connection.execute(text(statement))
        finally:
            engine.dispose()

    def state(self, tenant: str) -> dict[str, Any]:
        """Schema, rows and version table; a uuid made in Python is only checked to be one."""
        engine = self.engine(tenant)
        try:
            with engine.connect() as connection:
                insp = inspect(connection)
                tables = sorted(insp.get_table_names())
                state: dict[str, Any] = {
                    "columns": {t: [(c["name"], str(c["type"]), c["nullable"], _default(c["default"]))
                                    for c in insp.get_columns(t)] for t in tables},
                    "indexes": {t: sorted((i["name"], bool(i["unique"])) for i in insp.get_indexes(t)
                                          if not i["name"].startswith("sqlite_autoindex")) for t in tables},
                    "version": connection.execute(text("SELECT version_num FROM alembic_version")).all(),
                }
                if "items" in tables:
                    columns = [c["name"] for c in insp.get_columns("items")]
                    rows = [dict(r._mapping) for r in connection.execute(text("SELECT * FROM items ORDER BY id"))]
                    for row in rows:
                        if row.get("code") is not None:
                            uuid.UUID(row["code"])  # a uuid, whichever: each run makes its own
                            row["code"] = "<uuid>"
                    state["items"] = (columns, rows)
                if "stats" in tables:
                    state["stats"] = connection.execute(text("SELECT items FROM stats")).all()
                return state
        finally:
            engine.dispose()

    def codes(self, tenants: list[str]) -> list[str]:
        found = []
        for tenant in tenants:
            engine = self.engine(tenant)
            try:
                with engine.connect() as connection:
                    found.append(connection.execute(text("SELECT code FROM items WHERE id = 2")).scalar())
            finally:
                engine.dispose()
        return found

    def drop(self) -> None:
        if self.kind == "sqlite" or not self.created:
            return
        admin = create_engine(self.url.replace("{tenant}", "test") if self.kind == "mysql" else self.url,
                              poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                for name in self.created:
                    if self.kind == "mysql":
                        connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
                    else:
                        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        finally:
            admin.dispose()


def _default(value: Any) -> Any:
    return None if value is None else str(value).strip("()").replace("::character varying", "")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    made = Fleet(request.param, tmp_path, pg)
    try:
        yield made
    finally:
        made.drop()


def upgrade(project: Project, *args: str, code: int = 0) -> dict[str, Any]:
    result = project.cli("upgrade", *args, "--json")
    assert result.exit_code == code, result.output
    return {t["tenant"]: t for t in json.loads(result.stdout)["targets"]}


def test_auto_replay_gives_every_tenant_what_a_live_run_gives(fleet: Fleet) -> None:
    live_names, auto_names = fleet.names("l", 5), fleet.names("a", 5)
    live = fleet.project("live", live_names, False)
    auto = fleet.project("auto", auto_names, None)  # the default: auto
    upgrade(live, "v1000000001")
    upgrade(auto, "v1000000001")
    # A tenant altered by hand (a hot fix): its schema differs, so nothing recorded elsewhere fits it.
    for project_names in (live_names, auto_names):
        fleet.execute(project_names[3], "ALTER TABLE items ADD COLUMN legacy INTEGER")

    upgrade(live)
    report = upgrade(auto)

    for a, b in zip(live_names, auto_names):
        assert fleet.state(a) == fleet.state(b), (a, b)
    codes = fleet.codes(auto_names)
    assert len(set(codes)) == len(codes)  # each tenant made its own uuid, never one replayed
    assert [fleet.state(t)["stats"] for t in auto_names[:3]] == [[(4,)]] * 3

    first, second, third, altered, fifth = (report[t] for t in auto_names)
    assert first["replayed"] == 0 and second["replayed"] == 0  # recorded, then checked
    assert first["live"][replaying.READS] == 1 and first["live"][replaying.COMMITS] == 1
    assert second["live"][replaying.DIFFERS] == 1  # the uuid4(): parameters differed
    # From the third tenant on, what two tenants ran alike is replayed; the rest runs live, said why.
    expected_live = {replaying.DIFFERS: 1, replaying.READS: 1, replaying.COMMITS: 1}
    assert (third["replayed"], third["live"]) == (3, expected_live)
    assert (fifth["replayed"], fifth["live"]) == (3, expected_live)
    assert altered["replayed"] == 0  # its own schema: live all along
    assert "legacy" in fleet.state(altered["tenant"])["items"][0]
    for result in report.values():
        assert result["status"] == "upgraded" and result["after"] == [HEAD]


def test_a_failure_in_the_middle_of_a_batch_names_the_revision_and_rolls_it_back(fleet: Fleet) -> None:
    names = fleet.names("b", 6)
    project = fleet.project("batch", names, None)
    upgrade(project, "v1000000001")
    # Data only (the schema, so the fingerprint, is the others'): v3's unique index must fail here.
    fleet.execute(names[4], "INSERT INTO items (id, name) VALUES (10, 'dup')",
                  "INSERT INTO items (id, name) VALUES (11, 'dup')")

    report = upgrade(project, "v3000000003", code=1)

    failed = report[names[4]]
    assert failed["status"] == "failed" and failed["failed_revision"] == "v3000000003", failed
    assert failed["after"] == ["v2000000002"] and failed["applied"] == ["v2000000002"]
    assert "v3000000003" in failed["error"]
    state = fleet.state(names[4])
    assert state["version"] == [("v2000000002",)]
    columns, rows = state["items"]
    if fleet.kind != "mysql":  # MariaDB commits each DDL statement: there it may be partly applied
        assert "note" not in columns  # the failing revision was rolled back whole, its first statement too
    assert [r["id"] for r in rows] == [1, 3, 4, 10, 11]  # the revision before it committed
    for name in (names[2], names[3], names[5]):
        assert report[name]["status"] == "upgraded" and report[name]["after"] == ["v3000000003"]
        assert fleet.state(name) == fleet.state(names[0])
    if fleet.kind != "mysql":  # transactional DDL: the third tenant on ran as a batch
        assert [report[n]["replayed"] for n in names] == [0, 0, 2, 2, 1, 2]

    # Fixed by hand, the tenant goes on from where it stopped.
    fleet.execute(names[4], "DELETE FROM items WHERE id = 11",
                  *(["ALTER TABLE items DROP COLUMN note"] if fleet.kind == "mysql" else []))
    again = upgrade(project)
    assert again[names[4]]["after"] == [HEAD]
    assert {r["status"] for r in again.values()} == {"upgraded"}


def test_a_revision_that_writes_through_an_engine_of_its_own_runs_live_on_every_tenant(tmp_path: Path) -> None:
    """A recording holds what the migrating connection sent: a revision that also writes
    somewhere else (an audit database through an engine it made) must run on every tenant."""
    audit = tmp_path / "audit.db"
    sqlite3.connect(audit).execute("CREATE TABLE seen (tenant TEXT)").connection.commit()
    root = tmp_path / "p"
    folder = root / "versions" / "app"
    folder.mkdir(parents=True)
    (folder / "a1_audit.py").write_text(
        '"""audit"""\nfrom alembic import op\nimport sqlalchemy as sa\n\n'
        'revision = "a1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    op.create_table("t", sa.Column("id", sa.Integer(), primary_key=True))\n'
        f'    engine = sa.create_engine("sqlite:///{audit}")\n'
        "    with engine.begin() as connection:\n"
        '        connection.execute(sa.text("INSERT INTO seen (tenant) VALUES (:t)"),\n'
        '                           {"t": op.get_bind().engine.url.database})\n'
        "    engine.dispose()\n\n\n"
        "def downgrade() -> None:\n    pass\n",
        encoding="utf-8",
    )
    tenants = [f"e{i}" for i in range(5)]
    (root / "tenants.txt").write_text("\n".join(tenants) + "\n")
    (root / "dbs").mkdir()
    project = Project(root)
    project.write_config({"sys_path": [str(REPO)], "databases": {"app": {
        "url": f"sqlite:///{root}/dbs/{{tenant}}.db", "tenants": {"mode": "database", "file": "tenants.txt"}}}})
    assert project.cli("init").exit_code == 0
    report = upgrade(project)
    assert sqlite3.connect(audit).execute("SELECT count(*) FROM seen").fetchone()[0] == len(tenants)
    assert all((t["replayed"] or 0) == 0 for t in report.values())
    assert report["e4"]["live"] == {replaying.ELSEWHERE: 1}
