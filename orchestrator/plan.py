"""Stage 3: what the command line selects -> an ordered plan of targets."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config import DatabaseConfig, Project
from orchestrator.errors import SelectionError
from orchestrator.targets import Target, make_target, targets_of, tenant_names


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


def parse_shard(value: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): the second of four shards (numbered from 1)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise SelectionError(
            f"--shard {value!r}: write it as I/N with 1 <= I <= N, e.g. --shard 1/4",
            hint="shards are numbered from 1: with N machines, machine k runs --shard k/N",
        )
    return int(match[1]), int(match[2])


def shard_of(target: Target, count: int) -> int:
    """Which of ``count`` shards (numbered from 1) ``target`` belongs to: a stable hash of its name."""
    digest = hashlib.sha256(target.name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def select(
    project: Project,
    names: tuple[str, ...] | list[str] = (),
    all_: bool = False,
    reverse: bool = False,
    all_if_none: bool = False,
    tenants: tuple[str, ...] | list[str] = (),
    shard: tuple[int, int] | None = None,
    only: set[tuple[str, str | None]] | None = None,
) -> Plan:
    """Pick databases by ``-n NAME`` or ``--all``, then narrow their targets.

    ``reverse`` (downgrade) puts dependents first. Commands that change databases need
    ``-n`` or ``--all`` (unless there is only one database); read-only commands pass
    ``all_if_none`` and cover everything by default. ``tenants`` keeps those tenants of
    multi-tenant databases (and drops databases without tenants); ``shard`` keeps a stable
    1/N of the targets; ``only`` keeps exactly these (database, tenant) pairs.
    """
    if names and all_:
        raise SelectionError("give either -n NAME or --all, not both")
    if not names and not all_:
        if all_if_none or len(project.databases) == 1 or only is not None:
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
    if only is not None:
        wanted &= {database for database, _ in only}
    order = [n for n in dependency_order(project) if n in wanted]
    if reverse:
        order.reverse()
    databases = tuple(project.databases[n] for n in order)

    targets: list[Target] = []
    if tenants:
        multi = [db for db in databases if db.tenants is not None]
        if not multi:
            raise SelectionError(
                "--tenant narrows multi-tenant databases, and none is selected",
                hint="databases with `tenants:`: "
                + (", ".join(db.name for db in project.databases.values() if db.tenants) or "none"),
            )
        found: set[str] = set()
        for db in multi:
            known = set(tenant_names(db))
            found |= known
            # Built directly: no need to list thousands of tenants to find a few.
            targets.extend(make_target(db, t) for t in dict.fromkeys(tenants) if t in known)
        missing = [t for t in dict.fromkeys(tenants) if t not in found]
        if missing:
            raise SelectionError(
                f"unknown tenant{'s' if len(missing) > 1 else ''}: {', '.join(missing)}",
                hint=f"not a tenant of {', '.join(db.name for db in multi)}",
            )
    else:
        for db in databases:
            if only is not None:
                targets.extend(make_target(db, t) for d, t in sorted(only, key=_key) if d == db.name)
            else:
                targets.extend(targets_of(db))
    if shard is not None:
        index, count = shard
        targets = [t for t in targets if shard_of(t, count) == index]

    # Upgrading, a database waits for those it depends on; downgrading, for its dependents.
    waits = {
        db.name: tuple(
            other.name
            for other in databases
            if (other.name in db.depends_on if not reverse else db.name in other.depends_on)
        )
        for db in databases
    }
    return Plan(databases=databases, targets=tuple(targets), waits=waits)


def _key(pair: tuple[str, str | None]) -> tuple[str, str]:
    return pair[0], pair[1] or ""


def read_tenants_file(path: Path) -> list[str]:
    """Tenant names for --tenants-from: one per line, # comments, blank lines ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SelectionError(f"--tenants-from {path}: {exc.strerror}") from None
    return [name for line in lines if (name := line.split("#", 1)[0].strip())]
