"""Truthful reports after faults: what a target's report says is what its version table holds.

The rule these tests hold the engine to (issue 7, "Truthful reports after faults"):
``after`` is what the version table holds (read again on a fresh connection when the
migrating one died; null when it cannot be known), ``applied`` lists the revisions that
committed, ``failed_revision`` is the one that did not commit, and ``partial`` is true
where it may be partly applied (MariaDB DDL). Every fault is real: a COMMIT that fails
(a deferred constraint, a SQLite reader that keeps the write lock from being taken), a
session killed by the server, a version table broken by hand.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MYSQL_URL, PG_URL, Project, sqlite_url
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

VT = "orch_tru_version"  # the version table of every project here
REV1, REV2, REV3 = "a1a1a1a1a101", "b2b2b2b2b202", "c3c3c3c3c303"


# ---------------------------------------------------------------------- helpers


def write_revision(folder: Path, rev: str, down: str | None, body: str, message: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rev}_{message.replace(' ', '_')}.py").write_text(
        f'''"""{message}

Revision ID: {rev}
Revises: {down}
"""
import os
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{textwrap.indent(textwrap.dedent(body).strip(), "    ")}


def downgrade() -> None:
    pass
''',
        encoding="utf-8",
    )


def app_project(
    make_project: Any,
    url: str,
    bodies: list[str],
    *,
    metadata: str | None = None,
    **defaults: Any,
) -> Project:
    """A project with one database `app` at ``url``, whose revisions REV1.. run ``bodies``."""
    database: dict[str, Any] = {"url": url, "version_table": VT}
    if metadata:
        database["metadata"] = metadata
    config: dict[str, Any] = {"sys_path": ["."], "defaults": {"lock_timeout": "2s", **defaults},
                              "databases": {"app": database}}
    project = make_project(config, versions=False)
    revs = [REV1, REV2, REV3]
    for i, body in enumerate(bodies):
        write_revision(project.root / "versions" / "app", revs[i], revs[i - 1] if i else None, body, f"step {i + 1}")
    return project


def run_json(project: Project, *args: str) -> tuple[int, dict[str, Any], str]:
    """The CLI in-process with --json: exit code, the one target's report, stderr."""
    result = project.cli(*args, "--json")
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {result.exit_code}):\n{result.stdout}\n{result.stderr}") from None
    (entry,) = document["targets"]
    return result.exit_code, entry, result.stderr


def run_text(project: Project, *args: str) -> tuple[int, str]:
    result = project.cli(*args)
    return result.exit_code, result.stdout + result.stderr


def sql(url: str, *statements: str) -> list[Any]:
    """Run statements on a connection of the test's own; the last one's rows (if any)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            rows: list[Any] = []
            for statement in statements:
                result = connection.execute(text(statement))
                rows = [tuple(r) for r in result] if result.returns_rows else []
            return rows
    finally:
        engine.dispose()


def versions(url: str) -> list[str]:
    return sorted(r[0] for r in sql(url, f"SELECT version_num FROM {VT}"))


def assert_truth(entry: dict[str, Any], *, applied: list[str], after: list[str] | None, failed: str | None) -> None:
    assert entry["applied"] == applied, entry
    assert entry["after"] == after, (entry["after"], entry["error"])
    assert entry["failed_revision"] == failed, entry


def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ====================================================================== 1. a COMMIT that fails


DEFERRED = [
    """
    op.execute("CREATE TABLE orch_tru_parent (id int PRIMARY KEY)")
    op.execute("CREATE TABLE orch_tru_child (id int PRIMARY KEY, parent_id int "
               "REFERENCES orch_tru_parent (id) DEFERRABLE INITIALLY DEFERRED)")
    """,
    """
    op.execute("INSERT INTO orch_tru_child VALUES (1, 999)")  # fails at COMMIT only
    """,
    """
    op.execute("CREATE TABLE orch_tru_three (id int PRIMARY KEY)")
    """,
]


def test_postgresql_commit_that_fails_blames_its_own_revision(make_project, pg_url) -> None:
    project = app_project(make_project, pg_url, DEFERRED)
    code, entry, _ = run_json(project, "upgrade", "-n", "app")
    assert code == 1
    assert entry["status"] == "failed"
    assert_truth(entry, applied=[REV1], after=[REV1], failed=REV2)
    assert "ForeignKeyViolation" in entry["error"] and REV2 in entry["error"], entry["error"]
    assert versions(pg_url) == [REV1]


# A revision that, in the middle of its transaction, has another connection (another
# process: a reader of its own) open a read transaction and keep it: SQLite's COMMIT then
# cannot take the EXCLUSIVE lock within busy_timeout.
READER_SCRIPT = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN")
connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("reading", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
"""


