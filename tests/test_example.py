"""The bundled example, as a new user meets it: a fresh copy, the real console command."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from sqlalchemy import create_engine, text


def orchestrate(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def fresh_copy(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    root.mkdir()
    shutil.copy(REPO / "orchestrate.yaml", root)
    for folder in ("envs", "versions", "examples"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_example_upgrades_from_a_fresh_copy(tmp_path: Path) -> None:
    root = fresh_copy(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # Run from another folder: the SQLite files land beside orchestrate.yaml, not in cwd.
    first = orchestrate("-c", str(root / "orchestrate.yaml"), "upgrade", "--all", cwd=elsewhere)
    assert first.returncode == 0, first.stderr
    lines = [line.split()[0] for line in first.stdout.splitlines() if line.strip()]
    assert lines[:3] == ["users", "catalog", "orders"]  # orders depends on both
    assert "3 upgraded" in first.stdout
    assert sorted(p.name for p in (root / "var").glob("*.db")) == ["catalog.db", "orders.db", "users.db"]
    assert not (elsewhere / "var").exists()

    second = orchestrate("upgrade", "--all", cwd=root)
    assert second.returncode == 0
    assert "3 up to date" in second.stdout

    check = orchestrate("check", cwd=root)
    assert check.returncode == 0, check.stdout + check.stderr

    status = json.loads(orchestrate("status", "--json", cwd=root).stdout)["targets"]
    assert {s["database"]: s["pending"] for s in status} == {"users": 0, "catalog": 0, "orders": 0}

    engine = create_engine(f"sqlite:///{root / 'var' / 'catalog.db'}")
    try:
        with engine.connect() as connection:
            names = connection.execute(text("SELECT name FROM categories ORDER BY name")).scalars().all()
            assert names == ["Books", "Electronics", "Garden"]  # the data migration ran
            assert connection.execute(text("SELECT version_num FROM alembic_version_catalog")).scalar_one()
    finally:
        engine.dispose()


def test_cli_errors_have_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    root = fresh_copy(tmp_path)
    unknown = orchestrate("upgrade", "-n", "nope", cwd=root)
    assert unknown.returncode == 2
    assert "unknown database: nope" in unknown.stderr
    assert "users, catalog, orders" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    missing = orchestrate("-c", str(tmp_path / "absent.yaml"), "status", cwd=root)
    assert missing.returncode == 2
    assert "absent.yaml: no such file" in missing.stderr
    assert "orchestrate init" in missing.stderr

    # A database that is down fails its target (exit 1) and says which one.
    env_down = {"USERS_URL": "postgresql+psycopg://app:topsecret@127.0.0.1:1/users"}
    result = orchestrate("upgrade", "--all", cwd=root, env=env_down)
    assert result.returncode == 1
    assert "users: cannot connect to postgresql+psycopg://app:***@127.0.0.1:1/users" in result.stdout
    assert "orders" in result.stdout and "skipped" in result.stdout  # it depends on users
    assert "topsecret" not in result.stdout + result.stderr
