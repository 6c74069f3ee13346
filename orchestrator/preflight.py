"""``orchestrate preflight``: what each pending revision will do to each real target, read-only.

Per target: the pending revisions; each statement of their offline SQL (classified by
:mod:`orchestrator.lint`) with the lock it takes, the live size of the table it touches
(server statistics: ``pg_class``, MySQL ``information_schema.tables``, SQLite counts) and
a time class; the lint rules each statement breaks; and the revisions' data checks
(``orchestrate_checks = ["SELECT ... that must return no rows"]`` in a revision module),
run before anything is applied, each with ``passed`` and the offending ``rows``.

Time classes (FIGURES): ``instant`` when the statements change metadata only or touch
tables under 10,000 rows; ``seconds`` up to 1,000,000 rows; ``minutes+`` above, for the
statements that scan or rewrite. A target fails preflight when a check fails or its time
class exceeds ``preflight: {max_risk: ...}`` of its database.

Nothing is written: the connection takes no migration lock, checks run in read-only
transactions that are rolled back, and a SQLite file that does not exist is not created.
What differs between servers is kept in the dicts below, keyed by dialect name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alembic.script import Script
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from orchestrator import operations
from orchestrator import scripts as planning
from orchestrator.config import Project, activate
from orchestrator.dialects import dialect_for
from orchestrator.lint import Linter, Statement, pending_revisions
from orchestrator.operations import Workspace
from orchestrator.plan import Plan
from orchestrator.results import Outcome, Status, TargetResult
from orchestrator.targets import Target
from orchestrator.urls import mask_text

INSTANT, SECONDS, MINUTES = "instant", "seconds", "minutes+"
TIME_CLASSES = (INSTANT, SECONDS, MINUTES)
#: Row thresholds of the time classes (FIGURES, issue 10).
INSTANT_ROWS, SECONDS_ROWS = 10_000, 1_000_000
#: Rows counted at most when the server has no estimate (a bounded COUNT).
COUNT_LIMIT = SECONDS_ROWS + 1

#: dialect -> SQL giving (table, estimated rows, bytes) for the tables named in :names,
#: in the target's own schema/database. Rows may be NULL/-1 (no statistics yet).
SIZE_SQL: dict[str, str] = {
    "postgresql": "SELECT c.relname, c.reltuples, c.relpages::bigint * current_setting('block_size')::bigint "
                  "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'm') AND c.relname IN :names",
    "mysql": "SELECT table_name, table_rows, data_length + index_length FROM information_schema.tables "
             "WHERE table_schema = DATABASE() AND table_name IN :names",
    "sqlite": "SELECT name, NULL, NULL FROM sqlite_master WHERE type = 'table' AND name IN :names",
}
#: dialect -> SQL giving the bytes of one table (:name), where the server can tell cheaply.
BYTES_SQL: dict[str, str] = {
    "sqlite": "SELECT SUM(pgsize) FROM dbstat WHERE name = :name",
}
#: dialect -> (statements that make the next transaction read-only, statements that undo it).
READ_ONLY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "postgresql": (("SET TRANSACTION READ ONLY",), ()),
    "mysql": (("SET TRANSACTION READ ONLY",), ()),
    "sqlite": (("PRAGMA query_only = ON",), ("PRAGMA query_only = OFF",)),
}
#: dialect -> statement kind (lint.classify) -> the lock it takes.
LOCKS: dict[str, dict[str, str]] = {
    "postgresql": {
        "create_table": "none (new table)",
        "create_index": "SHARE (blocks writes)",
        "create_index_concurrently": "SHARE UPDATE EXCLUSIVE (online)",
        "add_constraint": "SHARE ROW EXCLUSIVE (blocks writes)",
        "validate_constraint": "SHARE UPDATE EXCLUSIVE (online)",
        "update": "ROW EXCLUSIVE (row locks)",
        "delete": "ROW EXCLUSIVE (row locks)",
        "insert": "ROW EXCLUSIVE",
        "drop_index": "ACCESS EXCLUSIVE",
        "other": "depends on the statement",
        "*": "ACCESS EXCLUSIVE (blocks reads and writes)",
    },
    "mysql": {
        "create_table": "none (new table)",
        "create_index": "SHARED metadata lock (blocks writes unless LOCK=NONE)",
        "alter_type": "EXCLUSIVE (table copy)",
        "update": "row locks",
        "delete": "row locks",
        "insert": "row locks",
        "other": "depends on the statement",
        "online": "none (online DDL, LOCK=NONE)",
        "*": "metadata lock (brief unless the table is copied)",
    },
    "sqlite": {
        "other": "depends on the statement",
        "*": "database write lock (whole file)",
    },
}


def lock_for(dialect: str, statement: Statement) -> str:
    """The lock a statement takes on this server (a readable name)."""
    locks = LOCKS.get(dialect, {})
    if "online" in locks and "LOCK=NONE" in statement.sql.upper().replace(" ", ""):
        return locks["online"]
    return locks.get(statement.kind, locks.get("*", "unknown"))


def time_class(rows: int | None, scans: bool) -> str:
    """``instant`` / ``seconds`` / ``minutes+`` for one statement touching ``rows`` rows."""
    if not scans or not rows or rows < INSTANT_ROWS:
        return INSTANT
    return SECONDS if rows <= SECONDS_ROWS else MINUTES


def worst(classes: list[str]) -> str:
    return max(classes, key=TIME_CLASSES.index, default=INSTANT)


@dataclass
class TargetPreflight:
    """One target's preflight: its result line and what the JSON report adds to it."""

    result: TargetResult
    time_class: str = INSTANT
    max_risk: str | None = None
    revisions: list[dict[str, Any]] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def risk_exceeded(self) -> bool:
        return self.max_risk is not None and TIME_CLASSES.index(self.time_class) > TIME_CLASSES.index(self.max_risk)

    def extra(self) -> dict[str, Any]:
        return {"time_class": self.time_class, "max_risk": self.max_risk, "risk_exceeded": self.risk_exceeded,
                "pending_revisions": self.revisions, "statements": self.statements, "tables": self.tables,
                "checks": self.checks}


