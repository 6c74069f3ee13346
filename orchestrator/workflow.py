"""Alembic's everyday commands, per database: merge, branches, show, edit, ensure_version.

Each function takes a :class:`~orchestrator.config.Project` and a database name (or a
:class:`~orchestrator.commands.Selection`) and works on that database's own versions
folder with Alembic's own command, so what it writes and prints is what plain Alembic
writes and prints for that history. Nothing here prints to the terminal: the text
Alembic would print is returned (the CLI, :mod:`orchestrator.cli_workflow`, shows it).

``-x KEY=VALUE`` arguments reach env.py through :data:`X_ENV` (an environment variable,
so that spawned workers inherit them): :func:`set_x_arguments` sets it, and
:func:`orchestrator.env.apply_x_arguments` puts them on each Alembic Config as
``config.cmd_opts.x``, where ``context.get_x_argument()`` and ``target.x`` read them.
"""
from __future__ import annotations

import functools
import io
import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError, to_tuple

from orchestrator import operations
from orchestrator import plan as planning
from orchestrator.commands import Selection, plan_for
from orchestrator.config import DatabaseConfig, Project, activate
from orchestrator.dialects import dialect_for
from orchestrator.env import CONNECTION_KEY, OPTIONS_KEY, TARGET_KEY, X_ENV, apply_x_arguments
from orchestrator.errors import OrchestrateError, SelectionError, TargetError
from orchestrator.operations import Workspace
from orchestrator.results import Outcome, Status, TargetResult
from orchestrator.targets import Target, make_target
from orchestrator.urls import mask_text

__all__ = [
    "X_ENV", "branches", "check_revision_inputs", "edit", "ensure_version", "merge", "parse_x", "set_x_arguments",
    "show",
]


# ---------------------------------------------------------------------- -x KEY=VALUE


def parse_x(values: Sequence[str]) -> list[str]:
    """Check ``-x`` values (``KEY=VALUE``, or a bare ``KEY`` as Alembic allows); returns them as given."""
    for value in values:
        key = value.partition("=")[0]
        if not key.strip():
            raise SelectionError(f"-x {value!r}: the key is empty", hint="pass -x KEY=VALUE, e.g. -x data=true")
    return list(values)


def set_x_arguments(values: Sequence[str]) -> None:
    """Make ``values`` the ``-x`` arguments every env.py of this process (and its workers) sees."""
    if values:
        os.environ[X_ENV] = json.dumps(list(values))
    else:
        os.environ.pop(X_ENV, None)


# ---------------------------------------------------------------------- helpers


def _database(project: Project, name: str | Sequence[str]) -> DatabaseConfig:
    names = (name,) if isinstance(name, str) else tuple(name)
    databases = planning.select(project, names).databases if len(names) <= 1 else []
    if len(databases) != 1:
        raise SelectionError("this command works on one database at a time; give a single -n NAME")
    return databases[0]


def _config(ws: Workspace, database: DatabaseConfig, output: io.StringIO | None = None) -> Config:
    config = ws.scripts.alembic_config(database)
    if output is not None:
        config.stdout = output  # where Alembic's print_stdout writes (output_buffer is for --sql)
    apply_x_arguments(config)
    return config


def _alembic(what: str, database: DatabaseConfig, call: Any) -> Any:
    try:
        return call()
    except CommandError as exc:
        raise TargetError(f"{database.name}: {what}: {mask_text(str(exc))}",
                          hint=f"see `orchestrate heads -n {database.name}` and "
                               f"`orchestrate history -n {database.name}`") from exc


def parents(sc: Script) -> list[str]:
    """The revisions ``sc`` revises (two or more for a merge)."""
    return list(to_tuple(sc.down_revision, default=()))


def _entry(sc: Script, heads: Sequence[str]) -> dict[str, Any]:
    return {
        "revision": sc.revision,
        "down_revision": parents(sc),
        "dependencies": list(to_tuple(sc.dependencies, default=())),
        "branch_labels": sorted(sc.branch_labels),
        "message": sc.doc,
        "is_head": sc.revision in heads,
        "is_branch_point": sc.is_branch_point,
        "is_merge_point": sc.is_merge_point,
        "next": sorted(sc.nextrev),
        "path": sc.path,
    }


# ---------------------------------------------------------------------- authoring


def merge(project: Project, name: str | Sequence[str], revisions: Sequence[str] = (), message: str | None = None,
          branch_label: str | None = None, rev_id: str | None = None) -> Script:
    """Write a merge revision joining ``revisions`` (default: every head) of one database."""
    database = _database(project, name)
    activate(project)
    with Workspace(project) as ws:
        script = ws.scripts.script(database)
        wanted = list(revisions) or ["heads"]
        if not revisions and len(script.get_heads()) < 2:
            raise SelectionError(f"{database.name}: one head ({', '.join(script.get_heads()) or 'none'}); "
                                 "there is nothing to merge")
        check_revision_inputs(project, database.name, message or "", rev_id)
        config = _config(ws, database)
        try:
            made = _alembic("merge", database, lambda: command.merge(
                config, wanted, message=message, branch_label=branch_label, rev_id=rev_id))
        finally:
            ws.scripts.forget(database)
    if made is None:
        raise TargetError(f"{database.name}: merge wrote no revision")
    return made


