"""Replay: run a revision's SQL, recorded on tenants that ran it live, on the others.

Migrating a fleet runs the same revisions on hundreds of identical schemas, and most of
the time goes into Alembic and SQLAlchemy building the same statements again (table
objects, reflection for batch mode, DDL compilation), not into the database. A worker
records the driver-level statements of each revision it runs live, keyed by the schema
it started from, and replays them on the next tenants.

``replay: auto`` (the default, for databases with tenants) replays a recording only once
it is **verified**: a second tenant, run live from the same schema fingerprint, sent the
same statements with the same parameters and reached the same schema. That catches values
a revision makes in Python per run (``uuid4()``, ``datetime.now()``) without anyone
declaring them. ``replay: true`` replays from the first recording on; ``false`` never.

A recording is never made (the revision always runs live) when:

- the tenant's schema cannot be fingerprinted (the dialect's catalog, without the
  tenant's own name, is part of the key), or differs from the recording's;
- the revision reads data (a statement that returned rows, reflection aside): it may
  decide per tenant;
- a statement names the tenant's own schema or database (its real name on the server);
- the revision commits inside itself (``autocommit_block()``, e.g. PostgreSQL's
  ``CREATE INDEX CONCURRENTLY``): it runs outside the per-revision transaction;
- the revision sends SQL on a connection of its own (an engine it made): a recording would
  miss it;
- the module says ``orchestrate_replay = False``;
- the module holds other values after import than on the run that recorded it.

**Whole-tenant batches.** A tenant whose pending revisions all have verified recordings
(and a linear path, upgrading) skips Alembic: each revision is one transaction holding its
recorded statements and the version table update, sent as one execution per revision where
the driver allows it (:attr:`Dialect.batch`). A failure rolls back that revision only, and
the version table, read again, says which revisions committed.
"""
from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from orchestrator import alembic_compat
from orchestrator.dialects import Dialect
from orchestrator.targets import Target

# Why a revision ran live (the report's ``live`` counts these).
FIRST = "first run of it here (recorded)"
CHECKING = "second run here (checked against the first)"
OPTED_OUT = "orchestrate_replay = False"
NO_FINGERPRINT = "this server's schemas cannot be fingerprinted"
DIFFERS = "its SQL or result differed between two tenants (values made in Python?)"
READS = "it reads data"
NAMES_TENANT = "its SQL names the tenant"
COMMITS = "it commits inside the revision (autocommit_block)"
ELSEWHERE = "it runs SQL on a connection of its own"
NOT_REVISION = "not a revision step"


@dataclass
class Recording:
    statements: tuple[tuple[str, Any, bool], ...]  # (statement, parameters, executemany)
    fingerprint_after: str
    verified: bool = False


@dataclass(frozen=True)
class Refused:
    why: str