def checks_of(revision: Script) -> list[str]:
    """A revision's ``orchestrate_checks``: SQL that must return no rows before it runs."""
    found = getattr(revision.module, "orchestrate_checks", None) or []
    if isinstance(found, str):
        found = [found]
    return [str(item).strip().rstrip(";") for item in found]


def run(project: Project, plan: Plan) -> list[TargetPreflight]:
    """Preflight every target of ``plan``, one after the other; read-only."""
    activate(project)
    out: list[TargetPreflight] = []
    with Workspace(project) as ws:
        linter = Linter(ws)
        for target in plan.targets:
            out.append(_one(ws, linter, target))
    return out


def _one(ws: Workspace, linter: Linter, target: Target) -> TargetPreflight:
    report = TargetPreflight(TargetResult.for_target(target, Status.OK))
    report.max_risk = target.database.preflight_max_risk

    def work() -> TargetResult:
        _inspect(ws, linter, target, report)
        return report.result

    result = operations.attempt(target, work)
    report.result = result
    if result.status is Status.OK:
        problems = [f"check of {c['revision']} failed: {c['rows'] if c['rows'] is not None else '?'} "
                    f"offending row(s): {c['sql']}" + (f" ({c['error']})" if c.get("error") else "")
                    for c in report.checks if not c["passed"]]
        if report.risk_exceeded:
            problems.append(f"estimated time class {report.time_class} exceeds preflight.max_risk {report.max_risk}")
        if problems:
            result.status = Status.FAILED
            result.error = mask_text(f"{target.name}: " + "; ".join(problems))
            result.hint = "fix the data (or the revision) before upgrading" if any(
                not c["passed"] for c in report.checks) else "split the revision, or raise preflight.max_risk"
    return report


