"""``orchestrate lint``: static rules over each pending revision's offline SQL, per dialect.

Each revision is rendered on its own, offline (Alembic's ``as_sql``), through the project's
env.py for the database's dialect; its statements are split and classified
(:func:`classify`), and each rule of :data:`RULES` looks at them. A rule has a stable id,
a level (``error`` makes ``lint`` exit 1), a one-line reason and the safer alternative.
A revision silences a rule with a comment naming its id anywhere in its file::

    # orchestrate: ignore[INDEX-NOT-CONCURRENT]

:mod:`orchestrator.preflight` reuses the same classification to weigh each statement by
the live size of the table it touches.
"""
from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory

from orchestrator import operations
from orchestrator import scripts as planning
from orchestrator.config import DatabaseConfig
from orchestrator.dialects import for_backend
from orchestrator.operations import Workspace, error_text, run_env
from orchestrator.plan import Plan
from orchestrator.results import Status, TargetResult
from orchestrator.targets import make_target

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Rule:
    """One lint rule: a stable id, its level, why it is risky and what to do instead."""

    id: str
    level: str
    reason: str
    safer: str
    dialects: frozenset[str] | None = None  # None: every dialect


def _rule(id_: str, level: str, reason: str, safer: str, *dialects: str) -> Rule:
    return Rule(id_, level, reason, safer, frozenset(dialects) if dialects else None)


RULES: dict[str, Rule] = {r.id: r for r in (
    _rule("NOT-NULL-NO-DEFAULT", ERROR,
          "adds a NOT NULL column without a server default: fails on a table with rows, or rewrites it",
          "add it nullable (or with server_default), backfill in batches, then set NOT NULL"),
    _rule("INDEX-NOT-CONCURRENT", ERROR,
          "builds an index while holding a SHARE lock: writes to the table wait for the whole build",
          "op.create_index(..., postgresql_concurrently=True) inside op.get_context().autocommit_block()",
          "postgresql"),
    _rule("CONCURRENT-IN-TRANSACTION", ERROR,
          "CREATE INDEX CONCURRENTLY cannot run inside a transaction block: the revision will fail",
          "wrap it in `with op.get_context().autocommit_block():`", "postgresql"),
    _rule("TYPE-REWRITE", ERROR,
          "changes a column type (or recreates the table): the whole table is rewritten under an exclusive lock",
          "add a new column, backfill it in batches, switch the code over, then drop the old column"),
    _rule("TABLE-RECREATE", WARNING,
          "batch mode recreates the table (copy and move): every row is copied while the database is locked",
          "keep batch operations for small tables; on large ones split the change or use a server with ALTER",
          "sqlite"),
    _rule("DML-NO-WHERE", ERROR,
          "UPDATE/DELETE without WHERE touches every row in one transaction (long locks, bloat)",
          "add a WHERE clause, or update in bounded batches (WHERE id BETWEEN ...)"),
    _rule("CONSTRAINT-NOT-VALID", WARNING,
          "adds a FOREIGN KEY/CHECK that scans the whole table while holding its lock",
          "add it with NOT VALID (postgresql_not_valid=True), then ALTER TABLE ... VALIDATE CONSTRAINT",
          "postgresql"),
    _rule("DROP-IN-MODELS", WARNING,
          "drops a table or column the models still use: running code breaks until it is deployed",
          "remove it from the models and deploy first; drop it in a later release"),
    _rule("RENAME-IN-MODELS", WARNING,
          "renames a table or column the models still use by its old name: running code breaks",
          "add the new name, write to both, move readers over, then drop the old one"),
    _rule("INDEX-NOT-ONLINE", WARNING,
          "builds an index (or alters) without ALGORITHM=INPLACE, LOCK=NONE: writes may block",
          "op.execute('ALTER TABLE t ADD INDEX ix (col), ALGORITHM=INPLACE, LOCK=NONE')", "mysql"),
    _rule("LOCK-TIMEOUT-OVERRIDE", WARNING,
          "the revision sets its own lock timeout, replacing the lock_timeout orchestrate sets",
          "drop the SET; tune `lock_timeout:` for the database in orchestrate.yaml"),
    _rule("NO-LOCK-TIMEOUT", WARNING,
          "an ALTER runs with no lock_timeout in force (lock_timeout: 0): it may queue behind a long "
          "transaction and block every query behind it",
          "set `lock_timeout:` (e.g. 5s) for the database in orchestrate.yaml", "postgresql"),
    _rule("OFFLINE-SQL-FAILED", WARNING,
          "the revision could not be rendered as offline SQL, so lint could not look at it",
          "use op.execute()/op.* instead of the connection (op.get_bind()) where possible"),
)}

