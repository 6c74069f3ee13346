"""`replay: true`: a revision's SQL recorded on one tenant and replayed on the others must
leave every tenant exactly as running the revision live would, and must not be used
where it could differ (data-dependent code, a drifted schema, an opted-out revision)."""
from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Project
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

# A lineage with the kinds of operations fleets run: tables, batch alters (reflection on
# SQLite), indexes, a data migration in SQL, a data-dependent revision and an opted-out one.
REVISIONS: list[tuple[str, str | None, str, str]] = [
    ("r1a000000001", None, "create accounts", '''
    op.create_table("accounts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(200), nullable=False),
        sa.Column("plan", sa.String(20), nullable=True))
    op.create_index("ix_accounts_email", "accounts", ["email"], unique=True)'''),
    ("r2b000000002", "r1a000000001", "seed and backfill", '''
    op.bulk_insert(sa.table("accounts", sa.column("id"), sa.column("email"), sa.column("plan")),
                   [{"id": 1000, "email": "system@example.com", "plan": None}])
    op.execute("UPDATE accounts SET plan = 'free' WHERE plan IS NULL")'''),
    ("r3c000000003", "r2b000000002", "plan not null", '''
    with op.batch_alter_table("accounts") as batch:
        batch.alter_column("plan", existing_type=sa.String(20), nullable=False, server_default="free")'''),
    ("r4d000000004", "r3c000000003", "count accounts (reads data)", '''
    # Decides in Python from this tenant's data: must never be replayed from another tenant.
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM accounts")).scalar()
    op.create_table("stats", sa.Column("accounts", sa.Integer(), nullable=False))
    op.execute(sa.text("INSERT INTO stats (accounts) VALUES (:n)").bindparams(n=count))'''),
    ("r5e000000005", "r4d000000004", "tenant token (opted out)", '''
    op.create_table("tokens", sa.Column("pid", sa.Integer(), nullable=False))
    op.execute(sa.text("INSERT INTO tokens (pid) VALUES (:p)").bindparams(p=next(_COUNTER)))'''),
]
HEAD = REVISIONS[-1][0]


