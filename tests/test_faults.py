"""Faults that must end in bounded time with a truthful report (issue 7's holes).

- A silent server (PostgreSQL, MariaDB, psycopg async): a TCP proxy of the test's own
  (tests/tcp_proxy.py) stands between orchestrate and the real server; the test pauses it
  (SIGSTOP) before the run, right after connect, or while a revision's statement runs,
  then resumes (SIGCONT) or kills it. The target must give up within ``connect_timeout``
  / ``server_timeout`` (plus slack for a loaded machine), the report is written, and once
  the server answers again no session and no migration lock of the run is left.
- Workers of a ``--parallel`` run: the main process killed (workers exit), a worker dying
  mid-target (``os._exit`` in a revision, ``kill -9``): that target is LOST with its
  version table read again, the others finish, the report is written.
- A revision calling ``sys.exit`` (a message holding the URL and its password): a failed
  target like any other, masked, exit code 1.
- ``--debug`` shows the traceback of an unexpected error inside a target, made in the
  worker and shipped back.

Every run of the CLI is a real process with a hard timeout, so a hang fails the test
instead of hanging the suite. Measured times are printed (``-s``) and appended to
ORCH_TEST_TIMINGS when set.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MYSQL_URL, PG_URL, Project
from sqlalchemy.engine import make_url
from test_commands import open_sessions, query, write_revision

PROXY = Path(__file__).resolve().with_name("tcp_proxy.py")
SECRET = "Flt-s3cr3t-9"
REV_TABLE, REV_SLOW = "f1a000000001", "f1a000000002"
_TIMINGS = os.environ.get("ORCH_TEST_TIMINGS")


def note(what: str, seconds: float) -> None:
    print(f"\nTIMING {what}: {seconds:.2f}s")
    if _TIMINGS:
        with open(_TIMINGS, "a", encoding="utf-8") as out:
            out.write(f"{what}: {seconds:.2f}s\n")


# ---------------------------------------------------------------------- the proxy


class Proxy:
    """tests/tcp_proxy.py as a process of this test's own, in front of ``base``'s server."""

    def __init__(self, base: str, stop_before: str | None = None) -> None:
        url = make_url(base)
        args = [sys.executable, str(PROXY), "0", url.host or "127.0.0.1", str(url.port or default_port(base))]
        if stop_before:
            args += ["--stop-before", stop_before]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def url(self, base: str, password: str | None = None) -> str:
        url = make_url(base).set(host="127.0.0.1", port=self.port)
        if password:
            url = url.set(password=password)
        return url.render_as_string(hide_password=False)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stopped(self) -> bool:
        """Has the proxy stopped itself (``--stop-before``)?"""
        try:
            state = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state in ("T", "t")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def default_port(url: str) -> int:
    return 5432 if make_url(url).get_backend_name() == "postgresql" else 3306


@pytest.fixture
def proxies() -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(base: str, stop_before: str | None = None) -> Proxy:
        proxy = Proxy(base, stop_before)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.kill()


SERVERS = {"postgresql": "pg_url", "mysql": "mysql_url", "psycopg_async": "pg_url"}


def server_url(request: pytest.FixtureRequest, dialect: str) -> str:
    url = request.getfixturevalue(SERVERS[dialect])
    if dialect == "psycopg_async":
        url = make_url(url).set(drivername="postgresql+psycopg_async").render_as_string(hide_password=False)
    return url


def direct(url: str) -> str:
    """The same database reached without the proxy, through a sync driver."""
    parsed = make_url(url)
    base = make_url(PG_URL if parsed.get_backend_name() == "postgresql" else MYSQL_URL)
    return base.set(database=parsed.database).render_as_string(hide_password=False)


# ---------------------------------------------------------------------- a one-database project


def app_config(url: str, **defaults: Any) -> dict[str, Any]:
    return {"defaults": defaults, "databases": {"app": {"url": url, "version_table": "alembic_version_app"}}}


def app_project(make_project: Any, url: str, **defaults: Any) -> Project:
    """Database `app` at ``url``: a table, then a revision whose statement sleeps on the
    server (ORCH_TEST_SLEEP seconds; it first writes ORCH_TEST_MARKER)."""
    project = make_project(app_config(url, **defaults), versions=False)
    folder = project.root / "versions" / "app"
    folder.mkdir(parents=True, exist_ok=True)
    write_revision(folder, REV_TABLE, "None", '''    op.create_table("t", sa.Column("id", sa.Integer(), primary_key=True))''',
                   message="create t")
    (folder / f"{REV_TABLE}_create_t.py").write_text(
        (folder / f"{REV_TABLE}_create_t.py").read_text().replace('down_revision = "None"', "down_revision = None")
    )
    write_revision(folder, REV_SLOW, REV_TABLE, '''    import os
    from pathlib import Path
    seconds = float(os.environ.get("ORCH_TEST_SLEEP", "0"))
    marker = os.environ.get("ORCH_TEST_MARKER")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    if seconds:
        bind = op.get_bind()
        sleep = "SELECT pg_sleep(:s)" if bind.dialect.name == "postgresql" else "SELECT SLEEP(:s)"
        op.execute(sa.text(sleep).bindparams(s=seconds))''', message="slow statement")
    return project


def spawn(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m orchestrator.cli -c <project> ARGS` as a process of its own (a group of its own)."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "-c", str(project.config), *args],
        cwd=project.root, env={**os.environ, **(env or {})}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """Wait for the run; a run still going after ``timeout`` is a hang: killed, and the test fails."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"the run did not end within {timeout:.0f}s:\n{out[-3000:]}\n{err[-3000:]}") from None
    return process.returncode, out, err


