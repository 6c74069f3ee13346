"""The `orchestrate` command line (click for parsing, rich for what people read).

Exit codes: 0 success; 1 a target failed (or `check` found differences); 2 a usage or
configuration error; 130 interrupted.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from orchestrator import commands, report
from orchestrator.commands import RunOptions, Selection
from orchestrator.config import CONFIG_FILENAME, Project, load_project
from orchestrator.errors import OrchestrateError, SelectionError
from orchestrator.results import Outcome, Status, TargetResult
from orchestrator.scaffold import Action
from orchestrator.scaffold import init as scaffold_init
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
    #: -x KEY=VALUE arguments (before and after the subcommand), -q, -v, --color/--no-color.
    x: list[str] = field(default_factory=list)
    quiet: bool = False
    verbose: int = 0
    color: bool | None = None

    def restyle(self) -> None:
        """Make the consoles follow quiet and color (called whenever one of them is set)."""
        self.out = _console(stderr=False, color=self.color, quiet=self.quiet)
        self.err = _console(stderr=True, color=self.color)

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = load_project(self.config_path)
        return self._project


def _console(stderr: bool, color: bool | None = None, quiet: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    # In CI logs and pipes: no colour codes, no wrapping of long lines. NO_COLOR (rich reads
    # it) turns colour off unless --color asks for it; --no-color always does.
    styling: dict[str, Any] = {}
    if color is True:
        styling = {"force_terminal": True, "no_color": False}
    elif color is False:
        styling = {"no_color": True}
    return Console(stderr=stderr, soft_wrap=True, highlight=False, width=None if terminal else 200, quiet=quiet,
                   **styling)


class OrchestrateGroup(click.Group):
    """Turns OrchestrateError into `error:`/`hint:` lines and the right exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Exit with exactly 0, 1, 2 or 130, whatever ends the run (click's own errors, a
        SystemExit from imported code); text the terminal cannot encode is escaped, not fatal."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                pass
        try:
            return super().main(*args, **kwargs)
        except SystemExit as exc:
            code = _exit_code(exc)
            if code != exc.code:
                raise SystemExit(code) from None
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OrchestrateError as exc:
            _print_error(ctx, exc.message, exc.hint)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _print_error(ctx, "interrupted", None)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `orchestrate ... | head`: the reader left; nothing more to say
            _quiet_stdout()
            ctx.exit(EXIT_FAILED)
        except click.UsageError as exc:  # click's wording; "unexpected" is kept for orchestrate's own bugs
            if "unexpected extra argument" not in exc.message:
                raise
            message = exc.message.replace("Got unexpected extra argument", "Got an extra argument")
            raise click.UsageError(message.replace("an extra arguments", "extra arguments"), ctx=exc.ctx) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the last resort: say it plainly, traceback with --debug
            debug = bool(ctx.obj and ctx.obj.debug)
            _print_error(
                ctx,
                f"unexpected {type(exc).__name__}: {mask_text(str(exc))}",
                None if debug else "rerun with --debug for the traceback, and report it",
            )
            ctx.exit(EXIT_FAILED)


