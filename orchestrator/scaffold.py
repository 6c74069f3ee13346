"""`orchestrate init`: write the starter orchestrate.yaml, envs/env.py, envs/script.py.mako
and one versions folder per database, never overwriting a file the user changed."""
from __future__ import annotations

import os
import string
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path

from orchestrator.config import CONFIG_FILENAME, Project, load_project
from orchestrator.errors import OrchestrateError


class Action(str, Enum):
    CREATED = "created"
    UNCHANGED = "unchanged"
    OVERWRITTEN = "overwritten"
    KEPT = "kept (differs; use --force to overwrite)"


@dataclass(frozen=True)
class Written:
    path: Path
    action: Action


def template(name: str) -> str:
    return resources.files("orchestrator").joinpath("templates", name).read_text(encoding="utf-8")


def _write(path: Path, content: str, force: bool) -> Written:
    if path.exists():
        if path.read_text(encoding="utf-8") == content:
            return Written(path, Action.UNCHANGED)
        if not force:
            return Written(path, Action.KEPT)
        path.write_text(content, encoding="utf-8")
        return Written(path, Action.OVERWRITTEN)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return Written(path, Action.CREATED)


def init(config_path: Path, force: bool = False, tests: bool = False) -> tuple[list[Written], Project]:
    """Scaffold the project around ``config_path``; returns what was done to each file.
    With ``tests``, also tests/test_migrations.py, which turns on orchestrate's test kit."""
    written: list[Written] = []
    if not config_path.exists():
        written.append(_write(config_path, template(CONFIG_FILENAME), force=False))
    project = load_project(config_path)
    if project.script_location == project.root:
        raise OrchestrateError("`script_location:` must be a folder of its own, not the project folder")
    for name in ("env.py", "script.py.mako"):
        written.append(_write(project.script_location / name, template(name), force))
    for database in project.databases.values():
        folder = database.version_path
        if folder.is_dir():
            written.append(Written(folder, Action.UNCHANGED))
        else:
            folder.mkdir(parents=True)
            written.append(Written(folder, Action.CREATED))
    if tests:
        written.append(write_tests(project, force))
    return written, project


def write_tests(project: Project, force: bool = False) -> Written:
    """tests/test_migrations.py next to orchestrate.yaml: the kit's generated tests for every database."""
    folder = project.root / "tests"
    relative = Path(os.path.relpath(project.path, folder)).as_posix()
    content = string.Template(template("test_migrations.py.tmpl")).safe_substitute(config=relative)
    return _write(folder / "test_migrations.py", content, force)
