"""The Python API from sync code, from threads and from inside running event loops, with
async drivers (psycopg_async, aiosqlite) and sync ones in one run; and the example FastAPI
app, started for real with uvicorn, migrating in its lifespan.
"""
from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, sqlite_url
from sqlalchemy.engine import make_url
from test_commands import (
    CATALOG_HEAD,
    HEADS,
    MODEL_TABLES,
    NAMES,
    SEED_CATEGORIES,
    USERS_HEAD,
    Stack,
    build_stack,
    query,
    version_rows,
    write_revision,
)
from test_safety import SLOW_REV, add_slow_revisions, assert_sessions_gone, runs_rows

import orchestrator
from orchestrator import MigrationFailed, OrchestrateError

SECRET = "s3cr3t-Pa55"


def async_stack(make_project, tmp_path, request, password: str | None = None) -> Stack:
    """users on aiosqlite, catalog on psycopg_async, orders on plain (sync) SQLite."""
    (tmp_path / "dbs").mkdir(exist_ok=True)
    pg = make_url(request.getfixturevalue("pg_url")).set(drivername="postgresql+psycopg_async")
    if password:
        pg = pg.set(password=password)  # trust authentication: accepted, and ignored
    overrides = {
        "users": sqlite_url(tmp_path / "dbs" / "users.db").replace("sqlite://", "sqlite+aiosqlite://", 1),
        "catalog": pg.render_as_string(hide_password=False),
    }
    return build_stack(make_project, tmp_path, request, {n: "sqlite" for n in NAMES}, overrides=overrides)


def assert_migrated(s: Stack) -> None:
    for name in NAMES:
        assert version_rows(s.urls[name], name) == [HEADS[name]], name
        assert s.model_tables(name) == MODEL_TABLES[name], name
    assert sorted(n for (n,) in query(s.urls["catalog"], "SELECT name FROM categories")) == sorted(SEED_CATEGORIES)


def never_awaited(caught: list[warnings.WarningMessage]) -> list[str]:
    gc.collect()
    return [str(w.message) for w in caught if "never awaited" in str(w.message)]


# ---------------------------------------------------------------------- sync API


def test_upgrade_from_plain_sync_code(make_project, tmp_path, request) -> None:
    s = async_stack(make_project, tmp_path, request)
    outcome = orchestrator.upgrade(config_path=s.project.config, all_=True)
    assert outcome.ok
    assert [r.target for r in outcome.results] == list(NAMES)
    assert {r.target: r.status.value for r in outcome.results} == {n: "upgraded" for n in NAMES}
    assert_migrated(s)
    again = orchestrator.upgrade(config_path=str(s.project.config), names=["users", "catalog"])
    assert [r.status.value for r in again.results] == ["noop", "noop"]
    current = {r.target: r for r in orchestrator.current(config_path=s.project.config)}
    assert {n: (r.after, r.pending) for n, r in current.items()} == {n: ([HEADS[n]], 0) for n in NAMES}
    assert_sessions_gone([s.urls["catalog"]])


def test_failed_upgrade_raises_with_every_result(make_project, tmp_path, request) -> None:
    s = async_stack(make_project, tmp_path, request)
    write_revision(
        s.root / "versions" / "catalog", "eeee0000fail", CATALOG_HEAD,
        '''    op.create_table("brands", sa.Column("id", sa.Integer(), primary_key=True))
    raise RuntimeError("brands are not ready")''',
    )
    with pytest.raises(MigrationFailed) as caught:
        orchestrator.upgrade(config_path=s.project.config, all_=True)
    outcome = caught.value.outcome
    statuses = {r.target: r.status.value for r in outcome.results}
    assert statuses == {"users": "upgraded", "catalog": "failed", "orders": "skipped"}
    text = str(caught.value)
    assert "2 of 3 targets did not succeed" in text
    assert "eeee0000fail" in text and "brands are not ready" in text
    assert version_rows(s.urls["catalog"], "catalog") == [CATALOG_HEAD]
    assert "brands" not in s.tables("catalog")  # psycopg_async: rolled back
    outcome = orchestrator.upgrade(config_path=s.project.config, all_=True, check=False)
    assert not outcome.ok and outcome.failed[0].failed_revision == "eeee0000fail"


