"""`orchestrate lint` (issue 10): each rule fires on a revision that breaks it and not on its
safe form, on PostgreSQL, MariaDB and SQLite where it applies; the silencing comment;
exit codes; by default only the revisions some target has not applied yet."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, sqlite_url
from fleet_helpers import write_revision

MODELS = '''
import sqlalchemy as sa

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(100)),
    sa.Column("age", sa.Integer),
    sa.Column("legacy", sa.String(20)),
)
'''

BASE = '''    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(100)),
        sa.Column("age", sa.Integer()),
        sa.Column("legacy", sa.String(20)),
        sa.Column("oldcol", sa.String(20)),
        sa.Column("oldcol2", sa.String(20)),
    )
    op.create_index("ix_accounts_email0", "accounts", ["email"])  # a new table: no finding'''

ALL = ("postgresql", "mysql", "sqlite")
PG_INDEX_SAFE = '''    with op.get_context().autocommit_block():
        op.create_index("ix_safe", "accounts", ["age"], postgresql_concurrently=True)'''
MYSQL_INDEX_SAFE = '''    op.execute("ALTER TABLE accounts ADD INDEX ix_safe (age), ALGORITHM=INPLACE, LOCK=NONE")'''
UNSAFE_INDEX = '''    op.create_index("ix_unsafe", "accounts", ["age"])'''

# rule -> (dialects where it applies, unsafe body, safe body (or per dialect))
CASES: dict[str, tuple[tuple[str, ...], str, str | dict[str, str]]] = {
    "NOT-NULL-NO-DEFAULT": (ALL,
        '''    op.add_column("accounts", sa.Column("n1", sa.Integer(), nullable=False))''',
        '''    op.add_column("accounts", sa.Column("n2", sa.Integer(), nullable=False, server_default="0"))'''),
    "INDEX-NOT-CONCURRENT": (("postgresql",), UNSAFE_INDEX, PG_INDEX_SAFE),
    "CONCURRENT-IN-TRANSACTION": (("postgresql",),
        '''    op.create_index("ix_conc", "accounts", ["email"], postgresql_concurrently=True)''', PG_INDEX_SAFE),
    "INDEX-NOT-ONLINE": (("mysql",), UNSAFE_INDEX, MYSQL_INDEX_SAFE),
    "TYPE-REWRITE": (ALL,
        '''    op.alter_column("accounts", "email", type_=sa.Text(), existing_type=sa.String(100))''',
        '''    op.add_column("accounts", sa.Column("email_text", sa.Text(), nullable=True))'''),
    "DML-NO-WHERE": (ALL,
        '''    op.execute("UPDATE accounts SET age = 0")
    op.execute("DELETE FROM accounts")''',
        '''    op.execute("UPDATE accounts SET age = 0 WHERE age IS NULL")
    op.execute("DELETE FROM accounts WHERE id < 0")'''),
    "CONSTRAINT-NOT-VALID": (("postgresql",),
        '''    op.create_check_constraint("ck_age", "accounts", "age >= 0")''',
        '''    op.execute("ALTER TABLE accounts ADD CONSTRAINT ck_age2 CHECK (age >= 0) NOT VALID")
    op.execute("ALTER TABLE accounts VALIDATE CONSTRAINT ck_age2")'''),
    "DROP-IN-MODELS": (ALL,
        '''    op.drop_column("accounts", "legacy")''',
        '''    op.drop_column("accounts", "oldcol")'''),
    "RENAME-IN-MODELS": (ALL,
        '''    op.alter_column("accounts", "email", new_column_name="mail", existing_type=sa.String(100))''',
        '''    op.alter_column("accounts", "oldcol2", new_column_name="newcol2", existing_type=sa.String(20))'''),
    "LOCK-TIMEOUT-OVERRIDE": (ALL,
        '''    op.execute({"postgresql": "SET lock_timeout = '1h'", "mysql": "SET SESSION innodb_lock_wait_timeout = 3600",
                "sqlite": "PRAGMA busy_timeout = 100000"}[op.get_context().dialect.name])''',
        '''    op.execute("UPDATE accounts SET age = 1 WHERE id = 1")'''),
    "TABLE-RECREATE": (("sqlite",),
        '''    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("oldcol")''',
        '''    op.add_column("accounts", sa.Column("note", sa.String(20), nullable=True))'''),
}
DIALECT_URL = {"postgresql": "pg_url", "mysql": "mysql_url"}


def lineage(folder: Path, dialect: str) -> dict[str, tuple[str, str]]:
    """The base revision, then an unsafe and a safe revision per rule (and a silenced one).
    Returns revision -> (rule, "unsafe" | "safe" | "silenced")."""
    write_revision(folder, "r000", None, "base", BASE)
    down, made = "r000", {}
    for index, (rule, (_, unsafe, safe)) in enumerate(CASES.items()):
        body = safe if isinstance(safe, str) else safe[dialect]
        for kind, text in (("unsafe", unsafe), ("safe", body)):
            rev = f"r{index:02d}{kind[0]}"
            write_revision(folder, rev, down, f"{rule} {kind}", text)
            made[rev], down = (rule, kind), rev
    path = write_revision(folder, "rsil", down, "silenced",
                          '''    op.execute("UPDATE accounts SET age = 0")  # orchestrate: ignore[DML-NO-WHERE]''')
    made["rsil"] = ("DML-NO-WHERE", "silenced")
    assert path.exists()
    return made


def project_for(make_project: Any, url: str) -> Project:
    project = make_project({"databases": {"app": {"url": "sqlite:///placeholder.db"}}}, versions=False)
    (project.root / "lintmodels.py").write_text(textwrap.dedent(MODELS), encoding="utf-8")
    project.write_config({"sys_path": ["."], "databases": {"app": {
        "url": url, "metadata": "lintmodels:metadata", "version_path": "versions/app"}}})
    return project


def valid(document: dict[str, Any]) -> dict[str, Any]:
    """The document matches the report schema that ships in the package."""
    import jsonschema

    from orchestrator.report import SCHEMA_PATH

    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    return document


def lint_json(project: Project, *args: str, code: int) -> dict[str, Any]:
    result = project.cli("lint", *args, "--json")
    assert result.exit_code == code, f"{result.exit_code}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return valid(json.loads(result.stdout))


@pytest.mark.parametrize("dialect", ALL)
def test_each_rule_fires_on_its_unsafe_form_only(dialect, make_project, request, tmp_path) -> None:
    url = request.getfixturevalue(DIALECT_URL[dialect]) if dialect in DIALECT_URL else sqlite_url(tmp_path / "a.db")
    project = project_for(make_project, url)
    made = lineage(project.root / "versions" / "app", dialect)
    document = lint_json(project, "--range", "base:heads", code=1)
    entry = document["targets"][0]
    assert entry["dialect"] == dialect and entry["status"] == "failed"
    found: dict[str, set[str]] = {}
    for finding in entry["findings"]:
        found.setdefault(finding["revision"], set()).add(finding["rule"])
        assert finding["reason"] and finding["safer"] and finding["statement"], finding
        assert finding["level"] in ("error", "warning")
    assert "r000" not in found, found["r000"]  # a table made by the same revision is empty
    problems = []
    for rev, (rule, kind) in made.items():
        applies = dialect in CASES[rule][0]
        hit = rule in found.get(rev, set())
        if kind == "unsafe" and hit != applies:
            problems.append(f"{rule} {'did not fire' if applies else 'fired'} on its unsafe form ({rev})")
        if kind in ("safe", "silenced") and hit:
            problems.append(f"{rule} fired on its {kind} form ({rev}): {found.get(rev)}")
    assert not problems, problems
    silenced = next(r for r in entry["revisions"] if r["revision"] == "rsil")
    assert silenced["silenced"] == ["DML-NO-WHERE"]
    # the Python API returns the same document; check=True raises on an error-level finding
    from orchestrator import api

    assert api.lint(project.config, range="base:heads")["targets"][0]["findings"] == entry["findings"]
    with pytest.raises(api.MigrationFailed):
        api.lint(project.config, range="base:heads", check=True)
    # the human form names rule, reason and safer alternative
    result = project.cli("lint", "--range", "base:heads")
    assert result.exit_code == 1 and "NOT-NULL-NO-DEFAULT" in result.stdout and "safer:" in result.stdout


def test_warnings_alone_exit_0_and_default_lints_only_pending(make_project, pg_url) -> None:
    project = project_for(make_project, pg_url)
    made = lineage(project.root / "versions" / "app", "postgresql")
    warning_only = [rev for rev, (rule, kind) in made.items() if rule == "DROP-IN-MODELS" and kind == "unsafe"][0]
    before = {v: k for k, v in made.items()}[("CONSTRAINT-NOT-VALID", "safe")]
    document = lint_json(project, "--range", f"{before}:{warning_only}", code=0)
    rules = {f["rule"] for f in document["targets"][0]["findings"]}
    assert rules == {"DROP-IN-MODELS"} and document["ok"] is True
    # by default: the revisions not yet applied on some target (here: all after r000)
    result = project.cli("upgrade", "r000")
    assert result.exit_code == 0, result.stdout + result.stderr
    document = lint_json(project, code=1)
    linted = [r["revision"] for r in document["targets"][0]["revisions"]]
    assert linted[0] != "r000" and "r000" not in linted and len(linted) == len(made)


def test_alter_without_lock_timeout_is_named_on_postgresql(make_project, pg_url) -> None:
    project = project_for(make_project, pg_url)
    folder = project.root / "versions" / "app"
    write_revision(folder, "r000", None, "base", BASE)
    write_revision(folder, "r001", "r000", "add note",
                   '''    op.add_column("accounts", sa.Column("note", sa.String(20), nullable=True))''')
    document = lint_json(project, "--range", "base:heads", code=0)
    assert document["targets"][0]["findings"] == []  # orchestrate sets lock_timeout (10s by default)
    project.write_config(project.config.read_text().replace("app:\n", "app:\n    lock_timeout: 0s\n", 1))
    document = lint_json(project, "--range", "base:heads", code=0)
    assert [(f["rule"], f["revision"]) for f in document["targets"][0]["findings"]] == [("NO-LOCK-TIMEOUT", "r001")]
