"""Alembic environment for every database in orchestrate.yaml (written by `orchestrate init`).

orchestrate runs this file once per target: a database, or one tenant of it. It passes the
target in, and (online) an open connection it has already prepared with timeouts and
locks; it closes that connection itself, for sync and async drivers alike. So this file
never creates an engine. Edit it freely: `orchestrate init` will not overwrite your
changes unless you pass --force.
"""
from __future__ import annotations

from alembic import context

from orchestrator.env import current_target

target = current_target(context)  # .database, .tenant, .schema, .dialect, .metadata, .connection


def include_object(obj, name, type_, reflected, compare_to):
    """Which objects autogenerate and `orchestrate check` look at (all, by default).

    Per-database example: ignore a table another tool owns in the `users` database only:

        if target.database == "users" and type_ == "table" and name == "legacy_audit":
            return False
    """
    return True


context.configure(
    **target.configure_args(),  # url or connection, version table, transactions: orchestrate's part
    target_metadata=target.metadata,
    include_object=include_object,
    compare_type=True,
    render_as_batch=target.dialect == "sqlite",  # SQLite can only ALTER through batch mode
)

with context.begin_transaction():
    context.run_migrations()
