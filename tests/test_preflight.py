"""`orchestrate preflight` (issue 10): a PostgreSQL schema fleet where two tenants hold enough
rows that an index build is classed `seconds` and the others `instant`; a data check that
fails for exactly the tenants with duplicate emails; preflight.max_risk; nothing written
(catalogs compared before and after); a SQLite fleet whose missing files stay missing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Project
from fleet_helpers import Fleet, fetch, pg_quote, run_sql, tenant_names, write_revision

R1, R2 = "p1f00000000a", "p2f00000000b"
CHECK = "SELECT email FROM users GROUP BY email HAVING COUNT(*) > 1"


def write_lineage(folder: Path) -> None:
    write_revision(folder, R1, None, "users", '''    op.create_table(
        "users", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("email", sa.String(100)))''')
    path = write_revision(folder, R2, R1, "unique email",
                          '''    op.create_index("uq_users_email", "users", ["email"], unique=True)''')
    path.write_text(path.read_text() + f"\norchestrate_checks = [{CHECK!r}]\n", encoding="utf-8")


def fleet_project(make_project: Any, fleet: Fleet, preflight: dict[str, Any] | None = None) -> Project:
    shops: dict[str, Any] = fleet.database_entry("versions/shops")
    harmless = {**shops, "tenants": {"mode": shops["tenants"]["mode"], "names": ["placeholder"]}}
    project = make_project({"databases": {"shops": harmless}}, versions=False)
    if preflight is not None:
        shops["preflight"] = preflight
    project.write_config({"databases": {"shops": shops}})
    write_lineage(project.root / "versions" / "shops")
    return project


def valid(document: dict[str, Any]) -> dict[str, Any]:
    """The document matches the report schema that ships in the package."""
    import jsonschema

    from orchestrator.report import SCHEMA_PATH

    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    return document


def preflight(project: Project, *args: str, code: int) -> dict[str, Any]:
    result = project.cli("preflight", *args, "--json")
    assert result.exit_code == code, f"{result.exit_code}\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    return {t["tenant"]: t for t in valid(json.loads(result.stdout))["targets"]}


def pg_catalog(url: str, schemas: list[str]) -> list[tuple[Any, ...]]:
    """Everything preflight could have written: relations, indexes, constraints, version rows, data."""
    rows = fetch(url, "SELECT n.nspname, c.relname, c.relkind, c.relpages FROM pg_class c "
                      "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(:s) ORDER BY 1, 2", s=schemas)
    rows += fetch(url, "SELECT conname, conrelid::regclass::text FROM pg_constraint co "
                       "JOIN pg_namespace n ON n.oid = co.connamespace WHERE n.nspname = ANY(:s) ORDER BY 1, 2",
                  s=schemas)
    for schema in schemas:
        rows += fetch(url, f"SELECT '{schema}', version_num FROM {pg_quote(schema)}.alembic_version")
        rows += fetch(url, f"SELECT '{schema}', count(*), count(DISTINCT email) FROM {pg_quote(schema)}.users")
    return rows


def test_pg_fleet_time_classes_checks_and_nothing_written(make_project, pg_url) -> None:
    fleet = Fleet("pg", pg_url, tenant_names(6))
    fleet.create_containers(fleet.tenants)
    project = fleet_project(make_project, fleet)
    result = project.cli("upgrade", R1)
    assert result.exit_code == 0, result.stdout + result.stderr
    big, duplicated = ["t001", "t004"], ["t002", "t005"]
    for tenant in fleet.tenants:
        schema = pg_quote(tenant)
        rows = 20_000 if tenant in big else 50
        run_sql(pg_url, f"INSERT INTO {schema}.users (id, email) "
                        f"SELECT g, 'user' || g || '@example.com' FROM generate_series(1, {rows}) g")
        if tenant in duplicated:  # two emails used twice, one three times
            run_sql(pg_url, f"INSERT INTO {schema}.users (id, email) VALUES (100001, 'user1@example.com'), "
                            f"(100002, 'user2@example.com'), (100003, 'user2@example.com')")
    run_sql(pg_url, *[f"ANALYZE {pg_quote(t)}.users" for t in fleet.tenants])
    catalog = pg_catalog(pg_url, fleet.tenants)

    targets = preflight(project, code=1)  # duplicated emails fail their check
    assert pg_catalog(pg_url, fleet.tenants) == catalog  # nothing written
    assert sorted(targets) == fleet.tenants
    for tenant, entry in targets.items():
        expected = "seconds" if tenant in big else "instant"
        assert entry["time_class"] == expected, (tenant, entry["time_class"], entry["statements"])
        assert [r["revision"] for r in entry["pending_revisions"]] == [R2] and entry["pending"] == 1
        (statement,) = entry["statements"]
        assert statement["kind"] == "create_index" and statement["table"] == "users"
        assert statement["lock"].startswith("SHARE") and "INDEX-NOT-CONCURRENT" in statement["findings"]
        assert entry["tables"]["users"]["bytes"] > 0
        if tenant in big:
            assert 15_000 <= statement["rows"] <= 25_000, statement  # reltuples after ANALYZE
        (check,) = entry["checks"]
        assert check["revision"] == R2 and check["sql"] == CHECK
        if tenant in duplicated:
            assert check["passed"] is False and check["rows"] == 2, check
            assert entry["status"] == "failed" and "check of" in entry["error"]
        else:
            assert check["passed"] is True and check["rows"] == 0, check
            assert entry["status"] == "ok"

    # people read the same: the slow tenants and the failed checks stand out
    result = project.cli("preflight")
    assert result.exit_code == 1
    assert "t001" in result.stdout and "seconds" in result.stdout and "check failed (2 rows)" in result.stdout

    # with the data fixed, the checks pass; max_risk instant refuses the two large tenants
    for tenant in duplicated:
        run_sql(pg_url, f"DELETE FROM {pg_quote(tenant)}.users WHERE id > 100000")
    assert preflight(project, code=0)["t001"]["status"] == "ok"
    project.write_config(project.config.read_text().replace("shops:\n", "shops:\n    preflight:\n      max_risk: instant\n", 1))
    targets = preflight(project, code=1)
    assert {t for t, e in targets.items() if e["status"] == "failed"} == set(big)
    assert targets["t001"]["risk_exceeded"] is True and "max_risk" in targets["t001"]["error"]
    assert preflight(project, "--tenant", "t000", code=0)["t000"]["time_class"] == "instant"


def test_sqlite_fleet_counts_rows_and_creates_no_file(make_project, tmp_path) -> None:
    root = tmp_path / "project" / "tenants"
    fleet = Fleet("sqlite", "sqlite:///tenants/{tenant}.db", tenant_names(3), root)
    project = fleet_project(make_project, fleet)
    result = project.cli("upgrade", R1, "--tenant", "t000", "--tenant", "t001")
    assert result.exit_code == 0, result.stdout + result.stderr
    fleet.execute_in("t001", "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 12000) "
                             "INSERT INTO users (id, email) SELECT i, 'u' || i FROM g")
    before = {t: fleet.sqlite_path(t).read_bytes() for t in ("t000", "t001")}
    targets = preflight(project, code=0)
    assert not fleet.sqlite_path("t002").exists()  # a tenant not migrated yet: read, not created
    assert {t: fleet.sqlite_path(t).read_bytes() for t in ("t000", "t001")} == before
    assert targets["t001"]["time_class"] == "seconds" and targets["t001"]["statements"][0]["rows"] == 12000
    assert targets["t000"]["time_class"] == "instant"
    assert targets["t001"]["statements"][0]["note"] is None
    assert targets["t002"]["missing"] is True and targets["t002"]["pending"] == 2
    assert all(c["passed"] for e in targets.values() for c in e["checks"])
    from orchestrator import api

    document = api.preflight(project.config, tenants=["t001"])
    assert [t["time_class"] for t in document["targets"]] == ["seconds"]
    assert not fleet.sqlite_path("t002").exists()
