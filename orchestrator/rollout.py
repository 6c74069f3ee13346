"""Staged rollouts: ``upgrade`` in waves that stop themselves (``rollout:`` in orchestrate.yaml).

Built above the scheduler: the plan's targets are split into :class:`Wave` s and one
:class:`~orchestrator.scheduler.Scheduler` runs each wave in turn.

- Assignment (:func:`assign`): per database, the ``canary`` tenants first, then the other
  targets ordered by a stable hash of their names and cut at the cumulative ``waves``
  sizes (``[1%, 10%, 100%]`` or counts such as ``[5, 50, 100%]``); targets left after the
  last size form one more wave. Waves are computed over the database's whole fleet and
  then narrowed to the selection, so a target is in the same wave whatever ``--shard`` or
  ``--tenant`` picks. Databases run in dependency order, each through its own waves;
  wave numbers count from 1 across the run.
- Halt rules (``halt: {failures, failure_ratio, lock_timeouts}``), checked after every
  result: ``failures`` and ``lock_timeouts`` count over the rollout of the database,
  ``failure_ratio`` over the current wave (failed / targets in the wave). When one fires,
  the running targets finish, no other target starts, later waves are NOT_RUN, and the
  report carries ``"halted": {"wave": N, "rule": ..., ...}``.
- ``pause`` waits between waves; ``--resume REPORT`` starts again at the first wave that
  report did not complete (the halted one: its upgraded targets are no-ops).
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import DatabaseConfig, HaltRules
from orchestrator.errors import SelectionError
from orchestrator.plan import Plan
from orchestrator.results import Outcome, Status, TargetResult
from orchestrator.scheduler import Scheduler
from orchestrator.targets import Target, targets_of

OnResult = Callable[[TargetResult], None]
#: Builds the scheduler of one wave: (the wave's plan, the callback for each result).
MakeScheduler = Callable[[Plan, OnResult], Scheduler]
#: Longest report read by --resume.
MAX_RESUME_BYTES = 256 * 1024 * 1024


@dataclass
class Wave:
    """The targets of one wave of one database, and the rules that halt it."""

    number: int
    database: str
    name: str  # "canary", "1%", "25", "rest", or "all" for a database without rollout
    targets: list[Target]
    halt: HaltRules = field(default_factory=HaltRules)
    pause: float = 0.0
    status: str = "not_started"  # completed, halted, interrupted, skipped, not_started

    def summary(self) -> dict[str, Any]:
        return {"wave": self.number, "database": self.database, "name": self.name,
                "targets": len(self.targets), "status": self.status}


@dataclass
class RolloutRun:
    """A rollout's outcome: every result, the waves and, if it stopped itself, why."""

    outcome: Outcome
    waves: list[Wave]
    halted: dict[str, Any] | None = None
    resumed_from: int | None = None

    def document(self) -> dict[str, Any]:
        """What the report adds at the top level: ``rollout`` (the waves) and ``halted``."""
        return {"halted": self.halted,
                "rollout": {"waves": [w.summary() for w in self.waves], "resumed_from": self.resumed_from}}


def configured(plan: Plan) -> bool:
    """Does any selected database declare ``rollout:``?"""
    return any(db.rollout is not None for db in plan.databases)


def _rank(target: Target) -> int:
    return int.from_bytes(hashlib.sha256(target.name.encode()).digest()[:8], "big")


def cuts(sizes: tuple[tuple[float, bool], ...], total: int) -> list[tuple[str, int]]:
    """Cumulative wave sizes -> (name, cumulative count), the last one covering ``total``."""
    out: list[tuple[str, int]] = []
    reached = 0
    for size, percent in sizes:
        count = max(1, math.ceil(size * total / 100)) if percent else int(size)
        reached = max(reached, min(total, count))
        out.append((f"{size:g}%" if percent else str(int(size)), reached))
    if not out or out[-1][1] < total:
        out.append(("rest", total))
    return out


