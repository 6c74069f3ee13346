"""The command layer: one short function per command, the only place that composes stages.

Every command takes a :class:`~orchestrator.config.Project`, a :class:`Selection` (which
targets) and, for commands that change databases, :class:`RunOptions` (how), and returns
typed results: an :class:`~orchestrator.results.Outcome`, or plain data for the commands
that read versions folders. The CLI (:mod:`orchestrator.cli`) parses arguments and
renders what these return; the Python API (:mod:`orchestrator.api`) calls the same
functions. Nothing here prints.

A run, top to bottom::

    selection -> plan.select -> Plan -> Scheduler(plan, Operation, backend) -> Outcome
                                         backend: serial | processes -> operations.*(ws, target)
"""
from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from alembic.script import Script

from orchestrator import inputs, operations, report, rollout, scripts
from orchestrator import lint as linting
from orchestrator import plan as planning
from orchestrator import preflight as preflighting
from orchestrator.backends import Answered, Backend, Operation, make_backend
from orchestrator.config import Project, activate
from orchestrator.dialects import dialect_for
from orchestrator.errors import SelectionError
from orchestrator.operations import Workspace
from orchestrator.results import Outcome, Status, TargetResult
from orchestrator.scheduler import Scheduler
from orchestrator.session import host_and_pid
from orchestrator.targets import Target, make_target, targets_of


@dataclass(frozen=True)
class Selection:
    """Which targets: ``-n``/``--all``, ``--tenant``, ``--tenants-from``, ``--shard``, ``--retry-failed``."""

    names: tuple[str, ...] = ()
    all_: bool = False
    tenants: tuple[str, ...] = ()
    tenants_from: Path | None = None
    shard: str | None = None
    retry_failed: Path | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a changing command runs: workers, failures, the report, and who watches."""

    parallel: int | None = None
    fail_fast: bool = False
    report_path: Path | None = None
    on_result: Callable[[TargetResult], None] | None = field(default=None, compare=False)
    on_stop: Callable[[str], None] | None = field(default=None, compare=False)
    on_plan: Callable[[int], None] | None = field(default=None, compare=False)  # told the number of targets
    cancelled: threading.Event | None = field(default=None, compare=False)
    backend: str | None = None  # "serial", "processes", "dask"; None: execution.backend, else by parallel
    scheduler: str | None = None  # the Dask scheduler's address; None: execution.scheduler, else a local cluster
    waves: bool = True  # upgrade: run in the waves of `rollout:` where configured (--waves off: False)
    resume: Path | None = None  # upgrade: continue the rollout of this report from its unfinished wave


@dataclass
class RunResult:
    """A changing command's outcome and its report document (also written to ``report_path``)."""

    outcome: Outcome
    document: dict[str, Any]


def plan_for(project: Project, selection: Selection, *, reverse: bool = False, all_if_none: bool = False) -> planning.Plan:
    """Selection -> Plan; every selection error (exit 2) is raised here, before anything runs."""
    tenants = list(selection.tenants)
    origins: dict[str, str] = {}
    if selection.tenants_from is not None:
        listed = inputs.read_tenant_lines(selection.tenants_from)
        if not listed:
            raise SelectionError(f"--tenants-from {selection.tenants_from}: the file lists no tenant")
        for line, name in listed:
            origins.setdefault(name, f"--tenants-from {selection.tenants_from}:{line}")
            tenants.append(name)
    only = report.failed_targets(selection.retry_failed, project) if selection.retry_failed else None
    return planning.select(
        project,
        selection.names,
        selection.all_,
        reverse=reverse,
        all_if_none=all_if_none,
        tenants=tuple(tenants),
        shard=planning.parse_shard(selection.shard) if selection.shard is not None else None,
        only=only,
        origins=origins,
    )