def _inspect(ws: Workspace, linter: Linter, target: Target, report: TargetPreflight) -> None:
    database = target.database
    script = ws.scripts.script(database)
    dialect = dialect_for(target)
    missing = dialect.file_missing(target)

    def read(connection: Connection) -> tuple[list[str], dict[str, dict[str, Any]], list[dict[str, Any]]]:
        heads = operations.current_heads(connection, target)
        revisions = pending_revisions(script, [heads])
        tables = {s.table for rev in revisions for s in linter.revision(database, rev).statements if s.table}
        sizes = table_sizes(connection, dialect.name, sorted(tables))
        checks = [run_check(connection, dialect.name, rev.revision, sql)
                  for rev in revisions for sql in checks_of(rev)]
        return heads, sizes, checks

    heads: list[str]
    sizes: dict[str, dict[str, Any]]
    checks: list[dict[str, Any]]
    if missing:
        heads, sizes, checks = [], {}, [
            {"revision": rev.revision, "sql": sql, "passed": True, "rows": 0, "error": None}
            for rev in pending_revisions(script, [[]]) for sql in checks_of(rev)]
    else:
        heads, sizes, checks = ws.session(target).run(read)
    report.checks = checks
    report.tables = sizes
    head, pending = planning.position(script, heads)
    result = report.result
    result.before = result.after = heads
    result.head, result.pending, result.missing = head, pending, missing
    classes: list[str] = []
    for rev in pending_revisions(script, [heads]):
        lint = linter.revision(database, rev)
        rev_classes: list[str] = []
        for statement in lint.statements:
            size = sizes.get(statement.table or "", {})
            rows = size.get("rows") if statement.table else None
            klass = time_class(rows, statement.scans)
            rev_classes.append(klass)
            report.statements.append({
                "revision": rev.revision, "sql": statement.sql[:300], "kind": statement.kind,
                "table": statement.table, "lock": lock_for(dialect.name, statement),
                "rows": rows, "bytes": size.get("bytes"), "scans": statement.scans, "time_class": klass,
                "findings": list(statement.rules),
                "note": _note(statement, rows),
            })
        classes.extend(rev_classes)
        report.revisions.append({
            "revision": rev.revision, "message": lint.message, "time_class": worst(rev_classes),
            "findings": [f.to_json() for f in lint.findings], "silenced": lint.silenced, "sql_error": lint.error,
        })
    report.time_class = worst(classes)


def _note(statement: Statement, rows: int | None) -> str | None:
    """What the size says about a statement beyond its time (None: nothing)."""
    if "NOT-NULL-NO-DEFAULT" in statement.rules and rows:
        return f"fails: the table holds {rows} rows and the new NOT NULL column has no default"
    return None


def table_sizes(connection: Connection, dialect: str, tables: list[str]) -> dict[str, dict[str, Any]]:
    """Table -> {"rows", "bytes", "estimated"} for the tables that exist (statistics first,
    a bounded COUNT when the server has none)."""
    if not tables or dialect not in SIZE_SQL:
        return {}
    query = text(SIZE_SQL[dialect]).bindparams(bindparam("names", expanding=True))
    found = {row[0]: (row[1], row[2]) for row in connection.execute(query, {"names": tables})}
    quote = connection.dialect.identifier_preparer.quote
    sizes: dict[str, dict[str, Any]] = {}
    for name, (rows, size) in found.items():
        estimated = rows is not None and rows >= 0
        if not estimated:
            rows = connection.execute(text(
                f"SELECT COUNT(*) FROM (SELECT 1 FROM {quote(name)} LIMIT {COUNT_LIMIT}) AS orchestrate_count"
            )).scalar()
        if size is None and dialect in BYTES_SQL:
            try:
                size = connection.execute(text(BYTES_SQL[dialect]), {"name": name}).scalar()
            except Exception:  # noqa: BLE001 - this build of the server cannot tell
                connection.rollback()
                size = None
        sizes[name] = {"rows": int(rows or 0), "bytes": int(size) if size is not None else None,
                       "estimated": estimated}
    connection.rollback()
    return sizes