def run_cli(project: Project, *args: str, timeout: float = 90, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    started = time.monotonic()
    code, out, err = finish(spawn(project, *args, env=env), timeout)
    return code, out, err, time.monotonic() - started


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run ended (exit {process.returncode}) before {path.name}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def load(report: Path) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in json.loads(report.read_text(encoding="utf-8"))["targets"]}


def versions(url: str) -> list[str]:
    return sorted(r[0] for r in query(direct(url), "SELECT version_num FROM alembic_version_app"))


def held_migration_locks(url: str, project: Project) -> list[Any]:
    """Migration locks held on the server for `app` (PostgreSQL: any advisory lock in its
    database; MariaDB: IS_USED_LOCK on the lock's name)."""
    from orchestrator.config import load_project
    from orchestrator.dialects import lock_name
    from orchestrator.targets import make_target

    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return query(PG_URL, "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                             "WHERE l.locktype = 'advisory' AND d.datname = :db", db=parsed.database)
    name = lock_name(make_target(load_project(project.config).databases["app"]))[:64]
    return [row for row in query(MYSQL_URL, "SELECT IS_USED_LOCK(:n)", n=name) if row[0] is not None]


def assert_released(url: str, project: Project, within: float) -> float:
    """No session on the database and no migration lock, within ``within`` seconds; how long it took."""
    started = time.monotonic()
    while True:
        sessions, locks = open_sessions(direct(url)), held_migration_locks(url, project)
        if not sessions and not locks:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"left behind: sessions {sessions}, locks {locks}"
        time.sleep(0.25)


def assert_masked(*texts: str) -> None:
    leaks = [t for t in texts if SECRET in t]
    assert not leaks, leaks[0][-2000:]


# ====================================================================== a silent server


@pytest.mark.parametrize("dialect,connect_timeout", [
    ("postgresql", "2s"), ("mysql", "2s"), ("mysql", None),
])
def test_server_silent_before_the_run_gives_up_within_connect_timeout(
    make_project, request, proxies, tmp_path, dialect, connect_timeout
) -> None:
    base = server_url(request, dialect)
    proxy = proxies(base)
    url = proxy.url(base, password=SECRET)
    defaults = {"connect_timeout": connect_timeout} if connect_timeout else {}
    project = app_project(make_project, url, **defaults)
    proxy.pause()
    report = tmp_path / "report.json"
    code, out, err, elapsed = run_cli(project, "upgrade", "--report", str(report), timeout=120)
    note(f"silent before the run, {dialect}, connect_timeout {connect_timeout or '10s (default)'}", elapsed)
    assert code == 1, (out, err)
    limit = 30 if connect_timeout else 60  # FIGURES: one target ends within 60 s by default
    assert elapsed < limit
    app = load(report)["app"]
    assert app["status"] == "failed" and app["after"] is None, app
    assert "cannot connect" in app["error"] or "stopped answering" in app["error"], app["error"]
    masked = make_url(url).render_as_string(hide_password=True)
    assert masked in out + err + report.read_text()
    assert_masked(out, err, report.read_text())


@pytest.mark.parametrize("dialect,then", [("postgresql", "resume"), ("mysql", "kill"), ("psycopg_async", "resume")])
def test_server_silent_mid_statement_fails_within_server_timeout_and_leaves_nothing(
    make_project, request, proxies, tmp_path, dialect, then
) -> None:
    base = server_url(request, dialect)
    proxy = proxies(base)
    project = app_project(make_project, proxy.url(base), connect_timeout="1s", server_timeout="3s")
    marker, report = tmp_path / "marker", tmp_path / "report.json"
    process = spawn(project, "upgrade", "--report", str(report),
                    env={"ORCH_TEST_SLEEP": "30", "ORCH_TEST_MARKER": str(marker)})
    wait_for(marker, process)
    time.sleep(0.5)  # the statement has reached the server
    proxy.pause()
    paused = time.monotonic()
    code, out, err = finish(process, timeout=90)
    elapsed = time.monotonic() - paused
    note(f"silent mid-statement, {dialect}, server_timeout 3s, connect_timeout 1s", elapsed)
    assert code == 1, (out, err)
    assert elapsed < 3 + 30
    app = load(report)["app"]
    assert app["status"] == "failed" and app["failed_revision"] == REV_SLOW, json.dumps(app, indent=1)
    assert "stopped answering" in app["error"], app["error"]
    print(f"\nREPORT {dialect}: status={app['status']} after={app['after']} failed_revision={app['failed_revision']}")

    (proxy.resume if then == "resume" else proxy.kill)()
    released = assert_released(base, project, within=30)
    note(f"silent mid-statement, {dialect}: sessions and lock gone after {then}", released)
    assert app["after"] in (None, versions(base)), app
    assert versions(base) == [REV_TABLE]

    fresh = proxies(base)
    project.write_config(app_config(fresh.url(base), connect_timeout="1s", server_timeout="3s"))
    code, out, err, _ = run_cli(project, "upgrade")
    assert code == 0, (out, err)
    assert versions(base) == [REV_SLOW]


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_healthy_statement_longer_than_server_timeout_is_not_cut(make_project, request, proxies, dialect) -> None:
    base = server_url(request, dialect)
    proxy = proxies(base)
    project = app_project(make_project, proxy.url(base), connect_timeout="2s", server_timeout="2s")
    code, out, err, elapsed = run_cli(project, "upgrade", env={"ORCH_TEST_SLEEP": "3.5"})
    note(f"healthy 3.5s statement with server_timeout 2s, connect_timeout 2s, {dialect}", elapsed)
    assert code == 0, (out, err)
    assert versions(base) == [REV_SLOW]


# The first statement SQLAlchemy sends on a new connection (the server's version and settings).
FIRST_STATEMENT = {"postgresql": "version()", "mysql": "SELECT @@", "psycopg_async": "version()"}


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "psycopg_async"])
def test_server_silent_right_after_connect_ends_bounded(make_project, request, proxies, tmp_path, dialect) -> None:
    base = server_url(request, dialect)
    proxy = proxies(base, stop_before=FIRST_STATEMENT[dialect])
    project = app_project(make_project, proxy.url(base), connect_timeout="2s", server_timeout="3s")
    report = tmp_path / "report.json"
    code, out, err, elapsed = run_cli(project, "upgrade", "--report", str(report), timeout=90)
    note(f"silent right after connect, {dialect}, server_timeout 3s", elapsed)
    assert proxy.stopped(), "the proxy never saw the first statement"
    assert code == 1, (out, err)
    assert elapsed < 3 + 30
    app = load(report)["app"]
    assert app["status"] == "failed" and app["after"] is None, app
    proxy.resume()
    assert_released(base, project, within=15)


