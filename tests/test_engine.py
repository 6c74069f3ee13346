"""The engine's shape and its smaller promises: module layering, the Alembic compatibility
guard, the report document against its JSON Schema, the event loop never stalled by the
async API, per-target lines above the progress bar, and the small holes of issue 7."""
from __future__ import annotations

import ast
import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Project, shop_config

PACKAGE = REPO / "orchestrator"


# ---------------------------------------------------------------------- shape


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "templates" in path.parts:
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _module_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports when it is imported (not inside functions
    or TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if base in known:
                    found.add(base)
                for alias in node.names:
                    if f"{base}.{alias.name}" in known:
                        found.add(f"{base}.{alias.name}")
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    found.discard(name)
    return found


def test_no_import_cycle_between_modules() -> None:
    modules = _modules()
    graph = {name: _module_level_imports(path, name, set(modules)) for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages work; a cycle through
    # two different modules is not.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not (name == d.rpartition(".")[0] and name in modules)}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                walk(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, cycles


def test_no_class_over_300_lines() -> None:
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno and node.end_lineno - node.lineno + 1 > 300:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_the_engine_modules_exist() -> None:
    for module in ("scheduler", "commands", "alembic_compat", "session", "operations", "scripts", "backends"):
        assert (PACKAGE / f"{module}.py").exists() or (PACKAGE / module / "__init__.py").exists(), module


def test_no_dialect_checks_outside_the_dialects_package() -> None:
    offenders = []
    for name, path in _modules().items():
        if name.startswith("orchestrator.dialects"):
            continue
        text = path.read_text(encoding="utf-8")
        for server in ("postgresql", "mysql", "mariadb", "sqlite"):
            for needle in (f'== "{server}"', f"== '{server}'", f'!= "{server}"', f'("{server}",'):
                if needle in text:
                    offenders.append(f"{name}: {needle}")
    assert not offenders, offenders


# ---------------------------------------------------------------------- alembic_compat


def test_alembic_compat_fails_loudly_on_an_incompatible_alembic() -> None:
    from alembic.script import ScriptDirectory

    from orchestrator import alembic_compat

    alembic_compat.check()  # the installed one is fine
    with pytest.raises(alembic_compat.IncompatibleAlembic, match="supports Alembic"):
        alembic_compat.check("2.0.0")
    with pytest.raises(alembic_compat.IncompatibleAlembic, match="supports Alembic"):
        alembic_compat.check("1.9.0")
    with pytest.raises(alembic_compat.IncompatibleAlembic, match="ScriptDirectory._no_such_method"):
        alembic_compat.check(None, ((ScriptDirectory, "_no_such_method"),))
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"alembic>=1.13,<2"' in pyproject


def test_private_alembic_calls_live_in_alembic_compat_only() -> None:
    offenders = []
    for name, path in _modules().items():
        if name == "orchestrator.alembic_compat":
            continue
        text = path.read_text(encoding="utf-8")
        for private in ("._upgrade_revs", "._downgrade_revs", "._stamp_revs"):
            if private in text:
                offenders.append(f"{name}: {private}")
    assert not offenders, offenders


# ---------------------------------------------------------------------- the report document


def _validate(document: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((PACKAGE / "report.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"].startswith("https://json-schema.org/")
    jsonschema.validate(document, schema)


def test_every_command_prints_the_same_versioned_document(shop: Project) -> None:
    documents = {}
    for args in (("upgrade", "--all"), ("current",), ("status",), ("check",), ("heads",), ("history",),
                 ("stamp", "head", "--all"), ("downgrade", "base", "-n", "orders")):
        result = shop.cli(*args, "--json")
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        document = json.loads(result.stdout)
        _validate(document)
        assert document["version"] == 2 and document["command"] == args[0]
        documents[args[0]] = document
    assert {t["target"] for t in documents["status"]["targets"]} == {"users", "catalog", "orders"}
    assert all(t["pending"] == 0 for t in documents["current"]["targets"])
    assert all(t["head"] for t in documents["heads"]["targets"])
    assert all(t["revisions"] for t in documents["history"]["targets"])
    upgraded = documents["upgrade"]["targets"]
    assert all(t["worker"]["pid"] > 0 and t["worker"]["host"] for t in upgraded)


def test_skipped_targets_are_unknown_not_base(make_project, tmp_path: Path) -> None:
    """A target never read says before/after null: [] would read as base."""
    project = make_project()
    bad = project.root / "versions" / "catalog" / "ffff00000001_bad.py"
    bad.write_text(textwrap.dedent('''
        """bad"""
        revision = "ffff00000001"
        down_revision = "c4d18f3e6b72"
        def upgrade():
            raise RuntimeError("boom")
        def downgrade():
            pass
    '''), encoding="utf-8")
    report = tmp_path / "r.json"
    result = project.cli("upgrade", "--all", "--report", str(report))
    assert result.exit_code == 1
    document = json.loads(report.read_text())
    _validate(document)
    orders = next(t for t in document["targets"] if t["target"] == "orders")
    assert orders["status"] == "skipped" and orders["before"] is None and orders["after"] is None
    assert "catalog" in orders["error"]


# ---------------------------------------------------------------------- small holes


def test_current_of_an_unknown_revision_fails(shop: Project) -> None:
    assert shop.cli("upgrade", "--all").exit_code == 0
    import sqlite3

    connection = sqlite3.connect(shop.root / "var" / "users.db")
    connection.execute("UPDATE alembic_version_users SET version_num = 'deadbeef0000'")
    connection.commit()
    connection.close()
    result = shop.cli("current")
    assert result.exit_code == 1, result.stdout
    assert "None behind" not in result.stdout
    assert "deadbeef0000" in result.stdout + result.stderr


def test_revision_on_a_tenant_database_without_tenants(make_project) -> None:
    config = shop_config()
    config["databases"]["catalog"]["url"] = "sqlite:///var/t/{tenant}.db"
    config["databases"]["catalog"]["tenants"] = {"mode": "database", "names": []}
    project = make_project(config)
    result = project.cli("revision", "-n", "catalog", "-m", "plain one")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "unexpected" not in result.stdout + result.stderr
    result = project.cli("revision", "-n", "catalog", "-m", "auto one", "--autogenerate")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "has none" in result.stderr and "unexpected" not in result.stderr


def test_check_does_not_create_a_tenant_schema(make_project, pg_url: str) -> None:
    from sqlalchemy import create_engine, text

    config = shop_config({"catalog": pg_url})
    config["databases"]["catalog"]["tenants"] = {"mode": "schema", "names": ["orch_eng_a"], "create": True}
    project = make_project(config)
    result = project.cli("check", "-n", "catalog")
    assert result.exit_code == 1
    assert "does not exist" in result.stdout + result.stderr
    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = 'orch_eng_a'")).first()
    finally:
        engine.dispose()
    assert found is None, "check created the tenant's schema"


def _cli(project: Project, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "-c", str(project.config), *args],
        capture_output=True, text=True, timeout=120, cwd=project.root, **kw,
    )


def test_sql_into_a_closed_pipe_is_quiet(shop: Project) -> None:
    """`orchestrate upgrade --all --sql | head -1`: no BrokenPipeError, no "unexpected"."""
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "-c", str(shop.config), "upgrade", "--all", "--sql"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=shop.root,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # the reader leaves, as `head -1` does
    _, err = process.communicate(timeout=60)
    text = err.decode()
    assert "unexpected" not in text and "Traceback" not in text and "BrokenPipe" not in text, text
    assert process.returncode in (0, 1), process.returncode


def test_per_target_lines_are_printed_above_the_bar_in_a_terminal(shop: Project) -> None:
    """In a terminal, a successful run shows one line per target (above the progress bar)."""
    main, child = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "-c", str(shop.config), "upgrade", "--all"],
        stdin=child, stdout=child, stderr=child, cwd=shop.root, env=env, close_fds=True,
    )
    os.close(child)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(main)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    for name in ("users", "catalog", "orders"):
        assert any(name in line and "upgraded" in line for line in text.splitlines()), text


def test_upgrade_async_never_stalls_the_callers_loop(shop: Project) -> None:
    """The first call of upgrade_async in a process (imports, config, migration) runs off
    the loop's thread: a ticker on the loop never waits long (FIGURES: at most 250 ms)."""
    script = textwrap.dedent(f"""
        import asyncio, sys, time
        sys.path.insert(0, {str(REPO)!r})
        import orchestrator  # cheap: the API and its dependencies load on first use

        async def main():
            ticks = []
            stop = False

            async def ticker():
                while not stop:
                    ticks.append(time.perf_counter())
                    await asyncio.sleep(0.01)

            task = asyncio.ensure_future(ticker())
            await asyncio.sleep(0.05)
            outcome = await orchestrator.upgrade_async({str(shop.config)!r}, all_=True)
            stop = True
            await task
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            print(len(outcome.results), max(gaps))

        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=shop.root)
    assert result.returncode == 0, result.stderr
    count, worst = result.stdout.split()
    assert int(count) == 3
    assert float(worst) < 0.25, f"the caller's loop stalled {float(worst) * 1000:.0f} ms"
