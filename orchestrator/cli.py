"""The `orchestrate` command line (click for parsing, rich for what people read).

Exit codes: 0 success; 1 a target failed (or `check` found differences); 2 a usage or
configuration error; 130 interrupted.
"""
from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.text import Text

from orchestrator import plan as planning
from orchestrator import report
from orchestrator.config import CONFIG_FILENAME, Project, load_project
from orchestrator.errors import OrchestrateError, SelectionError
from orchestrator.executor import Outcome, run_serial
from orchestrator.results import Status, TargetResult
from orchestrator.runner import Runner
from orchestrator.scaffold import Action, init as scaffold_init
from orchestrator.targets import Target, targets_of
from orchestrator.urls import mask_text

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


@dataclass
class State:
    config_path: Path
    debug: bool
    out: Console = field(default_factory=lambda: _console(stderr=False))
    err: Console = field(default_factory=lambda: _console(stderr=True))
    _project: Project | None = None
    _runner: Runner | None = None

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = load_project(self.config_path)
        return self._project

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = Runner(self.project)
        return self._runner


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    # In CI logs and pipes: no colour codes, no wrapping of long lines.
    return Console(stderr=stderr, soft_wrap=True, highlight=False, width=None if terminal else 200)


class OrchestrateGroup(click.Group):
    """Turns OrchestrateError into `error:`/`hint:` lines and the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OrchestrateError as exc:
            _print_error(ctx, exc.message, exc.hint)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _print_error(ctx, "interrupted", None)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            debug = bool(ctx.obj and ctx.obj.debug)
            if debug:
                traceback.print_exc()
            _print_error(
                ctx,
                f"unexpected {type(exc).__name__}: {mask_text(str(exc))}",
                None if debug else "rerun with --debug for the traceback, and report it",
            )
            ctx.exit(EXIT_FAILED)


def _print_error(ctx: click.Context, message: str, hint: str | None) -> None:
    err: Console = ctx.obj.err if isinstance(ctx.obj, State) else _console(stderr=True)
    if isinstance(ctx.obj, State) and ctx.obj.debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    err.print(Text(f"error: {mask_text(message)}", style="bold red"))
    if hint:
        err.print(Text(f"hint: {mask_text(hint)}", style="cyan"))


@click.group(name="orchestrate", cls=OrchestrateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c", "--config", "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=CONFIG_FILENAME, show_default=True, envvar="ORCHESTRATE_CONFIG",
    help="The orchestrate.yaml to use (or set ORCHESTRATE_CONFIG).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="orchestrate")
@click.pass_context
def cli(ctx: click.Context, config_path: Path, debug: bool) -> None:
    """Run Alembic migrations across the databases declared in orchestrate.yaml."""
    ctx.obj = State(config_path=config_path, debug=debug)


def selection(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--all", "all_", is_flag=True, help="Every database, in depends_on order.")(func)
    return click.option(
        "-n", "--name", "names", multiple=True, metavar="NAME", help="A database from orchestrate.yaml (repeatable)."
    )(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(func)


def _emit_json(state: State, data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


# ---------------------------------------------------------------------- init


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite env.py and script.py.mako even if they were changed.")
@click.pass_obj
def init(state: State, force: bool) -> None:
    """Write envs/env.py, envs/script.py.mako and versions/<name>/ (and a starter orchestrate.yaml)."""
    written, project = scaffold_init(state.config_path.resolve(), force=force)
    for item in written:
        style = "yellow" if item.action is Action.KEPT else ("green" if item.action is not Action.UNCHANGED else "dim")
        try:
            shown = item.path.relative_to(project.root)
        except ValueError:
            shown = item.path
        state.out.print(Text(f"{item.action.value:<12} {shown}", style=style))
    if any(item.action is Action.KEPT for item in written):
        state.err.print(Text("hint: some files differ from what init writes; review them or pass --force", style="cyan"))


# ---------------------------------------------------------------------- migrations


def _run(
    state: State,
    command: str,
    plan: planning.Plan,
    operation: Callable[[Target], TargetResult],
    as_json: bool,
    report_path: Path | None,
    respect_dependencies: bool = True,
) -> Outcome:
    started = datetime.now(timezone.utc)
    on_result = None if as_json else (lambda r: report.print_result(state.out, r))
    outcome = run_serial(plan, operation, on_result=on_result, respect_dependencies=respect_dependencies)
    data = report.report_json(command, outcome, state.project.path, started)
    if report_path:
        report.write_json(report_path, data)
    if as_json:
        _emit_json(state, data)
    else:
        report.print_summary(state.out, outcome)
    return outcome


def _exit_for(ctx: click.Context, outcome: Outcome) -> None:
    if outcome.interrupted:
        ctx.exit(EXIT_INTERRUPTED)
    if not outcome.ok:
        ctx.exit(EXIT_FAILED)


def _offline(state: State, plan: planning.Plan, revision: str, upgrade: bool) -> None:
    """--sql: one SQL script per database, each headed by its name, on stdout."""
    failed = False
    for target in plan.targets:
        sys.stdout.write(f"-- orchestrate: {target.name} ({target.display_url})\n")
        sys.stdout.flush()
        result = state.runner.sql(target, revision, upgrade, sys.stdout)
        if result.status is Status.FAILED:
            failed = True
            report.print_result(state.err, result)
        sys.stdout.write("\n")
    if failed:
        raise click.exceptions.Exit(EXIT_FAILED)


report_option = click.option(
    "--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a JSON report here."
)


@cli.command()
@click.argument("revision", default="heads")
@selection
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (offline; REV may be FROM:TO).")
@json_option
@report_option
@click.pass_context
def upgrade(ctx: click.Context, revision: str, names: tuple[str, ...], all_: bool, sql: bool,
            as_json: bool, report_path: Path | None) -> None:
    """Upgrade databases to REVISION (default: heads), dependencies first."""
    state: State = ctx.obj
    plan = planning.select(state.project, names, all_)
    if sql:
        return _offline(state, plan, revision, upgrade=True)
    outcome = _run(state, "upgrade", plan, lambda t: state.runner.upgrade(t, revision), as_json, report_path)
    _exit_for(ctx, outcome)


@cli.command(context_settings={"ignore_unknown_options": True})  # so that `downgrade -1` is a revision
@click.argument("revision")
@selection
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (REV must be FROM:TO).")
@json_option
@report_option
@click.pass_context
def downgrade(ctx: click.Context, revision: str, names: tuple[str, ...], all_: bool, sql: bool,
              as_json: bool, report_path: Path | None) -> None:
    """Downgrade databases to REVISION (e.g. -1, base), dependents first."""
    state: State = ctx.obj
    plan = planning.select(state.project, names, all_, reverse=True)
    if sql:
        return _offline(state, plan, revision, upgrade=False)
    outcome = _run(state, "downgrade", plan, lambda t: state.runner.downgrade(t, revision), as_json, report_path)
    _exit_for(ctx, outcome)


@cli.command()
@click.argument("revision")
@selection
@click.option("--purge", is_flag=True, help="Empty the version table first.")
@json_option
@click.pass_context
def stamp(ctx: click.Context, revision: str, names: tuple[str, ...], all_: bool, purge: bool, as_json: bool) -> None:
    """Record REVISION in the version table without running migrations."""
    state: State = ctx.obj
    plan = planning.select(state.project, names, all_)
    outcome = _run(state, "stamp", plan, lambda t: state.runner.stamp(t, revision, purge), as_json, None,
                   respect_dependencies=False)
    _exit_for(ctx, outcome)


# ---------------------------------------------------------------------- reading


def _read_all(state: State, plan: planning.Plan) -> list[TargetResult]:
    return run_serial(plan, state.runner.current, respect_dependencies=False).results


@cli.command()
@selection
@json_option
@click.pass_context
def current(ctx: click.Context, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Show the revision each database is at."""
    state: State = ctx.obj
    results = _read_all(state, planning.select(state.project, names, all_, all_if_none=True))
    if as_json:
        _emit_json(state, [
            {"target": r.target, "database": r.database, "tenant": r.tenant, "current": r.after,
             "error": r.error} for r in results
        ])
    else:
        for r in results:
            if r.status is Status.FAILED:
                report.print_result(state.out, r)
                continue
            at_head = r.after == r.data.get("head")
            line = Text(f"{r.target:<24} ", style="bold")
            line.append(report.revisions(r.after))
            line.append(" (head)" if at_head else f" ({r.data.get('pending', 0)} behind)", style="green" if at_head else "yellow")
            state.out.print(line)
            if r.data.get("unversioned_tables"):
                state.out.print(Text(
                    f"    hint: tables {', '.join(r.data['unversioned_tables'])} exist without a version table; "
                    f"if they match the models, run `orchestrate stamp -n {r.database} head`", style="cyan"))
    if any(r.status is Status.FAILED for r in results):
        ctx.exit(EXIT_FAILED)