def check_revision_inputs(project: Project, name: str | Sequence[str], message: str, rev_id: str | None) -> None:
    """Refuse, before anything is written, a ``--rev-id`` already in the database's history
    and a message that would make the revision file invalid Python."""
    database = _database(project, name)
    if rev_id is not None:
        script = Workspace(project).scripts.script(database)
        try:
            known = script.get_revision(rev_id) if rev_id else None
        except CommandError:
            known = None
        if known is not None and known.revision == rev_id:
            raise SelectionError(
                f"{database.name}: --rev-id {rev_id} already exists ({known.path})",
                hint="choose another id, or leave --rev-id out for a generated one")
    # The message becomes the first line of the file's docstring (script.py.mako).
    try:
        compile('"""' + message + '\n"""\n', "<revision message>", "exec")
    except (SyntaxError, ValueError) as exc:
        why = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise SelectionError(
            f"-m {message!r}: this message would make the revision file invalid Python ({why})",
            hint='avoid """, a trailing backslash and backslash escapes such as \\N or \\U in the message') from None


def edit(project: Project, name: str | Sequence[str], revision: str, editor: str | None = None) -> str:
    """Open a revision file of one database in ``$EDITOR`` (``$VISUAL``); returns its path."""
    database = _database(project, name)
    script = Workspace(project).scripts.script(database)
    found = _alembic("edit", database, lambda: script.get_revisions(revision))
    if not found:
        raise TargetError(f"{database.name}: no revision {revision!r}")
    if len(found) > 1:
        raise SelectionError(f"{database.name}: {revision!r} names {len(found)} revisions; name one")
    path = str(found[0].path)
    program = editor or os.environ.get("EDITOR") or os.environ.get("VISUAL")
    if not program:
        raise SelectionError("no editor: set $EDITOR (for example EDITOR=vi)", hint=f"the file is {path}")
    try:
        finished = subprocess.run([*shlex.split(program), path], check=False)
    except OSError as exc:
        raise SelectionError(f"could not start the editor {program!r}: {exc.strerror}",
                             hint=f"check $EDITOR; the file is {path}") from exc
    if finished.returncode != 0:
        raise OrchestrateError(f"the editor {program!r} exited with status {finished.returncode}", hint=f"the file is {path}")
    return path


# ---------------------------------------------------------------------- reading


def branches(project: Project, names: Sequence[str] = (), verbose: bool = False) -> tuple[Outcome, dict[str, str]]:
    """Each database's branch points: results (``revisions`` lists them) and, per database,
    the text ``alembic branches`` prints for it."""
    plan = planning.select(project, tuple(names), all_if_none=True)
    activate(project)
    ws = Workspace(project)
    texts: dict[str, str] = {}

    def read(target: Target) -> TargetResult:
        database = target.database
        script = ws.scripts.script(database)
        out = io.StringIO()
        command.branches(_config(ws, database, out), verbose=verbose)
        texts[database.name] = out.getvalue()
        heads = sorted(script.get_heads())
        points = [_entry(sc, heads) for sc in script.walk_revisions() if sc.is_branch_point]
        return TargetResult.for_target(target, Status.OK, head=heads, revisions=points)

    outcome = Outcome([operations.attempt(t, functools.partial(read, t)) for t in map(make_target, plan.databases)])
    return outcome, texts


def show(project: Project, name: str | Sequence[str], revision: str) -> tuple[Outcome, str]:
    """The revision(s) ``revision`` names in one database: a result listing them, and the
    text ``alembic show`` prints."""
    database = _database(project, name)
    activate(project)
    ws = Workspace(project)
    script = ws.scripts.script(database)
    if revision == "current":
        raise SelectionError("`show current` is `orchestrate current -n NAME` here (one database has many targets)")
    out = io.StringIO()
    _alembic("show", database, lambda: command.show(_config(ws, database, out), revision))
    heads = sorted(script.get_heads())
    found = [sc for sc in script.get_revisions(revision) if sc is not None]
    result = TargetResult.for_target(make_target(database), Status.OK, head=heads,
                                     revisions=[_entry(sc, heads) for sc in found])
    return Outcome([result]), out.getvalue()


# ---------------------------------------------------------------------- changing


def ensure_version(project: Project, selection: Selection) -> Outcome:
    """Create the version table of every selected target that has none (as ``alembic ensure_version``)."""
    plan = plan_for(project, selection, all_if_none=True)
    activate(project)
    with Workspace(project) as ws:
        return Outcome([operations.attempt(t, functools.partial(_ensure, ws, t)) for t in plan.targets])


def _ensure(ws: Workspace, target: Target) -> TargetResult:
    database = target.database
    tenants = database.tenants
    create = bool(target.tenant is not None and tenants is not None and tenants.create)

    def work(connection: Any) -> bool:
        existed = operations.version_table_exists(connection, target)
        connection.rollback()
        config = _config(ws, database)
        config.attributes[TARGET_KEY] = target
        config.attributes[CONNECTION_KEY] = connection
        config.attributes[OPTIONS_KEY] = dialect_for(target).configure_options(target)
        command.ensure_version(config)
        return existed

    existed = ws.session(target, create=create).run(work)
    return TargetResult.for_target(target, Status.NOOP if existed else Status.OK, version_table_exists=True)


def script_directory(project: Project, name: str) -> ScriptDirectory:
    """One database's ScriptDirectory (for tests and tools)."""
    return Workspace(project).scripts.script(_database(project, name))