def _run(project: Project, command: str, plan: planning.Plan, operation: Operation, options: RunOptions,
         respect_dependencies: bool = True, waves: bool = False) -> RunResult:
    """Run a changing operation over a plan, write its report; the one path of upgrade,
    downgrade and stamp, for the CLI and the API alike."""
    started = datetime.now(UTC)
    if options.report_path is not None:
        report.check_writable(options.report_path)
    activate(project)
    project.load_models()  # a model that cannot be imported is a config error (exit 2), found before any target
    if options.on_plan is not None:
        options.on_plan(len(plan.targets))
    with Workspace(project, keep_sessions=True) as ws:
        ws.scripts.check_loads(plan.databases)  # a revision file that cannot load: exit 2, nothing run
        if operation.name in ("upgrade", "downgrade", "stamp"):  # a bad revision argument: exit 2, nothing run
            planning.check_revision(ws.scripts.script, plan, operation.name, str(operation.args[0]))

        # Upgrading to a fixed destination, targets already there are answered from one bulk read.
        known = _already_there(ws, plan, str(operation.args[0])) if operation.name == "upgrade" and not waves else {}

        def scheduler(part: planning.Plan, on_result: Callable[[TargetResult], None] | None) -> Scheduler:
            pending = len(part.targets) - sum(1 for t in part.targets if t.name in known)
            parallel = min(options.parallel or project.execution.parallel, max(1, pending))

            def make() -> Backend:
                return make_backend(ws, parallel, options.backend or project.execution.backend,
                                    options.scheduler or project.execution.scheduler)

            backend: Backend = Answered(known, make, parallel) if known else make()

            return Scheduler(  # it tells the backend of any stop (Backend.stop), then options.on_stop
                part, operation, backend,
                lambda op, target, why, status: operations.lost(ws, target, op.name, op.revision, why, status),
                on_result=on_result, on_stop=options.on_stop,
                respect_dependencies=respect_dependencies, fail_fast=options.fail_fast, cancelled=options.cancelled,
            )

        extra: dict[str, Any] = {}
        if waves:  # staged rollout: one scheduler per wave, halt rules between and during waves
            assigned = rollout.assign(plan)
            start = rollout.resume_point(options.resume, assigned) if options.resume is not None else None
            staged = rollout.execute(plan, assigned, scheduler, start=start, on_result=options.on_result,
                                     fail_fast=options.fail_fast, cancelled=options.cancelled)
            outcome, extra = staged.outcome, staged.document()
        else:
            outcome = scheduler(plan, options.on_result).run()
    document = report.document(command, outcome, project.path, started, extra=extra)
    if options.report_path is not None:
        report.write_json(options.report_path, document)
    return RunResult(outcome, document)


def _already_there(ws: Workspace, plan: planning.Plan, revision: str) -> dict[str, TargetResult]:
    """NOOP results for the tenants already exactly at the destination of ``upgrade
    revision``, from one bulk read per database (what ``status`` reads): they open no
    connection of their own, take no lock and run no env.py.

    A target is answered here only when its version table was read and is sound, and holds
    exactly the destination's heads; everything else (no bulk path for the server or mode,
    a read that failed, a missing schema or SQLite file, a tenant to create, a broken or
    unknown version table, a target behind, ahead or elsewhere) takes the normal path.

    The read is a snapshot: a target reported NOOP was at the destination when it was read,
    which is what ``status`` would have said at that moment. A run that moves it after the
    read (another upgrade cannot move it further; a downgrade could) is not waited for, as
    it would not be after a per-target run either.
    """
    known: dict[str, TargetResult] = {}
    for database in plan.databases:
        targets = [t for t in plan.targets if t.database.name == database.name]
        if database.tenants is None or not targets:
            continue
        try:
            destination = scripts.destination(ws.scripts.script(database), revision)
        except Exception:  # noqa: BLE001 - a versions folder that cannot load: its targets fail on their own
            destination = None
        if destination is None:
            continue
        started = time.perf_counter()
        heads = operations.bulk_heads(ws, database, targets)
        elapsed = (time.perf_counter() - started) / len(targets)
        worker = host_and_pid()
        for target in targets:
            found = heads.get(target.name)
            if found is not None and frozenset(found) == destination and len(found) == len(destination):
                known[target.name] = TargetResult.for_target(
                    target, Status.NOOP, before=list(found), after=list(found), duration=elapsed, worker=worker,
                )
    return known