@cli.command()
@selection
@json_option
@click.pass_context
def status(ctx: click.Context, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """A table of every target: current revision, head, pending revisions."""
    state: State = ctx.obj
    results = _read_all(state, planning.select(state.project, names, all_, all_if_none=True))
    if as_json:
        _emit_json(state, [
            {"target": r.target, "database": r.database, "tenant": r.tenant, "url": r.url, "current": r.after,
             "head": r.data.get("head", []), "pending": r.data.get("pending"), "error": r.error}
            for r in results
        ])
    else:
        state.out.print(report.status_table(results))
    if any(r.status is Status.FAILED for r in results):
        ctx.exit(EXIT_FAILED)


@cli.command()
@selection
@json_option
@click.pass_obj
def heads(state: State, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Show the head revision(s) of each database's versions folder."""
    plan = planning.select(state.project, names, all_, all_if_none=True)
    data = {db.name: sorted(state.runner.script(db).get_heads()) for db in plan.databases}
    if as_json:
        return _emit_json(state, data)
    for name, revs in data.items():
        state.out.print(Text(f"{name:<24} ", style="bold").append(report.revisions(revs)))


@cli.command()
@selection
@click.option("--verbose", "-v", is_flag=True, help="Show full revision details.")
@json_option
@click.pass_obj
def history(state: State, names: tuple[str, ...], all_: bool, verbose: bool, as_json: bool) -> None:
    """List each database's revisions, newest first."""
    plan = planning.select(state.project, names, all_, all_if_none=True)
    data: dict[str, list[dict[str, Any]]] = {}
    for db in plan.databases:
        script = state.runner.script(db)
        heads_ = set(script.get_heads())
        entries = []
        for sc in script.walk_revisions():
            entries.append({
                "revision": sc.revision,
                "down_revision": sc.down_revision,
                "message": sc.doc,
                "is_head": sc.revision in heads_,
                "path": sc.path,
            })
            if not as_json:
                if not entries[1:]:
                    state.out.print(Text(f"{db.name} ({db.version_path})", style="bold"))
                text = sc.log_entry if verbose else sc.cmd_format(verbose=False, include_branches=True,
                                                                    include_doc=True, include_parents=True,
                                                                    tree_indicators=True)
                for line in text.rstrip().splitlines():
                    state.out.print(Text(f"  {line}"))
        if not entries and not as_json:
            state.out.print(Text(f"{db.name} ({db.version_path}): no revisions yet", style="bold"))
        data[db.name] = entries
    if as_json:
        _emit_json(state, data)


@cli.command()
@selection
@json_option
@click.pass_context
def check(ctx: click.Context, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Compare models with databases (autogenerate); exit 1 if they differ."""
    state: State = ctx.obj
    plan = planning.select(state.project, names, all_, all_if_none=True)
    outcome = run_serial(plan, state.runner.check, respect_dependencies=False)
    if as_json:
        _emit_json(state, [
            {"target": r.target, "database": r.database, "tenant": r.tenant, "status": r.status.value,
             "current": r.after, "pending": r.data.get("pending"), "differences": r.details, "error": r.error}
            for r in outcome.results
        ])
    else:
        for r in outcome.results:
            if r.status is Status.OK:
                state.out.print(Text(f"{r.target:<24} ", style="bold").append("models and database match", style="green"))
            elif r.status is Status.DIFFERENT:
                count, pending = len(r.details), r.data.get("pending", 0)
                state.out.print(Text(f"{r.target:<24} ", style="bold").append(
                    f"{count} difference{'s' if count != 1 else ''} between models and database", style="yellow"))
                for detail in r.details:
                    state.out.print(Text(f"    {detail}"))
                if pending:
                    state.out.print(Text(
                        f"    the database is {pending} revision{'s' if pending != 1 else ''} behind head "
                        f"(at {report.revisions(r.after)}); hint: `orchestrate upgrade -n {r.database}`",
                        style="cyan"))
                else:
                    state.out.print(Text(
                        f"    hint: `orchestrate revision -n {r.database} --autogenerate -m MESSAGE` writes them "
                        "as a revision", style="cyan"))
            else:
                report.print_result(state.out, r)
    _exit_for(ctx, outcome)


# ---------------------------------------------------------------------- authoring


@cli.command()
@click.option("-n", "--name", "names", multiple=True, metavar="NAME", help="The database to write a revision for.")
@click.option("--all", "all_", is_flag=True, hidden=True)
@click.option("-m", "--message", required=True, help="What the revision does.")
@click.option("--autogenerate", is_flag=True, help="Fill it in by comparing the models with the database.")
@click.option("--rev-id", help="Use this revision id instead of a generated one.")
@click.pass_obj
def revision(state: State, names: tuple[str, ...], all_: bool, message: str, autogenerate: bool,
             rev_id: str | None) -> None:
    """Write a new revision file for one database."""
    if all_ or len(names) > 1:
        raise SelectionError("`revision` writes one database's revision at a time; give a single -n NAME")
    plan = planning.select(state.project, names, all_)
    database = plan.databases[0]
    made = state.runner.revision(targets_of(database)[0], message, autogenerate=autogenerate, rev_id=rev_id)
    try:
        shown = Path(made.path).relative_to(state.project.root)
    except ValueError:
        shown = Path(made.path)
    state.out.print(Text(f"{database.name}: wrote {shown}", style="green"))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="orchestrate")


if __name__ == "__main__":  # pragma: no cover
    main()
