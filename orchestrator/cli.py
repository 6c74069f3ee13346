"""The `orchestrate` command line (click for parsing, rich for what people read).

Exit codes: 0 success; 1 a target failed (or `check` found differences); 2 a usage or
configuration error; 130 interrupted.
"""
from __future__ import annotations

import functools
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
from orchestrator.dialects import dialect_for
from orchestrator.errors import OrchestrateError, SelectionError
from orchestrator.executor import Operation, Outcome, execute, run_serial
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
            try:
                return super().invoke(ctx)
            finally:
                if isinstance(ctx.obj, State) and ctx.obj._runner is not None:
                    ctx.obj._runner.close()
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
            _print_error(
                ctx,
                f"unexpected {type(exc).__name__}: {mask_text(str(exc))}",
                None if debug else "rerun with --debug for the traceback, and report it",
            )
            ctx.exit(EXIT_FAILED)


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
@click.version_option(package_name="orchestrate")
@click.pass_context
def cli(ctx: click.Context, config_path: Path, debug: bool) -> None:
    """Run Alembic migrations across the databases declared in orchestrate.yaml."""
    ctx.obj = State(config_path=config_path, debug=debug)


@dataclass(frozen=True)
class Selection:
    """What -n/--all/--tenant/--tenants-from/--shard ask for."""

    names: tuple[str, ...] = ()
    all_: bool = False
    tenants: tuple[str, ...] = ()
    tenants_from: Path | None = None
    shard: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a changing command runs: workers, failures, reports."""

    parallel: int | None = None
    fail_fast: bool = False
    report_path: Path | None = None
    retry_failed: Path | None = None
    as_json: bool = False


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
                retry_failed: Path | None, as_json: bool, **kwargs: Any) -> Any:
        return func(*args, run=RunOptions(parallel, fail_fast, report_path, retry_failed, as_json), **kwargs)

    for option in reversed([
        click.option("--parallel", "-p", type=click.IntRange(1, 256), metavar="N",
                     help="Worker processes (default: execution.parallel, else 1)."),
        click.option("--fail-fast", is_flag=True, help="Stop handing out targets at the first failure."),
        click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the JSON report of the run here."),
        click.option("--retry-failed", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     metavar="REPORT", help="Run only the failed, skipped and not-run targets of an earlier report."),
        click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of lines for people."),
    ]):
        wrapper = option(wrapper)
    return wrapper


def _plan(
    state: State, sel: Selection, reverse: bool = False, all_if_none: bool = False, retry: Path | None = None
) -> planning.Plan:
    tenants = list(sel.tenants)
    if sel.tenants_from:
        tenants += planning.read_tenants_file(sel.tenants_from)
        if not tenants:
            raise SelectionError(f"--tenants-from {sel.tenants_from}: the file lists no tenant")
    only = report.failed_targets(retry, state.project) if retry else None
    return planning.select(
        state.project,
        sel.names,
        sel.all_,
        reverse=reverse,
        all_if_none=all_if_none,
        tenants=tuple(tenants),
        shard=planning.parse_shard(sel.shard) if sel.shard else None,
        only=only,
    )


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(func)


def _emit_json(data: Any) -> None:
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
    operation: Operation,
    run: RunOptions,
    respect_dependencies: bool = True,
) -> Outcome:
    """Run a changing command over the plan: progress for people, report for machines."""
    started = datetime.now(timezone.utc)
    parallel = run.parallel or state.project.execution.parallel
    with report.Live(state.out, len(plan.targets), quiet=run.as_json) as live:
        outcome = execute(
            plan,
            operation,
            state.runner,
            parallel=min(parallel, max(1, len(plan.targets))),
            config_path=state.project.path,
            on_result=live.on_result,
            on_stop=live.on_stop,
            respect_dependencies=respect_dependencies,
            fail_fast=run.fail_fast,
        )
    data = report.report_json(command, outcome, state.project.path, started)
    if run.report_path:
        report.write_json(run.report_path, data)
    if run.as_json:
        _emit_json(data)
    else:
        report.print_summary(state.out, outcome)
        if run.report_path and not outcome.ok:
            state.out.print(Text(f"hint: rerun what did not succeed with --retry-failed {run.report_path}", style="cyan"))
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
        sys.stdout.write(dialect_for(target).offline_preamble(target))
        sys.stdout.flush()
        result = state.runner.sql(target, revision, upgrade, sys.stdout)
        if result.status is Status.FAILED:
            failed = True
            report.print_result(state.err, result)
        sys.stdout.write("\n")
    if failed:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@click.argument("revision", default="heads")
@selection
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (offline; REV may be FROM:TO).")
@run_options
@click.pass_context
def upgrade(ctx: click.Context, revision: str, selection: Selection, sql: bool, run: RunOptions) -> None:
    """Upgrade databases (and their tenants) to REVISION (default: heads), dependencies first."""
    state: State = ctx.obj
    plan = _plan(state, selection, retry=run.retry_failed)
    if sql:
        return _offline(state, plan, revision, upgrade=True)
    _exit_for(ctx, _run(state, "upgrade", plan, Operation("upgrade", (revision,)), run))


@cli.command(context_settings={"ignore_unknown_options": True})  # so that `downgrade -1` is a revision
@click.argument("revision")
@selection
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (REV must be FROM:TO).")
@run_options
@click.pass_context
def downgrade(ctx: click.Context, revision: str, selection: Selection, sql: bool, run: RunOptions) -> None:
    """Downgrade databases to REVISION (e.g. -1, base), dependents first."""
    state: State = ctx.obj
    plan = _plan(state, selection, reverse=True, retry=run.retry_failed)
    if sql:
        return _offline(state, plan, revision, upgrade=False)
    _exit_for(ctx, _run(state, "downgrade", plan, Operation("downgrade", (revision,)), run))


@cli.command()
@click.argument("revision")
@selection
@click.option("--purge", is_flag=True, help="Empty the version table first.")
@run_options
@click.pass_context
def stamp(ctx: click.Context, revision: str, selection: Selection, purge: bool, run: RunOptions) -> None:
    """Record REVISION in the version table without running migrations."""
    state: State = ctx.obj
    plan = _plan(state, selection, retry=run.retry_failed)
    operation = Operation("stamp", (revision, purge))
    _exit_for(ctx, _run(state, "stamp", plan, operation, run, respect_dependencies=False))


# ---------------------------------------------------------------------- reading


def _read_all(state: State, plan: planning.Plan) -> list[TargetResult]:
    results: list[TargetResult] = []
    for database in plan.databases:
        targets = [t for t in plan.targets if t.database.name == database.name]
        results.extend(state.runner.read_versions(database, targets))
    return results


def _versions_json(results: list[TargetResult]) -> list[dict[str, Any]]:
    return [
        {"target": r.target, "database": r.database, "tenant": r.tenant, "url": r.url, "current": r.after,
         "head": r.data.get("head", []), "pending": r.data.get("pending"), "error": r.error}
        for r in results
    ]


@cli.command()
@selection
@json_option
@click.pass_context
def current(ctx: click.Context, selection: Selection, as_json: bool) -> None:
    """Show the revision each target is at."""
    state: State = ctx.obj
    results = _read_all(state, _plan(state, selection, all_if_none=True))
    if as_json:
        _emit_json(_versions_json(results))
    else:
        for r in results:
            if r.status is Status.FAILED:
                report.print_result(state.out, r)
                continue
            at_head = r.after == r.data.get("head")
            line = Text(f"{r.target:<24} ", style="bold")
            line.append(report.revisions(r.after))
            line.append(" (head)" if at_head else f" ({r.data.get('pending', 0)} behind)",
                        style="green" if at_head else "yellow")
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
def status(ctx: click.Context, selection: Selection, as_json: bool) -> None:
    """Where every target stands: current revision, head, pending revisions.

    Multi-tenant databases are summarised (targets per revision, the lagging tenants);
    --json lists every target.
    """
    state: State = ctx.obj
    plan = _plan(state, selection, all_if_none=True)
    results = _read_all(state, plan)
    if as_json:
        _emit_json(_versions_json(results))
    else:
        report.print_status(state.out, plan, results)
    if any(r.status is Status.FAILED for r in results):
        ctx.exit(EXIT_FAILED)


def databases_only(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--all", "all_", is_flag=True, help="Every database (the default).")(func)
    return click.option(
        "-n", "--name", "names", multiple=True, metavar="NAME", help="A database from orchestrate.yaml (repeatable)."
    )(func)


@cli.command()
@databases_only
@json_option
@click.pass_obj
def heads(state: State, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Show the head revision(s) of each database's versions folder."""
    plan = planning.select(state.project, names, all_, all_if_none=True)
    data = {db.name: sorted(state.runner.script(db).get_heads()) for db in plan.databases}
    if as_json:
        return _emit_json(data)
    for name, revs in data.items():
        state.out.print(Text(f"{name:<24} ", style="bold").append(report.revisions(revs)))


@cli.command()
@databases_only
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
        _emit_json(data)


@cli.command()
@selection
@json_option
@click.pass_context
def check(ctx: click.Context, selection: Selection, as_json: bool) -> None:
    """Compare models with databases (autogenerate); exit 1 if they differ."""
    state: State = ctx.obj
    plan = _plan(state, selection, all_if_none=True)
    outcome = run_serial(plan, state.runner.check, respect_dependencies=False)
    if as_json:
        _emit_json([
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