def upgrade(project: Project, selection: Selection, options: RunOptions, revision: str = "heads") -> RunResult:
    """Upgrade the selected targets to ``revision``, dependencies first."""
    plan = plan_for(project, selection)
    staged = options.waves and (rollout.configured(plan) or options.resume is not None)
    if options.resume is not None and not staged:
        raise SelectionError("--resume continues a rollout in waves; it does not go with --waves off")
    return _run(project, "upgrade", plan, Operation("upgrade", (revision,)), options, waves=staged)


def downgrade(project: Project, selection: Selection, options: RunOptions, revision: str) -> RunResult:
    """Downgrade the selected targets to ``revision``, dependents first."""
    plan = plan_for(project, selection, reverse=True)
    return _run(project, "downgrade", plan, Operation("downgrade", (revision,)), options)


def stamp(project: Project, selection: Selection, options: RunOptions, revision: str,
          purge: bool = False) -> RunResult:
    """Record ``revision`` in the version tables without running migrations."""
    plan = plan_for(project, selection)
    return _run(project, "stamp", plan, Operation("stamp", (revision, purge)), options)


def current(project: Project, selection: Selection) -> Outcome:
    """Where every selected target stands (default: everything); fleets read in bulk."""
    plan = plan_for(project, selection, all_if_none=True)
    activate(project)
    outcome = Outcome()
    with Workspace(project) as ws:
        for database in plan.databases:
            targets = [t for t in plan.targets if t.database.name == database.name]
            outcome.results.extend(operations.read_versions(ws, database, targets))
    return outcome


status = current  # the same reading; the CLI renders it as a summary


def check(project: Project, selection: Selection) -> Outcome:
    """Compare models with every selected target; DIFFERENT where they differ."""
    plan = plan_for(project, selection, all_if_none=True)
    activate(project)
    project.load_models()
    with Workspace(project) as ws:
        return Outcome([operations.check(ws, target) for target in plan.targets])


def lint(project: Project, selection: Selection, range_: str | None = None) -> RunResult:
    """Static rules over the offline SQL of each selected database's pending revisions (or
    ``range_``, ``FROM:TO``); a database with an error-level finding is FAILED."""
    started = datetime.now(UTC)
    plan = plan_for(project, selection, all_if_none=True)
    activate(project)
    project.load_models()  # DROP-IN-MODELS / RENAME-IN-MODELS compare with the models
    with Workspace(project) as ws:
        linted = linting.lint_plan(ws, plan, range_)
    outcome = Outcome([d.result for d in linted])
    return RunResult(outcome, report.document("lint", outcome, project.path, started,
                                              per_target={d.result.target: d.extra() for d in linted}))


def preflight(project: Project, selection: Selection) -> RunResult:
    """Read-only, per target: pending revisions, lint hits weighed by live table sizes, locks,
    a time class, and the revisions' data checks; FAILED when a check fails or
    ``preflight.max_risk`` is exceeded."""
    started = datetime.now(UTC)
    plan = plan_for(project, selection, all_if_none=True)
    activate(project)
    project.load_models()
    reports = preflighting.run(project, plan)
    outcome = preflighting.outcome_of(reports)
    return RunResult(outcome, report.document("preflight", outcome, project.path, started,
                                              per_target=preflighting.document_extras(reports)))