def assign(plan: Plan, fleet: Callable[[DatabaseConfig], list[Target]] = targets_of) -> list[Wave]:
    """Split ``plan``'s targets into waves (see the module docstring)."""
    waves: list[Wave] = []
    for db in plan.databases:
        selected = {t.name: t for t in plan.targets if t.database.name == db.name}
        config = db.rollout
        if config is None or db.tenants is None:
            waves.append(Wave(len(waves) + 1, db.name, "all", list(selected.values())))
            continue
        everyone = fleet(db)
        canary = [t for t in everyone if t.tenant in set(config.canary)]
        named = {t.name for t in canary}
        rest = sorted((t for t in everyone if t.name not in named), key=_rank)
        groups: list[tuple[str, list[Target]]] = [("canary", canary)] if config.canary else []
        start = 0
        for name, end in cuts(config.waves, len(rest)):
            groups.append((name, rest[start:end]))
            start = end
        for name, members in groups:
            chosen = [selected[t.name] for t in members if t.name in selected]
            waves.append(Wave(len(waves) + 1, db.name, name, chosen, config.halt, config.pause))
    return waves


def resume_point(path: Path, waves: list[Wave]) -> int:
    """The first wave an earlier rollout report did not complete (``--resume REPORT``)."""
    try:
        if not path.is_file():
            raise SelectionError(f"--resume {path}: not a regular file")
        if path.stat().st_size > MAX_RESUME_BYTES:
            raise SelectionError(f"--resume {path}: larger than {MAX_RESUME_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
        earlier = data["rollout"]["waves"]
        if not isinstance(earlier, list):
            raise TypeError("rollout.waves is not a list")
    except SelectionError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SelectionError(f"--resume {path}: not the report of a rollout ({type(exc).__name__}: {exc})",
                             hint="give the --report file of an `upgrade` that ran in waves") from None
    unfinished = [w for w in earlier if isinstance(w, dict) and w.get("status") != "completed"]
    if not unfinished:
        raise SelectionError(f"--resume {path}: every wave of that rollout completed; nothing to resume")
    first = unfinished[0]
    number = first.get("wave")
    if not isinstance(number, int):
        raise SelectionError(f"--resume {path}: the report's waves are not numbered; was the file edited?")
    ours = next((w for w in waves if w.number == number), None)
    if ours is None or (ours.database, ours.name) != (first.get("database"), first.get("name")):
        raise SelectionError(
            f"--resume {path}: wave {number!r} ({first.get('database')}, {first.get('name')}) is not a wave of "
            "this rollout; were `rollout:` or the selection changed since?",
            hint="resume with the same options and config as the halted run, or run it again without --resume")
    return int(number)


class _Counts:
    """Failures and lock timeouts per database over the rollout, and in the current wave."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}
        self.lock_timeouts: dict[str, int] = {}
        self.wave_failed: list[str] = []

    def add(self, result: TargetResult) -> None:
        if result.status.is_failure:
            self.failures[result.database] = self.failures.get(result.database, 0) + 1
            self.wave_failed.append(result.target)
        if result.lock_timeout:
            self.lock_timeouts[result.database] = self.lock_timeouts.get(result.database, 0) + 1

    def fired(self, wave: Wave) -> tuple[str, float, float] | None:
        """(rule, limit, observed) of the first halt rule that fires, else None."""
        halt, db = wave.halt, wave.database
        if halt.failures is not None and self.failures.get(db, 0) >= halt.failures:
            return "failures", halt.failures, self.failures[db]
        if halt.lock_timeouts is not None and self.lock_timeouts.get(db, 0) >= halt.lock_timeouts:
            return "lock_timeouts", halt.lock_timeouts, self.lock_timeouts[db]
        ratio = len(self.wave_failed) / max(1, len(wave.targets))
        if halt.failure_ratio is not None and ratio > halt.failure_ratio:
            return "failure_ratio", halt.failure_ratio, round(ratio, 4)
        return None


def execute(plan: Plan, waves: list[Wave], make_scheduler: MakeScheduler, *, start: int | None = None,
            on_result: OnResult | None = None, fail_fast: bool = False,
            cancelled: threading.Event | None = None) -> RolloutRun:
    """Run ``waves`` one after the other, from wave ``start`` when resuming; never raises
    for a target."""
    run = RolloutRun(Outcome(), waves, resumed_from=start)
    start = start or 1
    counts = _Counts()
    troubled: dict[str, str] = {}
    stop_reason: str | None = None
    ran = False

    def record(result: TargetResult) -> None:
        run.outcome.results.append(result)
        if on_result is not None:
            on_result(result)

    for wave in waves:
        if wave.number < start:
            wave.status = "completed"  # by the run being resumed
            continue
        if stop_reason is not None:  # in the report, not one line each on the console
            run.outcome.results.extend(
                TargetResult.for_target(target, Status.NOT_RUN, error=f"{target.name}: not run: {stop_reason}")
                for target in wave.targets)
            continue
        broken = [d for d in plan.waits_for(wave.database) if d in troubled]
        if broken:
            why = ", ".join(f"{d} ({troubled[d]})" for d in broken)
            for target in wave.targets:
                record(TargetResult.for_target(
                    target, Status.SKIPPED, error=f"{target.name}: {plan.skip_reason(why)}"))
            wave.status = "skipped"
            troubled.setdefault(wave.database, Status.SKIPPED.value)
            continue
        if not wave.targets:
            wave.status = "completed"
            continue
        if ran and wave.pause and _paused(wave.pause, cancelled):
            stop_reason = "the run was interrupted during the pause between waves"
            run.outcome.interrupted = True
            for target in wave.targets:
                record(TargetResult.for_target(target, Status.NOT_RUN, error=f"{target.name}: not run: {stop_reason}"))
            continue
        ran = True
        counts.wave_failed = []
        holder: list[Scheduler] = []

        def each(result: TargetResult, wave: Wave = wave, holder: list[Scheduler] = holder) -> None:
            counts.add(result)
            if on_result is not None:
                on_result(result)
            fired = counts.fired(wave) if run.halted is None else None
            if fired is not None:
                rule, limit, observed = fired
                reason = (f"rollout halted in wave {wave.number} ({wave.name}) of {wave.database}: "
                          f"{rule} {observed:g} reached the limit {limit:g}")
                run.halted = {"wave": wave.number, "name": wave.name, "database": wave.database, "rule": rule,
                              "limit": limit, "observed": observed, "failed": list(counts.wave_failed),
                              "reason": reason}
                holder[0].stop.request(reason)

        sub = Plan(databases=(_database(plan, wave.database),), targets=tuple(wave.targets),
                   waits={wave.database: ()})
        scheduler = make_scheduler(sub, each)
        holder.append(scheduler)
        outcome = scheduler.run()
        run.outcome.results.extend(outcome.results)
        run.outcome.interrupted = run.outcome.interrupted or outcome.interrupted
        if any(not r.status.succeeded for r in outcome.results):
            troubled.setdefault(wave.database, "failed")
        if run.halted is not None and run.halted["wave"] == wave.number:
            wave.status, stop_reason = "halted", str(run.halted["reason"])
        elif outcome.interrupted or any(r.status is Status.NOT_RUN for r in outcome.results):
            wave.status, stop_reason = "interrupted", "the run was stopped before this wave finished"
        else:
            wave.status = "completed"
            if fail_fast and any(r.status.is_failure for r in outcome.results):
                stop_reason = "stopped at the first failure (--fail-fast)"
    return run


def _database(plan: Plan, name: str) -> DatabaseConfig:
    return next(db for db in plan.databases if db.name == name)


def _paused(seconds: float, cancelled: threading.Event | None) -> bool:
    """Wait ``seconds`` between waves; True when the wait was cut short (Ctrl-C, cancelled)."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            if cancelled is not None:
                if cancelled.wait(min(left, 0.5)):
                    return True
            else:
                time.sleep(min(left, 0.5))
    except KeyboardInterrupt:
        return True
    return False
