"""Nothing pending costs a status read (issue 8): `upgrade` reads every selected tenant's
version table in bulk first, and a tenant already exactly at the destination is NOOP
without a connection, a lock or an env.py run of its own.

Real SQLite files and real PostgreSQL schemas. What was opened is counted in-process:
every :class:`~orchestrator.session.Session` run (the only place that connects to a
target) by the target it was for, and every new DBAPI connection SQLAlchemy makes.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import REPO, Project
from fleet_helpers import (
    REV_A,
    REV_B,
    REV_C,
    Fleet,
    by_tenant,
    load_report,
    tenant_names,
    write_core_lineage,
    write_items_lineage,
)
from sqlalchemy import event
from sqlalchemy.engine import Engine

from orchestrator.session import Session

SCHEMA_PATH = REPO / "orchestrator" / "report.schema.json"
COUNT = 24


# ---------------------------------------------------------------------- helpers


@pytest.fixture
def fleet_of(request: pytest.FixtureRequest, tmp_path: Path):
    """Factory: ``fleet_of(kind, prefix)``: COUNT tenants named PREFIX000..., schemas in this
    test's own PostgreSQL database or SQLite files under project/tenants/."""

    def make(kind: str, prefix: str = "t") -> Fleet:
        names = tenant_names(COUNT, prefix)
        if kind == "pg":
            return Fleet("pg", request.getfixturevalue("pg_url"), names)
        return Fleet("sqlite", "sqlite:///tenants/{tenant}.db", names, tmp_path / "project" / "tenants")

    return make


def project_for(make_project: Any, fleet: Fleet, root: Path | None = None, extra: dict[str, Any] | None = None,
                **tenants: Any) -> Project:
    """A project whose database `shops` is ``fleet`` on the items lineage (tenants created on demand)."""
    shops = fleet.database_entry("versions/shops", create=True, **tenants)
    harmless = {**shops, "tenants": {"mode": shops["tenants"]["mode"], "names": ["placeholder"]}}
    project = make_project({"databases": {"shops": harmless}}, versions=False)
    project.write_config({"databases": {"shops": shops, **(extra or {})}})
    write_items_lineage(project.root / "versions" / "shops")
    return project


