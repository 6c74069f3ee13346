"""Stage 4: run an operation over a plan's targets, respecting `depends_on`.

A target whose database waits for another database that had a failure is not attempted
(SKIPPED); Ctrl-C stops the run after the current target and marks the rest NOT_RUN.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.plan import Plan
from orchestrator.results import Status, TargetResult
from orchestrator.targets import Target


@dataclass
class Outcome:
    """Every target's result, in plan order, and whether the run was cut short."""

    results: list[TargetResult] = field(default_factory=list)
    interrupted: bool = False

    @property
    def failed(self) -> list[TargetResult]:
        return [r for r in self.results if r.status.is_failure]

    @property
    def ok(self) -> bool:
        return not self.interrupted and not any(
            r.status.is_failure or r.status in (Status.SKIPPED, Status.NOT_RUN) for r in self.results
        )


def run_serial(
    plan: Plan,
    operation: Callable[[Target], TargetResult],
    on_result: Callable[[TargetResult], None] | None = None,
    respect_dependencies: bool = True,
) -> Outcome:
    outcome = Outcome()
    troubled: set[str] = set()  # databases with a target that failed or was skipped
    pending = list(plan.targets)
    while pending:
        target = pending.pop(0)
        waits = [d for d in plan.waits_for(target.database.name) if d in troubled] if respect_dependencies else []
        if waits:
            result = TargetResult.for_target(
                target,
                Status.SKIPPED,
                error=f"{target.name}: not run because {', '.join(waits)} did not succeed",
            )
        else:
            try:
                result = operation(target)
            except KeyboardInterrupt:
                outcome.interrupted = True
                pending.insert(0, target)
                break
        if result.status.is_failure or result.status is Status.SKIPPED:
            troubled.add(target.database.name)
        outcome.results.append(result)
        if on_result:
            on_result(result)
    for target in pending:
        result = TargetResult.for_target(target, Status.NOT_RUN, error=f"{target.name}: not run: the run was interrupted")
        outcome.results.append(result)
        if on_result:
            on_result(result)
    return outcome