def _exit_code(exc: SystemExit) -> int:
    """0, 1, 2 or 130 for a SystemExit: an interrupt during parsing is 130, any other code 1."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, bool) or not isinstance(code, int):
        try:
            sys.stderr.write(f"error: {mask_text(str(code))}\n")
        except (OSError, ValueError):
            pass
        return EXIT_FAILED
    if code in (0, EXIT_FAILED, 2, EXIT_INTERRUPTED):
        context = exc.__context__
        if code == EXIT_FAILED and isinstance(context, click.exceptions.Abort) and isinstance(
                context.__cause__, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        return code
    return EXIT_FAILED


def _print_error(ctx: click.Context, message: str, hint: str | None) -> None:
    err: Console = ctx.obj.err if isinstance(ctx.obj, State) else _console(stderr=True)
    if isinstance(ctx.obj, State) and ctx.obj.debug and sys.exc_info()[0] is not None:
        sys.stderr.write(mask_text(traceback.format_exc()))  # tracebacks quote URLs too
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
@click.option("-x", "x", multiple=True, metavar="KEY=VALUE",
              help="An argument for env.py: target.x[KEY], context.get_x_argument() (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success but errors (JSON still prints).")
@click.option("-v", "--verbose", count=True, help="Say more (repeatable).")
@click.option("--color/--no-color", "color", default=None, help="Colour output (default: on a terminal, unless NO_COLOR is set).")
@click.version_option(package_name="orchestrate")
@click.pass_context
def cli(ctx: click.Context, config_path: Path, debug: bool, x: tuple[str, ...], quiet: bool, verbose: int,
        color: bool | None) -> None:
    """Run Alembic migrations across the databases declared in orchestrate.yaml.

    Shell completion (bash, zsh, fish): eval "$(_ORCHESTRATE_COMPLETE=bash_source orchestrate)".
    """
    from orchestrator.workflow import parse_x, set_x_arguments

    ctx.obj = State(config_path=config_path, debug=debug, x=parse_x(x), quiet=quiet, verbose=verbose, color=color)
    ctx.obj.restyle()
    set_x_arguments(ctx.obj.x)


def selection(func: Callable[..., Any]) -> Callable[..., Any]:
    """-n NAME / --all, and the tenant narrowing options, gathered into ``selection``."""

    @functools.wraps(func)
    def wrapper(*args: Any, names: tuple[str, ...], all_: bool, tenants: tuple[str, ...],
                tenants_from: Path | None, shard: str | None, **kwargs: Any) -> Any:
        return func(*args, selection=Selection(names, all_, tenants, tenants_from, shard), **kwargs)

    for option in reversed([
        click.option("-n", "--name", "names", multiple=True, metavar="NAME",
                     help="A database from orchestrate.yaml (repeatable)."),
        click.option("--all", "all_", is_flag=True, help="Every database, in depends_on order."),
        click.option("--tenant", "tenants", multiple=True, metavar="TENANT",
                     help="Only this tenant of multi-tenant databases (repeatable)."),
        click.option("--tenants-from", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                     help="Only the tenants listed in FILE (one per line, # comments)."),
        click.option("--shard", metavar="I/N", help="Only the I-th of N stable, balanced shards of the targets."),
    ]):
        wrapper = option(wrapper)
    return wrapper


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--parallel, --fail-fast, --report, --retry-failed, --json, gathered into ``run``."""

    @functools.wraps(func)
    def wrapper(*args: Any, parallel: int | None, fail_fast: bool, report_path: Path | None,
                retry_failed: Path | None, as_json: bool, backend: str | None, scheduler: str | None,
                **kwargs: Any) -> Any:
        kwargs["selection"] = dataclasses.replace(kwargs["selection"], retry_failed=retry_failed)
        return func(*args, run=Run(parallel, fail_fast, report_path, as_json, backend, scheduler), **kwargs)

    for option in reversed([
        click.option("--parallel", "-p", type=click.IntRange(1, 256), metavar="N",
                     help="Worker processes (default: execution.parallel, else 1)."),
        click.option("--fail-fast", is_flag=True, help="Stop handing out targets at the first failure."),
        click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the JSON report of the run here."),
        click.option("--retry-failed", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     metavar="REPORT", help="Run only the failed, skipped and not-run targets of an earlier report."),
        click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of lines for people."),
        click.option("--backend", type=click.Choice(["serial", "processes", "dask"]),
                     help="Where targets run (default: execution.backend, else processes with --parallel > 1)."),
        click.option("--scheduler", metavar="ADDRESS", envvar="ORCHESTRATE_DASK_SCHEDULER",
                     help="With --backend dask: the scheduler, e.g. tcp://10.0.0.5:8786 "
                     "(or ORCHESTRATE_DASK_SCHEDULER; default: execution.scheduler, else a local cluster)."),
    ]):
        wrapper = option(wrapper)
    return wrapper


