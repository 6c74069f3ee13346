"""The generated tests, one function per kind, each run against fresh scratch databases.

Every check takes a :class:`Kit` (the project, the test servers) and a database name;
it passes, raises :class:`~orchestrator.testing.runner.KitFailure` with a message that
names the revision and what differed, or raises :class:`~orchestrator.testing.scratch.
Unavailable` (the plugin turns it into a skip with the reason).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from alembic.script import ScriptDirectory

from orchestrator.config import Project
from orchestrator.operations import Workspace
from orchestrator.results import Status
from orchestrator.testing.runner import KitFailure, Runner, schema_diff
from orchestrator.testing.scratch import open_scratch


@dataclass
class Kit:
    """What every check needs: the project and where its server databases may be made."""

    project: Project
    urls: Mapping[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines a check wants shown (e.g. replayed vs live)

    @contextlib.contextmanager
    def runner(self, name: str, *, with_dependencies: bool = False, replay: bool | None = None) -> Iterator[Runner]:
        """A :class:`Runner` on fresh empty storage for ``name`` (and its dependencies),
        dropped afterwards."""
        names = [name]
        if with_dependencies:
            names += [d for d in _dependencies(self.project, name) if d not in names]
        scratch = open_scratch(self.project, names, self.urls, replay=replay)
        try:
            yield Runner(scratch)
        finally:
            scratch.close()

    def script(self, name: str) -> ScriptDirectory:
        return Workspace(self.project).scripts.script(self.project.databases[name])


def _dependencies(project: Project, name: str) -> list[str]:
    seen: list[str] = []
    stack = list(project.databases[name].depends_on)
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen.append(dep)
            stack.extend(project.databases[dep].depends_on)
    return seen


# ---------------------------------------------------------------------- the checks


def single_head(kit: Kit, name: str) -> None:
    heads = sorted(kit.script(name).get_heads())
    if len(heads) > 1:
        raise KitFailure(
            f"{name}: {len(heads)} heads: {', '.join(heads)}\n"
            f"merge them: `orchestrate merge -n {name} -m \"merge heads\"`")


def upgrade(kit: Kit, name: str) -> None:
    heads = sorted(kit.script(name).get_heads())
    with kit.runner(name) as runner:
        runner.upgrade("heads")
        for target, at in runner.current().items():
            if sorted(at) != heads:
                raise KitFailure(f"{target}: after `upgrade heads` on an empty database the version table is at "
                                 f"{', '.join(at) or 'base'}, not at the head {', '.join(heads)}")


def stairway(kit: Kit, name: str) -> None:
    """For every revision, base first: up, down, up again; the schema after the downgrade
    is the one before the upgrade, and after the second upgrade the one after the first."""
    script = kit.script(name)
    order = list(reversed(list(script.walk_revisions())))
    with kit.runner(name) as runner:
        applied: set[str] = set()
        for sc in order:
            rev = sc.revision
            wanted = {r.revision for r in script.iterate_revisions(rev, "base")} - {rev}
            if applied != wanted:  # another branch is applied: start this revision from its own ancestors
                if applied:
                    runner.downgrade("base")
                for head in _heads_of(script, wanted):
                    runner.upgrade(head)
                applied = set(wanted)
            before = runner.schema()
            runner.upgrade(rev)
            after = runner.schema()
            parents = _parents(sc)
            runner.downgrade(parents[0] if parents else "base")
            undone = runner.schema()
            differ = schema_diff(before, undone)
            if differ:
                raise KitFailure(_stair_text(name, sc, "its downgrade did not undo its upgrade", differ))
            runner.upgrade(rev)
            again = runner.schema()
            differ = schema_diff(after, again)
            if differ:
                raise KitFailure(_stair_text(name, sc, "upgrading again after its downgrade gave another schema", differ))
            applied.add(rev)


def _parents(sc: Any) -> list[str]:
    from orchestrator.workflow import parents

    return parents(sc)


def _heads_of(script: ScriptDirectory, revisions: set[str]) -> list[str]:
    """The revisions of a set that no other revision of the set revises."""
    below: set[str] = set()
    for rev in revisions:
        below.update(_parents(script.get_revision(rev)))
    return sorted(revisions - below)


def _stair_text(name: str, sc: Any, what: str, differ: list[str]) -> str:
    lines = "\n".join(f"    {line}" for line in differ)
    return f"{name}: revision {sc.revision} ({sc.doc}): {what}:\n{lines}"


def models_match(kit: Kit, name: str) -> None:
    database = kit.project.databases[name]
    if database.metadata_ref is None:
        from orchestrator.testing.scratch import Unavailable

        raise Unavailable(f"{name} declares no `metadata:`; there are no models to compare")
    with kit.runner(name) as runner:
        runner.upgrade("heads")
        for result in runner.check():
            if result.status is Status.DIFFERENT:
                lines = "\n".join(f"    {d}" for d in result.differences)
                raise KitFailure(f"{result.target}: the models and the migrations differ after `upgrade heads` "
                                 f"(at {', '.join(result.after or []) or 'base'}):\n{lines}")
            if not result.status.succeeded:
                raise KitFailure(f"{result.target}: check {result.status.value}: {result.error}")


def depends_on_order(kit: Kit, name: str) -> None:
    dependencies = _dependencies(kit.project, name)
    with kit.runner(name, with_dependencies=True) as runner:
        outcome = runner.all()
        order = [r.database for r in outcome.results]
        for dep in dependencies:
            if dep in order and order.index(dep) > order.index(name):
                raise KitFailure(f"{name}: `upgrade --all` ran it before its dependency {dep} (order: {', '.join(order)})")


def replay_vs_live(kit: Kit, name: str) -> None:
    """Two sampled tenants migrated with ``replay: true`` get the schema live runs give."""
    with kit.runner(name, replay=False) as live, kit.runner(name, replay=True) as replayed:
        live.upgrade("heads")
        outcome = replayed.upgrade("heads")
        live_targets, replay_targets = live.targets(), replayed.targets()
        for result in outcome.results:
            count = result.replayed or 0
            kit.notes.append(f"{result.target}: {len(result.applied)} revisions, {count} replayed, "
                             f"{len(result.applied) - count} ran live")
        script = kit.script(name)
        always_live = [sc.revision for sc in script.walk_revisions()
                       if getattr(sc.module, "orchestrate_replay", True) is False]
        if always_live:
            kit.notes.append(f"always live (orchestrate_replay = False): {', '.join(reversed(always_live))}")
        for index, (a, b) in enumerate(zip(live_targets, replay_targets)):
            differ = schema_diff(live.schema(a), replayed.schema(b))
            if differ:
                lines = "\n".join(f"    {line}" for line in differ)
                raise KitFailure(f"{name}: sampled tenant {index + 1} ({b.tenant}) got another schema with replay "
                                 f"than live:\n{lines}")


def async_upgrade(kit: Kit, name: str) -> None:
    """``upgrade_async`` from inside a running event loop (a FastAPI lifespan, an async test)."""
    import orchestrator

    heads = sorted(kit.script(name).get_heads())
    with kit.runner(name) as runner:
        async def main() -> None:
            await orchestrator.upgrade_async(runner.scratch.config_path, name)

        asyncio.run(main())
        for target, at in runner.current().items():
            if sorted(at) != heads:
                raise KitFailure(f"{target}: upgrade_async left the version table at {', '.join(at) or 'base'}")


#: test name -> (check, applies to this database?)
CHECKS: dict[str, tuple[Callable[[Kit, str], None], Callable[[Project, str], bool]]] = {
    "test_single_head": (single_head, lambda p, n: True),
    "test_upgrade": (upgrade, lambda p, n: True),
    "test_stairway": (stairway, lambda p, n: True),
    "test_models_match": (models_match, lambda p, n: p.databases[n].metadata_ref is not None),
    "test_depends_on_order": (depends_on_order, lambda p, n: bool(p.databases[n].depends_on)),
    "test_replay_vs_live": (replay_vs_live, lambda p, n: p.databases[n].tenants is not None),
    "test_upgrade_async": (async_upgrade, lambda p, n: True),
}
