"""Stage 2: databases x tenants -> targets, the things that each have one version table."""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config import DatabaseConfig, Project
from orchestrator.urls import mask_url, parse_url


@dataclass(frozen=True)
class Target:
    """One version table: a database without tenants, or one tenant of a database."""

    database: DatabaseConfig = field(repr=False)
    tenant: str | None = None
    url: str = field(default="", repr=False)
    schema: str | None = None

    @property
    def name(self) -> str:
        """``users`` or ``users/acme``: how a target is named in output, reports and locks."""
        return self.database.name if self.tenant is None else f"{self.database.name}/{self.tenant}"

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    @property
    def dialect(self) -> str:
        return parse_url(self.url).get_backend_name()

    def __repr__(self) -> str:
        return f"Target({self.name!r}, url={self.display_url!r}, schema={self.schema!r})"


def targets_of(database: DatabaseConfig) -> list[Target]:
    """Every target of one database, in a stable order."""
    return [Target(database=database, url=database.url)]


def all_targets(project: Project) -> list[Target]:
    return [t for db in project.databases.values() for t in targets_of(db)]
