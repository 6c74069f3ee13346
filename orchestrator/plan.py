"""Stage 3: what the command line selects -> an ordered plan of targets.

Every selection error is exit 2 and is found here, before any target runs: unknown
databases and tenants, tenant names no selected database could have (checked like names
in the config: the dialect's rules, then ``pattern:`` with a time bound), ``--tenant``
with a named database that has no tenants, a malformed ``--shard``, and (with
:func:`check_revision`) a revision argument a selected database does not know, a range
outside ``--sql`` or a reversed ``--sql`` range.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import DatabaseConfig, Project
from orchestrator.errors import SelectionError
from orchestrator.inputs import read_tenant_lines
from orchestrator.targets import (
    Target,
    invalid_tenant_names,
    make_target,
    targets_of,
    tenant_names,
    tenant_problems,
)


@dataclass(frozen=True)
class Plan:
    """The databases a run covers, in the order they run, and their targets."""

    databases: tuple[DatabaseConfig, ...]
    targets: tuple[Target, ...]
    waits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reverse: bool = False  # downgrading: a database waits for its dependents

    def waits_for(self, database: str) -> tuple[str, ...]:
        """The selected databases whose targets must all succeed before ``database`` runs."""
        return self.waits.get(database, ())

    def skip_reason(self, why: str) -> str:
        """Why a database is skipped: the databases it waits for (``why``) did not succeed."""
        relation = "its dependent" if self.reverse else "its dependency"
        return f"skipped because {relation} {why} did not succeed"


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
    """``"2/4"`` -> (2, 4): the second of four shards (numbered from 1); ``auto``: from a
    Kubernetes Indexed Job's environment (:mod:`orchestrator.shards`)."""
    if value.strip() == "auto":
        from orchestrator.shards import auto_shard

        return auto_shard()
    match = re.fullmatch(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*", value, re.ASCII)
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
    origins: Mapping[str, str] | None = None,
) -> Plan:
    """Pick databases by ``-n NAME`` or ``--all``, then narrow their targets.

    ``reverse`` (downgrade) puts dependents first. Commands that change databases need
    ``-n`` or ``--all`` (unless there is only one database); read-only commands pass
    ``all_if_none`` and cover everything by default. ``tenants`` keeps those tenants of
    multi-tenant databases (and drops databases without tenants); ``shard`` keeps a stable
    1/N of the targets; ``only`` keeps exactly these (database, tenant) pairs.
    ``origins`` says where each tenant name came from (``--tenants-from FILE:LINE``), for
    messages; the default is ``--tenant NAME``.
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
        plain = [n for n in names if project.databases[n].tenants is None]
        if plain:
            raise SelectionError(
                f"--tenant narrows multi-tenant databases, and {', '.join(f'`{n}`' for n in plain)} "
                f"(named with -n) {'has' if len(plain) == 1 else 'have'} no tenants",
                hint="drop those -n NAME options, or run them in a separate command without --tenant",
            )
        wanted_tenants = list(dict.fromkeys(tenants))
        _check_tenant_names(multi, wanted_tenants, origins or {})
        found: set[str] = set()
        for db in multi:
            known = set(tenant_names(db))
            found |= known
            # Built directly: no need to list thousands of tenants to find a few.
            targets.extend(make_target(db, t, checked=True) for t in wanted_tenants if t in known)
        missing = [t for t in wanted_tenants if t not in found]
        if missing:
            raise SelectionError(
                f"unknown tenant{'s' if len(missing) > 1 else ''}: {_listed(missing, origins or {})}",
                hint=f"not a tenant of {', '.join(db.name for db in multi)}",
            )
    else:
        for db in databases:
            if only is not None:
                # report.failed_targets let through only tenants the config declares (checked names)
                targets.extend(make_target(db, t, checked=True) for d, t in sorted(only, key=_key) if d == db.name)
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
    return Plan(databases=databases, targets=tuple(targets), waits=waits, reverse=reverse)


def _key(pair: tuple[str, str | None]) -> tuple[str, str]:
    return pair[0], pair[1] or ""


def read_tenants_file(path: Path) -> list[str]:
    """Tenant names for --tenants-from: one per line, # comments, blank lines ignored
    (bounded, UTF-8, regular files or ``-`` for standard input: see :mod:`orchestrator.inputs`)."""
    return [name for _, name in read_tenant_lines(path)]


def _check_tenant_names(multi: list[DatabaseConfig], names: list[str], origins: Mapping[str, str]) -> None:
    """Refuse a tenant name that no selected multi-tenant database could have, with the
    reason (the first database's), naming where the name came from."""
    invalid: dict[int, str] | None = None
    if len(multi) == 1:  # the usual case: the first bad name is enough
        first = tenant_problems(multi[0], names)
        invalid = {} if first is None else {first[0]: first[1]}
        multi_left: list[DatabaseConfig] = []
    else:
        multi_left = multi
    for db in multi_left:
        found = invalid_tenant_names(db, names)
        invalid = found if invalid is None else {i: why for i, why in invalid.items() if i in found}
        if not invalid:
            return
    if not invalid:
        return
    index = min(invalid)
    name = names[index]
    where = origins.get(name) or f"--tenant {_short(name)}"
    raise SelectionError(
        f"{where}: {invalid[index]}",
        hint="tenant names become schema, database or file names on the server; they must match "
        f"`pattern:` under `tenants:` of {', '.join(f'`{db.name}`' for db in multi)} and the server's naming rules",
    )


def _listed(names: list[str], origins: Mapping[str, str], shown: int = 10) -> str:
    """The first few names (with where they came from), and how many more."""
    text = ", ".join(f"{_short(n)[1:-1] if n.isprintable() else _short(n)}"
                     + (f" ({origins[n]})" if n in origins else "") for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _short(value: str, limit: int = 80) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


# ---------------------------------------------------------------------- revision arguments

#: Alembic's relative destinations: ``-1``, ``+2``, ``head-1``, ``rev@+1``, ``branch@head-2``.
_RELATIVE = re.compile(r"(?:(.+?)@)?(\w+)?([+-]\d+)")


def check_revision(script_of: Callable[[DatabaseConfig], Any], plan: Plan, command: str, revision: str,
                   sql: bool = False) -> None:
    """Refuse (exit 2), before any target runs, a revision argument that cannot be meant:
    empty, a ``FROM:TO`` range without ``--sql`` (or ``downgrade --sql`` without one), a
    revision, branch label or prefix that a selected database does not know, or a
    ``--sql`` range that runs backwards (``upgrade head:base``, ``downgrade base:head``).

    ``script_of(database)`` gives the database's Alembic ScriptDirectory. A database whose
    scripts cannot be loaded is not judged here: its targets fail with the file's error.
    """
    shown = f"`{command} {revision}{' --sql' if sql else ''}`"
    if not revision.strip():
        raise SelectionError(f"{shown}: the revision is empty", hint="e.g. head, base, -1, or a revision id")
    parts = revision.split(":")
    if len(parts) > 2:
        raise SelectionError(f"{shown}: a range has one ':' (FROM:TO)")
    if len(parts) == 2 and not sql:
        raise SelectionError(f"{shown}: a FROM:TO range only goes with --sql",
                             hint="give one revision to migrate to, or add --sql to print the SQL of the range")
    if len(parts) == 1 and sql and command == "downgrade":
        raise SelectionError(f"{shown}: offline, a downgrade needs a FROM:TO range (e.g. head:base)",
                             hint="the SQL is written without reading the version table, so say where it starts")
    if len(parts) == 2 and not all(p.strip() for p in parts):
        raise SelectionError(f"{shown}: both ends of a FROM:TO range are needed (e.g. base:head)")
    unknown: dict[str, list[str]] = {}
    for database in plan.databases:
        script = _loaded(script_of, database)
        if script is None:
            continue
        resolved: list[tuple[str, ...] | None] = []
        for part in parts:
            symbols, relative = _symbols(part)
            heads: tuple[str, ...] | None = None
            for symbol in symbols:
                found = _resolve(script, symbol)
                if found is None:
                    unknown.setdefault(symbol, []).append(database.name)
                elif not relative and symbol == part:
                    heads = found
            resolved.append(heads)
        if len(parts) == 2 and resolved[0] is not None and resolved[1] is not None:
            start, end = (_ancestry(script, heads) for heads in resolved)  # type: ignore[arg-type]
            backwards = not start <= end if command == "upgrade" else not end <= start
            if backwards:
                direction = "forward (e.g. base:head)" if command == "upgrade" else "backward (e.g. head:base)"
                raise SelectionError(
                    f"{shown}: the range runs the wrong way for `{database.name}`: "
                    f"{parts[1]} is not {'after' if command == 'upgrade' else 'before'} {parts[0]}",
                    hint=f"{'an' if command == 'upgrade' else 'a'} {command} range goes {direction}",
                )
    if unknown:
        symbol, where = next(iter(unknown.items()))
        raise SelectionError(
            f"{shown}: no revision, branch label or revision prefix {_short(symbol)} in "
            f"{', '.join(f'`{name}`' for name in where)}",
            hint="see `orchestrate history` for the revisions of each database; head, heads, base, -1 and "
            "REV@head are understood too",
        )


def _symbols(part: str) -> tuple[list[str], bool]:
    """The names in one revision argument that must resolve, and whether it is relative."""
    match = _RELATIVE.fullmatch(part)
    if match:
        label, symbol, _ = match.groups()
        return [s for s in (label, symbol) if s], True
    return [part], False


def _loaded(script_of: Callable[[DatabaseConfig], Any], database: DatabaseConfig) -> Any:
    try:
        return script_of(database)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - a broken versions folder fails its targets, with the file's error
        return None


def _resolve(script: Any, symbol: str) -> tuple[str, ...] | None:
    """The revisions ``symbol`` names in ``script`` (``()`` for base), or None if none."""
    from alembic.script.revision import MultipleHeads, RangeNotAncestorError, ResolutionError

    try:
        found = script.revision_map.get_revisions(symbol)
    except (MultipleHeads, RangeNotAncestorError):
        return ()  # it names something; Alembic says what is wrong with it when the target runs
    except ResolutionError:
        return None
    except Exception:  # noqa: BLE001 - an odd symbol Alembic cannot parse: let the target say
        return ()
    return tuple(r.revision for r in found if r is not None)


def _ancestry(script: Any, heads: tuple[str, ...]) -> set[str]:
    if not heads:
        return set()
    try:
        return {rev.revision for rev in script.iterate_revisions(heads, "base")}
    except Exception:  # noqa: BLE001 - an inconsistent history: not judged here
        return set()