@dataclass(frozen=True)
class Run:
    """What the run options of a changing command asked for on the command line."""

    parallel: int | None = None
    fail_fast: bool = False
    report_path: Path | None = None
    as_json: bool = False
    backend: str | None = None
    scheduler: str | None = None


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(func)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _emit_document(state: State, command: str, outcome: Outcome) -> None:
    _emit_json(report.document(command, outcome, state.project.path))


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's last flush is silent."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------- init


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite env.py and script.py.mako even if they were changed.")
@click.option("--tests", is_flag=True, help="Also write tests/test_migrations.py: migration tests for every database.")
@click.pass_obj
def init(state: State, force: bool, tests: bool) -> None:
    """Write envs/env.py, envs/script.py.mako and versions/<name>/ (and a starter orchestrate.yaml)."""
    written, project = scaffold_init(state.config_path.resolve(), force=force, tests=tests)
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


def _run(ctx: click.Context, command: str, run: Run, call: Callable[[RunOptions], commands.RunResult]) -> None:
    """Run a changing command: progress for people, the report document for machines."""
    state: State = ctx.obj
    if run.report_path is not None:
        report.check_writable(run.report_path)
    with report.Live(state.out, 0, quiet=run.as_json) as live:
        options = RunOptions(parallel=run.parallel, fail_fast=run.fail_fast, report_path=run.report_path,
                             on_result=live.on_result, on_stop=live.on_stop, on_plan=live.start,
                             backend=run.backend, scheduler=run.scheduler)
        result = call(options)
    outcome = result.outcome
    if run.as_json:
        _emit_json(result.document)
    else:
        report.print_summary(state.out, outcome)
        if state.debug:
            for r in outcome.results:
                if r.traceback:
                    sys.stderr.write(f"--- {r.target}\n{r.traceback}")
        halted = result.document.get("halted")
        if halted:  # a rollout stopped itself: say which wave, why, and how to go on
            state.out.print(Text(f"halted: {halted['reason']}", style="bold red"))
            if run.report_path:
                state.out.print(Text(f"hint: fix the cause, then continue with --resume {run.report_path}",
                                     style="cyan"))
        elif run.report_path and not outcome.ok:
            state.out.print(Text(f"hint: rerun what did not succeed with --retry-failed {run.report_path}", style="cyan"))
    _exit_for(ctx, outcome)


def _exit_for(ctx: click.Context, outcome: Outcome) -> None:
    if outcome.interrupted:
        ctx.exit(EXIT_INTERRUPTED)
    if not outcome.ok:
        ctx.exit(EXIT_FAILED)


def _offline(ctx: click.Context, selection: Selection, run: Run, revision: str, upgrading: bool) -> None:
    """--sql: one SQL script per target, each headed by its name, on stdout."""
    state: State = ctx.obj
    refused = [flag for flag, given in (("--json", run.as_json), ("--report", run.report_path),
                                        ("--parallel", run.parallel), ("--fail-fast", run.fail_fast)) if given]
    if refused:
        raise SelectionError(f"--sql writes SQL to standard output; it does not go with {', '.join(refused)}",
                             hint="drop those options, or drop --sql to run the migration")

    def shown(result: TargetResult) -> None:
        if result.status in (Status.FAILED, Status.SKIPPED):
            report.print_result(state.err, result)

    outcome = commands.sql(state.project, selection, revision, upgrading, sys.stdout, on_result=shown)
    if not all(r.status is Status.OK for r in outcome.results):
        ctx.exit(EXIT_FAILED)