def mode_of(target: Target) -> bool | str:
    """The database's replay mode for this target: "auto", True or False. "auto" is off
    where there is no fleet (one target gains nothing from a recording)."""
    mode = target.database.replay
    if mode == "auto" and target.database.tenants is None:
        return False
    return mode


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
            self.why_not = self.why_not or READS
        if self.tenant_pattern is not None and self.tenant_pattern.search(statement):
            self.why_not = self.why_not or NAMES_TENANT
        self.statements.append((statement, parameters, many))

    def on_commit(self, _conn: Any) -> None:
        self.why_not = self.why_not or COMMITS

    @contextmanager
    def listening(self, connection: Connection) -> Iterator[None]:
        """Record what ``connection`` sends while the revision runs; and notice SQL the
        revision sends, from this thread, on any other connection (an engine of its own):
        a recording would miss it."""
        me = threading.get_ident()

        def elsewhere(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if conn is not connection and threading.get_ident() == me and not self.dialect.is_catalog_query(statement):
                self.why_not = self.why_not or ELSEWHERE

        event.listen(connection, "after_cursor_execute", self.after_execute)
        event.listen(connection, "commit", self.on_commit)
        event.listen(Engine, "after_cursor_execute", elsewhere)
        try:
            yield
        finally:
            event.remove(connection, "after_cursor_execute", self.after_execute)
            event.remove(connection, "commit", self.on_commit)
            event.remove(Engine, "after_cursor_execute", elsewhere)


@dataclass
class ReplayState:
    """What replay did for one target: its schema fingerprint as it goes, and counts."""

    mode: bool | str = "auto"
    fingerprint: str | None = None
    fingerprinted: bool = False  # fingerprint is known (None then means: not supported)
    replayed: int = 0
    live: Counter[str] = field(default_factory=Counter)

    def ran_live(self, why: str) -> None:
        self.live[why] += 1


def tenant_pattern(target: Target, dialect: Dialect) -> re.Pattern[str] | None:
    own = dialect.own_name(target)
    return re.compile(rf"(?<![\w$]){re.escape(own)}(?![\w$])") if own else None


class Replayer:
    """One per Workspace, so per worker process; keeps recordings for the whole run."""

    def __init__(self) -> None:
        self._recordings: dict[tuple[Any, ...], Recording | Refused] = {}
        # Verified recordings by (database, revision, direction, dialect, fingerprint): the
        # module's import state was the same on both live runs, so a batch needs no import.
        self._verified: dict[tuple[Any, ...], Recording] = {}
        #: A batch transaction's text by what makes it (see :func:`run_batch`).
        self.texts: dict[Any, str | None] = {}

    # ------------------------------------------------------------------ step by step

    def wrap(self, steps: list[Any], connection: Connection, target: Target, dialect: Dialect,
             state: ReplayState) -> list[Any]:
        """Steps whose migration functions replay a recording when one fits."""
        pattern = tenant_pattern(target, dialect)
        return [_Step(step, self._runner(step, connection, target, dialect, state, pattern))
                if alembic_compat.is_revision_step(step) else step for step in steps]

    def _runner(self, step: Any, connection: Connection, target: Target, dialect: Dialect,
                state: ReplayState, pattern: re.Pattern[str] | None) -> Callable[..., None]:
        original = step.migration_fn
        opted_out = getattr(step.revision.module, "orchestrate_replay", True) is False

        def run(**kw: Any) -> None:
            if not state.fingerprinted:
                state.fingerprint, state.fingerprinted = dialect.schema_fingerprint(connection), True
            if state.fingerprint is None:
                state.ran_live(NO_FINGERPRINT)
                original(**kw)
                return
            key = (*_base_key(target, step, state.fingerprint), getattr(step, "import_state", None))
            entry = self._recordings.get(key)
            if opted_out:
                why: str = OPTED_OUT
            elif isinstance(entry, Refused):
                why = entry.why
            elif entry is None:
                why = FIRST
            elif entry.verified or state.mode is True:
                for statement, parameters, many in entry.statements:
                    _execute(connection, statement, parameters, many)
                state.fingerprint = entry.fingerprint_after
                state.replayed += 1
                return
            else:
                why = CHECKING
            recorder = _Recorder(dialect, pattern) if why in (FIRST, CHECKING) else None
            if recorder is None:
                original(**kw)
            else:
                with recorder.listening(connection):
                    original(**kw)
            after = dialect.schema_fingerprint(connection)
            if recorder is not None:
                if recorder.why_not or after is None:
                    why = recorder.why_not or NO_FINGERPRINT
                    self._recordings[key] = Refused(why)
                elif isinstance(entry, Recording):  # the check: same SQL, same result
                    if entry.statements == tuple(recorder.statements) and entry.fingerprint_after == after:
                        entry.verified = True
                        self._verified[key[:-1]] = entry
                    else:
                        self._recordings[key] = Refused(DIFFERS)
                        self._verified.pop(key[:-1], None)
                        why = DIFFERS
                else:
                    self._recordings[key] = Recording(tuple(recorder.statements), after)
            state.fingerprint = after
            state.ran_live(why)

        return run

    # ------------------------------------------------------------------ whole tenant

    def batch(self, target: Target, dialect: Dialect, steps: list[Any], heads: list[str],
              fingerprint: str | None) -> list[tuple[Any, Recording]] | None:
        """The verified recordings for all of ``steps`` from ``heads`` and ``fingerprint``,
        when they make a whole-tenant batch: upgrades along a linear path, each with a
        verified recording. None otherwise (the steps run through Alembic)."""
        if dialect.batch is None or not steps or fingerprint is None or len(heads) > 1:
            return None
        head = heads[0] if heads else None
        planned = []
        for step in steps:
            if not alembic_compat.is_revision_step(step) or not step.is_upgrade:
                return None
            revision = step.revision
            if revision.down_revision != head or revision.dependencies:
                return None  # a merge, a branch or a dependency: Alembic's head bookkeeping
            if getattr(revision.module, "orchestrate_replay", True) is False:
                return None
            recording = self._verified.get(_base_key(target, step, fingerprint))
            if recording is None:
                return None
            planned.append((step, recording))
            fingerprint, head = recording.fingerprint_after, revision.revision
        return planned


def _base_key(target: Target, step: Any, fingerprint: str) -> tuple[Any, ...]:
    return (target.database.name, step.revision.revision, step.is_upgrade, target.dialect, fingerprint)


def _execute(connection: Connection, statement: str, parameters: Any, many: bool) -> None:
    """Send a recorded statement as the driver received it the first time (errors are
    wrapped by SQLAlchemy, statement included, like a live one's)."""
    if many:
        connection.exec_driver_sql(statement, list(parameters))
    elif parameters:
        connection.exec_driver_sql(statement, parameters)
    else:
        connection.exec_driver_sql(statement)


@dataclass
class Block:
    """One revision of a batch: its transaction's statements, the version update last.
    ``key`` names what makes its text (recording, version transition): equal keys, equal text."""

    revision: str
    statements: list[tuple[str, Any, bool]]
    key: tuple[Any, ...] = ()


def run_batch(connection: Connection, dialect: Dialect, blocks: list[Block], *, per_revision: bool,
              committed: Callable[[str], None], texts: dict[Any, str | None] | None = None) -> None:
    """Run ``blocks`` straight on the driver connection: each revision in a transaction of
    its own (or all in one when not ``per_revision``), as one execution per transaction
    where :attr:`Dialect.batch` is "script" (bound values rendered as the driver's own
    literals, the text kept in ``texts`` for the next tenant). A failure rolls the open
    transaction back and raises a :class:`DBAPIError` carrying the failing statement."""
    if connection.in_transaction():
        connection.commit()
    raw = connection.connection.dbapi_connection
    assert raw is not None
    error = connection.dialect.loaded_dbapi.Error
    groups = [[block] for block in blocks] if per_revision else [blocks]
    texts = {} if texts is None else texts
    with dialect.own_transactions(raw):  # our BEGIN/COMMIT are the transactions
        cursor = raw.cursor()
        statement: str = "BEGIN"
        parameters: Any = None
        try:
            for group in groups:
                script = _script(raw, dialect, group, texts) if dialect.batch == "script" else None
                if script is not None:
                    statement, parameters = script, None
                    cursor.execute(statement)
                else:
                    statement, parameters = "BEGIN", None
                    cursor.execute(statement)
                    for statement, parameters, many in (s for block in group for s in block.statements):
                        if many:
                            cursor.executemany(statement, parameters)
                        elif parameters is not None:
                            cursor.execute(statement, parameters)
                        else:
                            cursor.execute(statement)
                    statement, parameters = "COMMIT", None
                    cursor.execute(statement)
                for block in group:
                    committed(block.revision)
        except error as exc:
            try:
                cursor.execute("ROLLBACK")
            except error:
                pass  # nothing open (it failed at COMMIT), or the connection is gone
            raise DBAPIError(statement, parameters, exc) from exc
        finally:
            try:
                cursor.close()
            except Exception:  # noqa: BLE001 - a broken connection: keep the first error
                pass


def _script(raw: Any, dialect: Dialect, group: list[Block], texts: dict[Any, str | None]) -> str | None:
    """One transaction's text: BEGIN, the statements with their values inlined, COMMIT;
    None when a value cannot be rendered as a literal (the statements then go one by one)."""
    key = tuple(block.key for block in group) if all(block.key for block in group) else None
    if key is not None and key in texts:
        return texts[key]
    parts: list[str] | None = ["BEGIN"]
    for statement, parameters, many in (s for block in group for s in block.statements):
        # Bound, even with no values (the driver then read %% as %): rendered by the driver.
        rendered = statement if parameters is None else dialect.inline(raw, statement, parameters, many)
        if rendered is None or parts is None:
            parts = None
            break
        parts.append(rendered)
    text = None if parts is None else ";\n".join([*parts, "COMMIT"])
    if key is not None:
        texts[key] = text
    return text


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