def test_sync_upgrade_refuses_to_block_a_running_loop(make_project, tmp_path, request) -> None:
    s = async_stack(make_project, tmp_path, request)

    async def main() -> None:
        with pytest.raises(OrchestrateError) as caught:
            orchestrator.upgrade(config_path=s.project.config, all_=True)
        assert "event loop" in caught.value.message
        assert "await orchestrator.upgrade_async(" in (caught.value.hint or "")
        with pytest.raises(OrchestrateError):
            orchestrator.current(config_path=s.project.config)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        assert never_awaited(caught) == []
    for name in NAMES:  # nothing was touched
        assert version_rows(s.urls[name], name) is None


def test_sync_upgrade_from_a_worker_thread_of_a_running_loop(make_project, tmp_path, request) -> None:
    s = async_stack(make_project, tmp_path, request)

    async def main() -> Any:
        return await asyncio.to_thread(orchestrator.upgrade, config_path=s.project.config, all_=True)

    outcome = asyncio.run(main())
    assert outcome.ok
    assert_migrated(s)


def test_sync_upgrade_from_plain_threads_at_once(make_project, tmp_path, request) -> None:
    """Two threads of one process upgrading the same project: serialised, both succeed,
    everything applied once."""
    s = async_stack(make_project, tmp_path, request)
    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcomes.append(orchestrator.upgrade(config_path=s.project.config, all_=True))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    statuses = sorted(tuple(r.status.value for r in o.results) for o in outcomes)
    assert statuses == [("noop",) * 3, ("upgraded",) * 3]
    assert_migrated(s)


# ---------------------------------------------------------------------- async API


def test_upgrade_async_inside_asyncio_run_keeps_the_loop_free(make_project, tmp_path, request) -> None:
    """While upgrade_async migrates (one revision sleeps 1s), the loop keeps running other
    tasks; no coroutine is left un-awaited."""
    s = async_stack(make_project, tmp_path, request)
    add_slow_revisions(s.root / "versions" / "catalog", CATALOG_HEAD)
    os.environ["ORCH_TEST_SLEEP"] = "1.0"

    async def main() -> tuple[Any, list[float], float]:
        ticks: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            outcome = await orchestrator.upgrade_async(config_path=s.project.config, all_=True)
        finally:
            took = time.monotonic() - started
            done.set()
            await task
        return outcome, ticks, took

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome, ticks, took = asyncio.run(main())
            assert never_awaited(caught) == []
    finally:
        del os.environ["ORCH_TEST_SLEEP"]

    assert outcome.ok, [r.error for r in outcome.results]
    assert took >= 1.0
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 30 and max(gaps) < 0.5, f"the loop stalled for {max(gaps):.2f}s while migrating"
    assert version_rows(s.urls["catalog"], "catalog") == [SLOW_REV]
    assert runs_rows(s.urls["catalog"]) == ["runs", "slow"]
    assert version_rows(s.urls["users"], "users") == [USERS_HEAD]
    assert_sessions_gone([s.urls["catalog"]])


def test_upgrade_async_twice_at_once(make_project, tmp_path, request) -> None:
    s = async_stack(make_project, tmp_path, request)

    async def main() -> list[Any]:
        return await asyncio.gather(
            orchestrator.upgrade_async(config_path=s.project.config, all_=True),
            orchestrator.upgrade_async(config_path=s.project.config, all_=True),
        )

    outcomes = asyncio.run(main())
    statuses = sorted(tuple(r.status.value for r in o.results) for o in outcomes)
    assert statuses == [("noop",) * 3, ("upgraded",) * 3]
    assert_migrated(s)