def start_reader(path: str) -> subprocess.Popen[str]:
    """A process holding a read transaction (SHARED lock) on the SQLite file until told."""
    reader = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "reading"
    return reader


def stop_reader(reader: subprocess.Popen[str]) -> None:
    if reader.poll() is None:
        try:
            assert reader.stdin is not None
            reader.stdin.write("\n")
            reader.stdin.flush()
        except OSError:
            pass
        try:
            reader.wait(10)
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait()


def test_sqlite_commit_that_fails_blames_its_own_revision(make_project, tmp_path) -> None:
    db = tmp_path / "app.db"
    marker = tmp_path / "reader.pid"
    bodies = [
        'op.execute("CREATE TABLE one (id int)")',
        f"""
        import subprocess, sys
        op.execute("CREATE TABLE two (id int)")
        reader = subprocess.Popen([sys.executable, "-c", {READER_SCRIPT!r}, {str(db)!r}],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert reader.stdout.readline().strip() == "reading"
        Path({str(marker)!r}).write_text(str(reader.pid))
        sys.orch_tru_reader = reader  # kept (its stdin open): the test ends it
        """,
        'op.execute("CREATE TABLE three (id int)")',
    ]
    project = app_project(make_project, sqlite_url(db), bodies, lock_timeout="1s")
    try:
        code, entry, _ = run_json(project, "upgrade", "-n", "app")
        reader_pid = int(marker.read_text())
    finally:
        if marker.exists():
            try:
                os.kill(int(marker.read_text()), 9)
            except ProcessLookupError:
                pass
    assert code == 1
    assert_truth(entry, applied=[REV1], after=[REV1], failed=REV2)
    assert entry["lock_timeout"] is True, entry["error"]
    error = entry["error"]
    assert "within a transaction" not in error, error
    assert "waited longer than lock_timeout" in error and f"revision {REV2}" in error, error
    assert f"pid {reader_pid}" in error, error  # the blocker: the reader's process
    connection = sqlite3.connect(db)
    try:
        assert [r[0] for r in connection.execute(f"SELECT version_num FROM {VT}")] == [REV1]
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "one" in tables and "two" not in tables and "three" not in tables
    finally:
        connection.close()


# ====================================================================== 2. a SQLite reader


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite"])
def test_sqlite_reader_is_a_lock_timeout_then_a_retry_succeeds(make_project, tmp_path, driver) -> None:
    db = tmp_path / "app.db"
    sqlite3.connect(db).close()
    bodies = ['op.execute("CREATE TABLE one (id int)")', 'op.execute("CREATE TABLE two (id int)")']
    url = sqlite_url(db).replace("sqlite://", f"{driver}://", 1)
    project = app_project(make_project, url, bodies, lock_timeout="1s")

    reader = start_reader(str(db))
    try:
        started = time.monotonic()
        code, entry, _ = run_json(project, "upgrade", "-n", "app")
        waited = time.monotonic() - started
    finally:
        stop_reader(reader)
    assert code == 1
    assert waited < 30, waited
    assert_truth(entry, applied=[], after=[], failed=REV1)
    assert entry["lock_timeout"] is True and entry["attempts"] in (None, 1), entry
    assert "within a transaction" not in entry["error"], entry["error"]
    assert f"pid {reader.pid}" in entry["error"], entry["error"]

    # lock_retries: 1, and the reader goes away while the first attempt backs off.
    project.write_config({"sys_path": ["."], "defaults": {"lock_timeout": "1s", "lock_retries": 1},
                          "databases": {"app": {"url": url, "version_table": VT}}})
    reader = start_reader(str(db))
    journal = Path(str(db) + "-journal")
    seen: list[bool] = []

    def release_after_first_attempt() -> None:
        # The first attempt writes a rollback journal, and removes it when its failed
        # COMMIT is rolled back: then the reader goes, before the retry's pause ends.
        deadline = time.monotonic() + 30
        while not journal.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(journal.exists())
        while journal.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        stop_reader(reader)

    releaser = threading.Thread(target=release_after_first_attempt)
    releaser.start()
    try:
        code, entry, _ = run_json(project, "upgrade", "-n", "app")
    finally:
        releaser.join(60)
        stop_reader(reader)
    assert seen == [True]
    assert code == 0, entry
    assert entry["status"] == "upgraded" and entry["attempts"] == 2, entry
    assert_truth(entry, applied=[REV1, REV2], after=[REV2], failed=None)


