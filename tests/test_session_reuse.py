"""Sessions that outlive a target: in schema mode a worker moves one PostgreSQL session from
tenant to tenant instead of connecting for each, and resets it in between, so nothing a
revision left in its session (settings, temporary tables, locks) reaches the next tenant."""
from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

from conftest import REPO, Project, pg_connections
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

TENANTS = [f"sr{i:02d}" for i in range(8)]

# What the session looks like when the revision starts, then what a careless revision leaves.
REVISION = '''"""session state"""
from alembic import op

revision = "s1000000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE seen AS SELECT current_setting('work_mem') AS work_mem, "
               "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temps, "
               "current_schemas(false)::text AS path, pg_backend_pid() AS pid")
    op.execute("SET work_mem = '64kB'")
    op.execute("CREATE TEMP TABLE scratch (x int)")
    op.execute("SELECT pg_advisory_lock(4242)")


def downgrade() -> None:
    pass
'''


def _sessions(admin: object, database: str) -> int:
    with admin.connect() as connection:  # type: ignore[attr-defined]
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(connection.execute(text("SELECT sessions FROM pg_stat_database WHERE datname = :d"),
                                      {"d": database}).scalar())


def test_a_schema_fleet_moves_one_reset_session_from_tenant_to_tenant(tmp_path: Path, pg_url: str) -> None:
    root = tmp_path / "p"
    (root / "versions" / "app").mkdir(parents=True)
    (root / "versions" / "app" / "s1000000001_state.py").write_text(textwrap.dedent(REVISION))
    (root / "tenants.txt").write_text("\n".join(TENANTS) + "\n")
    project = Project(root)
    project.write_config({
        "sys_path": [str(REPO)],
        "databases": {"app": {"url": pg_url, "replay": False,
                              "tenants": {"mode": "schema", "file": "tenants.txt", "create": True}}},
    })
    assert project.cli("init").exit_code == 0
    database = make_url(pg_url).database
    admin = create_engine(make_url(pg_url).set(database="postgres"), poolclass=NullPool)
    try:
        before = _sessions(admin, database)
        result = project.cli("upgrade", "--json")
        assert result.exit_code == 0, result.output
        assert all(t["status"] == "upgraded" for t in json.loads(result.stdout)["targets"])
        deadline = time.monotonic() + 5
        while pg_connections(pg_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pg_connections(pg_url) == []  # nothing kept once the run is over
        used = _sessions(admin, database) - before
    finally:
        admin.dispose()
    # One session for the bulk version read, one moved through every tenant (a blocker watch
    # opens its own only for a target running over a second): far fewer than one per tenant.
    assert used <= 4, used

    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            seen = [connection.execute(text(f'SELECT work_mem, temps, path, pid FROM "{t}".seen')).one()
                    for t in TENANTS]
    finally:
        engine.dispose()
    default_work_mem = seen[0][0]
    assert default_work_mem != "64kB"
    # Every tenant started from a fresh session's state, on its own schema only.
    assert [(w, n, p) for w, n, p, _ in seen] == [(default_work_mem, 0, f"{{{t}}}") for t in TENANTS]
    assert len({pid for *_, pid in seen}) < len(TENANTS)  # and the session did move on