def run(project: Project, *args: str, code: int = 0) -> Result:
    result = project.cli(*args)
    assert result.exit_code == code, (
        f"`orchestrate {' '.join(args)}` exited {result.exit_code}, expected {code}\n"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
    return result


def upgrade_report(project: Project, tmp_path: Path, *args: str, code: int = 0, name: str = "report") -> dict[str, Any]:
    path = tmp_path / f"{name}.json"
    run(project, "upgrade", *args, "--report", str(path), code=code)
    document = load_report(path)
    validate(document)
    return document


def validate(document: dict[str, Any]) -> None:
    import jsonschema

    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


class Opened:
    """Counts, in this process, Session runs by target name and new DBAPI connections."""

    def __init__(self) -> None:
        self.sessions: list[str] = []
        self.connects = 0


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[Opened]:
    seen = Opened()
    real_run = Session.run

    def counted_run(self: Session, work: Any) -> Any:
        seen.sessions.append(self.target.name)
        return real_run(self, work)

    def on_connect(*_: Any) -> None:
        seen.connects += 1

    monkeypatch.setattr(Session, "run", counted_run)
    event.listen(Engine, "connect", on_connect)
    try:
        yield seen
    finally:
        event.remove(Engine, "connect", on_connect)


def summary(document: dict[str, Any]) -> dict[str | None, tuple[Any, ...]]:
    """What a report says of each tenant, without timings, places and the run's own names."""
    return {
        tenant[1:] if tenant else tenant: (t["status"], t["before"], t["after"], t["applied"], t["failed_revision"],
                                           bool(t["error"]), t["partial"])
        for tenant, t in by_tenant(document, "shops").items()
    }


def break_version_table(fleet: Fleet, tenant: str) -> None:
    """A version table Alembic cannot work with: a revision beside its own ancestor."""
    fleet.execute_in(tenant, f"INSERT INTO alembic_version (version_num) VALUES ('{REV_A}')")


def drop_tenant(fleet: Fleet, tenant: str) -> None:
    fleet.drop_containers([tenant])


# ---------------------------------------------------------------------- (a) nothing pending


@pytest.mark.parametrize("kind", ["sqlite", "pg"])
def test_upgrade_with_nothing_pending_opens_no_connection_per_tenant(kind, fleet_of, make_project, tmp_path,
                                                                    opened) -> None:
    fleet = fleet_of(kind)
    project = project_for(make_project, fleet)
    first = upgrade_report(project, tmp_path, name="first")
    assert {t["status"] for t in first["targets"]} == {"upgraded"}
    assert len(set(opened.sessions) & {t["target"] for t in first["targets"]}) == COUNT  # the counter counts

    for parallel in ("1", "4"):
        opened.sessions.clear()
        opened.connects = 0
        again = upgrade_report(project, tmp_path, "-p", parallel, name=f"again{parallel}")
        targets = by_tenant(again)
        assert set(targets) == set(fleet.tenants)
        for t in targets.values():
            assert (t["status"], t["before"], t["after"], t["applied"]) == ("noop", [REV_C], [REV_C], []), t
            assert t["worker"]["pid"] == os.getpid(), "answered here: no worker process was asked"
            assert t["duration"] >= 0 and t["attempts"] == 1 and t["error"] is None
        assert again["counts"] == {"noop": COUNT} and again["ok"] is True
        tenant_sessions = [name for name in opened.sessions if name != "shops"]
        assert tenant_sessions == [], f"connected to tenants: {tenant_sessions[:5]}"
        if kind == "sqlite":  # read straight through sqlite3, read-only: no engine at all
            assert opened.sessions == [] and opened.connects == 0
        else:  # one connection for the whole fleet: the bulk read on the database's URL
            assert opened.sessions == ["shops"] and opened.connects <= 1


@pytest.mark.parametrize("kind", ["sqlite", "pg"])
def test_upgrade_to_a_named_revision_already_reached_is_answered_in_bulk(kind, fleet_of, make_project, tmp_path,
                                                                         opened) -> None:
    fleet = fleet_of(kind)
    project = project_for(make_project, fleet)
    upgrade_report(project, tmp_path, REV_B, name="first")
    for destination in (REV_B, REV_B[:6]):  # a revision id, or a prefix of one
        opened.sessions.clear()
        again = upgrade_report(project, tmp_path, destination, name="again")
        assert {(t["status"], tuple(t["after"])) for t in again["targets"]} == {("noop", (REV_B,))}
        assert [name for name in opened.sessions if name != "shops"] == []

    # relative destinations are not a fixed place: every target on its own path
    opened.sessions.clear()
    relative = upgrade_report(project, tmp_path, "+1", name="relative")
    assert {(t["status"], tuple(t["after"])) for t in relative["targets"]} == {("upgraded", (REV_C,))}
    assert len([name for name in opened.sessions if name != "shops"]) == COUNT

    # past the destination is not "there" either: the per-target path (and Alembic) answers
    opened.sessions.clear()
    past = upgrade_report(project, tmp_path, REV_B, name="past")
    assert {(t["status"], tuple(t["after"])) for t in past["targets"]} == {("noop", (REV_C,))}
    assert len([name for name in opened.sessions if name != "shops"]) == COUNT


# ---------------------------------------------------------------------- (b) a mixed fleet


def mixed(fleet: Fleet, project: Project, tmp_path: Path) -> dict[str, str]:
    """Upgrade everything, then: two tenants back at REV_A, one broken version table, one
    tenant gone (to be created again); the rest at head. Returns tenant -> what it is."""
    upgrade_report(project, tmp_path, name=f"setup-{fleet.tenants[0]}")
    t = fleet.tenants
    run(project, "downgrade", "--tenant", t[2], "--tenant", t[3], REV_A)
    break_version_table(fleet, t[4])
    fleet.drop_containers([t[5]])
    roles = {name: "head" for name in t}
    roles.update({t[2]: "behind", t[3]: "behind", t[4]: "broken", t[5]: "missing"})
    return roles


@pytest.mark.parametrize("kind", ["sqlite", "pg"])
def test_a_mixed_fleet_reports_exactly_what_the_per_target_path_reports(kind, fleet_of, make_project, tmp_path,
                                                                        opened, monkeypatch) -> None:
    from orchestrator import commands

    ours, theirs = fleet_of(kind, "a"), fleet_of(kind, "b")
    project_a = project_for(make_project, ours)
    # The same project and fleet state elsewhere, upgraded the old way (every target on its own).
    project_b = Project(tmp_path / "b" / "project")
    shutil.copytree(project_a.root, project_b.root)
    project_b.write_config({"databases": {"shops": theirs.database_entry("versions/shops", create=True)}})
    if kind == "sqlite":
        theirs.root = project_b.root / "tenants"
    roles = mixed(ours, project_a, tmp_path)
    assert mixed(theirs, project_b, tmp_path) == {b: roles[a] for a, b in zip(ours.tenants, theirs.tenants,
                                                                               strict=True)}

    opened.sessions.clear()
    report_a = upgrade_report(project_a, tmp_path, code=1, name="ours")
    connected = {name.rpartition("/")[2] for name in opened.sessions if name != "shops"}
    assert connected == {t for t, role in roles.items() if role != "head"}, "only what is not at head connects"

    with monkeypatch.context() as m:
        m.setattr(commands, "_already_there", lambda *_: {})  # the per-target path for every tenant
        opened.sessions.clear()
        report_b = upgrade_report(project_b, tmp_path, code=1, name="theirs")
        assert len({name for name in opened.sessions if name != "shops"}) == COUNT

    assert summary(report_a) == summary(report_b)
    assert report_a["counts"] == report_b["counts"] == {"noop": COUNT - 4, "upgraded": 3, "failed": 1}
    got = by_tenant(report_a)
    for tenant, role in roles.items():
        t = got[tenant]
        if role == "head":
            assert (t["status"], t["before"], t["after"], t["applied"]) == ("noop", [REV_C], [REV_C], [])
        elif role == "behind":
            assert (t["status"], t["before"], t["applied"]) == ("upgraded", [REV_A], [REV_B, REV_C])
        elif role == "missing":
            assert (t["status"], t["before"], t["after"]) == ("upgraded", [], [REV_C])
        else:
            assert t["status"] == "failed" and "its ancestor" in t["error"], t
    errors = [(t["error"] or "").replace(ours.tenants[4], "X") for t in report_a["targets"]]
    assert sorted(errors) == sorted((t["error"] or "").replace(theirs.tenants[4], "X") for t in report_b["targets"])

    # --retry-failed after the repair: the repaired tenant is at head now, answered in bulk
    broken = ours.tenants[4]
    ours.execute_in(broken, f"DELETE FROM alembic_version WHERE version_num = '{REV_A}'")
    opened.sessions.clear()
    retried = upgrade_report(project_a, tmp_path, "--retry-failed", str(tmp_path / "ours.json"), name="retried")
    assert [(t["tenant"], t["status"], t["after"]) for t in retried["targets"]] == [(broken, "noop", [REV_C])]
    assert [name for name in opened.sessions if name != "shops"] == []


# ---------------------------------------------------------------------- dependencies


def test_a_database_whose_tenants_are_all_at_head_lets_its_dependents_run(fleet_of, make_project, tmp_path,
                                                                          opened) -> None:
    fleet = fleet_of("sqlite")
    after = {"url": "sqlite:///after.db", "version_path": "versions/after", "depends_on": ["shops"]}
    project = project_for(make_project, fleet, extra={"after": after})
    write_core_lineage(project.root / "versions" / "after", failing=False)
    upgrade_report(project, tmp_path, "-n", "shops", name="first")

    opened.sessions.clear()
    document = upgrade_report(project, tmp_path, "--all", name="all")
    targets = document["targets"]
    assert [t["status"] for t in targets[:-1]] == ["noop"] * COUNT
    assert (targets[-1]["target"], targets[-1]["status"]) == ("after", "upgraded")
    assert set(opened.sessions) == {"after"}


# ---------------------------------------------------------------------- what keeps the normal path


def test_stamp_and_downgrade_keep_the_per_target_path(fleet_of, make_project, tmp_path, opened) -> None:
    fleet = fleet_of("sqlite")
    project = project_for(make_project, fleet)
    upgrade_report(project, tmp_path, name="first")
    for command in ("stamp", "downgrade"):
        opened.sessions.clear()
        run(project, command, REV_C)  # already there: still each target's own, locked session
        assert len([n for n in opened.sessions if n != "shops"]) == COUNT, command


@pytest.mark.parametrize("kind", ["sqlite", "pg"])
@pytest.mark.parametrize("shape", ["view", "extra column"])
def test_a_version_table_of_the_wrong_shape_is_not_answered_in_bulk(kind, shape, fleet_of, make_project,
                                                                     tmp_path) -> None:
    """The bulk read vouches only for Alembic's own table: a tenant whose "version table" is
    a view (or has columns Alembic's has not) holding the head still gets its own read, and
    the error that says what is wrong, as before."""
    fleet = fleet_of(kind)
    project = project_for(make_project, fleet)
    upgrade_report(project, tmp_path, name="first")
    odd = fleet.tenants[3]
    if shape == "view":
        fleet.execute_in(odd, "ALTER TABLE alembic_version RENAME TO real_versions",
                         "CREATE VIEW alembic_version AS SELECT version_num FROM real_versions")
    else:
        fleet.execute_in(odd, "ALTER TABLE alembic_version ADD COLUMN note VARCHAR(20)")
    again = by_tenant(upgrade_report(project, tmp_path, code=1, name="again"))
    assert again[odd]["status"] == "failed", again[odd]
    assert ("is a view" if shape == "view" else "columns that Alembic's version table does not have") in again[odd]["error"]
    assert {t["status"] for name, t in again.items() if name != odd} == {"noop"}
