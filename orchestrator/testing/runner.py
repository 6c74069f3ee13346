"""Run one scratch database's migrations and read its schema, for tests.

:class:`Runner` wraps the command layer (:mod:`orchestrator.commands`) for one database
of a :class:`~orchestrator.testing.scratch.Scratch`: ``upgrade``/``downgrade`` raise
:class:`KitFailure` naming the target and the failed revision, ``schema()`` reads every
target's tables through SQLAlchemy's inspector, and :func:`schema_diff` says, one line
per difference, how two readings differ.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from orchestrator import commands
from orchestrator.commands import RunOptions, Selection
from orchestrator.config import activate
from orchestrator.dialects import dialect_for
from orchestrator.results import Outcome, Status, TargetResult
from orchestrator.targets import Target, targets_of
from orchestrator.testing.scratch import Scratch

#: table -> {"columns": {name: "TYPE NULL"}, "pk": [...], "indexes": [...], "uniques": [...], "fks": [...]}
Schema = dict[str, dict[str, Any]]


class KitFailure(AssertionError):
    """A generated test failed; the message names the database, the revision and what differed."""


@dataclass
class Runner:
    """Migrations of one database of a scratch project (see the module docstring)."""

    scratch: Scratch
    _ensured: bool = False

    @property
    def name(self) -> str:
        return self.scratch.name

    @property
    def project(self) -> Any:
        return self.scratch.project

    def targets(self) -> list[Target]:
        return targets_of(self.scratch.database)

    def _changing(self, command: str, revision: str) -> Outcome:
        call = getattr(commands, command)
        outcome: Outcome = call(self.project, Selection((self.name,)), RunOptions(), revision).outcome
        bad = [r for r in outcome.results if not r.status.succeeded]
        if bad:
            raise KitFailure("\n".join(_failure_text(command, revision, r) for r in bad))
        return outcome

    def upgrade(self, revision: str = "heads") -> Outcome:
        return self._changing("upgrade", revision)

    def downgrade(self, revision: str) -> Outcome:
        return self._changing("downgrade", revision)

    def all(self, revision: str = "heads") -> Outcome:
        """``upgrade --all`` over every database of the scratch project (depends_on order)."""
        outcome: Outcome = commands.upgrade(self.project, Selection(all_=True), RunOptions(), revision).outcome
        bad = [r for r in outcome.results if not r.status.succeeded]
        if bad:
            raise KitFailure("\n".join(_failure_text("upgrade --all", revision, r) for r in bad))
        return outcome

    def current(self) -> dict[str, list[str]]:
        """target -> the revisions in its version table."""
        outcome = commands.current(self.project, Selection((self.name,)))
        return {r.target: list(r.after or []) for r in outcome.results}

    def check(self) -> list[TargetResult]:
        """What ``orchestrate check`` says for every target."""
        return commands.check(self.project, Selection((self.name,))).results

    @contextlib.contextmanager
    def connection(self, target: Target | None = None) -> Iterator[Connection]:
        """A plain connection to a target (the first one by default), committed on exit."""
        target = target or self.targets()[0]
        activate(self.project)
        dialect = dialect_for(target)
        engine = create_engine(dialect.sync_url(target), poolclass=NullPool)
        try:
            with engine.begin() as connection:
                if target.schema is not None:
                    dialect.use_schema(connection, target, create=False)
                yield connection
        finally:
            engine.dispose()

    def ensure(self) -> None:
        """Create every target's storage (its schema or database) and empty version table,
        so that it can be read before the first revision ran."""
        from orchestrator.workflow import ensure_version

        outcome = ensure_version(self.project, Selection((self.name,)))
        bad = [r for r in outcome.results if not r.status.succeeded]
        if bad:
            raise KitFailure("\n".join(f"{r.target}: could not create its version table: {r.error}" for r in bad))

    def schema(self, target: Target | None = None) -> Schema:
        """The tables of a target (the first by default), without the version table."""
        target = target or self.targets()[0]
        if not self._ensured:
            self.ensure()
            self._ensured = True
        with self.connection(target) as connection:
            return read_schema(connection, target.schema, {self.scratch.database.version_table})


def _failure_text(command: str, revision: str, result: TargetResult) -> str:
    where = f" at revision {result.failed_revision}" if result.failed_revision else ""
    return f"{result.target}: `{command} {revision}` {result.status.value}{where}: {result.error or ''}".rstrip()


def read_schema(connection: Connection, schema: str | None, skip: set[str]) -> Schema:
    """Every table's columns, primary key, indexes, unique constraints and foreign keys."""
    inspector = inspect(connection)
    found: Schema = {}
    for table in sorted(inspector.get_table_names(schema=schema)):
        if table in skip:
            continue
        columns = {c["name"]: f"{c['type']}{'' if c.get('nullable', True) else ' NOT NULL'}"
                   for c in inspector.get_columns(table, schema=schema)}
        pk = inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
        indexes = sorted(f"{i['name']}({', '.join(str(c) for c in i['column_names'])}){' UNIQUE' if i.get('unique') else ''}"
                         for i in inspector.get_indexes(table, schema=schema))
        uniques: list[str] = []
        with contextlib.suppress(NotImplementedError):
            uniques = sorted(f"{u['name']}({', '.join(u['column_names'])})"
                             for u in inspector.get_unique_constraints(table, schema=schema))
        fks = sorted(f"{f['name']}({', '.join(f['constrained_columns'])}) -> {f['referred_table']}"
                     f"({', '.join(f['referred_columns'])})" for f in inspector.get_foreign_keys(table, schema=schema))
        found[table] = {"columns": columns, "pk": list(pk), "indexes": indexes, "uniques": uniques, "fks": fks}
    return found


def schema_diff(expected: Schema, actual: Schema) -> list[str]:
    """How ``actual`` differs from ``expected``: ``+`` is there but should not be, ``-`` is missing."""
    lines: list[str] = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            lines.append(f"- table {table} is missing")
            continue
        if table not in expected:
            lines.append(f"+ table {table} was left behind ({', '.join(actual[table]['columns'])})")
            continue
        want, got = expected[table], actual[table]
        for column in sorted(set(want["columns"]) | set(got["columns"])):
            if column not in got["columns"]:
                lines.append(f"- column {table}.{column} is missing")
            elif column not in want["columns"]:
                lines.append(f"+ column {table}.{column} {got['columns'][column]} was left behind")
            elif want["columns"][column] != got["columns"][column]:
                lines.append(f"~ column {table}.{column}: {want['columns'][column]} -> {got['columns'][column]}")
        if want["pk"] != got["pk"]:
            lines.append(f"~ primary key of {table}: {want['pk']} -> {got['pk']}")
        for kind in ("indexes", "uniques", "fks"):
            for item in sorted(set(want[kind]) - set(got[kind])):
                lines.append(f"- {kind[:-1] if kind != 'indexes' else 'index'} {item} on {table} is missing")
            for item in sorted(set(got[kind]) - set(want[kind])):
                lines.append(f"+ {kind[:-1] if kind != 'indexes' else 'index'} {item} on {table} was left behind")
    return lines


def describe(outcome: Outcome) -> str:
    return ", ".join(f"{r.target}: {r.status.value}" for r in outcome.results if r.status is not Status.NOOP)
