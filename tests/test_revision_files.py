"""Misbehaving revision files (issue 14, rule 8): a clear error naming the file, never a traceback.

- A file that cannot load (a syntax error, ``sys.exit()``, a ``BaseException`` subclass or
  ``GeneratorExit`` raised at import, an error text with NUL or lone surrogates, closing
  ``sys.stdout`` at import): ``heads``, ``history`` and ``upgrade`` exit 2 naming the file and
  the line, before any target is migrated.
- A revision that misbehaves inside ``upgrade()`` (the same, plus ``os._exit`` under
  ``--parallel``) fails its target (exit 1); the other targets finish, and the summary and
  the report are written.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Project

REVISION = "b2000000000b"

HEAD = f'''"""second"""
import os
import sys

import sqlalchemy as sa
from alembic import op

revision = "{REVISION}"
down_revision = "a1000000000a"


class Boom(BaseException):
    """Not an Exception: the kind a bare `except Exception` lets through."""

'''

FIRST = '''"""first"""
import sqlalchemy as sa
from alembic import op

revision = "a1000000000a"
down_revision = None


def upgrade():
    op.create_table("items", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade():
    op.drop_table("items")
'''

TENANTS = ["t1", "t2", "t3"]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = Project(tmp_path / "project")
    (project.root / "versions" / "app").mkdir(parents=True)
    (project.root / "tenants").mkdir()
    (project.root / "versions" / "app" / "a1000000000a_first.py").write_text(FIRST, encoding="utf-8")
    project.write_config({"databases": {"app": {
        "url": "sqlite:///tenants/{tenant}.db", "tenants": {"mode": "database", "names": TENANTS}}}})
    assert project.cli("init").exit_code == 0
    return project


def second(project: Project, body: str) -> Path:
    path = project.root / "versions" / "app" / f"{REVISION}_second.py"
    path.write_text(HEAD + textwrap.dedent(body), encoding="utf-8")
    return path


def orchestrate(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a process of its own (for what closes the process's stdout)."""
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "-c", str(project.config), *args],
                          capture_output=True, text=True, timeout=120, cwd=project.root,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def clean(output: str) -> None:
    assert "Traceback" not in output and "unexpected" not in output and "\x00" not in output, output
    output.encode("utf-8")  # no lone surrogate got through


# ---------------------------------------------------------------------- files that cannot load

BODY_LINE = HEAD.count("\n") + 1  # the first line after HEAD

AT_IMPORT = {
    "syntax error": ("def upgrade(:\n    pass\n", "SyntaxError", BODY_LINE),
    "sys.exit": ("sys.exit(3)\n", "sys.exit(3)", BODY_LINE),
    "BaseException subclass": ("raise Boom('at import')\n", "Boom: at import", BODY_LINE),
    "GeneratorExit": ("raise GeneratorExit()\n", "GeneratorExit", BODY_LINE),
    "NUL and surrogates": ("raise ValueError('bad \\x00 \\udcff text')\n", "ValueError: bad \\x00 \\udcff text", BODY_LINE),
}


@pytest.mark.parametrize("case", list(AT_IMPORT))
def test_a_file_that_cannot_load_is_exit_2_naming_file_and_line(project: Project, case: str) -> None:
    body, said, line = AT_IMPORT[case]
    path = second(project, body)
    for args in (("heads",), ("history",), ("upgrade",), ("upgrade", "--parallel", "2"), ("upgrade", "--sql")):
        result = project.cli(*args)
        output = result.stdout + result.stderr
        assert result.exit_code == 2, (args, output)
        assert f"{path}, line {line}" in output and said in output, (args, output)
        clean(output)
    assert not list((project.root / "tenants").iterdir())  # decided before any target was migrated