def sql(project: Project, selection: Selection, revision: str, upgrading: bool, output: IO[str],
        on_result: Callable[[TargetResult], None] | None = None) -> Outcome:
    """Offline (``--sql``): each target's SQL, headed by its name, in dependency order. A
    target whose dependency failed writes nothing and is SKIPPED, naming the dependency."""
    plan = plan_for(project, selection, reverse=not upgrading)
    activate(project)
    outcome = Outcome()
    failed: dict[str, str] = {}
    with Workspace(project) as ws:
        ws.scripts.check_loads(plan.databases)  # a revision file that cannot load: exit 2, no SQL written
        planning.check_revision(ws.scripts.script, plan, "upgrade" if upgrading else "downgrade", revision, sql=True)
        for target in plan.targets:
            broken = [d for d in plan.waits_for(target.database.name) if d in failed]
            if broken:
                result = TargetResult.for_target(
                    target, Status.SKIPPED,
                    error=f"{target.name}: {plan.skip_reason(', '.join(f'{d} ({failed[d]})' for d in broken))}",
                )
            else:
                output.write(f"-- orchestrate: {target.name} ({target.display_url})\n")
                output.write(dialect_for(target).offline_preamble(target))
                output.flush()
                result = operations.sql(ws, target, revision, upgrading, output)
                output.write("\n")
            if result.status in (Status.FAILED, Status.SKIPPED):
                failed[target.database.name] = result.status.value
            outcome.results.append(result)
            if on_result is not None:
                on_result(result)
    return outcome


def heads(project: Project, names: tuple[str, ...] = ()) -> Outcome:
    """The head revision(s) of each selected database's versions folder."""
    plan = planning.select(project, names, all_if_none=True)
    ws = Workspace(project)
    ws.scripts.check_loads(plan.databases)  # a revision file that cannot load: exit 2

    def read(target: Target) -> TargetResult:
        return TargetResult.for_target(target, Status.OK, head=sorted(ws.scripts.script(target.database).get_heads()))

    return Outcome([operations.attempt(t, functools.partial(read, t)) for t in _database_targets(plan)])


def history(project: Project, names: tuple[str, ...] = ()) -> Outcome:
    """Each selected database's revisions, newest first (``revisions`` of each result)."""
    plan = planning.select(project, names, all_if_none=True)
    ws = Workspace(project)
    ws.scripts.check_loads(plan.databases)  # a revision file that cannot load: exit 2

    def read(target: Target) -> TargetResult:
        script = ws.scripts.script(target.database)
        head = sorted(script.get_heads())
        entries = [
            {"revision": sc.revision, "down_revision": sc.down_revision, "message": sc.doc,
             "is_head": sc.revision in head, "path": sc.path}
            for sc in script.walk_revisions()
        ]
        return TargetResult.for_target(target, Status.OK, head=head, revisions=entries)

    return Outcome([operations.attempt(t, functools.partial(read, t)) for t in _database_targets(plan)])


def revision_scripts(project: Project, name: str) -> list[Script]:
    """A database's revisions as Alembic's Script objects, newest first (for rendering)."""
    database = planning.select(project, (name,)).databases[0]
    return list(Workspace(project).scripts.script(database).walk_revisions())


def revision(project: Project, names: tuple[str, ...], message: str, autogenerate: bool = False,
             rev_id: str | None = None, **options: Any) -> tuple[str, Script]:
    """Write a new revision file for one database; returns (database name, the script).
    ``options`` are Alembic's ``head``, ``splice``, ``branch_label``, ``depends_on``."""
    if len(names) > 1:
        raise SelectionError("`revision` writes one database's revision at a time; give a single -n NAME")
    database = planning.select(project, names).databases[0]
    options["version_path"] = str(scripts.write_location(database, options.get("version_path")))  # exit 2 if not ours
    activate(project)
    if autogenerate:
        project.load_models()

    target: Target | None = make_target(database)
    if autogenerate and database.tenants is not None:  # compared with a tenant, read-only
        target = next(iter(targets_of(database)), None)
        if target is None:
            raise SelectionError(
                f"{database.name}: `revision --autogenerate` compares the models with a tenant, "
                f"and `{database.name}` has none",
                hint="declare a tenant, or write the revision without --autogenerate",
            )
    assert target is not None
    with Workspace(project) as ws:
        def known() -> list[str]:
            return [sc.revision for sc in ws.scripts.script(database).walk_revisions()]

        return database.name, inputs.write_revision(database, message, rev_id, known, lambda text: operations.revision(
            ws, target, text, autogenerate=autogenerate, rev_id=rev_id, **options))


def _database_targets(plan: planning.Plan) -> list[Target]:
    """One target per database: the database itself (for commands about its versions folder)."""

    return [make_target(database) for database in plan.databases]
