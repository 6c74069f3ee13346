"""Shards without Dask: `--shard auto` from a Kubernetes Indexed Job's environment, and
`orchestrate report merge` of the shards' reports (overlaps and gaps named, each target
once, the merged report accepted by --retry-failed). SQLite files, real runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Project
from fleet_helpers import REV_C, Fleet, tenant_names, write_items_lineage

COUNT = 30


def fleet_project(make_project: Any, tmp_path: Path) -> tuple[Project, Fleet]:
    fleet = Fleet("sqlite", "sqlite:///tenants/{tenant}.db", tenant_names(COUNT), tmp_path / "project" / "tenants")
    databases = {"shops": fleet.database_entry("versions/shops")}
    project = make_project({"databases": databases}, versions=False)
    write_items_lineage(project.root / "versions" / "shops")
    return project, fleet


def shard_run(project: Project, index: int, count: int, report: Path, *extra: str) -> dict[str, Any]:
    env = {"JOB_COMPLETION_INDEX": str(index), "JOB_COMPLETIONS": str(count)}
    result = project.cli("upgrade", "--all", "--shard", "auto", "--report", str(report), "--json", *extra, env=env)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def test_shard_auto_runs_each_pod_its_share_and_merge_gives_one_report(make_project, tmp_path) -> None:
    project, fleet = fleet_project(make_project, tmp_path)
    reports = [tmp_path / f"shard-{i}.json" for i in range(3)]
    shares = [shard_run(project, i, 3, reports[i]) for i in range(3)]
    tenants = [sorted(t["tenant"] for t in share["targets"]) for share in shares]
    assert all(tenants) and sorted(sum(tenants, [])) == fleet.tenants  # a partition: each tenant once
    # the same split as --shard I/N (Kubernetes' index is 0-based, --shard's is 1-based)
    same = project.cli("upgrade", "--all", "--shard", "2/3", "--json")
    assert sorted(t["tenant"] for t in json.loads(same.stdout)["targets"]) == tenants[1]

    merged = tmp_path / "merged.json"
    result = project.cli("report", "merge", str(merged), *map(str, reports))
    assert result.exit_code == 0, result.output
    document = json.loads(merged.read_text())
    assert document["version"] == 2 and document["command"] == "upgrade" and document["ok"] is True
    assert document["counts"] == {"upgraded": COUNT}
    assert sorted(t["tenant"] for t in document["targets"]) == fleet.tenants
    assert fleet.versions() == {t: [REV_C] for t in fleet.tenants}


def test_merge_names_an_overlap_and_a_gap(make_project, tmp_path) -> None:
    project, fleet = fleet_project(make_project, tmp_path)
    reports = [tmp_path / f"shard-{i}.json" for i in range(3)]
    for i in range(3):
        shard_run(project, i, 3, reports[i])
    missing = sorted(t["tenant"] for t in json.loads(reports[2].read_text())["targets"])

    gap = project.cli("report", "merge", str(tmp_path / "gap.json"), str(reports[0]), str(reports[1]))
    assert gap.exit_code == 1
    assert "gap" in gap.stderr and all(f"shops/{t}" in gap.stderr for t in missing[:5]), gap.stderr
    assert not (tmp_path / "gap.json").exists()

    twice = project.cli("report", "merge", str(tmp_path / "twice.json"), *map(str, reports), str(reports[1]))
    assert twice.exit_code == 1
    doubled = sorted(t["tenant"] for t in json.loads(reports[1].read_text())["targets"])
    assert "overlap" in twice.stderr and f"shops/{doubled[0]}" in twice.stderr, twice.stderr

    # a selection narrower than the config: --tenant says what the shards ran with
    narrowed = project.cli("report", "merge", str(tmp_path / "one.json"), str(reports[0]), "--tenant", missing[0])
    assert narrowed.exit_code == 1 and f"shops/{missing[0]}" in narrowed.stderr


def test_the_merged_report_drives_retry_failed(make_project, tmp_path) -> None:
    project, fleet = fleet_project(make_project, tmp_path)
    broken = fleet.tenants[:4]  # duplicate codes: REV_C's unique index fails there
    fleet.create_containers(fleet.tenants)
    for tenant in broken:
        fleet.execute_in(tenant, "CREATE TABLE items (id INTEGER PRIMARY KEY, code VARCHAR(40) NOT NULL)",
                         "INSERT INTO items VALUES (10, 'dup'), (11, 'dup')")
    reports = [tmp_path / f"shard-{i}.json" for i in range(2)]
    for i in range(2):
        shard_run(project, i, 2, reports[i])
    merged = tmp_path / "merged.json"
    assert project.cli("report", "merge", str(merged), *map(str, reports)).exit_code == 0
    document = json.loads(merged.read_text())
    assert document["ok"] is False
    failed = sorted(t["tenant"] for t in document["targets"] if t["status"] == "failed")
    assert failed == broken
    retry = project.cli("upgrade", "--retry-failed", str(merged), "--json")
    assert sorted(t["tenant"] for t in json.loads(retry.stdout)["targets"]) == broken


def test_shard_auto_without_the_kubernetes_variables_names_them(make_project, tmp_path, monkeypatch) -> None:
    project, _ = fleet_project(make_project, tmp_path)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.delenv("JOB_COMPLETIONS", raising=False)
    result = project.cli("upgrade", "--all", "--shard", "auto")
    assert result.exit_code == 2
    assert "JOB_COMPLETION_INDEX" in result.stderr and "JOB_COMPLETIONS" in result.stderr
    only_index = project.cli("upgrade", "--all", "--shard", "auto", env={"JOB_COMPLETION_INDEX": "0"})
    assert only_index.exit_code == 2 and "JOB_COMPLETIONS is not set" in only_index.stderr
    out_of_range = project.cli("upgrade", "--all", "--shard", "auto",
                               env={"JOB_COMPLETION_INDEX": "3", "JOB_COMPLETIONS": "3"})
    assert out_of_range.exit_code == 2 and "0-based" in out_of_range.stderr
