"""Replay: run a revision's SQL, recorded on the first tenant that ran it, on the others.

Migrating a fleet runs the same revisions on hundreds of identical schemas, and most of
the time goes into Alembic and SQLAlchemy building the same statements again (table
objects, reflection for batch mode, DDL compilation), not into the database. With
``replay: true`` a worker records the driver-level statements of each revision the first
time it runs it live, and replays them on the next tenants, inside the same per-revision
transaction, with Alembic still writing the version table.

A recording is only used where it is known to give the same result as running the
revision's Python code:

- the tenant's schema must be exactly the one the recording started from: a schema
  fingerprint (the dialect's catalog, without the tenant's own name) is part of the key;
- the revision may read the catalog (reflection) but no data: a revision whose code
  fetched rows from a table may decide per tenant, so it always runs live;
- no recorded statement may name the recording tenant (its schema or database);
- a revision can opt out with ``orchestrate_replay = False`` in its module (for example
  when it generates per-tenant values such as uuid4() in Python).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection

from orchestrator.dialects import Dialect
from orchestrator.targets import Target

_NOT_REPLAYABLE = object()


@dataclass(frozen=True)
class Recording:
    statements: tuple[tuple[str, Any, bool], ...]  # (statement, parameters, executemany)
    fingerprint_after: str


@dataclass
class _Recorder:
    """Collects what a live revision sends to the database, and whether it may be replayed."""

    dialect: Dialect
    tenant_pattern: re.Pattern[str] | None
    statements: list[tuple[str, Any, bool]] = field(default_factory=list)
    why_not: str | None = None

    def after_execute(self, _conn: Any, cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        if self.dialect.is_catalog_query(statement):
            return  # reflection: depends on the schema only, which the fingerprint pins
        if cursor.description is not None:
            self.why_not = self.why_not or "it reads data"
        if self.tenant_pattern is not None and self.tenant_pattern.search(statement):
            self.why_not = self.why_not or "its SQL names the tenant"
        self.statements.append((statement, parameters, many))


@dataclass
class _TargetState:
    fingerprint: str | None = None
    replayed: int = 0


class Replayer:
    """One per Runner, so per worker process; keeps recordings for the whole run."""

    def __init__(self) -> None:
        self._recordings: dict[tuple[Any, ...], Any] = {}

    def wrap(self, steps: list[Any], connection: Connection, target: Target, dialect: Dialect) -> tuple[list[Any], _TargetState]:
        """Steps whose migration functions replay a recording when one fits."""
        state = _TargetState()
        tenant = dialect.own_name(target)
        pattern = re.compile(rf"(?<![\w$]){re.escape(tenant)}(?![\w$])") if tenant else None
        wrapped = [_Step(step, self._runner(step, connection, target, dialect, state, pattern)) for step in steps]
        return wrapped, state

    def _runner(
        self,
        step: Any,
        connection: Connection,
        target: Target,
        dialect: Dialect,
        state: _TargetState,
        pattern: re.Pattern[str] | None,
    ) -> Callable[..., None]:
        original = step.migration_fn
        opted_out = getattr(step.revision.module, "orchestrate_replay", True) is False

        def run(**kw: Any) -> None:
            if state.fingerprint is None:
                state.fingerprint = dialect.schema_fingerprint(connection)
            key = (target.database.name, step.revision.revision, step.is_upgrade, target.dialect, state.fingerprint,
                   getattr(step, "import_state", None))  # values the module made at import (scripts.import_state)
            recording = self._recordings.get(key)
            if isinstance(recording, Recording) and not opted_out:
                for statement, parameters, many in recording.statements:
                    _execute(connection, statement, parameters, many)
                state.fingerprint = recording.fingerprint_after
                state.replayed += 1
                return
            recorder = None if recording is not None or opted_out else _Recorder(dialect, pattern)
            if recorder is not None:
                event.listen(connection, "after_cursor_execute", recorder.after_execute)
            try:
                original(**kw)
            finally:
                if recorder is not None:
                    event.remove(connection, "after_cursor_execute", recorder.after_execute)
            state.fingerprint = dialect.schema_fingerprint(connection)
            if recorder is not None:
                self._recordings[key] = (
                    _NOT_REPLAYABLE if recorder.why_not or state.fingerprint is None
                    else Recording(tuple(recorder.statements), state.fingerprint)
                )

        return run


def _execute(connection: Connection, statement: str, parameters: Any, many: bool) -> None:
    """Send a recorded statement as the driver received it the first time (errors are
    wrapped by SQLAlchemy, statement included, like a live one's)."""
    if many:
        connection.exec_driver_sql(statement, list(parameters))
    elif parameters:
        connection.exec_driver_sql(statement, parameters)
    else:
        connection.exec_driver_sql(statement)


class _Step:
    """A migration step whose function is replaced; everything else is the step's own."""

    def __init__(self, step: Any, fn: Callable[..., None]) -> None:
        self._step = step
        self._fn = fn

    @property
    def migration_fn(self) -> Callable[..., None]:
        return self._fn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def __str__(self) -> str:
        return str(self._step)
