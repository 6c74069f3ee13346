"""Staged rollouts (issue 10): `upgrade` in waves with halt rules, --resume, --waves off,
waves with --parallel and --shard; on fleets of SQLite tenant files (real databases)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Project
from fleet_helpers import REV_B, REV_C, Fleet, tenant_names, write_items_lineage

from orchestrator import rollout
from orchestrator.config import load_project
from orchestrator.plan import select, shard_of


def make_fleet(make_project: Any, tmp_path: Path, count: int, rollout_block: dict[str, Any] | None) -> tuple[
        Project, Fleet]:
    fleet = Fleet("sqlite", "sqlite:///tenants/{tenant}.db", tenant_names(count), tmp_path / "project" / "tenants")
    shops: dict[str, Any] = fleet.database_entry("versions/shops")
    if rollout_block is not None:
        shops["rollout"] = rollout_block
    harmless = {**shops, "tenants": {"mode": "database", "names": ["placeholder"]}}
    harmless.pop("rollout", None)
    project = make_project({"databases": {"shops": harmless}}, versions=False)
    project.write_config({"databases": {"shops": shops}})
    write_items_lineage(project.root / "versions" / "shops")
    return project, fleet


def run(project: Project, *args: str, code: int = 0) -> str:
    result = project.cli(*args)
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def waves_of(project: Project, shard: tuple[int, int] | None = None) -> list[list[str]]:
    """The tenants of each wave, as orchestrate assigns them."""
    plan = select(load_project(project.config), all_=True, shard=shard)
    return [[t.tenant or "" for t in wave.targets] for wave in rollout.assign(plan)]


def versions(fleet: Fleet, tenants: list[str]) -> dict[str, list[str] | None]:
    return fleet.versions(tenants)


def valid(document: dict[str, Any]) -> dict[str, Any]:
    """The document matches the report schema that ships in the package."""
    import jsonschema

    from orchestrator.report import SCHEMA_PATH

    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    return document


def break_tenant(fleet: Fleet, tenant: str) -> None:
    """A duplicate code: the unique index of REV_C fails on this tenant."""
    fleet.execute_in(tenant, "INSERT INTO items (id, code, qty) VALUES (10, 'dup', 1), (11, 'dup', 2)")


def fix_tenant(fleet: Fleet, tenant: str) -> None:
    fleet.execute_in(tenant, "DELETE FROM items WHERE id = 11")


def test_wave_assignment_is_cumulative_stable_and_canary_first(make_project, tmp_path) -> None:
    project, _ = make_fleet(make_project, tmp_path, 50,
                            {"canary": ["t007", "t031"], "waves": ["1%", "10%", "100%"]})
    waves = waves_of(project)
    assert waves[0] == ["t007", "t031"]
    assert [len(w) for w in waves] == [2, 1, 4, 43]  # 1% of 48 -> 1, 10% -> 5 in all, then the rest
    assert sorted(sum(waves, [])) == tenant_names(50)
    assert waves == waves_of(project)  # stable
    # a shard runs its part of each wave: membership does not depend on --shard
    for index in (1, 2):
        sharded = waves_of(project, (index, 2))
        plan = select(load_project(project.config), all_=True)
        in_shard = {t.tenant for t in plan.targets if shard_of(t, 2) == index}
        assert sharded == [[t for t in wave if t in in_shard] for wave in waves]


def test_canary_failure_halts_then_resume_completes(make_project, tmp_path) -> None:
    project, fleet = make_fleet(make_project, tmp_path, 50, {
        "canary": ["t000", "t001"], "waves": ["10%", "100%"], "halt": {"failures": 1}, "pause": "0s"})
    run(project, "upgrade", REV_B, "--waves", "off")  # everyone at B, in one go
    assert set(map(tuple, versions(fleet, fleet.tenants).values())) == {(REV_B,)}
    break_tenant(fleet, "t001")

    first = tmp_path / "first.json"
    out = run(project, "upgrade", "--report", str(first), code=1)
    assert "halted" in out and "wave 1 (canary)" in out and "--resume" in out
    report = valid(json.loads(first.read_text()))
    halted = report["halted"]
    assert halted["wave"] == 1 and halted["name"] == "canary" and halted["rule"] == "failures", halted
    assert halted["failed"] == ["shops/t001"], halted
    assert [w["status"] for w in report["rollout"]["waves"]] == ["halted", "not_started", "not_started"]
    # nothing beyond the canary wave was touched: version tables say so
    after = versions(fleet, fleet.tenants)
    assert after["t000"] == [REV_C] and after["t001"] == [REV_B]
    beyond = {t: v for t, v in after.items() if t not in ("t000", "t001") and v != [REV_B]}
    assert not beyond, beyond
    statuses = {t["tenant"]: t["status"] for t in report["targets"]}
    assert statuses["t000"] == "upgraded" and statuses["t001"] == "failed"
    assert {s for t, s in statuses.items() if t not in ("t000", "t001")} == {"not_run"}
    assert len(statuses) == 50

    fix_tenant(fleet, "t001")
    second = tmp_path / "second.json"
    run(project, "upgrade", "--resume", str(first), "--report", str(second))
    assert set(map(tuple, versions(fleet, fleet.tenants).values())) == {(REV_C,)}
    resumed = valid(json.loads(second.read_text()))
    assert resumed["ok"] is True and resumed["halted"] is None
    assert resumed["rollout"]["resumed_from"] == 1
    assert [w["status"] for w in resumed["rollout"]["waves"]] == ["completed"] * 3
    # a completed rollout has nothing to resume: exit 2
    result = project.cli("upgrade", "--resume", str(second))
    assert result.exit_code == 2 and "nothing to resume" in result.stderr


@pytest.mark.parametrize("broken_in_first,halts", [(1, False), (2, True)])
def test_failure_ratio_is_counted_per_wave(broken_in_first, halts, make_project, tmp_path) -> None:
    """20 tenants, waves of 10 and 10, failure_ratio 0.1: one failure in each wave is 10%
    (not above), two in the first wave are 20% of that wave (but 10% of the fleet): halt."""
    project, fleet = make_fleet(make_project, tmp_path, 20, {
        "waves": [10, "100%"], "halt": {"failure_ratio": 0.1}})
    run(project, "upgrade", REV_B, "--waves", "off")
    first, second = waves_of(project)
    broken = first[:broken_in_first] + ([] if halts else second[:1])
    for tenant in broken:
        break_tenant(fleet, tenant)
    path = tmp_path / "r.json"
    run(project, "upgrade", "--report", str(path), code=1)
    report = json.loads(path.read_text())
    after = versions(fleet, fleet.tenants)
    if halts:
        assert report["halted"]["wave"] == 1 and report["halted"]["rule"] == "failure_ratio"
        assert report["halted"]["observed"] == 0.2
        assert all(after[t] == [REV_B] for t in second)  # the second wave never started
    else:
        assert report["halted"] is None
        assert all(after[t] == ([REV_B] if t in broken else [REV_C]) for t in fleet.tenants)


def test_waves_respected_with_parallel_and_shard(make_project, tmp_path) -> None:
    project, fleet = make_fleet(make_project, tmp_path, 50, {"waves": ["20%", "100%"], "halt": {"failures": 1}})
    run(project, "upgrade", REV_B, "--waves", "off", "-p", "2")
    first_shard1, rest_shard1 = waves_of(project, (1, 2))
    assert len(first_shard1) >= 2, first_shard1
    break_tenant(fleet, first_shard1[0])
    path = tmp_path / "r.json"
    run(project, "upgrade", "--shard", "1/2", "-p", "2", "--report", str(path), code=1)
    report = json.loads(path.read_text())
    assert report["halted"]["wave"] == 1
    assert [w["targets"] for w in report["rollout"]["waves"]] == [len(first_shard1), len(rest_shard1)]
    after = versions(fleet, fleet.tenants)
    shard1 = set(first_shard1) | set(rest_shard1)
    assert {t for t in fleet.tenants if after[t] != [REV_B]} <= set(first_shard1)  # only wave 1 of shard 1 moved
    assert after[first_shard1[0]] == [REV_B]
    assert all(after[t] == [REV_B] for t in fleet.tenants if t not in shard1)
    workers = {t["worker"]["pid"] for t in report["targets"] if t["status"] in ("upgraded", "failed")}
    assert workers  # ran in worker processes
    # without halting: the whole shard in parallel, wave by wave
    fix_tenant(fleet, first_shard1[0])
    run(project, "upgrade", "--shard", "1/2", "-p", "2", "--resume", str(path))
    after = versions(fleet, fleet.tenants)
    assert all(after[t] == ([REV_C] if t in shard1 else [REV_B]) for t in fleet.tenants)


def test_rollout_config_errors_name_file_and_line(make_project, tmp_path) -> None:
    project, _ = make_fleet(make_project, tmp_path, 3, {"waves": ["10%"]})
    for block, expected in (
        ({"waves": ["0%"]}, "more than 0%"),
        ({"halts": {"failures": 1}}, "unknown key `halts`"),
        ({"halt": {"failure_ratio": 2}}, "failure_ratio"),
        ({"canary": ["nobody"]}, "canary tenant `nobody`"),
        ({"pause": "soon"}, "not a duration"),
    ):
        config = json.loads(json.dumps({"databases": {"shops": {
            "url": "sqlite:///tenants/{tenant}.db", "version_path": "versions/shops",
            "tenants": {"mode": "database", "names": ["t000", "t001"]}, "rollout": block}}}))
        project.write_config(config)
        result = project.cli("upgrade")
        assert result.exit_code == 2, (block, result.stdout, result.stderr)
        assert expected in result.stderr and f"{project.config}:" in result.stderr, (block, result.stderr)


def test_resume_refuses_a_report_without_waves(make_project, tmp_path) -> None:
    project, _ = make_fleet(make_project, tmp_path, 3, None)
    path = tmp_path / "plain.json"
    run(project, "upgrade", "--report", str(path))
    result = project.cli("upgrade", "--resume", str(path))
    assert result.exit_code == 2 and "not the report of a rollout" in result.stderr, result.stderr
    result = project.cli("upgrade", "--resume", str(path), "--waves", "off")
    assert result.exit_code == 2 and "--waves off" in result.stderr, result.stderr


def test_lock_timeouts_halt_rule(make_project, tmp_path) -> None:
    """A canary tenant whose file another session holds locked times out (lock_timeout) and
    the lock_timeouts rule halts the rollout after the canary wave."""
    import sqlite3

    project, fleet = make_fleet(make_project, tmp_path, 8, {
        "canary": ["t003"], "waves": ["100%"], "halt": {"lock_timeouts": 1}})
    config = project.config.read_text()
    project.write_config(config.replace("shops:\n", "shops:\n    lock_timeout: 300ms\n", 1))
    run(project, "upgrade", REV_B, "--waves", "off")
    holder = sqlite3.connect(fleet.sqlite_path("t003"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # readers go on, writers wait
    try:
        path = tmp_path / "r.json"
        run(project, "upgrade", "--report", str(path), code=1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    report = valid(json.loads(path.read_text()))
    assert report["halted"] is not None, [(t["tenant"], t["status"], t["error"]) for t in report["targets"]]
    assert report["halted"]["rule"] == "lock_timeouts" and report["halted"]["wave"] == 1, report["halted"]
    target = next(t for t in report["targets"] if t["tenant"] == "t003")
    assert target["lock_timeout"] is True and target["status"] == "failed"
    assert set(map(tuple, versions(fleet, fleet.tenants).values())) == {(REV_B,)}