_BATCH_RECREATE = re.compile(r'batch mode with dialect \w+ requires a live database connection with which to '
                             r'reflect the table "([^"]+)"')
_IGNORE = re.compile(r"#\s*orchestrate:\s*ignore\[([^\]]*)\]", re.IGNORECASE)
_NAME = r'(?:[`"\[]?[\w$]+[`"\]]?\.)?[`"\[]?([\w$]+)[`"\]]?'
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (kind, re.compile(pattern, re.IGNORECASE | re.DOTALL)) for kind, pattern in (
        ("begin", r"^(BEGIN|START TRANSACTION)\b"),
        ("commit", r"^(COMMIT|END)\b"),
        ("create_table", rf"^CREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}"),
        ("create_index", rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
                         rf"(?:{_NAME}\s+)?ON\s+(?:ONLY\s+)?{_NAME}"),
        ("drop_index", r"^DROP\s+INDEX\b"),
        ("alter_table", rf"^ALTER\s+TABLE\s+(?:ONLY\s+)?(?:IF\s+EXISTS\s+)?{_NAME}\s*(.*)$"),
        ("drop_table", rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_NAME}"),
        ("rename_table", rf"^RENAME\s+TABLE\s+{_NAME}\s+TO\s+{_NAME}"),
        ("update", rf"^UPDATE\s+(?:ONLY\s+)?{_NAME}"),
        ("delete", rf"^DELETE\s+FROM\s+(?:ONLY\s+)?{_NAME}"),
        ("insert", rf"^(?:INSERT|REPLACE)\s+INTO\s+{_NAME}"),
        ("set", r"^SET\s+(?:LOCAL\s+|SESSION\s+)?(?:@@)?(?:SESSION\.)?(lock_timeout|innodb_lock_wait_timeout|"
                r"lock_wait_timeout|busy_timeout)\b"),
        ("pragma", r"^PRAGMA\s+busy_timeout\b"),
    )
]


@dataclass
class Statement:
    """One statement of a revision's offline SQL, classified."""

    sql: str
    kind: str  # create_table, create_index, alter_table, update, delete, ... or "other"
    table: str | None = None
    #: Reads or rewrites every row of ``table`` (its time grows with the table's size).
    scans: bool = False
    rules: list[str] = field(default_factory=list)


@dataclass
class Finding:
    """A rule that hit one statement of one revision."""

    rule: str
    level: str
    database: str
    dialect: str
    revision: str
    path: str
    statement: str
    table: str | None
    reason: str
    safer: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RevisionLint:
    """What lint saw in one revision: its statements, the rules that hit, the ones silenced."""

    database: str
    dialect: str
    revision: str
    message: str
    path: str
    statements: list[Statement] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    silenced: list[str] = field(default_factory=list)
    error: str | None = None  # the offline rendering failed

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    def summary(self) -> dict[str, Any]:
        return {"revision": self.revision, "message": self.message, "path": self.path,
                "statements": len(self.statements), "silenced": self.silenced, "sql_error": self.error}