@cli.command()
@click.argument("revision", default="heads")
@selection
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (offline; REV may be FROM:TO).")
@run_options
@click.option("--waves", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="Run in the waves of `rollout:` where configured (off: all targets at once).")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="REPORT",
              help="Continue a halted rollout from the first wave REPORT did not complete.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str, selection: Selection, sql: bool, run: Run, waves: str,
            resume: Path | None) -> None:
    """Upgrade databases (and their tenants) to REVISION (default: heads), dependencies first."""
    _refuse_option_like(revision)
    if sql:
        return _offline(ctx, selection, run, revision, upgrading=True)
    project = ctx.obj.project
    _run(ctx, "upgrade", run, lambda options: commands.upgrade(
        project, selection, dataclasses.replace(options, waves=waves == "on", resume=resume), revision))


@cli.command(context_settings={"ignore_unknown_options": True})  # so that `downgrade -1` is a revision
@click.argument("revision")
@selection
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (REV must be FROM:TO).")
@run_options
@click.pass_context
def downgrade(ctx: click.Context, revision: str, selection: Selection, sql: bool, run: Run) -> None:
    """Downgrade databases to REVISION (e.g. -1, base), dependents first."""
    _refuse_option_like(revision, relative_ok=True)
    if sql:
        return _offline(ctx, selection, run, revision, upgrading=False)
    project = ctx.obj.project
    _run(ctx, "downgrade", run, lambda options: commands.downgrade(project, selection, options, revision))


@cli.command()
@click.argument("revision")
@selection
@click.option("--purge", is_flag=True, help="Empty the version table first.")
@run_options
@click.pass_context
def stamp(ctx: click.Context, revision: str, selection: Selection, purge: bool, run: Run) -> None:
    """Record REVISION in the version table without running migrations."""
    _refuse_option_like(revision)
    project = ctx.obj.project
    _run(ctx, "stamp", run, lambda options: commands.stamp(project, selection, options, revision, purge))


def _refuse_option_like(revision: str, relative_ok: bool = False) -> None:
    """An unknown option is never taken as a revision (``downgrade --bad-opt``)."""
    if revision.startswith("-") and not (relative_ok and revision[1:].isdigit()):
        raise click.UsageError(f"no such option: {revision}" if revision.startswith("--") or not relative_ok
                               else f"{revision!r} is neither an option nor a relative revision like -1")


# ---------------------------------------------------------------------- reading


@cli.command()
@selection
@json_option
@click.pass_context
def current(ctx: click.Context, selection: Selection, as_json: bool) -> None:
    """Show the revision each target is at."""
    state: State = ctx.obj
    outcome = commands.current(state.project, selection)
    if as_json:
        _emit_document(state, "current", outcome)
    else:
        for r in outcome.results:
            if not r.status.succeeded:
                report.print_result(state.out, r)
                continue
            at_head = r.after == r.head
            line = Text(f"{r.target:<24} ", style="bold")
            line.append(report.revisions(r.after))
            line.append(" (head)" if at_head else f" ({r.pending} behind)", style="green" if at_head else "yellow")
            state.out.print(line)
            if r.unversioned_tables:
                state.out.print(Text(
                    f"    hint: tables {', '.join(r.unversioned_tables)} exist without a version table; "
                    f"if they match the models, run `orchestrate stamp -n {r.database} head`", style="cyan"))
    _exit_for(ctx, outcome)


@cli.command()
@selection
@json_option
@click.pass_context
def status(ctx: click.Context, selection: Selection, as_json: bool) -> None:
    """Where every target stands: current revision, head, pending revisions.

    Multi-tenant databases are summarised (targets per revision, the lagging tenants);
    --json lists every target.
    """
    state: State = ctx.obj
    outcome = commands.status(state.project, selection)
    if as_json:
        _emit_document(state, "status", outcome)
    else:
        report.print_status(state.out, state.project, outcome.results)
    _exit_for(ctx, outcome)


