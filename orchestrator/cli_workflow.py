"""The click commands of Alembic's everyday workflow (merge, branches, show, edit,
ensure_version), and the options every command accepts after its name too
(``-x KEY=VALUE``, ``-q``, ``-v``, ``--color/--no-color``).

:func:`install` registers them on the ``orchestrate`` group of :mod:`orchestrator.cli`.
The work is done by :mod:`orchestrator.workflow`; this module parses and renders.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from orchestrator import report, workflow
from orchestrator.commands import Selection
from orchestrator.results import Outcome, Status

if TYPE_CHECKING:
    from orchestrator.cli import State


def _state(ctx: click.Context) -> State:
    from orchestrator.cli import State

    state = ctx.find_object(State)
    assert state is not None, "the orchestrate group sets the State"
    return state


def _emit_document(state: State, command: str, outcome: Outcome) -> None:
    click.echo(json.dumps(report.document(command, outcome, state.project.path), indent=2))


def _exit_for(ctx: click.Context, outcome: Outcome) -> None:
    if not outcome.ok:
        ctx.exit(1)


def _shown(state: State, path: str | Path) -> str:
    try:
        return str(Path(path).relative_to(state.project.root))
    except ValueError:
        return str(path)


def _name_option(func: Any) -> Any:
    return click.option("-n", "--name", "names", multiple=True, metavar="NAME",
                        help="A database from orchestrate.yaml.")(func)


def _json_option(func: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print the JSON report document for machines.")(func)


# ---------------------------------------------------------------------- commands


@click.command()
@_name_option
@click.argument("revisions", nargs=-1)
@click.option("-m", "--message", default=None, help="What the merge does.")
@click.option("--branch-label", default=None, metavar="LABEL", help="A branch label for the merge revision.")
@click.option("--rev-id", default=None, help="Use this revision id instead of a generated one.")
@click.pass_context
def merge(ctx: click.Context, names: tuple[str, ...], revisions: tuple[str, ...], message: str | None,
          branch_label: str | None, rev_id: str | None) -> None:
    """Write a revision that merges REVISIONS (default: every head) of one database."""
    state = _state(ctx)
    made = workflow.merge(state.project, names, revisions, message, branch_label=branch_label, rev_id=rev_id)
    state.out.print(Text(f"{made.revision}: merged {', '.join(workflow.parents(made))}; "
                         f"wrote {_shown(state, made.path)}", style="green"))


@click.command()
@_name_option
@click.option("--all", "all_", is_flag=True, help="Every database (the default).")
@_json_option
@click.pass_context
def branches(ctx: click.Context, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Show each database's branch points, as `alembic branches` does."""
    state = _state(ctx)
    outcome, texts = workflow.branches(state.project, names, verbose=state.verbose > 0)
    if as_json:
        _emit_document(state, "branches", outcome)
        return _exit_for(ctx, outcome)
    for r in outcome.results:
        if not r.status.succeeded:
            report.print_result(state.err, r)
            continue
        if len(outcome.results) > 1:
            state.out.print(Text(f"{r.database}:" + ("" if r.revisions else " no branch points"), style="bold"))
        for line in texts.get(r.database, "").rstrip("\n").splitlines():
            state.out.print(Text(line))
    _exit_for(ctx, outcome)


@click.command()
@_name_option
@click.argument("revision")
@_json_option
@click.pass_context
def show(ctx: click.Context, names: tuple[str, ...], revision: str, as_json: bool) -> None:
    """Show the revision(s) REVISION names in one database, as `alembic show` does."""
    state = _state(ctx)
    outcome, text = workflow.show(state.project, names, revision)
    if as_json:
        _emit_document(state, "show", outcome)
        return
    for line in text.rstrip("\n").splitlines():
        state.out.print(Text(line))


@click.command()
@_name_option
@click.argument("revision")
@click.pass_context
def edit(ctx: click.Context, names: tuple[str, ...], revision: str) -> None:
    """Open a revision file of one database in $EDITOR."""
    state = _state(ctx)
    path = workflow.edit(state.project, names, revision)
    if state.verbose:
        state.out.print(Text(f"edited {_shown(state, path)}"))


@click.command("ensure_version")
@_name_option
@click.option("--all", "all_", is_flag=True, help="Every database (the default).")
@click.option("--tenant", "tenants", multiple=True, metavar="TENANT", help="Only this tenant (repeatable).")
@_json_option
@click.pass_context
def ensure_version(ctx: click.Context, names: tuple[str, ...], all_: bool, tenants: tuple[str, ...],
                   as_json: bool) -> None:
    """Create the version table of every selected target that has none."""
    state = _state(ctx)
    outcome = workflow.ensure_version(state.project, Selection(names, all_, tenants))
    if as_json:
        _emit_document(state, "ensure_version", outcome)
        return _exit_for(ctx, outcome)
    for r in outcome.results:
        if not r.status.succeeded:
            report.print_result(state.err, r)
            continue
        word = "version table present" if r.status is Status.NOOP else "version table created"
        state.out.print(Text(f"{r.target:<24} ", style="bold").append(word, style="green"))
    _exit_for(ctx, outcome)


COMMANDS = (merge, branches, show, edit, ensure_version)


# ---------------------------------------------------------------------- options after the subcommand


def _add_x(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
    if value:
        state = _state(ctx)
        state.x.extend(workflow.parse_x(value))
        workflow.set_x_arguments(state.x)


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        state = _state(ctx)
        state.quiet = True
        state.restyle()


def _add_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        _state(ctx).verbose += value


def _set_color(ctx: click.Context, _param: click.Parameter, value: bool | None) -> None:
    if value is not None:
        state = _state(ctx)
        state.color = value
        state.restyle()


def _common_options() -> list[click.Option]:
    return [
        click.Option(["-x"], multiple=True, metavar="KEY=VALUE", expose_value=False, callback=_add_x,
                     help="An argument for env.py (also accepted before the command)."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_set_quiet,
                     help="Print nothing on success but errors."),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_add_verbose, help="Say more."),
        click.Option(["--color/--no-color"], default=None, expose_value=False, callback=_set_color,
                     help="Colour output (default: on a terminal, unless NO_COLOR is set)."),
    ]


def install(group: click.Group) -> None:
    """Add the workflow commands to ``group``, and the common options to every command of it."""
    for command in COMMANDS:
        group.add_command(command)
    _add_common(group, top=True)


def _add_common(group: click.Group, top: bool) -> None:
    """The common options on every command of ``group`` (and of its sub-groups, and on those groups)."""
    commands = list(group.commands.values()) + ([] if top else [group])
    for command in commands:
        if isinstance(command, click.Group) and command is not group:
            _add_common(command, top=False)
            continue
        taken = {opt for param in command.params for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
        for option in _common_options():
            if not taken.intersection(option.opts + option.secondary_opts):
                command.params.append(option)
