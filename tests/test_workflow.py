"""Alembic's everyday commands per database (merge, branches, show, edit, ensure_version,
revision --head/--splice/--depends-on/--branch-label), -x, -q/-v and --color, compared
with plain Alembic on the same history."""
from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import Project
from sqlalchemy import create_engine, inspect

from orchestrator import cli_workflow


def plain_alembic(project: Project, database: str) -> tuple[Config, io.StringIO]:
    """A plain Alembic Config on the same versions folder (no env.py run by these commands)."""
    out = io.StringIO()
    config = Config(stdout=out)
    config.set_main_option("script_location", str(project.root / "envs"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(project.root / "versions" / database))
    return config, out


def branch(project: Project) -> tuple[str, str]:
    """Give `users` two heads: a revision on its head, and one spliced onto the same parent."""
    first = project.cli("revision", "-n", "users", "-m", "branch one", "--rev-id", "b1")
    assert first.exit_code == 0, first.output
    second = project.cli("revision", "-n", "users", "-m", "branch two", "--rev-id", "b2",
                         "--head", "8e21d6f0a5b3", "--splice")
    assert second.exit_code == 0, second.output
    return "b1", "b2"


def test_revision_head_needs_splice_and_branches_merge_show_match_alembic(shop: Project) -> None:
    folder = shop.root / "versions" / "users"
    before = sorted(p.name for p in folder.iterdir())
    refused = shop.cli("revision", "-n", "users", "-m", "x", "--head", "3f9a1c2b7d40")
    assert refused.exit_code != 0
    assert "--splice" in refused.stderr and "3f9a1c2b7d40" in refused.stderr
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written

    branch(shop)
    heads = json.loads(shop.cli("heads", "-n", "users", "--json").stdout)
    assert heads["targets"][0]["head"] == ["b1", "b2"]

    # branches: what Alembic prints for this database
    config, out = plain_alembic(shop, "users")
    command.branches(config)
    ours = shop.cli("branches", "-n", "users")
    assert ours.exit_code == 0, ours.output
    assert ours.stdout.strip() == out.getvalue().strip() and "8e21d6f0a5b3 (branchpoint)" in ours.stdout
    listing = json.loads(shop.cli("branches", "-n", "users", "--json").stdout)
    assert listing["version"] == 2 and listing["command"] == "branches"
    assert [p["revision"] for p in listing["targets"][0]["revisions"]] == ["8e21d6f0a5b3"]
    assert sorted(listing["targets"][0]["revisions"][0]["next"]) == ["b1", "b2"]

    # show: what Alembic prints
    config, out = plain_alembic(shop, "users")
    command.show(config, "b2")
    shown = shop.cli("show", "-n", "users", "b2")
    assert shown.exit_code == 0 and shown.stdout.strip() == out.getvalue().strip()
    assert json.loads(shop.cli("show", "-n", "users", "b2", "--json").stdout)["targets"][0]["revisions"][0][
        "down_revision"] == ["8e21d6f0a5b3"]

    # merge (default: all heads) gives one head, as Alembic's merge does
    merged = shop.cli("merge", "-n", "users", "-m", "join", "--rev-id", "m1")
    assert merged.exit_code == 0, merged.output
    script = ScriptDirectory.from_config(plain_alembic(shop, "users")[0])
    assert script.get_heads() == ["m1"] and set(script.get_revision("m1").down_revision) == {"b1", "b2"}
    nothing = shop.cli("merge", "-n", "users", "-m", "again")
    assert nothing.exit_code == 2 and "nothing to merge" in nothing.stderr

    # ... and the merged history migrates
    upgraded = shop.cli("upgrade", "-n", "users", "--json")
    assert json.loads(upgraded.stdout)["targets"][0]["after"] == ["m1"]


def test_revision_refuses_existing_rev_id_and_a_message_that_breaks_the_file(shop: Project) -> None:
    folder = shop.root / "versions" / "users"
    before = sorted(p.name for p in folder.iterdir())
    taken = shop.cli("revision", "-n", "users", "-m", "again", "--rev-id", "8e21d6f0a5b3")
    assert taken.exit_code == 2 and "already exists" in taken.stderr
    for message in ('has """ quotes', "C:\\Users\\me", "\\N is a name escape"):
        bad = shop.cli("revision", "-n", "users", "-m", message)
        assert bad.exit_code == 2, (message, bad.output)
        assert "invalid Python" in bad.stderr
    assert sorted(p.name for p in folder.iterdir()) == before

    labelled = shop.cli("revision", "-n", "users", "-m", "labelled", "--rev-id", "lab1",
                        "--branch-label", "feature", "--depends-on", "3f9a1c2b7d40")
    assert labelled.exit_code == 0, labelled.output
    script = ScriptDirectory.from_config(plain_alembic(shop, "users")[0])
    made = script.get_revision("lab1")
    assert made.branch_labels == {"feature"} and made.dependencies in ("3f9a1c2b7d40", ("3f9a1c2b7d40",))
    merge_labelled = shop.cli("merge", "-n", "users", "-m", "x")  # one head: nothing to do
    assert merge_labelled.exit_code == 2


def test_x_arguments_before_and_after_the_command_reach_env_py(shop: Project, tmp_path: Path) -> None:
    env = shop.root / "envs" / "env.py"
    seen = tmp_path / "x.txt"
    text = env.read_text()
    env.write_text(text.replace(
        "context.configure(",
        "import os\nwith open(os.environ['KIT_X_OUT'], 'a') as _f:\n"
        "    _f.write(repr(sorted(target.x.items())) + ' ' + repr(sorted(context.get_x_argument(as_dictionary=True).items())) + '\\n')\n"
        "context.configure(", 1))
    result = shop.cli("-x", "a=1", "upgrade", "-n", "users", "-x", "b=two", env={"KIT_X_OUT": str(seen)})
    assert result.exit_code == 0, result.output
    line = seen.read_text().splitlines()[0]
    assert line == "[('a', '1'), ('b', 'two')] [('a', '1'), ('b', 'two')]"
    seen.unlink()
    again = shop.cli("upgrade", "-n", "catalog", env={"KIT_X_OUT": str(seen)})
    assert again.exit_code == 0 and seen.read_text().splitlines()[0] == "[] []"  # no leftovers of the last run


def test_quiet_verbose_and_color_on_every_command(shop: Project) -> None:
    import click

    from orchestrator.cli import cli

    every = list(cli.commands.items())
    every += [(f"{n} {s}", c) for n, g in cli.commands.items() if isinstance(g, click.Group) for s, c in g.commands.items()]
    for name, cmd in every:
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-x", "-q", "-v"} <= opts, name
        assert "--color" in opts, name
    quiet = shop.cli("upgrade", "--all", "-q")
    assert quiet.exit_code == 0 and len(quiet.stdout.splitlines()) <= 1, quiet.stdout
    quiet = shop.cli("-q", "current")
    assert quiet.exit_code == 0 and len(quiet.stdout.splitlines()) <= 1
    assert shop.cli("--quiet", "heads", "--json").stdout.startswith("{")  # JSON still prints
    colored = shop.cli("--color", "heads")
    assert "\x1b[" in colored.stdout
    assert "\x1b[" not in shop.cli("heads", "--no-color").stdout
    assert "\x1b[" not in shop.cli("heads", env={"NO_COLOR": "1"}).stdout
    failing = shop.cli("-q", "show", "-n", "users", "nope")
    assert failing.exit_code != 0 and "error:" in failing.stderr  # errors still say why
    assert len(cli_workflow.COMMANDS) == 5


def test_edit_opens_editor_and_ensure_version_creates_version_tables(shop: Project, tmp_path: Path) -> None:
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\necho '# edited' >> \"$1\"\n")
    editor.chmod(editor.stat().st_mode | stat.S_IEXEC)
    result = shop.cli("edit", "-n", "users", "8e21d6f0a5b3", env={"EDITOR": str(editor)})
    assert result.exit_code == 0, result.output
    assert (shop.root / "versions/users/8e21d6f0a5b3_add_api_keys_and_is_active.py").read_text().endswith("# edited\n")
    assert shop.cli("edit", "-n", "users", "8e21d6f0a5b3", env={"EDITOR": "true"}).exit_code == 0
    failed = shop.cli("edit", "-n", "users", "8e21d6f0a5b3", env={"EDITOR": "false"})
    assert failed.exit_code != 0 and "exited with status 1" in failed.stderr

    made = shop.cli("ensure_version", "--all", "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["counts"] == {"ok": 3}
    engine = create_engine(f"sqlite:///{shop.root / 'var' / 'users.db'}")
    try:
        assert inspect(engine).get_table_names() == ["alembic_version_users"]
    finally:
        engine.dispose()
    again = shop.cli("ensure_version", "-n", "users")
    assert again.exit_code == 0 and "present" in again.stdout


def test_shell_completion_is_clicks(shop: Project) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, [], prog_name="orchestrate",
                                env={"_ORCHESTRATE_COMPLETE": "bash_source", **{k: v for k, v in os.environ.items()}})
    assert result.exit_code == 0 and "_ORCHESTRATE_COMPLETE=bash_complete" in result.output
