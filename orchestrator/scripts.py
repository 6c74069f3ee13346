"""Revision scripts: one warm ScriptDirectory per database, and the planning of steps.

Loading a database's versions folder parses and imports every revision file, which is
most of what ``alembic.command.upgrade`` costs per call. A :class:`ScriptCache` loads each
database's folder once per process and keeps it for every target it runs. Planning
(which steps lead from a version table's heads to a destination, how far a target lags,
which planned revisions a version table shows as committed) lives here too, on top of
the private Alembic calls that :mod:`orchestrator.alembic_compat` owns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from orchestrator import alembic_compat
from orchestrator.config import DatabaseConfig, Project
from orchestrator.errors import OrchestrateError


class ScriptCache:
    """Each database's ScriptDirectory, loaded on first use and kept."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._scripts: dict[str, ScriptDirectory] = {}

    def alembic_config(self, database: DatabaseConfig, output: Any = None) -> Config:
        """An in-memory Alembic Config for one database: the shared env.py, its own versions."""
        config = Config(output_buffer=output)
        config.set_main_option("script_location", str(self.project.script_location))
        config.set_main_option("path_separator", "os")
        locations = getattr(database, "version_locations", None) or (database.version_path,)
        config.set_main_option("version_locations", _join(locations))
        if getattr(database, "recursive_version_locations", False):
            config.set_main_option("recursive_version_locations", "true")
        return config

    def script(self, database: DatabaseConfig) -> ScriptDirectory:
        """The database's ScriptDirectory, loaded once and reused for every target."""
        script = self._scripts.get(database.name)
        if script is None:
            if not (self.project.script_location / "env.py").is_file():
                raise OrchestrateError(
                    f"no env.py in {self.project.script_location}",
                    hint="run `orchestrate init` to generate it",
                )
            for location in getattr(database, "version_locations", None) or (database.version_path,):
                if not Path(location).is_dir():
                    raise OrchestrateError(
                        f"{database.name}: the versions folder {location} does not exist",
                        hint=f"run `orchestrate init`, or check `version_path:` of `{database.name}` "
                        f"in {self.project.where(database.line)}",
                    )
            script = ScriptDirectory.from_config(self.alembic_config(database))
            self._scripts[database.name] = script
        return script

    def forget(self, database: DatabaseConfig) -> None:
        """Drop the cached ScriptDirectory (after a new revision file was written)."""
        self._scripts.pop(database.name, None)


def _join(paths: Any) -> str:
    import os

    return os.pathsep.join(str(p) for p in paths)


def steps(script: ScriptDirectory, revision: str, heads: tuple[str, ...], upgrade: bool) -> list[Any]:
    """Alembic's steps from ``heads`` to ``revision``, up or down."""
    if upgrade:
        return alembic_compat.upgrade_steps(script, revision, heads)
    return alembic_compat.downgrade_steps(script, revision, heads)


def position(script: ScriptDirectory, current: list[str]) -> tuple[list[str], int]:
    """The head revisions, and how many revisions lie between ``current`` and them.

    Raises CommandError when ``current`` names a revision this checkout does not have.
    """
    return sorted(script.get_heads()), len(alembic_compat.upgrade_steps(script, "heads", tuple(current)))


def ancestry(script: ScriptDirectory, heads: list[str]) -> set[str]:
    """Every revision ``heads`` include (themselves and their ancestors)."""
    if not heads:
        return set()
    return {rev.revision for rev in script.iterate_revisions(tuple(heads), "base")}


def committed(script: ScriptDirectory, planned: list[str], after: list[str], upgrade: bool) -> list[str]:
    """Of ``planned`` revisions, those the version table (``after``) shows as done: applied
    when upgrading, undone when downgrading. Read from the table, not from Alembic's
    callbacks, so a revision whose COMMIT failed is never counted."""
    try:
        reached = ancestry(script, after)
    except CommandError:
        return []
    return [rev for rev in planned if (rev in reached) == upgrade]