def test_sqlite_failed_commit_leaves_no_transaction_open(tmp_path) -> None:
    """The dialect's engine hook: after a COMMIT that failed, the next transaction begins
    (no "cannot start a transaction within a transaction") and the failed one is gone."""
    from sqlalchemy.exc import OperationalError

    from orchestrator.dialects.sqlite import SQLite

    db = tmp_path / "plain.db"
    engine = create_engine(sqlite_url(db), poolclass=NullPool)
    SQLite().install(engine, None)  # type: ignore[arg-type]  # the hooks do not look at the target
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA busy_timeout = 200")
            connection.exec_driver_sql("CREATE TABLE t (id int)")
            connection.commit()
            reader = start_reader(str(db))
            try:
                connection.exec_driver_sql("INSERT INTO t VALUES (1)")
                with pytest.raises(OperationalError, match="locked"):
                    connection.commit()
            finally:
                stop_reader(reader)
            connection.rollback()  # what SQLAlchemy asks after a failed commit: BEGIN would fail without the hook
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
            connection.commit()
    finally:
        engine.dispose()
    plain = sqlite3.connect(db)
    try:
        assert plain.execute("SELECT id FROM t").fetchall() == [(2,)]
    finally:
        plain.close()


# ====================================================================== 3. an empty version table


def models_module(project: Project) -> str:
    """A models module of the project's own (a fresh name: never imported before)."""
    name = f"orch_tru_models_{os.urandom(4).hex()}"
    (project.root / f"{name}.py").write_text(
        "import sqlalchemy as sa\n\nmetadata = sa.MetaData()\n"
        'sa.Table("orch_tru_items", metadata, sa.Column("id", sa.Integer, primary_key=True))\n',
        encoding="utf-8",
    )
    return f"{name}:metadata"


UNRELATED = ['op.execute("CREATE TABLE orch_tru_extra (id int)")', 'op.execute("CREATE TABLE orch_tru_more (id int)")']