# ====================================================================== workers of a --parallel run


TENANTS = [f"t{i:03d}" for i in range(6)]
REV_ITEMS, REV_WORK = "f2b000000001", "f2b000000002"


def fleet_project(make_project: Any, tenants: list[str] = TENANTS) -> Project:
    """Database `shops`: a SQLite file per tenant; REV_WORK sleeps ORCH_TEST_SLEEP seconds
    (ORCH_TEST_SLOW_TENANT: that tenant sleeps ORCH_TEST_SLOW seconds instead), writes
    ORCH_TEST_MARKERS/<tenant> (its process id) first, and ends its process with os._exit(3)
    for tenant ORCH_TEST_DIE."""
    config = {"databases": {"shops": {
        "url": "sqlite:///tenants/{tenant}.db", "version_table": "alembic_version_shops",
        "tenants": {"mode": "database", "names": tenants},
    }}}
    project = make_project(config, versions=False)
    (project.root / "tenants").mkdir(exist_ok=True)
    folder = project.root / "versions" / "shops"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_revision(folder, REV_ITEMS, "None", '''    op.create_table("items", sa.Column("id", sa.Integer(), primary_key=True))''',
                          message="create items")
    path.write_text(path.read_text().replace('down_revision = "None"', "down_revision = None"))
    write_revision(folder, REV_WORK, REV_ITEMS, '''    import os, time
    from pathlib import Path
    tenant = Path(op.get_bind().engine.url.database).stem
    op.execute("INSERT INTO items (id) VALUES (1)")
    markers = os.environ.get("ORCH_TEST_MARKERS")
    if markers:
        (Path(markers) / tenant).write_text(str(os.getpid()))
    if tenant == os.environ.get("ORCH_TEST_DIE"):
        os._exit(3)
    slow = tenant == os.environ.get("ORCH_TEST_SLOW_TENANT")
    time.sleep(float(os.environ.get("ORCH_TEST_SLOW" if slow else "ORCH_TEST_SLEEP", "0")))''', message="work")
    return project


