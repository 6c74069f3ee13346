"""The dask backend against a real cluster: a `dask scheduler` and two `dask worker`
processes started here, each in an empty folder of its own (no project folder there),
on 127.0.0.1 and random ports, shared by the whole module and torn down at its end.

Fleets of SQLite files (database mode) and PostgreSQL schemas are upgraded through
`--backend dask --scheduler tcp://...` and compared with a serial run; a worker is killed
with SIGKILL mid-run; `max_per_server: 1` is watched on the server (pg_locks); a local
cluster starts when no address is given; ORCHESTRATE_DASK_SCHEDULER is honoured.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_URL, Project
from fleet_helpers import REV_C, Fleet, by_tenant, items_state_at, load_report, tenant_names, write_items_lineage
from fleet_helpers import write_revision as _write_revision
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

distributed = pytest.importorskip("distributed")

BIN = Path(sys.executable).parent
REV_D = "d4c0000000dd"  # the counted revision: imports the shipped models module, records each attempt


# ---------------------------------------------------------------------- the cluster


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen[bytes]] = []
        self.address = ""

    def _start(self, name: str, *args: str) -> None:
        folder = self.root / name
        folder.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ORCHESTRATE_CONFIG")}
        log = open(self.root / f"{name}.log", "wb")
        self.processes.append(subprocess.Popen(
            [str(BIN / "dask"), *args], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        ))

    def start(self) -> None:
        scheduler_file = self.root / "scheduler.json"
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(scheduler_file))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scheduler_file.exists(), (self.root / "scheduler.log").read_text()
        self.address = json.loads(scheduler_file.read_text())["address"]
        for index in (1, 2):
            self._start(f"worker{index}", "worker", self.address, "--nthreads", "1", "--nworkers", "1",
                        "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(self.root / f"w{index}tmp"))
        with self.client() as client:
            client.wait_for_workers(2, timeout=90)

    def client(self) -> Any:
        return distributed.Client(self.address, timeout=30, set_as_default=False)

    def worker_pids(self) -> set[int]:
        with self.client() as client:
            return set(client.run(os.getpid).values())

    def wait_for_workers(self, count: int) -> None:
        with self.client() as client:
            client.wait_for_workers(count, timeout=90)

    def stop(self) -> None:
        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


# ---------------------------------------------------------------------- projects


def counted_project(make_project: Any, fleet: Fleet, tmp_path: Path, slow_tenant: str = "", **extra: Any) -> Project:
    """The items lineage plus REV_D, which imports `fleetmodels` (a module of the project's
    own, shipped to the workers) and records each attempt (tenant, revision, pid) in
    counts.db, outside the migration's transaction; `slow_tenant` ("*": every tenant) then
    sleeps while a flag file exists."""
    project = make_project({"databases": {"shops": {"url": "sqlite:///placeholder.db"}}}, versions=False)
    counts = tmp_path / "counts.db"
    connection = sqlite3.connect(counts)
    connection.execute("CREATE TABLE IF NOT EXISTS runs (tenant TEXT, revision TEXT, pid INTEGER)")
    connection.commit()
    connection.close()
    (project.root / "fleetmodels.py").write_text(f'''"""Shipped to every worker with the project."""
import os
import sqlite3
import time

import sqlalchemy as sa

metadata = sa.MetaData()
COUNTS = {str(counts)!r}
SLOW_TENANT = {slow_tenant!r}
FLAG = {str(tmp_path / "slow.flag")!r}


def count(bind, revision):
    main = [row[2] for row in bind.exec_driver_sql("PRAGMA database_list") if row[1] == "main"][0]
    tenant = os.path.splitext(os.path.basename(main))[0]
    connection = sqlite3.connect(COUNTS, timeout=60)
    connection.execute("INSERT INTO runs VALUES (?, ?, ?)", (tenant, revision, os.getpid()))
    connection.commit()
    connection.close()
    while SLOW_TENANT in (tenant, "*") and os.path.exists(FLAG):
        time.sleep(0.1)
''', encoding="utf-8")
    folder = project.root / "versions" / "shops"
    write_items_lineage(folder)
    _write_revision(folder, REV_D, REV_C, "counted", '''    import fleetmodels

    op.create_table("counted", sa.Column("id", sa.Integer(), primary_key=True))
    fleetmodels.count(op.get_bind(), revision)''', '''    op.drop_table("counted")''')
    shops = fleet.database_entry("versions/shops")
    shops["metadata"] = "fleetmodels:metadata"
    # live runs only: the counted revision must run its Python on every tenant (no replayed SQL)
    project.write_config({"sys_path": ["."], "defaults": {"replay": False}, **extra, "databases": {"shops": shops}})
    return project


def cli(project: Project, *args: str, code: int = 0, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = project.cli(*args, "--json", env=env)
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def runs(tmp_path: Path) -> list[tuple[str, str, int]]:
    connection = sqlite3.connect(tmp_path / "counts.db")
    try:
        return [tuple(r) for r in connection.execute("SELECT tenant, revision, pid FROM runs")]  # type: ignore[misc]
    finally:
        connection.close()


def forget_runs(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "counts.db")
    try:
        connection.execute("DELETE FROM runs")
        connection.commit()
    finally:
        connection.close()


def summary(report: dict[str, Any]) -> dict[str | None, tuple[Any, ...]]:
    return {tenant: (t["status"], t["before"], t["after"], t["applied"], t["failed_revision"], t["error"])
            for tenant, t in by_tenant(report).items()}


def at_head(fleet: Fleet) -> None:
    tables, indexes = items_state_at(REV_C)
    tables["counted"] = ["id"]
    snapshot = fleet.snapshot()
    wrong = {t: s["version"] for t, s in snapshot.items()
             if s["version"] != [REV_D] or s["tables"] != tables or s["indexes"] != indexes}
    assert not wrong, f"{len(wrong)} tenants not at head: {dict(list(wrong.items())[:5])}"


def without_pids(snapshot: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t: {k: v for k, v in s.items() if k != "pids"} for t, s in snapshot.items()}


# ---------------------------------------------------------------------- tests


def test_sqlite_fleet_of_200_on_the_cluster_ends_as_a_serial_run(cluster, make_project, tmp_path) -> None:
    names = tenant_names(200)
    fleet = Fleet("sqlite", "sqlite:///tenants/{tenant}.db", names, tmp_path / "project" / "tenants")
    project = counted_project(make_project, fleet, tmp_path)

    serial = cli(project, "upgrade", "-p", "1")
    first = fleet.snapshot()
    at_head(fleet)
    fleet.drop_containers(names)
    forget_runs(tmp_path)

    workers = cluster.worker_pids()
    started = time.perf_counter()
    clustered = cli(project, "upgrade", "--backend", "dask", "--scheduler", cluster.address)
    elapsed = time.perf_counter() - started
    assert summary(clustered) == summary(serial)
    assert clustered["counts"] == {"upgraded": 200}
    second = fleet.snapshot()
    assert without_pids(second) == without_pids(first)

    # every tenant says which worker ran it, and that is the process its revisions ran in
    ran_by = {t["tenant"]: t["worker"] for t in clustered["targets"]}
    assert all(set(w) == {"host", "pid"} and w["host"] for w in ran_by.values())
    assert {w["pid"] for w in ran_by.values()} == workers, (workers, elapsed)
    assert all(second[t]["pids"] == [ran_by[t]["pid"]] for t in names)
    counted = runs(tmp_path)
    assert sorted((t, r) for t, r, _ in counted) == sorted((t, REV_D) for t in names), [c for c in counted if c[0] in ("t000", "t001")]  # each once
    assert all(pid == ran_by[t]["pid"] for t, _, pid in counted)


def _advisory_holders(database: str) -> int:
    engine = create_engine(PG_URL, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(
                "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = :db"), {"db": database}).scalar() or 0)
    finally:
        engine.dispose()


def test_pg_schema_fleet_with_max_per_server_1_never_migrates_two_at_once(cluster, make_project, pg_url, tmp_path) -> None:
    names = tenant_names(40)
    fleet = Fleet("pg", pg_url, names)
    project = make_project({"databases": {"shops": fleet.database_entry("versions/shops")}}, versions=False)
    write_items_lineage(project.root / "versions" / "shops")
    _write_revision(project.root / "versions" / "shops", REV_D, REV_C, "slow enough to overlap",
                    '''    op.execute("SELECT pg_sleep(0.05)")''')
    project.write_config({"defaults": {"max_per_server": 1},
                          "databases": {"shops": fleet.database_entry("versions/shops")}})
    fleet.create_containers(names)
    serial = cli(project, "upgrade", "-p", "1")
    first = fleet.snapshot()
    fleet.drop_containers(names)
    fleet.create_containers(names)

    database = make_url(pg_url).database or ""
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(_advisory_holders(database))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        clustered = cli(project, "upgrade", "--backend", "dask", "--scheduler", cluster.address)
    finally:
        done.set()
        watcher.join(timeout=10)
    assert summary(clustered) == summary(serial)
    assert without_pids(fleet.snapshot()) == without_pids(first)
    assert len({t["worker"]["pid"] for t in clustered["targets"]}) == 2  # both workers took tenants
    assert max(seen) == 1, f"{seen.count(2)} of {len(seen)} samples saw 2 sessions migrating at once"
    assert seen.count(1) >= 3, f"the watcher never saw a migration: {len(seen)} samples"


def test_a_worker_killed_mid_run_loses_only_its_target(cluster, make_project, tmp_path) -> None:
    names = tenant_names(12)
    slow = names[2]
    fleet = Fleet("sqlite", "sqlite:///tenants/{tenant}.db", names, tmp_path / "project" / "tenants")
    project = counted_project(make_project, fleet, tmp_path, slow_tenant=slow)
    (tmp_path / "slow.flag").write_text("1")
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATE_DASK_SCHEDULER"}
    run = subprocess.Popen(
        [str(BIN / "orchestrate"), "-c", str(project.config), "upgrade", "--backend", "dask",
         "--scheduler", cluster.address, "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 90
        victim = None
        while victim is None and time.monotonic() < deadline and run.poll() is None:
            victim = next((pid for tenant, _, pid in runs(tmp_path) if tenant == slow), None)
            time.sleep(0.05)
        assert victim is not None, f"the slow tenant never started: {run.communicate(timeout=60)[0].decode()[-3000:]}"
        os.kill(victim, signal.SIGKILL)  # the worker process running the slow tenant, mid-revision
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, output.decode()[-3000:]
    document = load_report(report)
    entries = by_tenant(document)
    lost = entries[slow]
    assert lost["status"] == "lost", lost
    assert "died" in lost["error"] and lost["after"] == [REV_C] and lost["failed_revision"] == REV_D, lost
    assert fleet.versions([slow]) == {slow: [REV_C]}  # what the report says is where it really is
    others = [t for t in names if t != slow]
    assert {t: entries[t]["status"] for t in others} == {t: "upgraded" for t in others}
    assert all(entries[t]["worker"]["pid"] for t in others)
    # the migration lock and the start mark: no revision ran twice, not even the lost one
    assert sorted((t, r) for t, r, _ in runs(tmp_path)) == sorted((t, REV_D) for t in names)

    # the nanny restarts the worker (the project is installed on it again); retry what was lost
    cluster.wait_for_workers(2)
    (tmp_path / "slow.flag").unlink()
    retried = cli(project, "upgrade", "--backend", "dask", "--scheduler", cluster.address,
                  "--retry-failed", str(report))
    assert [(t["tenant"], t["status"], t["applied"]) for t in retried["targets"]] == [(slow, "upgraded", [REV_D])]
    at_head(fleet)


def test_first_ctrl_c_lets_running_targets_finish_and_starts_none_of_the_queued(cluster, make_project, tmp_path) -> None:
    """Each worker runs one target and has one queued behind it (capacity: two per worker):
    after the first Ctrl-C the queued ones come back NOT_RUN without starting."""
    names = tenant_names(10)
    fleet = Fleet("sqlite", "sqlite:///tenants/{tenant}.db", names, tmp_path / "project" / "tenants")
    project = counted_project(make_project, fleet, tmp_path, slow_tenant="*")
    (tmp_path / "slow.flag").write_text("1")  # every tenant waits in REV_D while it exists
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATE_DASK_SCHEDULER"}
    run = subprocess.Popen(
        [str(BIN / "orchestrate"), "-c", str(project.config), "upgrade", "--backend", "dask",
         "--scheduler", cluster.address, "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while len(runs(tmp_path)) < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        running = {tenant for tenant, _, _ in runs(tmp_path)}
        assert len(running) == 2, f"not both workers busy: {run.communicate(timeout=60)[0].decode()[-3000:]}"
        run.send_signal(signal.SIGINT)
        # a lambda: pickled by value (the workers cannot import this module)
        stopped = lambda dask_worker: [p.stopped for p in dask_worker.plugins.values()
                                       if type(p).__name__ == "ProjectPlugin"]
        with cluster.client() as client:  # until both workers were told (no waiting on a clock)
            while not all(all(v) and v for v in client.run(stopped).values()):
                assert time.monotonic() < deadline and run.poll() is None, "the workers were never told to stop"
                time.sleep(0.05)
        (tmp_path / "slow.flag").unlink()
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, output.decode()[-3000:]
    entries = by_tenant(load_report(report))
    assert {t for t, e in entries.items() if e["status"] == "upgraded"} == running
    assert {t: entries[t]["status"] for t in names if t not in running} == {t: "not_run" for t in names
                                                                            if t not in running}
    queued = [t for t in names if "the run was stopped" in (entries[t]["error"] or "")]
    assert len(queued) == 2, {t: entries[t]["error"] for t in names}  # the one queued behind each running target
    assert sorted(t for t, _, _ in runs(tmp_path)) == sorted(running)  # no queued target started
    assert fleet.versions(names) == {t: [REV_D] if t in running else None for t in names}


def test_env_var_names_the_scheduler_and_the_config_may_choose_dask(cluster, shop, tmp_path) -> None:
    workers = cluster.worker_pids()
    env = {"ORCHESTRATE_DASK_SCHEDULER": cluster.address}
    document = cli(shop, "upgrade", "--all", "--backend", "dask", env=env)
    assert document["counts"] == {"upgraded": 3}
    assert {t["worker"]["pid"] for t in document["targets"]} <= workers

    config = shop.config.read_text(encoding="utf-8")
    shop.config.write_text("execution:\n  backend: dask\n  scheduler: ${ADDRESS}\n" + config, encoding="utf-8")
    document = cli(shop, "downgrade", "--all", "base", env={"ADDRESS": cluster.address})
    assert document["counts"] == {"downgraded": 3}
    assert {t["worker"]["pid"] for t in document["targets"]} <= workers


def test_a_local_cluster_when_no_address_is_given(shop, monkeypatch) -> None:
    monkeypatch.delenv("ORCHESTRATE_DASK_SCHEDULER", raising=False)
    document = cli(shop, "upgrade", "--all", "--backend", "dask")
    assert document["counts"] == {"upgraded": 3}
    pids = {t["worker"]["pid"] for t in document["targets"]}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    # the local cluster is gone with the run
    assert not any(Path(f"/proc/{pid}").exists() and "dask" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                   for pid in pids)


def test_an_unreachable_scheduler_is_an_error_naming_it(shop) -> None:
    result = shop.cli("upgrade", "--all", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9",
                      env={"ORCHESTRATE_DASK_CONNECT_TIMEOUT": "2"})
    assert result.exit_code != 0
    assert "tcp://127.0.0.1:9" in result.stderr


def test_x_arguments_reach_env_py_on_the_workers(cluster, make_project, tmp_path) -> None:
    """`orchestrate -x KEY=VALUE ... --backend dask`: a revision on a worker reads the same
    `context.get_x_argument()` as it would in a local run."""
    project = make_project({"databases": {"app": {"url": "sqlite:///var/{tenant}.db",
                                                  "tenants": {"mode": "database", "names": ["xa", "xb", "xc"]}}}},
                           versions=False, init=False)
    (project.root / "var").mkdir()
    folder = project.root / "versions" / "app"
    folder.mkdir(parents=True)
    (folder / "x1_marks.py").write_text(
        '"""marks"""\nfrom alembic import context, op\nimport sqlalchemy as sa\n\n'
        'revision = "x1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    op.create_table("marks", sa.Column("mark", sa.String(40)))\n'
        '    op.execute(sa.text("INSERT INTO marks (mark) VALUES (:m)").bindparams(\n'
        '        m=context.get_x_argument(as_dictionary=True).get("mark", "none")))\n\n\n'
        "def downgrade() -> None:\n    pass\n",
        encoding="utf-8",
    )
    assert project.cli("init").exit_code == 0
    document = cli(project, "-x", "mark=from-the-client", "upgrade", "--all", "--backend", "dask",
                   "--scheduler", cluster.address)
    assert document["counts"] == {"upgraded": 3}
    assert {t["worker"]["pid"] for t in document["targets"]} <= cluster.worker_pids()
    for tenant in ("xa", "xb", "xc"):
        marks = sqlite3.connect(project.root / "var" / f"{tenant}.db").execute("SELECT mark FROM marks").fetchall()
        assert marks == [("from-the-client",)], tenant
