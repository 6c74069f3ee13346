"""Never hang, never corrupt: lock timeouts that name the blocker, migration locks between
runs, kill -9 and signals mid-fleet, atomic revisions, passwords kept out of every message.

Everything here runs against real servers and real processes: a blocker is a real second
session holding a real lock, a concurrent run is a second `python -m orchestrator.cli`,
a crash is a real SIGKILL. The tests then look inside the databases (version tables,
rows written by data migrations, pg_locks, open sessions) to assert what happened.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_URL, Project, sqlite_url
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool
from test_commands import (
    CATALOG_HEAD,
    NAMES,
    ORDERS_HEAD,
    SEED_CATEGORIES,
    USERS_HEAD,
    Stack,
    build_stack,
    column_names,
    execute,
    open_sessions,
    query,
    sync_url,
    table_names,
    version_rows,
    write_revision,
)

LOCKED_REV = "aaaa0000lock"
SECRET = "s3cr3t-Pa55"

# A log of what the timing-sensitive tests measured (read by people, never asserted on
# beyond generous bounds): ORCH_TEST_TIMINGS=path appends one line per measurement.
_TIMINGS = os.environ.get("ORCH_TEST_TIMINGS")


def note_timing(what: str, seconds: float) -> None:
    if _TIMINGS:
        with open(_TIMINGS, "a", encoding="utf-8") as out:
            out.write(f"{what}: {seconds:.2f}s\n")


# ---------------------------------------------------------------------- helpers


def with_defaults(**defaults: Any):
    def edit(config: dict[str, Any]) -> None:
        config.setdefault("defaults", {}).update(defaults)

    return edit


def cli_json(project: Project, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the CLI in-process with --json: exit code, the report, and stderr."""
    result = project.cli(*args, "--json")
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {result.exit_code}):\n{result.stdout}\n{result.stderr}") from None
    return result.exit_code, data, result.stderr


def by_target(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in report["targets"]}


@contextmanager
def session(url: str) -> Iterator[Connection]:
    """A second, independent session on the database of ``url`` (closed afterwards)."""
    engine = create_engine(sync_url(url), poolclass=NullPool)
    connection = engine.connect()
    try:
        yield connection
    finally:
        try:
            connection.rollback()
            connection.close()
        finally:
            engine.dispose()


def backend_id(connection: Connection) -> int:
    if connection.dialect.name == "postgresql":
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar())
    return int(connection.execute(text("SELECT CONNECTION_ID()")).scalar())


def assert_sessions_gone(urls: list[str], keep: set[int] = frozenset(), wait: float = 5.0) -> None:
    """No session left on these databases but ``keep`` (killed clients may take a moment)."""
    deadline = time.monotonic() + wait
    while True:
        left = {
            make_url(url).render_as_string(hide_password=True): [
                s for s in open_sessions(url) if int(s.get("pid") or s.get("id")) not in keep
            ]
            for url in urls
        }
        left = {u: s for u, s in left.items() if s}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"sessions left open: {left}"


def pg_advisory_locks(url: str) -> list[dict[str, Any]]:
    """Advisory locks held in the database of ``url`` (pg_locks)."""
    engine = create_engine(PG_URL, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT l.pid, l.objid, l.granted FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND d.datname = :db"
                ),
                {"db": make_url(url).database},
            ).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def sqlite_path(url: str) -> str:
    return make_url(url).database or ""