def test_a_file_that_closes_stdout_at_import_is_exit_2_and_the_error_still_shows(project: Project) -> None:
    path = second(project, "sys.stdout.close()\n\ndef upgrade():\n    pass\n\ndef downgrade():\n    pass\n")
    for args in (("heads",), ("history",), ("upgrade",)):
        result = orchestrate(project, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"{path} closed sys.stdout" in result.stderr, result.stderr
        clean(result.stdout + result.stderr)
    assert not list((project.root / "tenants").iterdir())


# ---------------------------------------------------------------------- misbehaving inside upgrade()

IN_UPGRADE = {
    "sys.exit": ("sys.exit(4)", "sys.exit(4)"),
    "BaseException subclass": ("raise Boom('in upgrade')", "Boom: in upgrade"),
    "GeneratorExit": ("raise GeneratorExit('stop')", "GeneratorExit: stop"),
    "NUL and surrogates": ("raise RuntimeError('bad \\x00 \\udcff text')", "RuntimeError: bad \\x00 \\udcff text"),
}


def _marked(project: Project, tenant: str = "t2") -> None:
    """Only this tenant misbehaves: the revision looks for a table named `boom`."""
    connection = sqlite3.connect(project.root / "tenants" / f"{tenant}.db")
    connection.execute("CREATE TABLE boom (id INTEGER)")
    connection.close()


def _misbehaving(project: Project, statement: str) -> None:
    second(project, f'''
        def upgrade():
            op.add_column("items", sa.Column("qty", sa.Integer()))
            if sa.inspect(op.get_bind()).has_table("boom"):
                {statement}


        def downgrade():
            pass
        ''')


def _check_report(project: Project, report: Path, failed_status: str = "failed") -> dict[str, dict[str, object]]:
    document = json.loads(report.read_text(encoding="utf-8"))
    targets = {t["target"]: t for t in document["targets"]}
    assert [targets[f"app/{t}"]["status"] for t in TENANTS] == ["upgraded", failed_status, "upgraded"], targets
    assert targets["app/t2"]["failed_revision"] == REVISION
    assert targets["app/t2"]["after"] == ["a1000000000a"]  # rolled back to the revision before
    return targets


@pytest.mark.parametrize("case", list(IN_UPGRADE))
def test_a_revision_misbehaving_in_upgrade_fails_its_target_only(project: Project, case: str) -> None:
    statement, said = IN_UPGRADE[case]
    _misbehaving(project, statement)
    _marked(project)
    for args in (("heads",), ("history",)):
        assert project.cli(*args).exit_code == 0
    report = project.root / "report.json"
    extra = ("--parallel", "2") if case == "sys.exit" else ()  # in a worker too
    result = project.cli("upgrade", *extra, "--report", str(report))
    output = result.stdout + result.stderr
    assert result.exit_code == 1, output
    assert f"revision {REVISION}" in output and said in output, output
    summary = next(line for line in output.splitlines() if line.startswith("3 targets: "))
    assert "2 upgraded" in summary and "1 failed" in summary, output  # in the order they finished
    clean(output)
    targets = _check_report(project, report)
    assert said in str(targets["app/t2"]["error"])


def test_a_revision_that_closes_stdout_in_upgrade_fails_and_the_summary_is_printed(project: Project) -> None:
    _misbehaving(project, "sys.stdout.close()")
    _marked(project)
    report = project.root / "report.json"
    result = orchestrate(project, "upgrade", "--report", str(report))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "closed sys.stdout in upgrade()" in result.stdout and "3 targets: 2 upgraded, 1 failed" in result.stdout
    clean(result.stdout + result.stderr)
    _check_report(project, report)


def test_os_exit_in_upgrade_under_parallel_loses_one_target_and_heads_history_are_unharmed(project: Project) -> None:
    _misbehaving(project, "os._exit(3)")
    _marked(project)
    for args in (("heads",), ("history",)):
        result = project.cli(*args)
        assert result.exit_code == 0 and REVISION in result.stdout, result.output
    report = project.root / "report.json"
    result = project.cli("upgrade", "--parallel", "2", "--report", str(report))
    assert result.exit_code == 1, result.output
    clean(result.stdout + result.stderr)
    targets = _check_report(project, report, failed_status="lost")
    assert "exit code 3" in str(targets["app/t2"]["error"])
