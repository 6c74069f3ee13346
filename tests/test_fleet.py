"""Fleets of tenants: schema-per-tenant on PostgreSQL, database-per-tenant on MariaDB and
SQLite, with hundreds of tenants where it matters.

Every test runs the real CLI against real servers and then looks inside every tenant
itself (version tables, tables, indexes, rows) through fleet_helpers, never through
orchestrate. The lineage under test is written to tmp per test: `items` (a table, a
column with a data migration, then a unique index that tenants with duplicate data cannot
take) and `slow` (two revisions that sleep, for interruptions).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import Project, sqlite_url
from fleet_helpers import (
    CORE_A,
    CORE_BAD,
    ITEMS_REVS,
    REV_A,
    REV_B,
    REV_C,
    SLOW_A,
    SLOW_B,
    Fleet,
    by_tenant,
    drop_mysql_databases,
    fetch,
    items_state_at,
    load_report,
    mysql_prefix,
    run_sql,
    tenant_names,
    with_password,
    write_core_lineage,
    write_items_lineage,
    write_slow_lineage,
)

SEED_ROWS = [(1, "seed-1", 1), (2, "seed-2", 2)]  # what REV_B's data migration inserts


# ---------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def fleets(request: pytest.FixtureRequest, tmp_path: Path):
    """Factory: ``fleets(kind, count)`` -> a Fleet of ``count`` tenants in a fresh place.

    pg: schemas in this test's own database; mysql: databases on the server, all named with
    a prefix of this test's own (dropped afterwards); sqlite: files under project/tenants/.
    """

    def make(kind: str, count: int) -> Fleet:
        if kind == "pg":
            return Fleet("pg", request.getfixturevalue("pg_url"), tenant_names(count))
        if kind == "mysql":
            url = request.getfixturevalue("mysql_url")
            prefix = mysql_prefix()
            request.addfinalizer(lambda: drop_mysql_databases(prefix))
            return Fleet("mysql", url, tenant_names(count, prefix))
        assert kind == "sqlite", kind
        return Fleet("sqlite", "sqlite:///tenants/{tenant}.db", tenant_names(count), tmp_path / "project" / "tenants")

    return make


def fleet_project(
    make_project: Any,
    fleet: Fleet,
    lineage: str = "items",
    extra: dict[str, Any] | None = None,
    depends_on: list[str] | None = None,
    **tenants: Any,
) -> Project:
    """A project whose database `shops` is ``fleet``, on a lineage written to tmp."""
    shops = fleet.database_entry("versions/shops", **tenants)
    if depends_on:
        shops["depends_on"] = depends_on
    databases = {**(extra or {}), "shops": shops}
    # `init` loads the config: give it a harmless tenant list, then write the real one
    # (which may name files written later, or hostile names that must fail the command).
    harmless = {**shops, "tenants": {"mode": shops["tenants"]["mode"], "names": ["placeholder"]}}
    project = make_project({"databases": {**databases, "shops": harmless}}, versions=False)
    project.write_config({"databases": databases})
    folder = project.root / "versions" / "shops"
    if lineage == "items":
        write_items_lineage(folder)
    elif lineage == "slow":
        write_slow_lineage(folder)
    return project


def run(project: Project, *args: str, code: int | None = 0) -> Result:
    result = project.cli(*args)
    if code is not None:
        assert result.exit_code == code, (
            f"`orchestrate {' '.join(args)}` exited {result.exit_code}, expected {code}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-3000:]}"
        )
    return result


def run_json(project: Project, *args: str, code: int | None = 0) -> Any:
    result = run(project, *args, "--json", code=code)
    try:
        document = json.loads(result.stdout)
        return document["targets"] if args[0] in ("status", "current", "check") else document
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}") from None


def statuses(report: dict[str, Any]) -> dict[str | None, str]:
    return {tenant: t["status"] for tenant, t in by_tenant(report).items()}


def assert_at(fleet: Fleet, tenants: list[str] | set[str], rev: str | None) -> None:
    """Each of ``tenants`` holds exactly what the items lineage leaves at ``rev``."""
    tables, indexes = items_state_at(rev)
    snapshot = fleet.snapshot(sorted(tenants))
    wrong = {
        t: (s["version"], sorted(s["tables"]), sorted(s["indexes"]))
        for t, s in snapshot.items()
        if s["version"] != ([rev] if rev else None) or s["tables"] != tables or s["indexes"] != indexes
    }
    assert not wrong, f"{len(wrong)} tenants not at {rev}: {dict(list(wrong.items())[:5])}"


def untouched(fleet: Fleet, tenants: list[str] | set[str]) -> None:
    """Nothing of the lineage in these tenants (their container may or may not exist)."""
    snapshot = fleet.snapshot(sorted(tenants))
    touched = {t: sorted(s["tables"]) for t, s in snapshot.items() if s["tables"]}
    assert not touched, f"{len(touched)} tenants were touched: {dict(list(touched.items())[:5])}"


# ====================================================================== serial == parallel


SCALE = {"pg": 120, "mysql": 16, "sqlite": 200}


@pytest.mark.parametrize("kind", ["pg", "mysql", "sqlite"])
def test_parallel_and_serial_runs_give_identical_end_states(kind, fleets, make_project, tmp_path) -> None:
    fleet = fleets(kind, SCALE[kind])
    project = fleet_project(make_project, fleet)
    if kind != "sqlite":
        fleet.create_containers(fleet.tenants)

    serial = run_json(project, "upgrade", "-p", "1")
    assert statuses(serial) == {t: "upgraded" for t in fleet.tenants}
    first = fleet.snapshot()
    assert_at(fleet, fleet.tenants, REV_C)
    assert all(state["items"] == SEED_ROWS for state in first.values()), "REV_B's data migration ran per tenant"
    assert {pid for state in first.values() for pid in state.pop("pids")} == {os.getpid()}  # in-process CLI

    # back to where the serial run started, then the same work on a pool of processes
    fleet.drop_containers(fleet.tenants)
    if kind != "sqlite":
        fleet.create_containers(fleet.tenants)
    untouched(fleet, fleet.tenants)
    parallel = run_json(project, "upgrade", "-p", "4")
    second = fleet.snapshot()
    workers = {pid for state in second.values() for pid in state.pop("pids")}
    assert os.getpid() not in workers and len(workers) <= 4, f"-p 4 ran on processes {workers}"
    if len(fleet.tenants) >= 100:  # long enough for every worker to have started and taken some
        assert len(workers) >= 2, f"-p 4 ran every tenant on one process {workers}"
    assert second == first

    def summary(report: dict[str, Any]) -> dict[str | None, tuple[Any, ...]]:
        return {
            tenant: (t["status"], t["before"], t["after"], t["applied"], t["failed_revision"], t["error"])
            for tenant, t in by_tenant(report).items()
        }

    assert summary(parallel) == summary(serial)
    assert parallel["counts"] == serial["counts"] == {"upgraded": len(fleet.tenants)}
    assert parallel["ok"] is serial["ok"] is True


# ====================================================================== some tenants fail


@pytest.mark.parametrize("kind,count,parallel", [("pg", 30, "3"), ("mysql", 10, "2"), ("sqlite", 150, "1")])
def test_revision_failing_for_some_tenants_fails_exactly_those_then_retry_finishes(
    kind, count, parallel, fleets, make_project, tmp_path
) -> None:
    """REV_C adds a unique index on items.code; tenants whose own data holds a duplicate
    code fail in REV_C, every other tenant reaches head; after the data is fixed,
    --retry-failed runs exactly the failed tenants and finishes the job."""
    fleet = fleets(kind, count)
    project = fleet_project(make_project, fleet)
    if kind != "sqlite":
        fleet.create_containers(fleet.tenants)
    run(project, "upgrade", REV_B)
    assert_at(fleet, fleet.tenants, REV_B)

    bad = [t for i, t in enumerate(fleet.tenants) if i % 7 == 3]
    good = [t for t in fleet.tenants if t not in bad]
    for tenant in fleet.tenants:  # per-tenant data: a row of its own, or two rows with one code
        if tenant in bad:
            fleet.execute_in(tenant, "INSERT INTO items (id, code, qty) VALUES (10, 'dup', 1), (11, 'dup', 2)")
        else:
            fleet.execute_in(tenant, f"INSERT INTO items (id, code, qty) VALUES (10, 'own-{tenant}', 10)")

    first_path = tmp_path / "first.json"
    result = run(project, "upgrade", "-p", parallel, "--report", str(first_path), code=1)
    report = load_report(first_path)
    assert report["ok"] is False and report["interrupted"] is False
    assert report["counts"] == {"upgraded": len(good), "failed": len(bad)}
    targets = by_tenant(report)
    assert set(targets) == set(fleet.tenants)
    for tenant in bad:
        t = targets[tenant]
        assert t["status"] == "failed", t
        assert t["failed_revision"] == REV_C, t
        assert (t["before"], t["after"], t["applied"]) == ([REV_B], [REV_B], []), t
        error = t["error"]
        assert f"shops/{tenant}" in error and REV_C in error and "unique item code" in error, error
        assert "unique" in error.lower() or "duplicate" in error.lower(), error
        if kind == "mysql":
            assert "may be partly applied" in error, error
        else:
            assert "rolled back" in error, error
    for tenant in good:
        t = targets[tenant]
        assert t["status"] == "upgraded", t
        assert (t["before"], t["after"], t["applied"]) == ([REV_B], [REV_C], [REV_C]), t
        assert t["failed_revision"] is None and t["error"] is None, t

    # the databases agree with the report; every tenant kept its own data
    assert_at(fleet, good, REV_C)
    assert_at(fleet, bad, REV_B)
    rows = {t: s["items"] for t, s in fleet.snapshot().items()}
    for tenant in good:
        assert rows[tenant] == SEED_ROWS + [(10, f"own-{tenant}", 10)], tenant
    for tenant in bad:
        assert rows[tenant] == SEED_ROWS + [(10, "dup", 1), (11, "dup", 2)], tenant

    # what a person reads: every failed tenant named, the summary, the way to resume
    out = result.stdout
    assert f"{count} targets: " in out and f"{len(good)} upgraded" in out and f"{len(bad)} failed" in out, out
    for tenant in bad:
        assert re.search(rf"shops/{tenant}\s+failed\s+in revision {REV_C}", out), out
    assert f"--retry-failed {first_path}" in out

    # fix the data, then resume with --retry-failed: only the failed tenants run
    for tenant in bad:
        fleet.execute_in(tenant, "DELETE FROM items WHERE id = 11")
    second_path = tmp_path / "second.json"
    run(project, "upgrade", "-p", parallel, "--retry-failed", str(first_path), "--report", str(second_path))
    retried = load_report(second_path)
    assert retried["ok"] is True
    assert statuses(retried) == {t: "upgraded" for t in bad}
    for t in retried["targets"]:
        assert (t["before"], t["after"], t["applied"]) == ([REV_B], [REV_C], [REV_C]), t
    assert_at(fleet, fleet.tenants, REV_C)

    # a report in which everything succeeded leaves nothing to retry
    result = run(project, "upgrade", "--retry-failed", str(second_path), code=2)
    assert "nothing to retry" in result.stderr


# ====================================================================== --shard


def test_shard_partitions_every_target_exactly_once(fleets, make_project, tmp_path) -> None:
    fleet = fleets("sqlite", 240)
    core = {"url": "sqlite:///core.db", "version_path": "versions/core"}
    project = fleet_project(make_project, fleet, extra={"core": core})
    write_core_lineage(project.root / "versions" / "core", failing=False)
    everything = {("core", None)} | {("shops", t) for t in fleet.tenants}

    shards: list[set[tuple[str, str | None]]] = []
    for index in (1, 2, 3):
        report = run_json(project, "upgrade", "--all", "--shard", f"{index}/3")
        picked = {(t["database"], t["tenant"]) for t in report["targets"]}
        assert len(picked) == len(report["targets"]), "a target ran twice in one shard"
        assert {t["status"] for t in report["targets"]} == {"upgraded"}
        assert not picked & set().union(*shards), f"shard {index}/3 ran targets of an earlier shard"
        shards.append(picked)
        if index == 1:  # the others are not touched by shard 1
            ran = {t for d, t in picked if d == "shops"}
            assert_at(fleet, ran, REV_C)
            untouched(fleet, set(fleet.tenants) - ran)
    assert set().union(*shards) == everything
    assert sum(len(s) for s in shards) == len(everything)
    for shard in shards:  # stable hash: balanced enough that no machine idles
        assert 50 <= len(shard) <= 110, [len(s) for s in shards]
    assert_at(fleet, fleet.tenants, REV_C)
    assert fetch(sqlite_url(project.root / "core.db"), "SELECT version_num FROM alembic_version") == [(CORE_A,)]

    # the same shard is the same targets for every command (here: a read-only one)
    status = run_json(project, "status", "--all", "--shard", "2/3")
    assert {(r["database"], r["tenant"]) for r in status} == shards[1]
    assert all(r["after"] == r["head"] and r["pending"] == 0 for r in status)

    # another N partitions exactly too
    seven = [
        {(r["database"], r["tenant"]) for r in run_json(project, "status", "--all", "--shard", f"{i}/7")}
        for i in range(1, 8)
    ]
    assert sum(len(s) for s in seven) == len(everything) and set().union(*seven) == everything


@pytest.mark.parametrize("shard", ["0/3", "4/3", "3", "1/0", "a/b", "-1/3"])
def test_shard_must_be_i_of_n(shard, fleets, make_project) -> None:
    fleet = fleets("sqlite", 5)
    project = fleet_project(make_project, fleet)
    result = run(project, "upgrade", f"--shard={shard}", code=2)
    assert "--shard" in result.stderr, result.stderr
    assert fleet.existing() == set()


# ====================================================================== SIGINT


class Spawned:
    """`python -m orchestrator.cli ...` in a process of its own; its output collected live."""

    def __init__(self, project: Project, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "-c", str(project.config), *args],
            cwd=project.root,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C must not reach it; only our signals do
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def wait_for_lines(self, pattern: str, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for line in list(self.lines) if re.search(pattern, line)) < count:
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended (exit {self.process.returncode}) early:\n{self.output}")
            assert time.monotonic() < deadline, f"no {count} lines like {pattern!r} in time:\n{self.output}"
            time.sleep(0.01)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines) + "\n--- stderr\n" + "".join(self.err)


def check_interrupted_fleet(fleet: Fleet, report: dict[str, Any], allowed: set[str]) -> dict[str, list[str]]:
    """Every tenant once in the report; no tenant half-recorded; the report's before/after
    are what each tenant's version table holds. Returns tenants by status."""
    targets = by_tenant(report)
    assert set(targets) == set(fleet.tenants)
    by_status: dict[str, list[str]] = {}
    for tenant, t in targets.items():
        by_status.setdefault(t["status"], []).append(tenant)
    assert set(by_status) <= allowed, {s: len(ts) for s, ts in by_status.items()}

    problems = []
    for tenant, state in fleet.snapshot().items():
        version = state["version"] or []
        slow = state["tables"].get("slow")
        # the version table names exactly the DDL that is there
        expected_slow = {(): None, (SLOW_A,): ["id"], (SLOW_B,): ["extra", "id"]}.get(tuple(version), "?")
        if slow != expected_slow:
            problems.append(f"{tenant}: version {version} but table slow has columns {slow}")
        t = targets[tenant]
        if t["status"] in ("not_run", "skipped"):
            if t["before"] is not None or t["after"] is not None:  # never read: unknown, not base
                problems.append(f"{tenant}: {t['status']}, but the report claims {t['before']} -> {t['after']}")
        elif t["before"] not in ([], None) or t["after"] != version:  # aborted: before is not known
            problems.append(f"{tenant}: report says {t['status']} {t['before']} -> {t['after']}, database at {version}")
        if t["status"] == "upgraded" and version != [SLOW_B]:
            problems.append(f"{tenant}: upgraded, but its version table holds {version}")
        if t["status"] == "not_run" and state["tables"]:
            problems.append(f"{tenant}: not run, but it holds tables {sorted(state['tables'])}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    return by_status


@pytest.mark.parametrize("parallel", ["1", "3"])
def test_sigint_stops_the_fleet_with_a_report_and_nothing_half_recorded(
    parallel, fleets, make_project, tmp_path
) -> None:
    """Ctrl-C once: the running targets finish, the rest are not_run; exit 130; the report
    is written and agrees with every tenant's version table (at head, or where it was)."""
    fleet = fleets("sqlite", 120)
    project = fleet_project(make_project, fleet, lineage="slow")  # ~0.2 s a target
    report_path = tmp_path / "interrupted.json"
    spawned = Spawned(project, "upgrade", "-p", parallel, "--report", str(report_path))
    try:
        spawned.wait_for_lines(r"^shops/\S+\s+upgraded", 3)
        spawned.signal(signal.SIGINT)
        code = spawned.finish()
    finally:
        if spawned.process.poll() is None:
            spawned.finish(timeout=0)
    assert code == 130, spawned.output
    assert report_path.exists(), spawned.output

    report = load_report(report_path)
    assert report["interrupted"] is True and report["ok"] is False
    by_status = check_interrupted_fleet(fleet, report, allowed={"upgraded", "not_run"})
    versions = fleet.versions()
    assert {tuple(v or []) for v in versions.values()} <= {(), (SLOW_B,)}, "a tenant stopped between revisions"
    assert len(by_status.get("upgraded", [])) >= 3
    assert len(by_status.get("not_run", [])) >= 30, {s: len(t) for s, t in by_status.items()}
    for tenant in by_status["not_run"]:
        assert "interrupted" in by_tenant(report)[tenant]["error"]
    assert "stopping: the run was interrupted" in spawned.output
    assert "(interrupted)" in spawned.output


def ctrl_c_twice(spawned: Spawned, gap: float = 0.3) -> int:
    """Once two targets were upgraded, Ctrl-C, and again ``gap`` seconds later (unless the
    command has ended by then); its exit code."""
    try:
        spawned.wait_for_lines(r"^shops/\S+\s+upgraded", 2)
        spawned.signal(signal.SIGINT)
        time.sleep(gap)
        if spawned.process.poll() is None:
            spawned.signal(signal.SIGINT)
        return spawned.finish()
    finally:
        if spawned.process.poll() is None:
            spawned.finish(timeout=0)


@pytest.mark.parametrize("parallel", ["1", "3"])
def test_second_sigint_aborts_running_tenants_without_half_recording_them(
    parallel, fleets, make_project, tmp_path
) -> None:
    """Ctrl-C twice: the targets running are aborted; their open revision is rolled back;
    the report is still written and says where each tenant's version table is."""
    fleet = fleets("sqlite", 60)
    project = fleet_project(make_project, fleet, lineage="none")
    write_slow_lineage(project.root / "versions" / "shops", sleep_a=0.1, sleep_b=0.8)
    report_path = tmp_path / "aborted.json"
    spawned = Spawned(project, "upgrade", "-p", parallel, "--report", str(report_path))
    code = ctrl_c_twice(spawned)  # the first just as a target was handed out: ~0.9 s of work left
    assert code == 130, spawned.output
    assert report_path.exists(), spawned.output

    report = load_report(report_path)
    assert report["interrupted"] is True and report["ok"] is False
    failed = [t for t in report["targets"] if t["status"] == "failed"]
    assert failed, spawned.output
    for t in failed:
        assert "aborted" in t["error"], t
    if parallel == "1":
        assert len(failed) == 1
    check_interrupted_fleet(fleet, report, allowed={"upgraded", "failed", "not_run"})
    # an aborted target names the revision it was in: the one after where it stopped
    versions = fleet.versions([t["tenant"] for t in failed])
    for t in failed:
        running = SLOW_A if not versions[t["tenant"]] else SLOW_B
        assert t["failed_revision"] == running, t


def test_a_second_ctrl_c_as_the_run_ends_still_exits_130(fleets, make_project, tmp_path) -> None:
    """Replayed tenants take no time: after the first Ctrl-C the run ends at once, and the
    second lands while the command exits. The exit code stays 130 (not a death by SIGINT)
    and the report is written."""
    fleet = fleets("sqlite", 60)
    project = fleet_project(make_project, fleet, lineage="none")
    write_slow_lineage(project.root / "versions" / "shops", sleep_a=0.1, sleep_b=0.8, replayable=True)
    report_path = tmp_path / "ended.json"
    spawned = Spawned(project, "upgrade", "--report", str(report_path))
    code = ctrl_c_twice(spawned)
    assert code == 130, spawned.output
    report = load_report(report_path)
    assert report["interrupted"] is True


# ====================================================================== hostile tenant names


HOSTILE = [
    "Robert'); DROP TABLE students;--",
    "../../etc/passwd",
    "a b",
    "x\"y",
    "t-1",
    "UPPER",
    "a" * 64,
    "",
    "café",
    "t1\n",
    "t1;",
    "{tenant}",
]


@pytest.mark.parametrize("name", HOSTILE, ids=lambda n: repr(n)[:20])
def test_hostile_tenant_names_in_the_config_are_rejected_before_anything_runs(name, fleets, make_project) -> None:
    fleet = fleets("sqlite", 3)
    fleet.tenants = ["t000", name, "t002"]
    project = fleet_project(make_project, fleet)
    result = run(project, "upgrade", code=2)
    assert re.search(r"orchestrate\.yaml:\d+: .*tenant name", result.stderr), result.stderr
    assert not (project.root / "tenants").exists() or not list((project.root / "tenants").iterdir())


@pytest.mark.parametrize("name", [n for n in HOSTILE if n.strip() and "\n" not in n and "#" not in n],
                         ids=lambda n: repr(n)[:20])
def test_hostile_tenant_names_in_a_tenants_file_are_rejected_with_their_line(name, fleets, make_project) -> None:
    fleet = fleets("sqlite", 3)
    project = fleet_project(make_project, fleet, file="tenants.txt")
    (project.root / "tenants.txt").write_text(f"t000\n# a comment\nt001\n{name}\n", encoding="utf-8")
    result = run(project, "upgrade", code=2)
    assert f"tenants.txt:4: tenant name {name!r}" in result.stderr, result.stderr
    assert not (project.root / "tenants").exists()


@pytest.mark.parametrize("name", ["x'; DROP TABLE registry; --", "t1\n", "Evil", "../up"], ids=repr)
def test_hostile_tenant_names_from_a_query_are_rejected(name, fleets, make_project, tmp_path) -> None:
    registry = sqlite_url(tmp_path / "registry.db")
    run_sql(registry, "CREATE TABLE registry (name VARCHAR(100))",
            "INSERT INTO registry VALUES ('t000'), (:n)", params={"n": name})
    fleet = fleets("sqlite", 0)
    project = fleet_project(make_project, fleet, query="SELECT name FROM registry ORDER BY name", query_url=registry)
    result = project.cli("upgrade")
    assert result.exit_code == 2, result.output  # the input is wrong: decided before any target runs
    assert "tenants query returned" in result.stderr and "tenant name" in result.stderr, result.stderr
    assert not (project.root / "tenants").exists(), "no tenant may run when one name is hostile"
    assert fetch(registry, "SELECT count(*) FROM registry") == [(2,)]


@pytest.mark.parametrize("option", ["--tenant", "--tenants-from"])
def test_hostile_names_on_the_command_line_are_refused(option, fleets, make_project, tmp_path) -> None:
    fleet = fleets("sqlite", 3)
    project = fleet_project(make_project, fleet)
    hostile = "t000'; DROP TABLE x; --"
    if option == "--tenant":
        result = run(project, "upgrade", "--tenant", hostile, code=2)
    else:
        listed = tmp_path / "list.txt"
        listed.write_text(f"{hostile}\n", encoding="utf-8")
        result = run(project, "upgrade", "--tenants-from", str(listed), code=2)
    assert "does not match the tenant pattern" in result.stderr, result.stderr  # checked like config names
    assert option in result.stderr
    assert fleet.existing() == set()


def test_names_reach_postgresql_quoted_when_a_pattern_allows_anything(fleets, make_project) -> None:
    """With a permissive `pattern:`, a name full of SQL is a schema name and nothing else."""
    fleet = fleets("pg", 0)
    evil = 'a"; DROP SCHEMA public CASCADE; --'
    fleet.tenants = [evil, "plain"]
    run_sql(fleet.url, "CREATE TABLE public.canary (id INTEGER)")
    project = fleet_project(make_project, fleet, create=True, pattern=r"^[^\x00]{1,63}$")
    run(project, "upgrade")
    assert fetch(fleet.url, "SELECT count(*) FROM public.canary") == [(0,)]
    assert_at(fleet, fleet.tenants, REV_C)
    status = run_json(project, "status")
    assert {r["tenant"]: r["after"] for r in status} == {evil: [REV_C], "plain": [REV_C]}


# ====================================================================== where tenants come from


def test_tenants_from_a_file_with_comments(fleets, make_project, tmp_path) -> None:
    fleet = fleets("sqlite", 0)
    project = fleet_project(make_project, fleet, file="lists/tenants.txt")
    (project.root / "lists").mkdir()
    (project.root / "lists" / "tenants.txt").write_text(
        "# tenants of the shop\n\nacme\n  globex   # moved to the EU in May\n#initech\n\numbrella\n",
        encoding="utf-8",
    )
    fleet.tenants = ["acme", "globex", "umbrella"]
    report = run_json(project, "upgrade")
    assert [t["tenant"] for t in report["targets"]] == ["acme", "globex", "umbrella"]
    assert_at(fleet, fleet.tenants, REV_C)
    assert sorted(p.name for p in (project.root / "tenants").glob("*.db")) == ["acme.db", "globex.db", "umbrella.db"]


def test_tenants_from_a_query_with_query_url(fleets, make_project, pg_url) -> None:
    """SQLite files per tenant, listed by a table on PostgreSQL (query_url, password masked);
    the query runs at every command, so a tenant added to the table is picked up."""
    run_sql(pg_url, "CREATE TABLE tenant_registry (name TEXT PRIMARY KEY, active BOOLEAN NOT NULL)",
            "INSERT INTO tenant_registry VALUES ('acme', true), ('globex', false), ('umbrella', true)")
    fleet = fleets("sqlite", 0)
    query_url = with_password(pg_url, "regsecret9")  # trust auth: any password is accepted
    project = fleet_project(
        make_project, fleet,
        query="SELECT name FROM tenant_registry WHERE active ORDER BY name", query_url=query_url,
    )
    report = run_json(project, "upgrade")
    assert [t["tenant"] for t in report["targets"]] == ["acme", "umbrella"]
    fleet.tenants = ["acme", "umbrella"]
    assert_at(fleet, fleet.tenants, REV_C)
    assert not (project.root / "tenants" / "globex.db").exists()

    run_sql(pg_url, "INSERT INTO tenant_registry VALUES ('initech', true)")
    report = run_json(project, "upgrade")
    assert statuses(report) == {"acme": "noop", "initech": "upgraded", "umbrella": "noop"}

    # a failing query names what failed, never the password
    run_sql(pg_url, "ALTER TABLE tenant_registry RENAME TO tenant_registry_old")
    result = project.cli("upgrade")
    assert result.exit_code != 0
    assert "tenants query failed" in result.stderr and "tenant_registry" in result.stderr, result.stderr
    assert "regsecret9" not in result.stdout + result.stderr


def test_tenants_from_a_query_on_the_database_itself(fleets, make_project) -> None:
    """Without query_url, the query runs on the database's own url (here: public schema)."""
    fleet = fleets("pg", 0)
    run_sql(fleet.url, "CREATE TABLE public.shops (slug TEXT)", "INSERT INTO public.shops VALUES ('s2'), ('s1')")
    project = fleet_project(make_project, fleet, query="SELECT slug FROM public.shops ORDER BY slug", create=True)
    report = run_json(project, "upgrade")
    assert [t["tenant"] for t in report["targets"]] == ["s1", "s2"]
    fleet.tenants = ["s1", "s2"]
    assert_at(fleet, fleet.tenants, REV_C)


# ====================================================================== --tenant / --tenants-from


def test_tenant_options_narrow_the_fleet(fleets, make_project, tmp_path) -> None:
    fleet = fleets("sqlite", 40)
    project = fleet_project(make_project, fleet)

    report = run_json(project, "upgrade", "--tenant", "t017", "--tenant", "t003")
    assert set(statuses(report)) == {"t003", "t017"}
    assert_at(fleet, ["t003", "t017"], REV_C)
    untouched(fleet, set(fleet.tenants) - {"t003", "t017"})

    listed = tmp_path / "wave1.txt"
    listed.write_text("# wave 1\nt005\n\nt006  # pilot\nt003\n", encoding="utf-8")
    report = run_json(project, "upgrade", "--tenants-from", str(listed), "--tenant", "t030")
    assert statuses(report) == {"t005": "upgraded", "t006": "upgraded", "t003": "noop", "t030": "upgraded"}
    done = {"t003", "t005", "t006", "t017", "t030"}
    untouched(fleet, set(fleet.tenants) - done)

    # status narrows the same way
    assert {r["tenant"] for r in run_json(project, "status", "--tenant", "t005")} == {"t005"}

    # an unknown tenant is a usage error, and nothing runs
    result = run(project, "upgrade", "--tenant", "t001", "--tenant", "nope", code=2)
    assert "unknown tenant: nope" in result.stderr, result.stderr
    listed.write_text("t002\nghost\n", encoding="utf-8")
    result = run(project, "upgrade", "--tenants-from", str(listed), code=2)
    assert "ghost" in result.stderr
    listed.write_text("# nobody\n\n", encoding="utf-8")
    run(project, "upgrade", "--tenants-from", str(listed), code=2)
    run(project, "upgrade", "--tenants-from", str(tmp_path / "missing.txt"), code=2)
    untouched(fleet, set(fleet.tenants) - done)


# ====================================================================== create: false / true


@pytest.mark.parametrize("kind", ["pg", "mysql"])
def test_missing_schema_without_create_fails_that_tenant_only(kind, fleets, make_project) -> None:
    fleet = fleets(kind, 4)
    missing = fleet.tenants[2]
    fleet.create_containers([t for t in fleet.tenants if t != missing])
    project = fleet_project(make_project, fleet)  # create: false is the default
    report = run_json(project, "upgrade", code=1)
    targets = by_tenant(report)
    assert statuses(report) == {t: ("failed" if t == missing else "upgraded") for t in fleet.tenants}
    error = targets[missing]["error"]
    assert f"shops/{missing}" in error and missing in error
    if kind == "pg":
        assert f"schema '{missing}' does not exist" in error, error
    else:
        assert "Unknown database" in error, error
    assert "create: true" in (targets[missing]["hint"] or ""), targets[missing]
    assert fleet.existing() == set(fleet.tenants) - {missing}, "create: false must not create it"
    assert_at(fleet, set(fleet.tenants) - {missing}, REV_C)


@pytest.mark.parametrize("kind", ["pg", "mysql"])
def test_create_true_creates_missing_schemas(kind, fleets, make_project) -> None:
    fleet = fleets(kind, 5)
    fleet.create_containers(fleet.tenants[:1])
    project = fleet_project(make_project, fleet, create=True)
    report = run_json(project, "upgrade")
    assert set(statuses(report).values()) == {"upgraded"}
    assert fleet.existing() == set(fleet.tenants)
    assert_at(fleet, fleet.tenants, REV_C)


# ====================================================================== --fail-fast


def _break_tenant(fleet: Fleet, tenant: str) -> None:
    """REV_A creates `items`; a tenant that already has one fails in REV_A."""
    fleet.create_containers([tenant])
    fleet.execute_in(tenant, "CREATE TABLE items (id INTEGER PRIMARY KEY)")


def test_fail_fast_serial_stops_at_the_first_failure(fleets, make_project) -> None:
    fleet = fleets("sqlite", 30)
    project = fleet_project(make_project, fleet)
    _break_tenant(fleet, "t005")
    report = run_json(project, "upgrade", "--fail-fast", code=1)
    got = statuses(report)
    expected = {t: "upgraded" for t in fleet.tenants[:5]} | {"t005": "failed"}
    expected |= {t: "not_run" for t in fleet.tenants[6:]}
    assert got == expected
    assert report["counts"] == {"upgraded": 5, "failed": 1, "not_run": 24}
    for t in fleet.tenants[6:]:
        assert "--fail-fast" in by_tenant(report)[t]["error"]
    assert_at(fleet, fleet.tenants[:5], REV_C)
    untouched(fleet, fleet.tenants[6:])

    # without it, one failure does not stop the others
    report = run_json(project, "upgrade", code=1)
    assert statuses(report) == {t: ("failed" if t == "t005" else ("noop" if t < "t005" else "upgraded"))
                                for t in fleet.tenants}


def test_fail_fast_parallel_stops_handing_out_targets(fleets, make_project) -> None:
    fleet = fleets("sqlite", 80)
    project = fleet_project(make_project, fleet)
    _break_tenant(fleet, "t001")
    report = run_json(project, "upgrade", "-p", "2", "--fail-fast", code=1)
    got = statuses(report)
    assert set(got) == set(fleet.tenants)
    assert got["t001"] == "failed"
    assert [t for t, s in got.items() if s == "failed"] == ["t001"]
    not_run = [t for t, s in got.items() if s == "not_run"]
    assert len(not_run) >= 60, report["counts"]
    assert set(got.values()) <= {"upgraded", "failed", "not_run"}
    untouched(fleet, not_run)
    assert_at(fleet, [t for t, s in got.items() if s == "upgraded"], REV_C)


# ====================================================================== depends_on across fleets


def test_fleet_depending_on_a_failing_database_is_skipped_whole(fleets, make_project, tmp_path) -> None:
    fleet = fleets("sqlite", 25)
    core = {"url": "sqlite:///core.db", "version_path": "versions/core"}
    project = fleet_project(make_project, fleet, extra={"core": core}, depends_on=["core"])
    write_core_lineage(project.root / "versions" / "core", failing=True)

    first = tmp_path / "first.json"
    result = run(project, "upgrade", "--all", "--report", str(first), code=1)
    report = load_report(first)
    targets = report["targets"]
    assert (targets[0]["target"], targets[0]["status"], targets[0]["failed_revision"]) == ("core", "failed", CORE_BAD)
    skipped = by_tenant(report, "shops")
    assert set(skipped) == set(fleet.tenants)
    for tenant, t in skipped.items():
        assert t["status"] == "skipped", t
        assert "skipped because its dependency core (failed) did not succeed" in t["error"], t
        assert (t["before"], t["after"]) == (None, None), t  # never read: unknown
    assert report["counts"] == {"failed": 1, "skipped": 25}
    assert "skipped" in result.stdout
    assert fleet.existing() == set(), "a skipped tenant is not even connected to"

    # the fix lands; --retry-failed runs core first, then every tenant
    (project.root / "versions" / "core" / f"{CORE_BAD}_core_broken.py").unlink()
    second = tmp_path / "second.json"
    run(project, "upgrade", "--retry-failed", str(first), "--report", str(second), "-p", "2")
    report = load_report(second)
    # core stopped after CORE_A (committed on its own), which is now its head
    assert report["targets"][0]["target"] == "core" and report["targets"][0]["status"] == "noop"
    assert statuses(report) == {None: "noop"} | {t: "upgraded" for t in fleet.tenants}
    assert_at(fleet, fleet.tenants, REV_C)


def test_plain_database_and_schema_fleet_may_share_a_postgresql_database(fleets, make_project) -> None:
    """The plain database's version table is in public, each tenant's in its own schema:
    no version table is shared, so the config is valid and both migrate."""
    fleet = fleets("pg", 3)
    core = {"url": fleet.url, "version_path": "versions/core"}
    project = fleet_project(make_project, fleet, extra={"core": core}, depends_on=["core"], create=True)
    write_core_lineage(project.root / "versions" / "core", failing=False)
    report = run_json(project, "upgrade", "--all")
    assert statuses(report) == {None: "upgraded"} | {t: "upgraded" for t in fleet.tenants}
    assert fetch(fleet.url, "SELECT version_num FROM public.alembic_version") == [(CORE_A,)]
    assert_at(fleet, fleet.tenants, REV_C)


# ====================================================================== status at scale


def test_status_summarises_hundreds_of_schemas(fleets, make_project) -> None:
    fleet = fleets("pg", 300)
    lagging = "t137"
    # Build the fleet's state directly: 299 tenants at head, one two revisions behind.
    statements = []
    for tenant in fleet.tenants:
        rev = REV_A if tenant == lagging else REV_C
        statements += [
            f'CREATE SCHEMA "{tenant}"',
            f'CREATE TABLE "{tenant}".alembic_version (version_num VARCHAR(32) PRIMARY KEY)',
            f"INSERT INTO \"{tenant}\".alembic_version VALUES ('{rev}')",
        ]
        if tenant == lagging:  # what REV_A left there
            statements.append(f'CREATE TABLE "{tenant}".items (id INTEGER PRIMARY KEY, code VARCHAR(40) NOT NULL)')
    run_sql(fleet.url, *statements)
    project = fleet_project(make_project, fleet)

    result = run(project, "status", "-n", "shops")
    out = result.stdout
    assert f"shops: 300 tenants, head {REV_C}" in out, out
    assert re.search(rf"{REV_C}\s*\S?\s+299\s*\S?\s+at head", out), out
    assert re.search(rf"{REV_A}\s*\S?\s+1\s*\S?\s+behind", out), out
    assert re.search(rf"not at head: {lagging}\b", out), out
    assert out.count("t0") + out.count("t1") + out.count("t2") < 10, "at-head tenants are counted, not listed"

    rows = run_json(project, "status", "-n", "shops")
    assert len(rows) == 300
    assert {r["tenant"] for r in rows} == set(fleet.tenants)
    for r in rows:
        assert r["database"] == "shops" and r["target"] == f"shops/{r['tenant']}"
        assert r["head"] == [REV_C], r
        if r["tenant"] == lagging:
            assert (r["after"], r["pending"]) == ([REV_A], 2), r
        else:
            assert (r["after"], r["pending"]) == ([REV_C], 0), r
        assert r["error"] is None

    # and upgrading brings the lagging one to head, touching nothing else
    report = run_json(project, "upgrade", "--tenant", lagging)
    assert statuses(report) == {lagging: "upgraded"}
    assert by_tenant(report)[lagging]["applied"] == ITEMS_REVS[1:]


# ====================================================================== the JSON report


def test_json_report_fields_per_target(fleets, make_project, tmp_path) -> None:
    fleet = fleets("pg", 3)
    secret = "pw-Fl33t-secret"
    fleet.url = with_password(fleet.url, secret)  # trust auth: any password is accepted
    project = fleet_project(make_project, fleet, create=True)
    run(project, "upgrade", REV_B)
    bad = fleet.tenants[1]
    fleet.execute_in(bad, "INSERT INTO items (id, code) VALUES (10, 'dup'), (11, 'dup')")

    report_path = tmp_path / "run.json"
    result = run(project, "upgrade", "--json", "--report", str(report_path), code=1)
    printed = json.loads(result.stdout)
    written = load_report(report_path)
    assert {k: v for k, v in printed.items() if k != "finished_at"} == {
        k: v for k, v in written.items() if k != "finished_at"
    }
    assert secret not in result.stdout + result.stderr + report_path.read_text()

    assert written["version"] == 2 and written["command"] == "upgrade"
    assert written["ok"] is False and written["interrupted"] is False
    assert written["counts"] == {"upgraded": 2, "failed": 1}
    masked = re.sub(r":[^:@/]+@", ":***@", fleet.url, count=1)
    assert "***" in masked
    for t in written["targets"]:
        for key in ("target", "database", "tenant", "url", "status", "before", "after", "applied", "duration",
                    "failed_revision", "error", "hint"):
            assert key in t, (key, t)
        assert t["database"] == "shops" and t["target"] == f"shops/{t['tenant']}"
        assert t["url"] == masked, t["url"]
        assert isinstance(t["duration"], (int, float)) and 0 <= t["duration"] < 60
        assert t["before"] == [REV_B]
    targets = by_tenant(written)
    failed = targets[bad]
    assert failed["status"] == "failed" and failed["after"] == [REV_B] and failed["applied"] == []
    assert failed["failed_revision"] == REV_C
    assert f"shops/{bad}" in failed["error"] and REV_C in failed["error"]
    for tenant in set(fleet.tenants) - {bad}:
        t = targets[tenant]
        assert (t["status"], t["after"], t["applied"], t["failed_revision"], t["error"]) == (
            "upgraded", [REV_C], [REV_C], None, None
        )


def test_offline_sql_for_a_schema_tenant_selects_its_schema_first(make_project, pg_url: str) -> None:
    """--sql cannot pin a connection's search_path: the script for each tenant sets it."""
    from conftest import REPO

    project = make_project({
        "sys_path": [str(REPO)],
        "databases": {"shops": {
            "url": pg_url, "version_path": "versions/catalog",
            "tenants": {"mode": "schema", "names": ["acme", "globex"]},
        }},
    })
    result = project.cli("upgrade", "-n", "shops", "--sql")
    assert result.exit_code == 0, result.output
    for tenant in ("acme", "globex"):
        header = f"-- orchestrate: shops/{tenant} ("
        script = result.stdout.split(header, 1)[1]
        assert script.split("\n", 1)[1].startswith(f'SET search_path TO "{tenant}";'), script[:200]