def run_check(connection: Connection, dialect: str, revision: str, sql: str) -> dict[str, Any]:
    """Count the rows a data check returns, in a read-only transaction that is rolled back."""
    begin, end = READ_ONLY.get(dialect, ((), ()))
    entry: dict[str, Any] = {"revision": revision, "sql": sql, "passed": False, "rows": None, "error": None}
    if connection.in_transaction():
        connection.rollback()
    try:
        for statement in begin:
            connection.execute(text(statement))
        rows = connection.execute(text(f"SELECT COUNT(*) FROM ({sql}) AS orchestrate_check")).scalar()
        entry["rows"] = int(rows or 0)
        entry["passed"] = entry["rows"] == 0
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, and says why
        entry["error"] = operations.error_text(exc).splitlines()[0]
    finally:
        connection.rollback()
        for statement in end:
            connection.execute(text(statement))
        if connection.in_transaction():
            connection.rollback()
    return entry


def outcome_of(reports: list[TargetPreflight]) -> Outcome:
    return Outcome([r.result for r in reports])


def document_extras(reports: list[TargetPreflight]) -> dict[str, dict[str, Any]]:
    """Target name -> the fields preflight adds to its entry of the report document."""
    return {r.result.target: r.extra() for r in reports}


def print_document(console: Any, document: dict[str, Any]) -> None:
    """Preflight for people: one line per target, then its risky statements and failed checks."""
    from rich.text import Text

    styles = {INSTANT: "green", SECONDS: "yellow", MINUTES: "bold red"}
    for entry in document["targets"]:
        if entry["status"] == Status.FAILED.value and "time_class" not in entry:
            console.print(Text(f"{entry['target']:<24} failed   {entry.get('error')}", style="bold red"))
            continue
        klass = entry.get("time_class", INSTANT)
        failed = [c for c in entry.get("checks", []) if not c["passed"]]
        line = Text(f"{entry['target']:<24} ", style="bold")
        line.append(f"{klass:<9}", style=styles.get(klass, ""))
        line.append(f" {entry.get('pending') or 0} pending")
        if entry.get("checks"):
            line.append(f", checks: {len(failed)} failed" if failed else ", checks passed",
                        style="bold red" if failed else "green")
        if entry.get("risk_exceeded"):
            line.append(f", exceeds max_risk {entry.get('max_risk')}", style="bold red")
        console.print(line)
        for statement in entry.get("statements", []):
            if statement["time_class"] != INSTANT or statement["findings"]:
                rows = statement["rows"]
                console.print(Text(
                    f"    {statement['time_class']:<9} {statement['revision']} {statement['sql'][:100]}  "
                    f"[{statement['table']}: {rows if rows is not None else '?'} rows{_size(statement['bytes'])}; "
                    f"lock {statement['lock']}"
                    + (f"; {', '.join(statement['findings'])}" if statement["findings"] else "") + "]"
                    + (f" {statement['note']}" if statement.get("note") else ""),
                    style=styles.get(statement["time_class"], "")))
        for check in failed:
            rows = check["rows"]
            console.print(Text(f"    check failed ({rows if rows is not None else '?'} rows) {check['revision']}: "
                               f"{check['sql'][:120]}" + (f": {check['error']}" if check.get("error") else ""),
                               style="bold red"))


def _size(size: int | None) -> str:
    """``, 105.3 MB`` for people (nothing when the server could not tell)."""
    if not size:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1024:
            return f", {value:.0f} B" if unit == "B" else f", {value:.1f} {unit}"
        value /= 1024
    return f", {value:.1f} GB"