def split_sql(text: str) -> list[str]:
    """Offline SQL -> statements (comments and blank lines dropped, whitespace folded)."""
    out: list[str] = []
    for chunk in re.split(r";[ \t]*(?:\n|$)", text):
        lines = [line for line in chunk.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        statement = " ".join(" ".join(lines).split())
        if statement and statement != "/":
            out.append(statement)
    return out


def _name(value: str | None) -> str | None:
    return value.strip('`"[]') if value else None


def classify(sql: str) -> Statement:
    """What a statement does, on which table, and whether it reads every row."""
    for kind, pattern in _PATTERNS:
        match = pattern.match(sql)
        if not match:
            continue
        if kind == "create_index":
            upper = sql.upper()
            online = "CONCURRENTLY" in upper.split(" ON ")[0]
            return Statement(sql, "create_index_concurrently" if online else kind, _name(match.group(2)), scans=True)
        if kind == "alter_table":
            return _alter(sql, _name(match.group(1)), match.group(2) or "")
        if kind in ("set", "pragma"):
            return Statement(sql, "set_timeout")
        table = _name(match.group(1)) if match.groups() else None
        scans = kind in ("update", "delete")
        return Statement(sql, kind, table, scans=scans)
    return Statement(sql, "other")


def _alter(sql: str, table: str | None, rest: str) -> Statement:
    upper = " ".join(rest.upper().split())
    kind, scans = "alter_table", False
    change = re.match(r'CHANGE\s+(?:COLUMN\s+)?[`"]?([\w$]+)[`"]?\s+[`"]?([\w$]+)[`"]?', upper)
    if change and change[1] != change[2]:  # MySQL: CHANGE old new TYPE is a rename
        return Statement(sql, "rename_column", table)
    if re.search(r"\bALTER\s+(?:COLUMN\s+)?\S+\s+(?:SET\s+DATA\s+)?TYPE\b", upper) or re.match(
            r"(MODIFY|CHANGE)\b", upper):
        kind, scans = "alter_type", True
    elif re.search(r"\bSET\s+NOT\s+NULL\b", upper):
        kind, scans = "set_not_null", True
    elif re.search(r"\bVALIDATE\s+CONSTRAINT\b", upper):
        kind, scans = "validate_constraint", True
    elif re.search(r"\bADD\s+(?:CONSTRAINT\s+\S+\s+)?(?:FOREIGN\s+KEY|CHECK)\b", upper):
        kind, scans = "add_constraint", "NOT VALID" not in upper
    elif re.search(r"\bADD\s+(?:CONSTRAINT\s+\S+\s+)?(?:UNIQUE|PRIMARY\s+KEY)\b", upper) and "USING INDEX" not in upper:
        kind, scans = "add_unique", True
    elif re.search(r"\bADD\s+(?:UNIQUE\s+|FULLTEXT\s+)?(?:INDEX|KEY)\b", upper):
        kind, scans = "create_index", True
    elif re.match(r"ADD\s+(?:COLUMN\s+)?(?!CONSTRAINT\b)", upper):
        kind = "add_column"
    elif re.search(r"\bDROP\s+(?:COLUMN\s+)?(?!CONSTRAINT\b|INDEX\b|KEY\b|FOREIGN\b|PRIMARY\b|CHECK\b)", upper):
        kind = "drop_column"
    elif re.search(r"\bRENAME\s+(?:COLUMN\s+)?\S+\s+TO\b", upper) and not upper.startswith("RENAME TO"):
        kind = "rename_column"
    elif upper.startswith(("RENAME TO", "RENAME AS")):
        kind = "rename_table"
    return Statement(sql, kind, table, scans=scans)


# ---------------------------------------------------------------------- rendering


def silenced_in(path: str) -> set[str]:
    """Rule ids a revision file silences with ``# orchestrate: ignore[ID, ...]``."""
    try:
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
    except OSError:
        return set()
    return {part.strip().upper() for match in _IGNORE.finditer(source) for part in match[1].split(",") if part.strip()}


def render(ws: Workspace, database: DatabaseConfig, revision: Script) -> tuple[str, str | None]:
    """One revision's upgrade SQL, offline, for the database's dialect: (sql, error)."""
    target = make_target(database)
    script = ws.scripts.script(database)
    downs = tuple(d for d in _as_tuple(revision.down_revision))
    output = io.StringIO()

    def plan(_heads: tuple[str, ...], _context: MigrationContext) -> list[Any]:
        return [s for s in planning.steps(script, revision.revision, downs, True)
                if s.revision.revision == revision.revision]

    environment: dict[str, Any] = {"destination_rev": revision.revision}
    if downs:
        environment["starting_rev"] = downs
    try:
        run_env(ws, target, plan, None, output=output, **environment)
    except Exception as exc:  # noqa: BLE001 - a revision that needs a connection: said, not raised
        return output.getvalue(), error_text(exc)
    return output.getvalue(), None


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def model_columns(database: DatabaseConfig) -> dict[str, set[str]]:
    """Table name -> column names, from the database's models (empty without ``metadata:``)."""
    if database.metadata_ref is None:
        return {}
    metadata = database.metadata
    if metadata is None:
        return {}
    return {table.name: {c.name for c in table.columns} for table in metadata.tables.values()}


class Linter:
    """Lints revisions of databases; each revision is rendered and checked once."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._done: dict[tuple[str, str], RevisionLint] = {}
        self._models: dict[str, dict[str, set[str]]] = {}

    def revision(self, database: DatabaseConfig, revision: Script) -> RevisionLint:
        key = (database.name, revision.revision)
        if key not in self._done:
            self._done[key] = self._lint(database, revision)
        return self._done[key]

    def revisions(self, database: DatabaseConfig, revisions: Iterable[Script]) -> list[RevisionLint]:
        return [self.revision(database, rev) for rev in revisions]

    def _lint(self, database: DatabaseConfig, revision: Script) -> RevisionLint:
        dialect = for_backend(make_target(database).dialect).name
        path = str(revision.path)
        result = RevisionLint(database.name, dialect, revision.revision, (revision.doc or "").strip(), path)
        sql, result.error = render(self.ws, database, revision)
        if database.name not in self._models:
            self._models[database.name] = model_columns(database)
        models = self._models[database.name]
        silenced = silenced_in(path)
        in_transaction = False
        created: set[str] = set()
        version_table = database.version_table.lower()
        hits: list[tuple[str, Statement]] = []
        for text_ in split_sql(sql):
            statement = classify(text_)
            if statement.kind == "begin":
                in_transaction = True
                continue
            if statement.kind == "commit":
                in_transaction = False
                continue
            if statement.table and statement.table.lower() == version_table:
                continue
            result.statements.append(statement)
            if statement.kind == "create_table" and statement.table:
                created.add(statement.table)
            fresh = statement.table in created  # made by this revision: empty, nobody uses it yet
            if fresh:
                statement.scans = False
            hits.extend((found, statement) for found in
                        _rules_for(statement, dialect, in_transaction, fresh, models, database, created))
        recreate = _BATCH_RECREATE.search(result.error or "")
        if recreate:  # SQLite batch mode needs the live table: it copies the whole table
            statement = Statement(f"-- batch mode recreates table {recreate[1]}", "recreate_table", recreate[1],
                                  scans=recreate[1] not in created)
            result.statements.append(statement)
            hits.append(("TABLE-RECREATE", statement))
            result.error = None
        elif result.error:
            hits.append(("OFFLINE-SQL-FAILED", Statement(result.error.splitlines()[0], "other")))
        for rule_id, statement in hits:
            rule = RULES[rule_id]
            if rule.dialects is not None and dialect not in rule.dialects:
                continue
            if rule_id in silenced:
                if rule_id not in result.silenced:
                    result.silenced.append(rule_id)
                continue
            statement.rules.append(rule_id)
            result.findings.append(Finding(rule_id, rule.level, database.name, dialect, revision.revision, path,
                                           statement.sql[:300], statement.table, rule.reason, rule.safer))
        return result


def _rules_for(statement: Statement, dialect: str, in_transaction: bool, fresh: bool,
               models: dict[str, set[str]], database: DatabaseConfig, created: set[str]) -> list[str]:
    """The ids of the rules one statement breaks (before silencing and dialect filtering)."""
    kind, sql = statement.kind, statement.sql
    upper = sql.upper()
    hits: list[str] = []
    if kind == "set_timeout":
        return ["LOCK-TIMEOUT-OVERRIDE"]
    if kind == "create_index_concurrently" and in_transaction:
        hits.append("CONCURRENT-IN-TRANSACTION")
    if kind in ("update", "delete") and not re.search(r"\bWHERE\b", upper):
        hits.append("DML-NO-WHERE")
    if kind == "insert" and statement.table and statement.table.lower().startswith("_alembic_tmp_"):
        statement.kind, statement.scans = "recreate_table", True  # SQLite batch mode copies the table
        statement.table = statement.table[len("_alembic_tmp_"):]
        fresh = False
        hits.append("TABLE-RECREATE")
    if kind.startswith(("alter", "add", "set_", "validate", "drop_column", "rename", "create_index")) and \
            database.lock_timeout == 0 and kind != "create_index_concurrently" and not fresh:
        hits.append("NO-LOCK-TIMEOUT")
    if not fresh:
        if kind == "add_column" and re.search(r"\bNOT\s+NULL\b", upper) and not re.search(r"\bDEFAULT\b", upper):
            hits.append("NOT-NULL-NO-DEFAULT")
        if kind in ("create_index", "add_unique"):
            hits.append("INDEX-NOT-CONCURRENT")
            if not (re.search(r"ALGORITHM\s*=\s*INPLACE", upper) and re.search(r"LOCK\s*=\s*NONE", upper)):
                hits.append("INDEX-NOT-ONLINE")
        if kind in ("alter_type",):
            hits.append("TYPE-REWRITE")
        if kind == "add_constraint" and statement.scans:
            hits.append("CONSTRAINT-NOT-VALID")
    table = statement.table
    recreated = bool(table) and f"_alembic_tmp_{table}" in created  # SQLite batch mode: same table, new file
    if table and table in models and not recreated:
        if kind == "drop_table":
            hits.append("DROP-IN-MODELS")
        elif kind == "drop_column":
            column = _column_after(upper, r"DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?", sql)
            if column in models[table]:
                hits.append("DROP-IN-MODELS")
        elif kind in ("rename_table",):
            hits.append("RENAME-IN-MODELS")
        elif kind == "rename_column":
            column = _column_after(upper, r"(?:RENAME|CHANGE)\s+(?:COLUMN\s+)?", sql)
            if column in models[table]:
                hits.append("RENAME-IN-MODELS")
    if kind == "rename_table" and statement.table in models and "RENAME-IN-MODELS" not in hits:
        hits.append("RENAME-IN-MODELS")
    return hits


def _column_after(upper: str, pattern: str, sql: str) -> str | None:
    match = re.search(pattern + r'([`"\[]?[\w$]+[`"\]]?)', sql, re.IGNORECASE)
    return _name(match.group(1)) if match else None


# ---------------------------------------------------------------------- selection


def pending_revisions(script: ScriptDirectory, positions: Iterable[list[str] | None]) -> list[Script]:
    """The revisions not yet applied on at least one of ``positions`` (each a target's
    version table; None: unknown, counted as base), oldest first."""
    wanted: dict[str, Script] = {}
    for heads in {tuple(sorted(p)) if p is not None else () for p in positions}:
        for step in planning.steps(script, "heads", heads, True):
            wanted.setdefault(step.revision.revision, step.revision)
    order = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    return sorted(wanted.values(), key=lambda rev: order.index(rev.revision))


def range_revisions(script: ScriptDirectory, spec: str) -> list[Script]:
    """``FROM:TO`` -> the revisions after FROM up to TO, oldest first (FROM may be base)."""
    start, _, end = spec.rpartition(":")
    heads = () if start in ("", "base") else tuple(start.split(","))
    return [step.revision for step in planning.steps(script, end or "heads", heads, True)]


# ---------------------------------------------------------------------- a whole plan


@dataclass
class DatabaseLint:
    """Lint of one database: its result line, dialect and revisions."""

    result: TargetResult
    dialect: str
    revisions: list[RevisionLint] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for rev in self.revisions for f in rev.findings]

    def extra(self) -> dict[str, Any]:
        return {"dialect": self.dialect, "findings": [f.to_json() for f in self.findings],
                "revisions": [rev.summary() for rev in self.revisions]}


def lint_plan(ws: Workspace, plan: Plan, range_: str | None = None) -> list[DatabaseLint]:
    """Lint each database of ``plan``: the revisions in ``range_`` (``FROM:TO``), else the
    ones not yet applied on at least one selected target (a target that cannot be read
    counts as base). A database with an error-level finding is FAILED."""
    linter = Linter(ws)
    out: list[DatabaseLint] = []
    for database in plan.databases:
        target = make_target(database)
        dialect = for_backend(target.dialect).name
        holder = DatabaseLint(TargetResult.for_target(target, Status.OK), dialect)

        def work(database: DatabaseConfig = database, holder: DatabaseLint = holder) -> TargetResult:
            script = ws.scripts.script(database)
            if range_ is not None:
                revisions = range_revisions(script, range_)
            else:
                targets = [t for t in plan.targets if t.database.name == database.name]
                positions = [r.after if r.status.succeeded else None
                             for r in operations.read_versions(ws, database, targets)]
                revisions = pending_revisions(script, positions or [None])
            holder.revisions = linter.revisions(database, revisions)
            errors = [f for f in holder.findings if f.level == ERROR]
            result = holder.result
            result.revisions = [rev.summary() for rev in holder.revisions]
            result.pending = len(holder.revisions)
            if errors:
                result.status = Status.FAILED
                result.error = (f"{database.name}: {len(errors)} error-level finding(s): "
                                + ", ".join(sorted({f.rule for f in errors})))
                result.hint = "make the revision safe (see `safer`), or silence a rule with " \
                              "`# orchestrate: ignore[RULE-ID]` in the revision file"
            return result

        holder.result = operations.attempt(target, work)
        out.append(holder)
    return out


def print_document(console: Any, document: dict[str, Any]) -> None:
    """Lint findings for people: one block per finding, then a summary line."""
    from rich.text import Text

    errors = warnings = 0
    for entry in document["targets"]:
        if entry.get("error") and not entry.get("findings"):
            console.print(Text(f"{entry['target']}: {entry['error']}", style="bold red"))
        for finding in entry.get("findings", []):
            error = finding["level"] == ERROR
            errors, warnings = errors + error, warnings + (not error)
            console.print(Text.assemble(
                (f"{finding['level'].upper():<8}", "bold red" if error else "yellow"),
                (f"{finding['rule']}  ", "bold"),
                f"{finding['database']} {finding['revision']} ({finding['path']}): {finding['reason']}"))
            console.print(Text(f"    {finding['statement']}", style="dim"))
            console.print(Text(f"    safer: {finding['safer']}", style="cyan"))
    linted = sum(len(entry.get("revisions") or []) for entry in document["targets"])
    console.print(Text(f"{linted} revision(s) linted: {errors} error(s), {warnings} warning(s)",
                       style="bold red" if errors else ("yellow" if warnings else "green")))
