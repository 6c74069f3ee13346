"""Every use of Alembic's private API, in one place, each marked and version-checked.

orchestrate plans migration steps itself (to name the revision that fails, to plan once
per starting point, to replay recordings), which Alembic only offers through underscored
methods of :class:`~alembic.script.ScriptDirectory`. They have been stable since 1.5, but
they are private: :func:`check` runs at import and fails loudly, naming the missing
method, on an Alembic release that changed them; pyproject.toml caps Alembic below the
next major release for the same reason. Nothing else in orchestrate calls a private
Alembic name.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import alembic
import alembic.util
from alembic.runtime.migration import HeadMaintainer, RevisionStep
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, bindparam
from sqlalchemy.schema import CreateTable

#: Alembic releases this module was written and tested against: [SUPPORTED_FROM, SUPPORTED_BELOW).
SUPPORTED_FROM = (1, 13)
SUPPORTED_BELOW = (2, 0)

#: (owner, private attribute) pairs this module relies on.
PRIVATE_NAMES = (
    (ScriptDirectory, "_upgrade_revs"),    # PRIVATE: the steps of `alembic upgrade REV`
    (ScriptDirectory, "_downgrade_revs"),  # PRIVATE: the steps of `alembic downgrade REV`
    (ScriptDirectory, "_stamp_revs"),      # PRIVATE: the steps of `alembic stamp REV`
    (HeadMaintainer, "_update_version"),   # PRIVATE: the version UPDATE of each revision (bound here)
    (HeadMaintainer, "_insert_version"),   # PRIVATE: the version INSERT from base (bound here)
)

#: Undocumented (public-looking) names this module relies on: a revision file is loaded by
#: ``alembic.util.load_python_file`` (looked up at call time by ``Script._from_path``), and a
#: step of a migration is a ``RevisionStep(revision_map, script, is_upgrade)`` whose
#: ``migration_fn`` is the script module's ``upgrade``/``downgrade``.
UNDOCUMENTED_NAMES: tuple[tuple[Any, str], ...] = (
    (alembic.util, "load_python_file"),  # PRIVATE: swapped while a versions folder loads
    (Script, "_from_path"),              # PRIVATE: calls util.load_python_file per revision file
)


class IncompatibleAlembic(RuntimeError):
    """The installed Alembic lacks a private method orchestrate relies on."""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check(version: str | None = None, names: tuple[tuple[type, str], ...] = PRIVATE_NAMES) -> None:
    """Raise :class:`IncompatibleAlembic` if Alembic ``version`` is outside the supported
    range or any private name this module uses is gone."""
    found = _version(version or alembic.__version__)
    if not SUPPORTED_FROM <= found[: len(SUPPORTED_FROM)] or found[: len(SUPPORTED_BELOW)] >= SUPPORTED_BELOW:
        raise IncompatibleAlembic(
            f"orchestrate supports Alembic >= {'.'.join(map(str, SUPPORTED_FROM))}, "
            f"< {'.'.join(map(str, SUPPORTED_BELOW))}; found {version or alembic.__version__}"
        )
    missing = [f"{owner.__name__}.{name}" for owner, name in names if not callable(getattr(owner, name, None))]
    if missing:
        raise IncompatibleAlembic(
            f"Alembic {version or alembic.__version__} has no {', '.join(missing)}, which orchestrate relies on; "
            "install an Alembic release within the range pyproject.toml allows"
        )


check()
check(names=UNDOCUMENTED_NAMES)


# ---------------------------------------------------------------------- the version UPDATE, bound

_update_version = HeadMaintainer._update_version
_insert_version = HeadMaintainer._insert_version


def _bound_update_version(self: Any, from_: str, to_: str) -> None:
    """HeadMaintainer._update_version with the revisions as bound values: Alembic writes them
    as literals, so every revision is a new statement that SQLAlchemy compiles again (a third
    of a live migration's client time on a long history); bound, it is compiled once.
    Offline (--sql) the literal form is kept: the script must hold the values."""
    context = self.context
    if context.as_sql:
        return _update_version(self, from_, to_)
    assert to_ not in self.heads
    self.heads.remove(from_)
    self.heads.add(to_)
    version = context._version  # PRIVATE: the MigrationContext's version Table
    ret = context.impl._exec(  # PRIVATE: how Alembic executes its own statements
        version.update().values(version_num=bindparam("orchestrate_to", to_))
        .where(version.c.version_num == bindparam("orchestrate_from", from_))
    )
    if context.dialect.supports_sane_rowcount and ret is not None and ret.rowcount != 1:
        raise alembic.util.CommandError(
            f"Online migration expected to match one row when updating '{from_}' to '{to_}' in "
            f"'{context.version_table}'; {ret.rowcount} found"
        )
    return None


def _bound_insert_version(self: Any, version: str) -> None:
    """HeadMaintainer._insert_version with the revision as a bound value (see above)."""
    context = self.context
    if context.as_sql:
        return _insert_version(self, version)
    assert version not in self.heads
    self.heads.add(version)
    context.impl._exec(context._version.insert().values(version_num=bindparam("orchestrate_to", version)))  # PRIVATE
    return None


HeadMaintainer._update_version = _bound_update_version  # type: ignore[method-assign]  # PRIVATE
HeadMaintainer._insert_version = _bound_insert_version  # type: ignore[method-assign]  # PRIVATE


def upgrade_steps(script: ScriptDirectory, revision: str, heads: tuple[str, ...]) -> list[Any]:
    """The steps ``alembic upgrade revision`` takes from ``heads`` (as command.upgrade plans them)."""
    return list(script._upgrade_revs(revision, heads))  # type: ignore[arg-type]  # PRIVATE


def downgrade_steps(script: ScriptDirectory, revision: str, heads: tuple[str, ...]) -> list[Any]:
    """The steps ``alembic downgrade revision`` takes from ``heads``."""
    return list(script._downgrade_revs(revision, heads))  # type: ignore[arg-type]  # PRIVATE


def stamp_steps(script: ScriptDirectory, revisions: tuple[str, ...], heads: tuple[str, ...]) -> list[Any]:
    """The steps ``alembic stamp revisions`` takes from ``heads``."""
    return list(script._stamp_revs(revisions, heads))  # PRIVATE


# ---------------------------------------------------------------------- revision modules


@contextlib.contextmanager
def revision_loader(load: Callable[[Any, Any], ModuleType]) -> Iterator[None]:
    """While a ScriptDirectory reads its versions folders, load each file with ``load(dir,
    filename)`` instead of Alembic's own loader (same contract: return the module).

    PRIVATE: Alembic's ``Script._from_path`` calls ``alembic.util.load_python_file`` for
    every revision file; it is swapped for the duration and put back.
    """
    original = alembic.util.load_python_file
    alembic.util.load_python_file = load  # type: ignore[assignment]  # PRIVATE
    try:
        yield
    finally:
        alembic.util.load_python_file = original  # PRIVATE


def is_revision_step(step: Any) -> bool:
    """A step that runs a revision's ``upgrade()``/``downgrade()`` (not a stamp)."""
    return isinstance(step, RevisionStep)


def with_module(step: Any, module: ModuleType, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    """A copy of the RevisionStep ``step`` whose revision runs from ``module``.

    The Script is copied (shallow: same revision ids, same links in the revision map), its
    ``module`` set, and a new RevisionStep made from it, so Alembic's bookkeeping of the
    step (heads, callbacks) is its own. ``wrap`` wraps the migration function.
    PRIVATE: RevisionStep's constructor is undocumented.
    """
    script = copy.copy(step.revision)
    script.module = module
    fresh = RevisionStep(step.revision_map, script, step.is_upgrade)  # PRIVATE
    fresh.migration_fn = wrap(fresh.migration_fn)
    return fresh


# ---------------------------------------------------------------------- the version table


@functools.lru_cache(maxsize=64)
def version_table(name: str) -> Table:
    """Alembic's version table, as ``MigrationContext`` defines it (one VARCHAR(32) column,
    the primary key named ``<table>_pkc``; no schema: a tenant's connection is pinned to its
    own). Mirrored here, for batches that write the version table without Alembic."""
    return Table(name, MetaData(), Column("version_num", String(32), nullable=False),
                 PrimaryKeyConstraint("version_num", name=f"{name}_pkc"))


@functools.lru_cache(maxsize=8192)
def version_sql(dialect: Any, table: str, old: str | None, new: str | None) -> str:
    """The statement that moves ``table`` from ``old`` to ``new`` as Alembic's HeadMaintainer
    writes it (INSERT from base, UPDATE along a path, DELETE down to base; ``old`` and
    ``new`` both None: CREATE TABLE), compiled with literal values for ``dialect`` (a
    SQLAlchemy Dialect) once per process and transition."""
    t = version_table(table)
    statement: Any
    if old is None and new is None:
        statement = CreateTable(t)
    elif old is None:
        statement = t.insert().values(version_num=new)
    elif new is None:
        statement = t.delete().where(t.c.version_num == old)
    else:
        statement = t.update().values(version_num=new).where(t.c.version_num == old)
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True})).strip()