def tenant_versions(project: Project, tenant: str) -> list[str] | None:
    """What the tenant's version table holds, read with sqlite3 (None: no table)."""
    import sqlite3

    path = project.root / "tenants" / f"{tenant}.db"
    if not path.exists():
        return None
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version_shops").fetchall()
    except sqlite3.OperationalError:
        return None
    finally:
        connection.close()
    return sorted(r[0] for r in rows)


def tagged(tag: str) -> list[int]:
    """Live processes whose environment holds ORCH_FLT_TAG=tag (a run and every process it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"ORCH_FLT_TAG={tag}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc/*/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_gone(tag: str, within: float) -> float:
    started = time.monotonic()
    while tagged(tag):
        assert time.monotonic() - started < within, {p: cmdline(p) for p in tagged(tag)}
        time.sleep(0.1)
    return time.monotonic() - started


def test_killing_the_main_process_ends_every_worker(make_project, tmp_path) -> None:
    project = fleet_project(make_project)
    markers = tmp_path / "markers"
    markers.mkdir()
    tag = uuid4_hex()
    process = spawn(project, "upgrade", "--parallel", "2",
                    env={"ORCH_TEST_SLEEP": "3", "ORCH_TEST_MARKERS": str(markers), "ORCH_FLT_TAG": tag})
    try:
        deadline = time.monotonic() + 60
        while len(list(markers.iterdir())) < 2:  # both workers are inside a revision
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        workers = [p for p in children(process.pid) if "spawn_main" in cmdline(p)]
        assert len(workers) == 2, {p: cmdline(p) for p in children(process.pid)}
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        killed = time.monotonic()
        gone = wait_gone(tag, within=15)
        note("workers gone after kill -9 of the main process", gone)
        assert time.monotonic() - killed < 15
    finally:
        for pid in tagged(tag):
            os.kill(pid, signal.SIGKILL)
        process.communicate()


def uuid4_hex() -> str:
    import uuid

    return uuid.uuid4().hex


def test_a_worker_ending_itself_loses_only_its_target(make_project, tmp_path) -> None:
    project = fleet_project(make_project)
    report, tag = tmp_path / "report.json", uuid4_hex()
    code, out, err, elapsed = run_cli(project, "upgrade", "--parallel", "2", "--report", str(report),
                                      env={"ORCH_TEST_DIE": "t001", "ORCH_TEST_SLEEP": "0.3", "ORCH_FLT_TAG": tag})
    note("--parallel 2 run with a worker calling os._exit(3)", elapsed)
    assert code == 1, (out, err)
    targets = load(report)
    lost = targets["shops/t001"]
    assert lost["status"] in ("lost", "failed"), lost
    assert "exit code 3" in lost["error"], lost["error"]
    assert lost["after"] is not None and lost["after"] == (tenant_versions(project, "t001") or []), lost
    assert lost["failed_revision"] == REV_WORK, lost
    others = {name: t["status"] for name, t in targets.items() if name != "shops/t001"}
    assert set(others.values()) == {"upgraded"}, others
    assert all(tenant_versions(project, t) == [REV_WORK] for t in TENANTS if t != "t001")
    pids = {t["worker"]["pid"] for name, t in targets.items() if name != "shops/t001" and t.get("worker")}
    assert len(pids) >= 2, pids  # a new worker took the dead one's place
    assert wait_gone(tag, within=10) < 10


def test_a_worker_killed_mid_revision_loses_only_its_target(make_project, tmp_path) -> None:
    project = fleet_project(make_project)
    markers, report, tag = tmp_path / "markers", tmp_path / "report.json", uuid4_hex()
    markers.mkdir()
    process = spawn(project, "upgrade", "--parallel", "2", "--report", str(report), env={
        "ORCH_TEST_SLOW_TENANT": "t000", "ORCH_TEST_SLOW": "30", "ORCH_TEST_SLEEP": "0.5",
        "ORCH_TEST_MARKERS": str(markers), "ORCH_FLT_TAG": tag,
    })
    wait_for(markers / "t000", process)
    victim = int((markers / "t000").read_text())
    assert victim in children(process.pid) and "spawn_main" in cmdline(victim), cmdline(victim)
    os.kill(victim, signal.SIGKILL)
    code, out, err = finish(process, timeout=60)
    assert code == 1, (out, err)
    targets = load(report)
    lost = targets["shops/t000"]
    assert lost["status"] in ("lost", "failed"), lost
    assert lost["after"] is not None and lost["after"] == (tenant_versions(project, "t000") or []), lost
    assert tenant_versions(project, "t000") == [REV_ITEMS]
    others = {name: t["status"] for name, t in targets.items() if name != "shops/t000"}
    assert set(others.values()) == {"upgraded"}, others
    pids = {t["worker"]["pid"] for t in targets.values() if t.get("worker")}
    assert victim not in pids and len(pids) >= 2, pids
    assert wait_gone(tag, within=10) < 10
    # the killed worker left its tenant usable: a rerun finishes it
    code, out, err, _ = run_cli(project, "upgrade", "--parallel", "2")
    assert code == 0, (out, err)
    assert tenant_versions(project, "t000") == [REV_WORK]


# ====================================================================== sys.exit in a revision; --debug


def exit_project(make_project: Any, pg: str, body: str) -> Project:
    """Database `app` on PostgreSQL (its URL holds a password) whose second revision runs
    ``body``, and a healthy SQLite database `other`."""
    project = app_project(make_project, make_url(pg).set(password=SECRET).render_as_string(hide_password=False))
    config = app_config(make_url(pg).set(password=SECRET).render_as_string(hide_password=False))
    config["databases"]["other"] = {"url": "sqlite:///var/other.db", "version_table": "alembic_version_other"}
    project.write_config(config)
    (project.root / "var").mkdir(exist_ok=True)
    folder = project.root / "versions" / "other"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_revision(folder, "f3c000000001", "None", '''    op.create_table("o", sa.Column("id", sa.Integer(), primary_key=True))''',
                          message="create o")
    path.write_text(path.read_text().replace('down_revision = "None"', "down_revision = None"))
    slow = next((project.root / "versions" / "app").glob(f"{REV_SLOW}_*.py"))
    slow.write_text(slow.read_text().split("def upgrade() -> None:")[0] + "def upgrade() -> None:\n" + body
                    + "\n\n\ndef downgrade() -> None:\n    pass\n")
    return project


@pytest.mark.parametrize("how", ["code", "message"])
@pytest.mark.parametrize("parallel", [False, True])
def test_sys_exit_in_a_revision_is_a_failed_target(make_project, pg_url, tmp_path, how, parallel) -> None:
    body = ('''    import sys
    sys.exit(4)''' if how == "code" else '''    url = op.get_bind().engine.url.render_as_string(hide_password=False)
    raise SystemExit(f"giving up on {url}")''')
    project = exit_project(make_project, pg_url, body)
    report = tmp_path / "report.json"
    args = ["upgrade", "--all", "--report", str(report), *(["--parallel", "2"] if parallel else [])]
    code, out, err, _ = run_cli(project, *args)
    assert code == 1, (code, out, err)
    targets = load(report)
    app, other = targets["app"], targets["other"]
    assert app["status"] == "failed" and app["failed_revision"] == REV_SLOW, app
    assert app["after"] == [REV_TABLE], app
    assert other["status"] == "upgraded", other
    assert ("sys.exit(4)" if how == "code" else "giving up on") in app["error"], app["error"]
    assert_masked(out, err, report.read_text())
    if how == "message":
        assert make_url(pg_url).set(password=SECRET).render_as_string(hide_password=True) in out + err


@pytest.mark.parametrize("parallel", [False, True])
def test_debug_shows_the_traceback_of_an_unexpected_error_in_a_target(make_project, tmp_path, parallel) -> None:
    project = fleet_project(make_project, tenants=["t000", "t001"])
    work = next((project.root / "versions" / "shops").glob(f"{REV_WORK}_*.py"))
    work.write_text(work.read_text().replace('    op.execute("INSERT INTO items (id) VALUES (1)")',
                                             '    op.execute("INSERT INTO items (id) VALUES (1)")\n    ratio = 1 / 0'))
    extra = ["--parallel", "2"] if parallel else []
    code, out, err, _ = run_cli(project, "--debug", "upgrade", *extra)
    assert code == 1, (out, err)
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err, (out, err)
    assert work.name in err and "ratio = 1 / 0" in err, err  # the revision's own line
    code, out, err, _ = run_cli(project, "upgrade", *extra)
    assert code == 1, (out, err)
    assert "ZeroDivisionError" in out + err
    assert "Traceback" not in out + err
    assert "unexpected" not in (out + err).lower() and "report it" not in out + err, (out, err)