def assert_sqlite_unlocked(url: str) -> None:
    """The file takes a write lock at once: nothing of ours still holds it."""
    connection = sqlite3.connect(sqlite_path(url), timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def spawn_cli(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m orchestrator.cli -c <project> ARGS` as a real process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "-c", str(project.config), *args],
        cwd=project.root,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run ended (exit {process.returncode}) before {path.name}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


# A revision that records that it ran (a row in `runs`), then, when asked through the
# environment, writes a marker file and sleeps: the window in which the tests kill,
# signal or race the run. `runs` is created by the revision before it.
RUNS_REV, SLOW_REV = "bbbb0000runs", "cccc0000slow"


def add_slow_revisions(folder: Path, down: str, server_sleep: bool = False) -> None:
    write_revision(
        folder, RUNS_REV, down,
        '''    op.create_table("runs", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("note", sa.String(20)))
    op.execute("INSERT INTO runs (note) VALUES ('runs')")''',
        message="create runs",
    )
    sleep = (
        '''        op.execute(sa.text("SELECT pg_sleep(:s)").bindparams(s=seconds))'''
        if server_sleep
        else '''        time.sleep(seconds)'''
    )
    write_revision(
        folder, SLOW_REV, RUNS_REV,
        f'''    import os, time
    from pathlib import Path
    op.execute("INSERT INTO runs (note) VALUES ('slow')")
    seconds = float(os.environ.get("ORCH_TEST_SLEEP", "0"))
    marker = os.environ.get("ORCH_TEST_MARKER")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    if seconds:
{sleep}''',
        message="slow data migration",
    )


def runs_rows(url: str) -> list[str]:
    return sorted(note for (note,) in query(url, "SELECT note FROM runs"))


# ====================================================================== lock_timeout


BLOCKERS = {
    # what the second session holds, and what the new revision needs
    "ddl": (
        "SELECT * FROM orders",
        '''    op.add_column("orders", sa.Column("note", sa.String(50), nullable=True))''',
    ),
    "row": (
        "SELECT * FROM orders WHERE id = 1 FOR UPDATE",
        '''    op.execute("UPDATE orders SET status = 'locked' WHERE id = 1")''',
    ),
}


@pytest.mark.parametrize("dialect,kind", [
    ("postgresql", "ddl"),
    ("postgresql", "row"),
    ("mysql", "ddl"),
    ("mysql", "row"),
    ("psycopg_async", "ddl"),  # the watch then opens a sync connection of its own
])
def test_lock_timeout_fails_fast_and_names_the_blocker(make_project, tmp_path, request, dialect, kind) -> None:
    overrides = {}
    if dialect == "psycopg_async":
        overrides["orders"] = request.getfixturevalue("pg_url").replace("+psycopg://", "+psycopg_async://", 1)
    s = build_stack(
        make_project, tmp_path, request,
        {"users": "sqlite", "catalog": "sqlite", "orders": "postgresql" if dialect == "psycopg_async" else dialect},
        overrides=overrides, edit_config=with_defaults(lock_timeout="1s"),
    )
    s.run("upgrade", "-n", "orders")
    url = s.urls["orders"]
    execute(url, "INSERT INTO orders (id, user_id, status, total_cents) VALUES (1, 7, 'new', 100)")
    held, body = BLOCKERS[kind]
    write_revision(s.root / "versions" / "orders", LOCKED_REV, ORDERS_HEAD, body, message="needs a lock")

    with session(url) as blocker:
        blocker_id = backend_id(blocker)
        blocker.execute(text(held)).all()  # and stays idle in its transaction
        started = time.monotonic()
        code, report, _ = cli_json(s.project, "upgrade", "-n", "orders")
        elapsed = time.monotonic() - started
        note_timing(f"lock_timeout=1s {dialect}/{kind}: the upgrade failed after", elapsed)

        (orders,) = report["targets"]
        assert code == 1 and orders["status"] == "failed", orders
        assert orders["failed_revision"] == LOCKED_REV
        error = orders["error"]
        assert f"revision {LOCKED_REV} (needs a lock) waited longer than lock_timeout (1s)" in error
        assert "blocked by:" in error, error
        blocked_by = error.split("blocked by:", 1)[1]
        if dialect != "mysql":
            assert f"pid {blocker_id}" in blocked_by
            assert "idle in transaction" in blocked_by
            assert "transaction open for" in blocked_by
            assert f"last query: {held}" in blocked_by
            # which lock the revision waited for
            assert ("AccessExclusiveLock on orders" if kind == "ddl" else "waits for a row it locked") in blocked_by
        else:
            assert f"connection {blocker_id} (" in blocked_by
            assert "transaction open for" in blocked_by
            assert ("row lock held by" if kind == "row" else "table metadata lock") in blocked_by
        assert orders["after"] == [ORDERS_HEAD] and orders["applied"] == []
        assert orders["lock_timeout"] is True
        assert 0.9 <= elapsed < 6.0, f"lock_timeout is 1s but the upgrade took {elapsed:.1f}s"

        # the target stays at its previous revision, untouched
        assert version_rows(url, "orders") == [ORDERS_HEAD]
        assert "note" not in column_names(url, "orders")
        assert_sessions_gone([url], keep={blocker_id})

    assert query(url, "SELECT status FROM orders WHERE id = 1") == [("new",)]
    s.run("upgrade", "-n", "orders")  # the blocker is gone: it goes through
    assert version_rows(url, "orders") == [LOCKED_REV]
    if kind == "ddl":
        assert "note" in column_names(url, "orders")
    else:
        assert query(url, "SELECT status FROM orders WHERE id = 1") == [("locked",)]


_SQLITE_BLOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    connection = sqlite3.connect(sys.argv[1], isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO orders (id, user_id, status, total_cents) VALUES (2, 1, 'x', 1)")
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    connection.execute("ROLLBACK")
    """
)


@pytest.mark.parametrize("driver", ["sqlite", "aiosqlite"])
def test_sqlite_busy_database_fails_within_lock_timeout(make_project, tmp_path, request, driver) -> None:
    overrides = {}
    if driver == "aiosqlite":
        (tmp_path / "dbs").mkdir(exist_ok=True)
        overrides["orders"] = sqlite_url(tmp_path / "dbs" / "orders.db").replace("sqlite://", "sqlite+aiosqlite://", 1)
    s = build_stack(
        make_project, tmp_path, request, {n: "sqlite" for n in NAMES}, overrides=overrides,
        edit_config=with_defaults(lock_timeout="1s"),
    )
    s.run("upgrade", "-n", "orders")
    url = s.urls["orders"]
    write_revision(s.root / "versions" / "orders", LOCKED_REV, ORDERS_HEAD, BLOCKERS["ddl"][1], message="needs a lock")

    blocker = subprocess.Popen(
        [sys.executable, "-c", _SQLITE_BLOCKER, sqlite_path(url)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert blocker.stdout is not None and blocker.stdout.readline().strip() == "locked"
        started = time.monotonic()
        code, report, _ = cli_json(s.project, "upgrade", "-n", "orders")
        elapsed = time.monotonic() - started
        note_timing(f"lock_timeout=1s {driver}: the upgrade failed after", elapsed)
    finally:
        assert blocker.stdin is not None
        blocker.stdin.close()
        blocker.wait(10)

    (orders,) = report["targets"]
    assert code == 1 and orders["failed_revision"] == LOCKED_REV, orders
    assert "database is locked" in orders["error"]
    assert f"another connection holds a write lock on {sqlite_path(url)}" in orders["error"]
    assert f"pid {blocker.pid} (python" in orders["error"]  # from /proc/locks
    assert orders["lock_timeout"] is True
    assert 0.9 <= elapsed < 6.0, f"busy_timeout is 1s but the upgrade took {elapsed:.1f}s"
    assert version_rows(url, "orders") == [ORDERS_HEAD]
    assert "note" not in column_names(url, "orders")
    assert_sqlite_unlocked(url)

    s.run("upgrade", "-n", "orders")
    assert version_rows(url, "orders") == [LOCKED_REV]


def test_lock_retries_wait_for_the_blocker_to_go(make_project, tmp_path, request) -> None:
    """lock_retries: 1 -- the first attempt times out, the blocker commits during the
    pause, the second attempt applies the revision."""
    s = build_stack(
        make_project, tmp_path, request, {"users": "sqlite", "catalog": "sqlite", "orders": "postgresql"},
        edit_config=with_defaults(lock_timeout="1s", lock_retries=1),
    )
    s.run("upgrade", "-n", "orders")
    url = s.urls["orders"]
    write_revision(s.root / "versions" / "orders", LOCKED_REV, ORDERS_HEAD, BLOCKERS["ddl"][1], message="needs a lock")
    with session(url) as blocker, session(url) as watcher:
        blocker.execute(text("SELECT * FROM orders")).all()
        waited = threading.Event()

        def release_after_the_first_timeout() -> None:
            waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'orders'::regclass"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = watcher.execute(text(waiting)).scalar()
                watcher.rollback()
                if now:
                    waited.set()
                elif waited.is_set():  # the first attempt gave up: let the retry through
                    break
                time.sleep(0.05)
            blocker.rollback()

        releaser = threading.Thread(target=release_after_the_first_timeout)
        releaser.start()
        try:
            code, report, _ = cli_json(s.project, "upgrade", "-n", "orders")
        finally:
            releaser.join()
    assert waited.is_set()
    (orders,) = report["targets"]
    assert code == 0 and orders["status"] == "upgraded", orders
    assert orders["attempts"] == 2
    assert orders["applied"] == [LOCKED_REV]
    assert version_rows(url, "orders") == [LOCKED_REV]


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_statement_timeout_stops_a_long_statement(make_project, tmp_path, request, dialect) -> None:
    s = build_stack(
        make_project, tmp_path, request, {"users": "sqlite", "catalog": "sqlite", "orders": dialect},
        edit_config=with_defaults(statement_timeout="500ms"),
    )
    s.run("upgrade", "-n", "orders")
    sleep = "SELECT pg_sleep(5)" if dialect == "postgresql" else "SELECT SLEEP(5)"
    write_revision(s.root / "versions" / "orders", LOCKED_REV, ORDERS_HEAD, f'''    op.execute("{sleep}")''', message="slow")
    started = time.monotonic()
    code, report, _ = cli_json(s.project, "upgrade", "-n", "orders")
    elapsed = time.monotonic() - started
    note_timing(f"statement_timeout=500ms {dialect}: the upgrade failed after", elapsed)
    (orders,) = report["targets"]
    assert code == 1 and orders["failed_revision"] == LOCKED_REV, orders
    assert "statement timeout" in orders["error"] or "max_statement_time" in orders["error"], orders["error"]
    assert elapsed < 4.0
    assert version_rows(s.urls["orders"], "orders") == [ORDERS_HEAD]


# ====================================================================== runs against runs


def _impatient_copy(project: Project) -> Project:
    """The same project (same databases, same locks) with lock_wait 0.5s, for a run that
    must give up at once on a target another run holds."""
    import yaml

    data = yaml.safe_load(project.config.read_text())
    data.setdefault("defaults", {})["lock_wait"] = "500ms"
    other = Project(project.root.parent / "impatient")  # beside it: the same env.py and revisions
    other.root.mkdir()
    import shutil

    shutil.copytree(project.root / "envs", other.root / "envs")
    shutil.copytree(project.root / "versions", other.root / "versions")
    for db in data["databases"].values():
        url = db.get("url", "")
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            db["url"] = "sqlite:///" + str(project.root / url.removeprefix("sqlite:///"))
    other.write_config(data)
    return other


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_kill_9_mid_fleet_then_rerun(make_project, tmp_path, request, dialect) -> None:
    """A run killed in the middle of a revision (SIGKILL: no clean-up of ours runs) leaves
    no lock behind: a run started meanwhile is told who holds the target; a rerun
    completes and every revision, data migrations included, is applied exactly once."""
    layout = {"users": "sqlite", "catalog": dialect, "orders": "sqlite" if dialect != "sqlite" else "postgresql"}
    s = build_stack(make_project, tmp_path, request, layout)
    add_slow_revisions(s.root / "versions" / "catalog", CATALOG_HEAD, server_sleep=dialect == "postgresql")
    url = s.urls["catalog"]
    marker = tmp_path / "sleeping"

    run = spawn_cli(s.project, "upgrade", "--all", env={"ORCH_TEST_SLEEP": "60", "ORCH_TEST_MARKER": str(marker)})
    try:
        wait_for(marker, run)
        # a second run gives up on the busy target and says who holds it
        code, report, _ = cli_json(_impatient_copy(s.project), "upgrade", "-n", "catalog")
        (catalog,) = report["targets"]
        assert code == 1 and catalog["status"] == "failed"
        assert "another run is migrating catalog" in catalog["error"], catalog["error"]
        holder = catalog["error"].split("held by", 1)[1]
        if dialect == "postgresql":
            assert f"orchestrate pid {run.pid} on" in holder, holder
        elif dialect == "sqlite":
            assert f"pid {run.pid} on" in holder and "since" in holder, holder
        else:
            assert "connection " in holder and "root@" in holder, holder
    finally:
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
    assert run.returncode == -signal.SIGKILL

    # mid-fleet: users done, catalog's slow revision not recorded, orders not started
    assert version_rows(s.urls["users"], "users") == [USERS_HEAD]
    assert version_rows(url, "catalog") == [RUNS_REV]
    assert version_rows(s.urls["orders"], "orders") is None
    if dialect == "postgresql":
        # pg_sleep was running server-side: client_connection_check_interval ends it
        assert_sessions_gone([url], wait=5.0)
        assert pg_advisory_locks(url) == []
    elif dialect == "mysql":
        assert_sessions_gone([url], wait=5.0)
    else:
        assert_sqlite_unlocked(url)

    started = time.monotonic()
    code, report, _ = cli_json(s.project, "upgrade", "--all")
    note_timing(f"rerun after kill -9 ({dialect})", time.monotonic() - started)
    targets = by_target(report)
    assert code == 0, report
    assert targets["users"]["status"] == "noop"
    assert targets["catalog"]["applied"] == [SLOW_REV]
    assert targets["orders"]["status"] == "upgraded"
    assert version_rows(url, "catalog") == [SLOW_REV]
    assert runs_rows(url) == ["runs", "slow"]  # the killed run's row was rolled back
    assert sorted(n for (n,) in query(url, "SELECT name FROM categories")) == sorted(SEED_CATEGORIES)
    if dialect == "postgresql":
        assert pg_advisory_locks(url) == []
    if dialect == "sqlite":
        assert_sqlite_unlocked(url)
    assert_sessions_gone([u for u in s.urls.values() if not u.startswith("sqlite")])


def test_two_runs_at_once_apply_each_revision_exactly_once(make_project, tmp_path, request) -> None:
    """Two `orchestrate upgrade --all` processes started together on the same three
    databases (SQLite, PostgreSQL, MariaDB): both succeed, each revision is applied by
    exactly one of them, and the other finds it up to date."""
    s = build_stack(make_project, tmp_path, request, {"users": "sqlite", "catalog": "postgresql", "orders": "mysql"})
    heads = {"users": USERS_HEAD, "catalog": CATALOG_HEAD, "orders": ORDERS_HEAD}
    for name in NAMES:
        add_slow_revisions(s.root / "versions" / name, heads[name])
    env = {"ORCH_TEST_SLEEP": "0.7"}
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    runs = [spawn_cli(s.project, "upgrade", "--all", "--report", str(path), env=env) for path in reports]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, f"{out}\n{err}"

    a, b = (by_target(json.loads(path.read_text())) for path in reports)
    for name in NAMES:
        statuses = sorted([a[name]["status"], b[name]["status"]])
        assert statuses == ["noop", "upgraded"], (name, statuses)
        applied = a[name]["applied"] + b[name]["applied"]
        assert len(applied) == len(set(applied)) == {"users": 4, "catalog": 4, "orders": 6}[name]
        url = s.urls[name]
        assert version_rows(url, name) == [SLOW_REV]
        assert runs_rows(url) == ["runs", "slow"]
    assert sorted(n for (n,) in query(s.urls["catalog"], "SELECT name FROM categories")) == sorted(SEED_CATEGORIES)
    assert_sessions_gone([s.urls["catalog"], s.urls["orders"]])
    assert pg_advisory_locks(s.urls["catalog"]) == []
    assert_sqlite_unlocked(s.urls["users"])


# ====================================================================== signals


def _signal_stack(make_project, tmp_path, request) -> Stack:
    s = build_stack(make_project, tmp_path, request, {"users": "sqlite", "catalog": "postgresql", "orders": "mysql"})
    add_slow_revisions(s.root / "versions" / "catalog", CATALOG_HEAD, server_sleep=True)
    return s


def _assert_nothing_left(s: Stack) -> None:
    assert_sessions_gone([s.urls["catalog"], s.urls["orders"]])
    assert pg_advisory_locks(s.urls["catalog"]) == []
    assert_sqlite_unlocked(s.urls["users"])


def test_sigterm_lets_the_running_target_finish_and_stops(make_project, tmp_path, request) -> None:
    s = _signal_stack(make_project, tmp_path, request)
    marker, report_path = tmp_path / "sleeping", tmp_path / "report.json"
    run = spawn_cli(
        s.project, "upgrade", "--all", "--report", str(report_path),
        env={"ORCH_TEST_SLEEP": "1.5", "ORCH_TEST_MARKER": str(marker)},
    )
    wait_for(marker, run)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, f"{out}\n{err}"

    report = json.loads(report_path.read_text())
    targets = by_target(report)
    assert report["interrupted"] is True
    assert targets["users"]["status"] == "upgraded"
    assert targets["catalog"]["status"] == "upgraded"  # the revision in progress completed
    assert targets["catalog"]["after"] == [SLOW_REV]
    assert targets["orders"]["status"] == "not_run"
    assert version_rows(s.urls["catalog"], "catalog") == [SLOW_REV]
    assert version_rows(s.urls["orders"], "orders") is None
    _assert_nothing_left(s)

    code, report, _ = cli_json(s.project, "upgrade", "--all")
    assert code == 0 and [t["status"] for t in report["targets"]] == ["noop", "noop", "upgraded"]
    assert runs_rows(s.urls["catalog"]) == ["runs", "slow"]


def test_second_ctrl_c_aborts_the_revision_and_releases_everything(make_project, tmp_path, request) -> None:
    """The first Ctrl-C asks the run to stop after the running target; the second aborts
    it in the middle of a server-side statement: the revision is rolled back, the
    connections and the migration lock are released, the report says so."""
    s = _signal_stack(make_project, tmp_path, request)
    marker, report_path = tmp_path / "sleeping", tmp_path / "report.json"
    run = spawn_cli(
        s.project, "upgrade", "--all", "--report", str(report_path),
        env={"ORCH_TEST_SLEEP": "60", "ORCH_TEST_MARKER": str(marker)},
    )
    wait_for(marker, run)
    run.send_signal(signal.SIGINT)
    time.sleep(0.3)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 130, f"{out}\n{err}"

    targets = by_target(json.loads(report_path.read_text()))
    assert targets["users"]["status"] == "upgraded"
    assert targets["catalog"]["status"] == "failed" and "aborted" in targets["catalog"]["error"]
    assert targets["orders"]["status"] == "not_run"
    catalog = s.urls["catalog"]
    assert version_rows(catalog, "catalog") == [RUNS_REV]
    assert runs_rows(catalog) == ["runs"]  # the aborted revision's row was rolled back
    _assert_nothing_left(s)

    code, _, _ = cli_json(s.project, "upgrade", "--all")
    assert code == 0
    assert runs_rows(catalog) == ["runs", "slow"]


# ====================================================================== atomic revisions


HALFWAY_REV = "dddd0000half"
HALFWAY_OK_REV = "dddd0000good"


@pytest.mark.parametrize("dialect", ["sqlite", "aiosqlite", "postgresql", "mysql"])
def test_revision_failing_halfway(make_project, tmp_path, request, dialect) -> None:
    """A revision that changes data and schema and then fails. Transactional servers
    (SQLite through batch mode too) keep nothing of it; MariaDB keeps the DDL that ran
    before the failure, says so, and names the statement that failed. The version table
    names the last revision that completed, everywhere."""
    base = "sqlite" if dialect == "aiosqlite" else dialect
    overrides = {}
    if dialect == "aiosqlite":
        (tmp_path / "dbs").mkdir(exist_ok=True)
        overrides["orders"] = sqlite_url(tmp_path / "dbs" / "orders.db").replace("sqlite://", "sqlite+aiosqlite://", 1)
    s = build_stack(
        make_project, tmp_path, request, {"users": "sqlite", "catalog": "sqlite", "orders": base}, overrides=overrides
    )
    url = s.urls["orders"]
    s.run("upgrade", "-n", "orders")
    execute(url, "INSERT INTO orders (id, user_id, status, total_cents) VALUES (1, 7, 'new', 100)")
    folder = s.root / "versions" / "orders"
    # a good batch revision (SQLite rebuilds the table inside the transaction), then a bad one
    write_revision(
        folder, HALFWAY_OK_REV, ORDERS_HEAD,
        '''    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("note", sa.String(50), nullable=True))
    op.execute("UPDATE orders SET note = 'kept'")''',
        message="add note",
    )
    write_revision(
        folder, HALFWAY_REV, HALFWAY_OK_REV,
        '''    op.execute("UPDATE orders SET status = 'changed', note = 'changed'")
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("coupon", sa.String(20), nullable=True))
        batch.drop_column("note")
    op.create_table("refunds", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("INSERT INTO no_such_table_xyz (a) VALUES (1)")''',
        message="half way",
    )
    code, report, _ = cli_json(s.project, "upgrade", "-n", "orders")
    (orders,) = report["targets"]
    assert code == 1 and orders["failed_revision"] == HALFWAY_REV, orders
    assert orders["applied"] == [HALFWAY_OK_REV] and orders["after"] == [HALFWAY_OK_REV]
    assert version_rows(url, "orders") == [HALFWAY_OK_REV]
    assert "statement: INSERT INTO no_such_table_xyz" in orders["error"]
    columns = column_names(url, "orders")
    tables = table_names(url)
    assert not any(t.startswith("_alembic_tmp") for t in tables), tables
    if dialect == "mysql":
        assert "may be partly applied" in orders["error"]
        # each DDL statement committed at once, and the UPDATE before it with it
        assert "refunds" in tables and "coupon" in columns and "note" not in columns
        assert query(url, "SELECT status FROM orders WHERE id = 1") == [("changed",)]
    else:
        assert "rolled back; the version table is at " + HALFWAY_OK_REV in orders["error"]
        assert "refunds" not in tables
        assert "coupon" not in columns and "note" in columns
        assert query(url, "SELECT status, note FROM orders WHERE id = 1") == [("new", "kept")]
    if base == "sqlite":
        assert_sqlite_unlocked(url)
    else:
        assert_sessions_gone([url])


# ====================================================================== passwords


@pytest.fixture
def mysql_password_url(request) -> Iterator[str]:
    """The test's MariaDB database through a user of its own that has a password."""
    url = make_url(request.getfixturevalue("mysql_url"))
    user = f"orch_u_{os.urandom(4).hex()}"
    admin = create_engine(url, poolclass=NullPool)
    with admin.begin() as connection:
        for host in ("%", "localhost"):
            connection.execute(text(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{SECRET}'"))
            connection.execute(text(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'{host}'"))
    try:
        yield url.set(username=user, password=SECRET).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            for host in ("%", "localhost"):
                connection.execute(text(f"DROP USER IF EXISTS '{user}'@'{host}'"))
        admin.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_passwords_never_shown_on_any_error_path(make_project, tmp_path, request, caplog, dialect) -> None:
    """The orders URL carries a password (MariaDB: a user that needs it; PostgreSQL: trust
    authentication accepts it). Every way a run can fail or report is driven through, and
    no output, report, log record or exception text holds the password."""
    import logging

    from orchestrator.config import load_project
    from orchestrator.dialects import PostgreSQL, lock_name
    from orchestrator.targets import make_target

    if dialect == "postgresql":
        url = make_url(request.getfixturevalue("pg_url")).set(password=SECRET).render_as_string(hide_password=False)
    else:
        url = request.getfixturevalue("mysql_password_url")
    s = build_stack(
        make_project, tmp_path, request, {"users": "sqlite", "catalog": "sqlite", "orders": dialect},
        overrides={"orders": url}, edit_config=with_defaults(lock_timeout="1s", lock_wait="500ms"),
    )
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    masked = make_url(url).render_as_string(hide_password=True)
    folder = s.root / "versions" / "orders"

    def cli(*args: str, code: int | None = 1) -> str:
        for variant in (args, (*args, "--json"), ("--debug", *args)):
            result = s.project.cli(*variant)
            seen.extend([result.stdout, result.stderr])
            if code is not None:
                assert result.exit_code == code, (variant, result.stdout, result.stderr)
        report = tmp_path / "report.json"
        s.project.cli(*args, "--report", str(report))
        seen.append(report.read_text())
        return seen[-2]

    s.run("upgrade", "-n", "orders", code=0)
    bodies = {
        # the URL inside a Python exception
        "ffff0000exc1": '''    url = op.get_bind().engine.url.render_as_string(hide_password=False)
    raise RuntimeError(f"cannot reach {url}")''',
        # the URL inside the statement that failed (shown as `statement:`)
        "ffff0000sql1": '''    url = op.get_bind().engine.url.render_as_string(hide_password=False)
    op.execute(sa.text(f"SELECT * FROM no_such_table_xyz WHERE note = '{url}'"))''',
        # the password alone, in a driver error about a value
        "ffff0000val1": f'''    op.execute("SELECT * FROM no_such_table_xyz WHERE note = '{SECRET}'")''',
    }
    for rev, body in bodies.items():
        path = write_revision(folder, rev, ORDERS_HEAD, body)
        cli("upgrade", "-n", "orders")
        path.unlink()
    assert any("cannot reach " + masked in out for out in seen), [l for o in seen for l in o.splitlines() if "cannot reach" in l][:3]

    # lock timeout, with a blocker whose query text holds the password
    write_revision(folder, LOCKED_REV, ORDERS_HEAD, BLOCKERS["ddl"][1], message="needs a lock")
    with session(url) as blocker:
        blocker.execute(text(f"SELECT * FROM orders WHERE status <> '{SECRET}'")).all()
        cli("upgrade", "-n", "orders")
    assert any("blocked by:" in out for out in seen), seen[-3]

    # another run holds the migration lock; its holder's name holds the password
    project = load_project(s.project.config)
    target = make_target(project.databases["orders"])
    with session(url) as holder:
        if dialect == "postgresql":
            holder.execute(text("SELECT set_config('application_name', :v, false)"), {"v": f"deploy {SECRET}"})
            holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PostgreSQL._key(target)})
        else:
            holder.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": lock_name(target)[:64]})
        holder.commit()
        cli("upgrade", "-n", "orders")
        assert any("another run is migrating orders" in out for out in seen)

        # the Python API, with the run still busy
        with pytest.raises(orchestrator_api().MigrationFailed) as caught:
            orchestrator_api().upgrade(config_path=s.project.config, names=["orders"])
        seen.extend([str(caught.value), repr(caught.value.outcome), caught.value.hint or ""])

    # reading commands, a real process, and every log record
    for args in (("status",), ("current",), ("history",), ("heads",)):
        for extra in ((), ("--json",)):
            result = s.project.cli(*args, *extra)
            seen.extend([result.stdout, result.stderr])
    process = spawn_cli(s.project, "upgrade", "-n", "orders")  # the lock_timeout revision again, no blocker
    seen.extend(process.communicate(timeout=60))
    seen.extend(record.getMessage() for record in caplog.records)

    assert any(masked in out for out in seen)
    leaks = [out for out in seen if SECRET in out]
    assert not leaks, leaks[0]


def orchestrator_api():
    import orchestrator.api

    return orchestrator.api


def test_stamp_waits_for_a_busy_sqlite_database_instead_of_failing(make_project, tmp_path) -> None:
    """A writer holding SQLite's write lock for a moment delays `stamp`; it does not fail it."""
    import sqlite3 as _sqlite3
    import threading as _threading

    from conftest import shop_config

    project = make_project(shop_config())
    assert project.cli("upgrade", "-n", "users").exit_code == 0
    database = project.root / "var" / "users.db"
    writer = _sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    release = _threading.Timer(1.0, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        result = project.cli("stamp", "-n", "users", "3f9a1c2b7d40")
    finally:
        release.join()
        writer.close()
    assert result.exit_code == 0, result.output
    check = _sqlite3.connect(database)
    assert check.execute("SELECT version_num FROM alembic_version_users").fetchall() == [("3f9a1c2b7d40",)]
    check.close()