def test_cancelled_upgrade_async_finishes_the_running_target_and_starts_no_other(make_project, tmp_path, request) -> None:
    s = async_stack(make_project, tmp_path, request)
    add_slow_revisions(s.root / "versions" / "catalog", CATALOG_HEAD)
    marker = tmp_path / "sleeping"
    os.environ.update(ORCH_TEST_SLEEP="1.0", ORCH_TEST_MARKER=str(marker))

    async def main() -> None:
        task = asyncio.create_task(orchestrator.upgrade_async(config_path=s.project.config, all_=True))
        while not marker.exists():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        del os.environ["ORCH_TEST_SLEEP"], os.environ["ORCH_TEST_MARKER"]
    # catalog's running revision completed and was recorded; orders never started
    assert version_rows(s.urls["catalog"], "catalog") == [SLOW_REV]
    assert version_rows(s.urls["orders"], "orders") is None
    assert_sessions_gone([s.urls["catalog"]])


# ---------------------------------------------------------------------- the example app


def start_app(config: Path, *extra_env: tuple[str, str]) -> tuple[subprocess.Popen[str], int | None, list[str]]:
    """uvicorn examples.fastapi_app.app:app on a free port; (process, port or None, log lines)."""
    env = {**os.environ, "ORCHESTRATE_CONFIG": str(config), **dict(extra_env)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app.app:app", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break  # the app exited
        lines.append(line.rstrip())
        match = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return process, int(match.group(1)), lines
    process.wait(10)
    return process, None, lines


def stop_app(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=20)
    return out


def test_fastapi_app_migrates_in_its_lifespan(make_project, tmp_path, request) -> None:
    s = async_stack(make_project, tmp_path, request)
    process, port, lines = start_app(s.project.config)
    try:
        assert port is not None, "\n".join(lines)
        assert any("Application startup complete" in line for line in lines)
        assert_migrated(s)  # migrated before the app served anything
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["ok"] is True
        assert {n: db["current"] for n, db in body["databases"].items()} == {n: [HEADS[n]] for n in NAMES}
        assert {n: db["pending"] for n, db in body["databases"].items()} == {n: 0 for n in NAMES}
        assert {n: m["status"] for n, m in body["migrated_at_startup"].items()} == {n: "upgraded" for n in NAMES}
    finally:
        out = stop_app(process)
    assert process.returncode == 0, out
    assert_sessions_gone([s.urls["catalog"]])

    # a second start finds everything up to date
    process, port, lines = start_app(s.project.config)
    try:
        assert port is not None, "\n".join(lines)
        body = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert {n: m["status"] for n, m in body["migrated_at_startup"].items()} == {n: "noop" for n in NAMES}
    finally:
        stop_app(process)


def test_fastapi_app_does_not_start_on_a_failed_migration(make_project, tmp_path, request) -> None:
    """A revision fails: the app refuses to start, names the revision, and shows no password
    (the PostgreSQL URL carries one; trust authentication ignores it)."""
    s = async_stack(make_project, tmp_path, request, password=SECRET)
    write_revision(
        s.root / "versions" / "catalog", "eeee0000fail", CATALOG_HEAD,
        '''    url = op.get_bind().engine.url.render_as_string(hide_password=False)
    raise RuntimeError(f"cannot reach the pricing service with {url}")''',
    )
    process, port, lines = start_app(s.project.config)
    if port is not None:
        stop_app(process)
    output = "\n".join(lines)
    assert port is None and process.returncode not in (0, None), output
    assert "Application startup failed" in output
    assert "MigrationFailed" in output and "eeee0000fail" in output
    assert "cannot reach the pricing service with postgresql+psycopg_async://postgres:***@" in output
    assert SECRET not in output
    assert version_rows(s.urls["catalog"], "catalog") == [CATALOG_HEAD]
    assert_sessions_gone([s.urls["catalog"]])
