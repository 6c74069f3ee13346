"""orchestrate: run Alembic migrations across many databases and tenants from one orchestrate.yaml.

The Python API (``upgrade``, ``downgrade``, ``stamp``, ``current``, ``status``, ``check``
and their ``*_async`` twins) lives in :mod:`orchestrator.api` and is importable from here;
it is loaded on first use, so that ``import orchestrator`` stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError, OrchestrateError, SelectionError, TargetError

if TYPE_CHECKING:
    from orchestrator.api import (
        MigrationFailed,
        check,
        check_async,
        current,
        current_async,
        downgrade,
        downgrade_async,
        stamp,
        stamp_async,
        status,
        status_async,
        upgrade,
        upgrade_async,
    )

_API = (
    "MigrationFailed", "check", "check_async", "current", "current_async", "downgrade", "downgrade_async",
    "stamp", "stamp_async", "status", "status_async", "upgrade", "upgrade_async",
)


def __getattr__(name: str) -> Any:
    if name in _API:
        from orchestrator import api

        return getattr(api, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


__all__ = ["ConfigError", "OrchestrateError", "SelectionError", "TargetError", *_API]
__version__ = "0.1.0"