def databases_only(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--all", "all_", is_flag=True, help="Every database (the default).")(func)
    return click.option(
        "-n", "--name", "names", multiple=True, metavar="NAME", help="A database from orchestrate.yaml (repeatable)."
    )(func)


@cli.command()
@databases_only
@json_option
@click.pass_context
def heads(ctx: click.Context, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Show the head revision(s) of each database's versions folder."""
    state: State = ctx.obj
    outcome = commands.heads(state.project, names)
    if as_json:
        _emit_document(state, "heads", outcome)
    else:
        for r in outcome.results:
            if r.status.succeeded:
                state.out.print(Text(f"{r.database:<24} ", style="bold").append(report.revisions(r.head)))
            else:
                report.print_result(state.err, r)
    _exit_for(ctx, outcome)


@cli.command()
@databases_only
@click.option("--verbose", "-v", is_flag=True, help="Show full revision details.")
@json_option
@click.pass_context
def history(ctx: click.Context, names: tuple[str, ...], all_: bool, verbose: bool, as_json: bool) -> None:
    """List each database's revisions, newest first."""
    state: State = ctx.obj
    outcome = commands.history(state.project, names)
    if as_json:
        _emit_document(state, "history", outcome)
        return _exit_for(ctx, outcome)
    for r in outcome.results:
        database = state.project.databases[r.database]
        if not r.status.succeeded:
            report.print_result(state.err, r)
            continue
        if not r.revisions:
            state.out.print(Text(f"{r.database} ({database.version_path}): no revisions yet", style="bold"))
            continue
        state.out.print(Text(f"{r.database} ({database.version_path})", style="bold"))
        for sc in commands.revision_scripts(state.project, r.database):
            text = sc.log_entry if verbose else sc.cmd_format(verbose=False, include_branches=True, include_doc=True,
                                                              include_parents=True, tree_indicators=True)
            for line in text.rstrip().splitlines():
                state.out.print(Text(f"  {line}"))
    _exit_for(ctx, outcome)


@cli.command()
@selection
@json_option
@click.pass_context
def check(ctx: click.Context, selection: Selection, as_json: bool) -> None:
    """Compare models with databases (autogenerate); exit 1 if they differ."""
    state: State = ctx.obj
    outcome = commands.check(state.project, selection)
    if as_json:
        _emit_document(state, "check", outcome)
        return _exit_for(ctx, outcome)
    for r in outcome.results:
        if r.status is Status.OK:
            state.out.print(Text(f"{r.target:<24} ", style="bold").append("models and database match", style="green"))
        elif r.status is Status.DIFFERENT:
            count, pending = len(r.differences), r.pending or 0
            state.out.print(Text(f"{r.target:<24} ", style="bold").append(
                f"{count} difference{'s' if count != 1 else ''} between models and database", style="yellow"))
            for detail in r.differences:
                state.out.print(Text(f"    {detail}"))
            if pending:
                state.out.print(Text(
                    f"    the database is {pending} revision{'s' if pending != 1 else ''} behind head "
                    f"(at {report.revisions(r.after)}); hint: `orchestrate upgrade -n {r.database}`", style="cyan"))
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
@click.option("--head", default=None, metavar="REV", help="Base it on REV (default: the head); a non-head needs --splice.")
@click.option("--splice", is_flag=True, help="Allow --head to name a revision that is not a head (starts a branch).")
@click.option("--depends-on", "depends_on", multiple=True, metavar="REV", help="A revision this one depends on (repeatable).")
@click.option("--branch-label", default=None, metavar="LABEL", help="A branch label for the new revision.")
@click.option("--version-path", default=None, metavar="DIR",
              help="Write it into DIR, one of the database's version_locations (default: its version_path).")
@click.pass_obj
def revision(state: State, names: tuple[str, ...], all_: bool, message: str, autogenerate: bool,
             rev_id: str | None, head: str | None, splice: bool, depends_on: tuple[str, ...],
             branch_label: str | None, version_path: str | None) -> None:
    """Write a new revision file for one database."""
    from orchestrator.workflow import check_revision_inputs

    if all_:
        raise SelectionError("`revision` writes one database's revision at a time; give a single -n NAME")
    check_revision_inputs(state.project, names, message, rev_id)
    extra: dict[str, Any] = {"head": head or "head", "splice": splice, "branch_label": branch_label,
                             "depends_on": list(depends_on) or None, "version_path": version_path}
    name, made = commands.revision(state.project, names, message, autogenerate=autogenerate, rev_id=rev_id, **extra)
    try:
        shown = Path(made.path).relative_to(state.project.root)
    except ValueError:
        shown = Path(made.path)
    state.out.print(Text(f"{name}: wrote {shown}", style="green"))


@cli.group(name="report")
def report_group() -> None:
    """Work with JSON reports (e.g. merge the reports of shards)."""


@report_group.command(name="merge")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@selection
@click.pass_obj
def report_merge(state: State, out: Path, inputs: tuple[Path, ...], selection: Selection) -> None:
    """Merge the reports of shards (IN...) into one report OUT, each target once.

    Fails, naming the targets, when shards overlap or leave a gap in the selection
    (-n/--all/--tenant/--tenants-from, default: every target of the databases they name).
    """
    from orchestrator.merge import merge

    selected = selection.names or selection.all_ or selection.tenants or selection.tenants_from
    expected = None
    if selected:
        plan = commands.plan_for(state.project, dataclasses.replace(selection, shard=None))
        expected = {(t.database.name, t.tenant) for t in plan.targets}
    report.check_writable(out)
    document = merge(state.project, list(inputs), expected)
    report.write_json(out, document)
    counts = ", ".join(f"{n} {s}" for s, n in document["counts"].items())
    state.out.print(Text(f"merged {len(inputs)} reports into {out}: {len(document['targets'])} targets ({counts})",
                         style="green" if document["ok"] else "yellow"))


# ---------------------------------------------------------------------- safe rollouts (lint, preflight)


@cli.command(name="lint")
@selection
@click.option("--range", "range_", metavar="FROM:TO",
              help="Lint these revisions (FROM may be base) instead of those not yet applied on some target.")
@json_option
@click.pass_context
def lint_command(ctx: click.Context, selection: Selection, range_: str | None, as_json: bool) -> None:
    """Static rules over each pending revision's SQL; exit 1 on an error-level finding."""
    from orchestrator import lint as linting

    state: State = ctx.obj
    result = commands.lint(state.project, selection, range_)
    if as_json:
        _emit_json(result.document)
    else:
        linting.print_document(state.out, result.document)
    _exit_for(ctx, result.outcome)


@cli.command(name="preflight")
@selection
@json_option
@click.pass_context
def preflight_command(ctx: click.Context, selection: Selection, as_json: bool) -> None:
    """Read-only: what the pending revisions will do to each target (sizes, locks, time class,
    data checks); exit 1 when a check fails or preflight.max_risk is exceeded."""
    from orchestrator import preflight as preflighting

    state: State = ctx.obj
    result = commands.preflight(state.project, selection)
    if as_json:
        _emit_json(result.document)
    else:
        preflighting.print_document(state.out, result.document)
    _exit_for(ctx, result.outcome)


# Last, after every command is defined: the workflow commands, and -x/-q/-v/--color after every subcommand.
from orchestrator.cli_workflow import install  # noqa: E402 - its commands use State, defined above

install(cli)


def main(argv: list[str] | None = None) -> None:
    """The `orchestrate` command: always ends in SystemExit with 0, 1, 2 or 130."""
    try:
        cli.main(args=argv, prog_name="orchestrate")
    except KeyboardInterrupt:  # a Ctrl-C after the command's own handling (its exit unwinding)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        # The exit code is chosen (the report written): a Ctrl-C that lands while the
        # interpreter shuts down must not turn it into a death by SIGINT.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    main()
