"""Stage 3: what the command line selects -> an ordered plan of targets."""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config import DatabaseConfig, Project
from orchestrator.errors import SelectionError
from orchestrator.targets import Target, targets_of


@dataclass(frozen=True)
class Plan:
    """The databases a run covers, in the order they run, and their targets."""

    databases: tuple[DatabaseConfig, ...]
    targets: tuple[Target, ...]
    waits: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def waits_for(self, database: str) -> tuple[str, ...]:
        """The selected databases whose targets must all succeed before ``database`` runs."""
        return self.waits.get(database, ())


def dependency_order(project: Project) -> list[str]:
    """Every database after the ones it depends on; ties keep the order of the file."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in project.databases[name].depends_on:
            visit(dep)
        order.append(name)

    for name in project.databases:
        visit(name)
    return order


def select(
    project: Project,
    names: tuple[str, ...] | list[str] = (),
    all_: bool = False,
    reverse: bool = False,
    all_if_none: bool = False,
) -> Plan:
    """Pick databases by ``-n NAME`` or ``--all``; ``reverse`` (downgrade) puts dependents first.

    Commands that change databases need one of the two (unless there is only one
    database); read-only commands pass ``all_if_none`` and cover everything by default.
    """
    if names and all_:
        raise SelectionError("give either -n NAME or --all, not both")
    if not names and not all_:
        if all_if_none or len(project.databases) == 1:
            all_ = True
        else:
            raise SelectionError(
                "which databases? give -n NAME (repeatable) or --all",
                hint=f"declared databases: {', '.join(project.databases)}",
            )
    unknown = [n for n in names if n not in project.databases]
    if unknown:
        raise SelectionError(
            f"unknown database{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            hint=f"declared in {project.path}: {', '.join(project.databases)}",
        )
    wanted = set(names) if names else set(project.databases)
    order = [n for n in dependency_order(project) if n in wanted]
    if reverse:
        order.reverse()
    databases = tuple(project.databases[n] for n in order)
    targets = tuple(t for db in databases for t in targets_of(db))
    # Upgrading, a database waits for those it depends on; downgrading, for its dependents.
    waits = {
        db.name: tuple(
            other.name
            for other in databases
            if (other.name in db.depends_on if not reverse else db.name in other.depends_on)
        )
        for db in databases
    }
    return Plan(databases=databases, targets=targets, waits=waits)
