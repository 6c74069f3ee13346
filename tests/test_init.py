"""`orchestrate init`: starter file, generated env.py, idempotence and --force."""
from __future__ import annotations

from pathlib import Path

from conftest import Project
from sqlalchemy import create_engine, inspect

from orchestrator.scaffold import template


def test_init_in_an_empty_folder_writes_a_working_starter_project(tmp_path: Path) -> None:
    project = Project(tmp_path)
    result = project.cli("init")
    assert result.exit_code == 0, result.output
    for name in ("orchestrate.yaml", "envs/env.py", "envs/script.py.mako"):
        assert (tmp_path / name).is_file(), name
        assert name in result.stdout
    assert (tmp_path / "versions" / "main").is_dir()
    assert "# orchestrate.yaml" in project.config.read_text()

    # The starter project is usable at once: write a revision, upgrade, see it applied.
    revision = project.cli("revision", "-n", "main", "-m", "create things")
    assert revision.exit_code == 0, revision.output
    written = list((tmp_path / "versions" / "main").glob("*_create_things.py"))
    assert len(written) == 1
    text = written[0].read_text()
    written[0].write_text(
        text.replace(
            "def upgrade() -> None:\n    pass",
            "def upgrade() -> None:\n    op.create_table('things', sa.Column('id', sa.Integer, primary_key=True))",
        )
    )
    upgrade = project.cli("upgrade")  # one database: no -n needed
    assert upgrade.exit_code == 0, upgrade.output
    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'main.db'}")
    try:
        assert {"things", "alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_init_is_idempotent(make_project) -> None:
    project = make_project()
    before = {p: p.read_bytes() for p in (project.root / "envs").iterdir()}
    again = project.cli("init")
    assert again.exit_code == 0
    assert "created" not in again.stdout and "overwritten" not in again.stdout
    assert again.stdout.count("unchanged") == 2 + 3  # two env files, three versions folders
    assert {p: p.read_bytes() for p in (project.root / "envs").iterdir()} == before


def test_init_keeps_a_changed_env_py_unless_forced(make_project) -> None:
    project = make_project()
    env_py = project.root / "envs" / "env.py"
    customised = env_py.read_text().replace("return True", "return name != 'legacy_audit'")
    env_py.write_text(customised)

    kept = project.cli("init")
    assert kept.exit_code == 0
    assert "kept" in kept.stdout and "--force" in kept.stderr
    assert env_py.read_text() == customised

    forced = project.cli("init", "--force")
    assert forced.exit_code == 0
    assert "overwritten" in forced.stdout
    assert env_py.read_text() == template("env.py")


def test_init_never_touches_an_existing_orchestrate_yaml(make_project) -> None:
    project = make_project()
    original = project.config.read_text()
    assert project.cli("init", "--force").exit_code == 0
    assert project.config.read_text() == original


def test_the_generated_env_py_refuses_to_run_under_plain_alembic(make_project, tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    project = make_project()
    config = Config()
    config.set_main_option("script_location", str(project.root / "envs"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(project.root / "versions" / "users"))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{tmp_path / 'x.db'}")
    try:
        command.upgrade(config, "head")
    except Exception as exc:
        assert "run by orchestrate" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("env.py ran without orchestrate")