def url_for(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if dialect == "sqlite":
        return sqlite_url(tmp_path / "app.db")
    return str(request.getfixturevalue("pg_url" if dialect == "postgresql" else "mysql_url"))


def with_models(make_project: Any, url: str) -> Project:
    project = app_project(make_project, url, UNRELATED)
    config = json.loads(json.dumps(__import__("yaml").safe_load(project.config.read_text())))
    config["databases"]["app"]["metadata"] = models_module(project)
    project.write_config(config)
    return project


def spawn(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own: nothing of the project imported before."""
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "-c", str(project.config), *args],
                          cwd=project.root, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_empty_version_table_is_base(make_project, tmp_path, request, dialect) -> None:
    url = url_for(dialect, request, tmp_path)
    project = with_models(make_project, url)
    # The common bootstrap: create_all(), then `stamp base` (an empty version table).
    sql(url, "CREATE TABLE orch_tru_items (id int PRIMARY KEY)")
    code, output = run_text(project, "stamp", "-n", "app", "base")
    assert code == 0, output
    assert versions(url) == []
    for command in ("current", "status"):
        code, output = run_text(project, command, "-n", "app")
        assert code == 0, output
        assert "base" in output and "version table" not in output and "stamp" not in output, output
    code, entry, _ = run_json(project, "current", "-n", "app")
    assert entry["after"] == [] and entry["version_table_exists"] is True and entry["unversioned_tables"] == []
    code, entry, _ = run_json(project, "upgrade", "-n", "app")
    assert code == 0, entry
    assert_truth(entry, applied=[REV1, REV2], after=[REV2], failed=None)
    assert entry["before"] == []


def test_tables_without_a_version_table_are_refused_in_any_process(make_project, tmp_path) -> None:
    url = sqlite_url(tmp_path / "app.db")
    project = with_models(make_project, url)
    sql(url, "CREATE TABLE orch_tru_items (id int PRIMARY KEY)")
    # A process of its own (no model imported yet) and this one (the CLI in-process) agree.
    for run in ("spawned", "in-process"):
        if run == "spawned":
            current = spawn(project, "current", "-n", "app")
            code, output = current.returncode, current.stdout + current.stderr
        else:
            code, output = run_text(project, "current", "-n", "app")
        assert code == 0, output
        assert "orch_tru_items exist without a version table" in output and "stamp -n app head" in output, output
        if run == "spawned":
            upgrade = spawn(project, "upgrade", "-n", "app")
            code, output = upgrade.returncode, upgrade.stdout + upgrade.stderr
        else:
            code, output = run_text(project, "upgrade", "-n", "app")
        assert code == 1, output
        assert "exist but the version table" in output and "stamp -n app head" in output, output
        assert "Traceback" not in output
    assert not Path(make_url(url).database or "").with_name("x").exists()
    assert sql(url, "SELECT name FROM sqlite_master WHERE name = 'orch_tru_extra'") == []


# ====================================================================== 4. a connection cut mid-revision


SLEEPY = {
    "postgresql": "SELECT pg_sleep(60)",
    "mysql": "SELECT SLEEP(60)",
}


def migrating_session(dialect: str, url: str) -> Any:
    """The server's id of the session running the slow statement, or None."""
    database = make_url(url).database
    if dialect == "postgresql":
        rows = sql(PG_URL, f"SELECT pid FROM pg_stat_activity WHERE datname = '{database}' "
                           "AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()")
    else:
        rows = sql(MYSQL_URL, f"SELECT id FROM information_schema.processlist WHERE db = '{database}' "
                              "AND info LIKE '%SLEEP(60)%' AND id <> CONNECTION_ID()")
    return rows[0][0] if rows else None


def kill_session(dialect: str, session_id: Any) -> None:
    if dialect == "postgresql":
        sql(PG_URL, f"SELECT pg_terminate_backend({int(session_id)})")
    else:
        sql(MYSQL_URL, f"KILL CONNECTION {int(session_id)}")


class Killer(threading.Thread):
    """Kills the migrating session once its slow statement runs."""

    def __init__(self, dialect: str, url: str) -> None:
        super().__init__(daemon=True)
        self.dialect, self.url = dialect, url
        self.killed: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                found = migrating_session(self.dialect, self.url)
                if found is not None:
                    kill_session(self.dialect, found)
                    self.killed = found
                    return
                time.sleep(0.05)
        except BaseException as exc:
            self.error = exc


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_a_cut_connection_names_its_revision_and_the_true_version_table(
    make_project, tmp_path, request, dialect
) -> None:
    url = url_for(dialect, request, tmp_path)
    bodies = [
        'op.execute("CREATE TABLE orch_tru_one (id int)")',
        f"""
        op.execute("CREATE TABLE orch_tru_two (id int)")
        op.execute("{SLEEPY[dialect]}")
        """,
        'op.execute("CREATE TABLE orch_tru_three (id int)")',
    ]
    project = app_project(make_project, url, bodies)
    killer = Killer(dialect, url)
    killer.start()
    started = time.monotonic()
    code, entry, stderr = run_json(project, "upgrade", "-n", "app")
    took = time.monotonic() - started
    killer.join(10)
    assert killer.error is None and killer.killed is not None
    assert code == 1, entry
    assert took < 50, took  # the cut is noticed at once, not after the sleep
    assert_truth(entry, applied=[REV1], after=[REV1], failed=REV2)
    assert versions(url) == [REV1]
    error = entry["error"]
    assert f"revision {REV2}" in error, error
    assert "unlock" not in error.lower() and "RELEASE_LOCK" not in error, error
    if dialect == "mysql":
        assert entry["partial"] is True, entry
        assert "partly applied" in error, error
    else:
        assert entry["partial"] is False, entry
        assert "rolled back" in error, error
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr


# ====================================================================== 5. a lost lock session


COUNTING = [
    'op.execute("CREATE TABLE orch_tru_count (id int)")',
    """
    op.execute("INSERT INTO orch_tru_count VALUES (1)")
    marker = os.environ.get("ORCH_TRU_MARKER")
    if marker:  # the first run only: say so, then dawdle in Python with the lock held
        Path(marker).write_text(str(os.getpid()))
        time.sleep(float(os.environ["ORCH_TRU_SLEEP"]))
    op.execute("CREATE TABLE orch_tru_two (id int)")
    """,
    'op.execute("CREATE TABLE orch_tru_three (id int)")',
]


def spawn_json(project: Project, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "-c", str(project.config), "upgrade", "-n", "app", "--json"],
        cwd=project.root, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = process.communicate(timeout=120)
    try:
        (entry,) = json.loads(out)["targets"]
    except (json.JSONDecodeError, ValueError):
        raise AssertionError(f"exit {process.returncode}:\n{out}\n{err}") from None
    assert "Traceback" not in err, err
    return process.returncode, entry


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_a_lost_lock_session_stops_its_migration_and_no_revision_runs_twice(
    make_project, tmp_path, request, dialect
) -> None:
    url = url_for(dialect, request, tmp_path)
    project = app_project(make_project, url, COUNTING, lock_wait="60s")
    marker = tmp_path / "first.marker"
    first = spawn_json(project, {"ORCH_TRU_MARKER": str(marker), "ORCH_TRU_SLEEP": "4"})
    try:
        wait_until(marker.exists, what="the first run inside revision 2")
        second = spawn_json(project)  # waits for the migration lock
        try:
            time.sleep(0.5)
            # The session that holds the lock is the one that migrates: kill it.
            holder = migration_session(dialect, url, project)
            assert holder is not None
            kill_session(dialect, holder)
            code_second, second_entry = finished(second)
        finally:
            if second.poll() is None:
                second.kill()
        code_first, first_entry = finished(first)
    finally:
        if first.poll() is None:
            first.kill()
    # The first run stopped: its revision 2 did not commit, and it says so.
    assert code_first == 1, first_entry
    assert first_entry["failed_revision"] == REV2 and first_entry["applied"] == [REV1], first_entry["error"]
    # The table as it is when the first run looked again (usually moved on by the second run).
    assert first_entry["after"] in ([REV1], [REV3]), first_entry
    if first_entry["after"] == [REV3]:
        assert f"meanwhile by another run: {REV2}, {REV3}" in first_entry["error"], first_entry["error"]
    # The second took over once the lock was gone, and applied revision 2 once.
    assert code_second == 0, second_entry
    assert_truth(second_entry, applied=[REV2, REV3], after=[REV3], failed=None)
    assert sql(url, "SELECT count(*) FROM orch_tru_count") == [(1,)]
    assert versions(url) == [REV3]


def migration_session(dialect: str, url: str, project: Project) -> Any:
    """The session holding the target's migration lock (it is the migrating connection)."""
    database = make_url(url).database
    if dialect == "postgresql":
        rows = sql(PG_URL, "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                           f"WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '{database}'")
        return rows[0][0] if rows else None
    from orchestrator.config import load_project
    from orchestrator.dialects.base import lock_name
    from orchestrator.targets import make_target

    name = lock_name(make_target(load_project(project.config).databases["app"]))[:64]
    return sql(MYSQL_URL, f"SELECT IS_USED_LOCK('{name}')")[0][0]


# ====================================================================== 6. broken version tables


def broken_version_tables(dialect: str) -> dict[str, list[str]]:
    """Ways to break the version table of a database at REV2 (REV1 and REV2 applied)."""
    text_type = "varchar(32)"
    return {
        "a NULL row": [f"DROP TABLE {VT}", f"CREATE TABLE {VT} (version_num {text_type})",
                       f"INSERT INTO {VT} VALUES ('{REV2}')", f"INSERT INTO {VT} VALUES (NULL)"],
        "an integer column": [f"DROP TABLE {VT}", f"CREATE TABLE {VT} (version_num integer)",
                              f"INSERT INTO {VT} VALUES (12)"],
        "an ancestor beside its descendant": [f"INSERT INTO {VT} VALUES ('{REV1}')"],
        "extra columns": [f"DROP TABLE {VT}",
                          f"CREATE TABLE {VT} (version_num {text_type} PRIMARY KEY, applied_by varchar(20) NOT NULL)",
                          f"INSERT INTO {VT} VALUES ('{REV2}', 'someone')"],
        "a view": [f"DROP TABLE {VT}", f"CREATE TABLE orch_tru_real (version_num {text_type})",
                   f"INSERT INTO orch_tru_real VALUES ('{REV2}')",
                   f"CREATE VIEW {VT} AS SELECT version_num FROM orch_tru_real"],
    }


def has_table(url: str, name: str) -> bool:
    from sqlalchemy import inspect

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return bool(inspect(connection).has_table(name))
    finally:
        engine.dispose()


def repair(url: str) -> None:
    for statement in (f"DROP VIEW IF EXISTS {VT}", f"DROP TABLE IF EXISTS {VT}", "DROP TABLE IF EXISTS orch_tru_real",
                      f"CREATE TABLE {VT} (version_num varchar(32) NOT NULL PRIMARY KEY)",
                      f"INSERT INTO {VT} VALUES ('{REV2}')"):
        try:
            sql(url, statement)
        except Exception:  # DROP VIEW of a table (MariaDB), DROP TABLE of a view: nothing to drop
            pass


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mysql"])
def test_broken_version_tables_are_named_never_a_traceback(make_project, tmp_path, request, dialect) -> None:
    url = url_for(dialect, request, tmp_path)
    bodies = ['op.execute("CREATE TABLE orch_tru_one (id int)")', 'op.execute("CREATE TABLE orch_tru_two (id int)")',
              'op.execute("CREATE TABLE orch_tru_three (id int)")']
    project = app_project(make_project, url, bodies)
    code, output = run_text(project, "upgrade", "-n", "app", REV2)
    assert code == 0, output
    problems = []
    for case, statements in broken_version_tables(dialect).items():
        repair(url)
        for statement in statements:
            if dialect == "mysql" and statement.startswith("DROP VIEW"):
                continue
            sql(url, statement)
        for args in (("current",), ("status",), ("upgrade",), ("downgrade", "-1"), ("stamp", REV3)):
            result = project.cli(*args, "-n", "app")
            output = result.stdout + result.stderr
            # (status renders a table without hints; its --json has the hint, asserted below)
            ok = (result.exit_code == 1 and "app" in output and VT in output
                  and ("hint:" in output or args == ("status",))
                  and "Traceback" not in output and "unexpected" not in output and "Warning" not in result.stderr)
            if not ok:
                problems.append(f"{case}: {' '.join(args)} (exit {result.exit_code}):\n{output}")
        if case in ("a NULL row", "an ancestor beside its descendant"):  # the hint's repair works
            code, output = run_text(project, "stamp", "--purge", "-n", "app", REV2)
            if code != 0 or versions(url) != [REV2]:
                problems.append(f"{case}: stamp --purge (exit {code}):\n{output}")
            for statement in statements:
                if not statement.startswith(("DROP", "CREATE")):
                    sql(url, statement)
        code, entry, _ = run_json(project, "status", "-n", "app")
        if not (code == 1 and entry["hint"] and VT in entry["error"] and entry["before"] is None):
            problems.append(f"{case}: status --json: {entry}")
        # Nothing was undone or done: REV2's and REV1's tables are both still there, REV3's is not.
        tables = {name for name in ("orch_tru_one", "orch_tru_two", "orch_tru_three") if has_table(url, name)}
        if tables != {"orch_tru_one", "orch_tru_two"}:
            problems.append(f"{case}: revisions were run or undone: tables {sorted(tables)}")
            sql(url, "DROP TABLE IF EXISTS orch_tru_three")
            for name in ("orch_tru_one", "orch_tru_two"):
                sql(url, f"CREATE TABLE IF NOT EXISTS {name} (id int)")
    assert not problems, "\n\n".join(problems)


# ====================================================================== 7. targets never read


def test_targets_never_read_say_before_and_after_null(make_project, tmp_path) -> None:
    config = {
        "sys_path": ["."],
        "databases": {
            "first": {"url": sqlite_url(tmp_path / "first.db"), "version_table": VT},
            "second": {"url": sqlite_url(tmp_path / "second.db"), "version_table": VT, "depends_on": ["first"]},
        },
    }
    project = make_project(config, versions=False)
    write_revision(project.root / "versions" / "first", REV1, None, 'raise RuntimeError("no")', "fails")
    write_revision(project.root / "versions" / "second", REV2, None, 'op.execute("CREATE TABLE t (id int)")', "fine")
    result = project.cli("upgrade", "--all", "--json")
    targets = {t["target"]: t for t in json.loads(result.stdout)["targets"]}
    assert result.exit_code == 1
    assert targets["first"]["status"] == "failed" and targets["first"]["after"] == []
    assert targets["second"]["status"] in ("skipped", "not_run"), targets["second"]
    assert targets["second"]["before"] is None and targets["second"]["after"] is None, targets["second"]
