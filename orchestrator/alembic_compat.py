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

from typing import Any

import alembic
from alembic.script import ScriptDirectory

#: Alembic releases this module was written and tested against: [SUPPORTED_FROM, SUPPORTED_BELOW).
SUPPORTED_FROM = (1, 13)
SUPPORTED_BELOW = (2, 0)

#: (owner, private attribute) pairs this module relies on.
PRIVATE_NAMES = (
    (ScriptDirectory, "_upgrade_revs"),    # PRIVATE: the steps of `alembic upgrade REV`
    (ScriptDirectory, "_downgrade_revs"),  # PRIVATE: the steps of `alembic downgrade REV`
    (ScriptDirectory, "_stamp_revs"),      # PRIVATE: the steps of `alembic stamp REV`
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


def upgrade_steps(script: ScriptDirectory, revision: str, heads: tuple[str, ...]) -> list[Any]:
    """The steps ``alembic upgrade revision`` takes from ``heads`` (as command.upgrade plans them)."""
    return list(script._upgrade_revs(revision, heads))  # type: ignore[arg-type]  # PRIVATE


def downgrade_steps(script: ScriptDirectory, revision: str, heads: tuple[str, ...]) -> list[Any]:
    """The steps ``alembic downgrade revision`` takes from ``heads``."""
    return list(script._downgrade_revs(revision, heads))  # type: ignore[arg-type]  # PRIVATE


def stamp_steps(script: ScriptDirectory, revisions: tuple[str, ...], heads: tuple[str, ...]) -> list[Any]:
    """The steps ``alembic stamp revisions`` takes from ``heads``."""
    return list(script._stamp_revs(revisions, heads))  # PRIVATE