def write_lineage(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rev, down, message, body in REVISIONS:
        extra = ""
        if rev == "r5e000000005":
            # A process-wide counter (revision modules are fresh per target, as in plain Alembic).
            extra = ("\nimport builtins, itertools\n"
                     "_COUNTER = builtins.__dict__.setdefault('_orch_test_counter', itertools.count(1))\n"
                     "orchestrate_replay = False\n")
        (folder / f"{rev}_x.py").write_text(
            f'"""{message}"""\nfrom alembic import op\nimport sqlalchemy as sa\n{extra}\n'
            f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
            f"def upgrade() -> None:{textwrap.indent(textwrap.dedent(body), '    ')}\n\n\n"
            "def downgrade() -> None:\n    pass\n",
            encoding="utf-8",
        )


def make_fleet(tmp_path: Path, url: str, tenants: list[str], mode: str, replay: bool) -> Project:
    root = tmp_path / ("replay" if replay else "live")
    root.mkdir()
    write_lineage(root / "versions" / "app")
    (root / "tenants.txt").write_text("\n".join(tenants) + "\n")
    project = Project(root)
    project.write_config({
        "sys_path": [str(REPO)],
        "defaults": {"replay": replay},
        "databases": {"app": {
            "url": url,
            "tenants": {"mode": mode, "file": "tenants.txt", "create": True} if mode == "schema"
            else {"mode": mode, "file": "tenants.txt"},
        }},
    })
    assert project.cli("init").exit_code == 0
    return project


def seed_accounts(execute: Any, tenant_index: int) -> None:
    """Tenants hold different numbers of accounts, so a data-dependent revision differs."""
    for n in range(tenant_index % 4):
        execute(f"INSERT INTO accounts (id, email, plan) VALUES ({n + 1}, 'u{n}@x.org', NULL)")


def run_upgrades(project: Project, seed: Any) -> dict[str, Any]:
    first = project.cli("upgrade", "r1a000000001", "--json")
    assert first.exit_code == 0, first.output
    seed()
    result = project.cli("upgrade", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def sqlite_state(path: Path) -> dict[str, Any]:
    connection = sqlite3.connect(path)
    try:
        return {
            "schema": connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall(),
            "accounts": connection.execute("SELECT id, email, plan FROM accounts ORDER BY id").fetchall(),
            "stats": connection.execute("SELECT accounts FROM stats").fetchall(),
            "version": connection.execute("SELECT version_num FROM alembic_version").fetchall(),
        }
    finally:
        connection.close()


def test_sqlite_replay_leaves_every_tenant_as_a_live_run_does(tmp_path: Path) -> None:
    tenants = [f"t{i:03d}" for i in range(12)]
    states = {}
    reports = {}
    for replay in (False, True):
        folder = tmp_path / ("dbs-replay" if replay else "dbs-live")
        project = make_fleet(tmp_path, f"sqlite:///{folder}/{{tenant}}.db", tenants, "database", replay)

        def seed() -> None:
            for index, tenant in enumerate(tenants):
                connection = sqlite3.connect(folder / f"{tenant}.db")
                seed_accounts(connection.execute, index)
                connection.commit()
                connection.close()

        reports[replay] = run_upgrades(project, seed)
        states[replay] = {t: sqlite_state(folder / f"{t}.db") for t in tenants}

    assert states[True] == states[False]  # schema, data, data-dependent results, versions
    # The data-dependent revision counted each tenant's own accounts.
    assert [states[True][t]["stats"] for t in tenants[:4]] == [[(1,)], [(2,)], [(3,)], [(4,)]]

    replayed = [(t["replayed"] or 0) for t in reports[True]["targets"]]
    # The first tenant records; the others replay r2 and r3 (r4 reads data, r5 opted out).
    assert replayed[0] == 0 and set(replayed[1:]) == {2}
    assert all(t["replayed"] is None for t in reports[False]["targets"])


def test_opted_out_revision_runs_live_on_every_tenant(tmp_path: Path) -> None:
    folder = tmp_path / "dbs"
    tenants = ["a1", "a2", "a3"]
    project = make_fleet(tmp_path, f"sqlite:///{folder}/{{tenant}}.db", tenants, "database", True)
    assert project.cli("upgrade").exit_code == 0
    # A counter in the revision module: live runs give 1, 2, 3; a replay would repeat 1.
    tokens = sorted(sqlite3.connect(folder / f"{t}.db").execute("SELECT pid FROM tokens").fetchone()[0]
                    for t in tenants)
    assert tokens == list(range(tokens[0], tokens[0] + 3))  # a process-wide counter: each tenant ran live


def test_a_drifted_tenant_is_not_replayed_onto(tmp_path: Path) -> None:
    folder = tmp_path / "dbs"
    tenants = ["d1", "d2", "d3"]
    project = make_fleet(tmp_path, f"sqlite:///{folder}/{{tenant}}.db", tenants, "database", True)
    assert project.cli("upgrade", "r2b000000002").exit_code == 0
    # A hot fix applied by hand to one tenant: its schema no longer matches the others'.
    connection = sqlite3.connect(folder / "d2.db")
    connection.execute("ALTER TABLE accounts ADD COLUMN legacy_flag INTEGER")
    connection.commit()
    connection.close()

    report = json.loads(project.cli("upgrade", "--json").stdout)
    replayed = {t["tenant"]: (t["replayed"] or 0) for t in report["targets"]}
    assert replayed == {"d1": 0, "d2": 0, "d3": 1}  # d3 replays r3 recorded on d1; d2 runs live
    columns = [row[1] for row in sqlite3.connect(folder / "d2.db").execute("PRAGMA table_info(accounts)")]
    assert "legacy_flag" in columns  # the batch rebuild reflected d2's own table


def test_a_replayed_revision_that_fails_fails_that_tenant_only(tmp_path: Path) -> None:
    folder = tmp_path / "dbs"
    tenants = ["f1", "f2", "f3"]
    project = make_fleet(tmp_path, f"sqlite:///{folder}/{{tenant}}.db", tenants, "database", True)
    assert project.cli("upgrade", "r1a000000001").exit_code == 0
    # f2 already holds the account the seed revision inserts: the replayed INSERT must fail.
    connection = sqlite3.connect(folder / "f2.db")
    connection.execute("INSERT INTO accounts (id, email, plan) VALUES (1000, 'taken@x.org', 'pro')")
    connection.commit()
    connection.close()

    result = project.cli("upgrade", "--json")
    assert result.exit_code == 1
    targets = {t["tenant"]: t for t in json.loads(result.stdout)["targets"]}
    assert targets["f2"]["status"] == "failed" and targets["f2"]["failed_revision"] == "r2b000000002"
    assert "UNIQUE constraint failed" in targets["f2"]["error"]
    assert targets["f2"]["after"] == ["r1a000000001"]
    assert [targets[t]["status"] for t in ("f1", "f3")] == ["upgraded", "upgraded"]
    rows = sqlite3.connect(folder / "f2.db").execute("SELECT id, email, plan FROM accounts").fetchall()
    assert rows == [(1000, "taken@x.org", "pro")]  # the replayed revision was rolled back whole


def pg_state(engine: Any, schema: str) -> dict[str, Any]:
    with engine.connect() as connection:
        insp = inspect(connection)
        tables = sorted(insp.get_table_names(schema=schema))
        return {
            "tables": tables,
            "columns": {t: [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t, schema=schema)]
                        for t in tables},
            "indexes": {t: sorted((i["name"], i["unique"]) for i in insp.get_indexes(t, schema=schema))
                        for t in tables},
            "stats": connection.execute(text(f'SELECT accounts FROM "{schema}".stats')).all(),
            "plans": connection.execute(text(f'SELECT plan, count(*) FROM "{schema}".accounts GROUP BY plan '
                                             "ORDER BY plan")).all(),
        }


def test_postgresql_schema_fleet_replay_matches_live_runs(tmp_path: Path, pg_url: str) -> None:
    tenants = [f"s{i:02d}" for i in range(8)]
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        states = {}
        for replay in (False, True):
            names = [f"{t}{'r' if replay else 'l'}" for t in tenants]
            project = make_fleet(tmp_path, pg_url, names, "schema", replay)

            def seed() -> None:
                with engine.begin() as connection:
                    for index, name in enumerate(names):
                        seed_accounts(lambda sql: connection.execute(text(sql.replace(
                            "INTO accounts", f'INTO "{name}".accounts'))), index)

            report = run_upgrades(project, seed)
            if replay:
                replayed = [(t["replayed"] or 0) for t in report["targets"]]
                assert replayed[0] == 0 and set(replayed[1:]) == {2}, replayed
            states[replay] = [pg_state(engine, name) for name in names]
        assert states[True] == states[False]
    finally:
        engine.dispose()


@pytest.mark.parametrize("replay", [False, True])
def test_replay_setting_is_validated(make_project, replay: bool) -> None:
    from conftest import shop_config

    project = make_project(shop_config(defaults={"replay": replay}))
    assert project.cli("upgrade", "--all").exit_code == 0
    bad = make_project(shop_config(defaults={"replay": "sometimes"}), init=False, versions=False)
    result = bad.cli("status")
    assert result.exit_code == 2 and "replay" in result.stderr
