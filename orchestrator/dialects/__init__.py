"""Every difference between database servers, behind one interface: one class per dialect.

``base`` holds the interface (:class:`Dialect`) and shared helpers; ``postgresql``,
``mysql`` (MariaDB too) and ``sqlite`` each hold one subclass. :func:`dialect_for` picks
the class for a target's URL, :func:`for_backend` for a backend name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

from orchestrator.dialects.base import BlockerWatch, Dialect, MigrationLock, lock_name
from orchestrator.dialects.mysql import MySQL
from orchestrator.dialects.postgresql import PostgreSQL
from orchestrator.dialects.sqlite import SQLite

if TYPE_CHECKING:
    from orchestrator.targets import Target

_DIALECTS: dict[str, type[Dialect]] = {
    "postgresql": PostgreSQL,
    "mysql": MySQL,
    "mariadb": MySQL,
    "sqlite": SQLite,
}
_INSTANCES: dict[type[Dialect], Dialect] = {}


def for_backend(backend: str) -> Dialect:
    """The :class:`Dialect` for a backend name (``postgresql``, ``mysql``, ``mariadb``,
    ``sqlite``; a generic one for servers we know nothing of). Dialects keep no state,
    so each class has one instance."""
    cls = _DIALECTS.get(backend, Dialect)
    instance = _INSTANCES.get(cls)
    if instance is None:
        instance = _INSTANCES[cls] = cls()
    return instance


def dialect_for(target: Target) -> Dialect:
    """The :class:`Dialect` for a target's URL."""
    return for_backend(target.dialect)


def tenant_name_problem(backend: str, name: str) -> str | None:
    """Why ``name`` cannot be a tenant on ``backend`` (reserved, too long, unsafe), or None."""
    return for_backend(backend).tenant_name_problem(name)


def is_async_url(url: URL) -> bool:
    """Does this URL name an asyncio driver (psycopg_async, asyncpg, aiosqlite, aiomysql...)?"""
    try:
        return bool(url.get_dialect().is_async)
    except Exception:  # noqa: BLE001 - an unknown driver: create_engine will say so clearly
        return False


__all__ = [
    "BlockerWatch", "Dialect", "MigrationLock", "MySQL", "PostgreSQL", "SQLite",
    "dialect_for", "for_backend", "is_async_url", "lock_name", "tenant_name_problem",
]
