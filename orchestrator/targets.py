"""Stage 2: databases x tenants -> targets, the things that each have one version table."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from orchestrator.config import TENANT_PLACEHOLDER, DatabaseConfig
from orchestrator.errors import ConfigError, OrchestrateError
from orchestrator.urls import mask_text, mask_url, parse_url


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

    @cached_property
    def dialect(self) -> str:
        """``postgresql``, ``mysql``, ``sqlite``... (asked on every step of a run: parsed once)."""
        return parse_url(self.url).get_backend_name()

    def __repr__(self) -> str:
        return f"Target({self.name!r}, url={self.display_url!r}, schema={self.schema!r})"


def make_target(database: DatabaseConfig, tenant: str | None = None) -> Target:
    """The target for one tenant of ``database`` (or the database itself)."""
    tenants = database.tenants
    if tenants is None or tenant is None:
        return Target(database=database, url=database.url)
    if not re.fullmatch(tenants.pattern, tenant):  # names reach SQL as identifiers: check every path in
        raise OrchestrateError(
            f"{database.name}: tenant name {tenant!r} does not match the tenant pattern {tenants.pattern}",
            hint="tenant names must match `pattern:` under the database's `tenants:`",
        )
    url = parse_url(database.url)
    if tenants.mode == "database":
        return Target(
            database=database,
            tenant=tenant,
            url=url.set(database=(url.database or "").replace(TENANT_PLACEHOLDER, tenant)).render_as_string(
                hide_password=False
            ),
        )
    if url.get_backend_name() == "postgresql":
        return Target(database=database, tenant=tenant, url=database.url, schema=tenant)
    # MySQL/MariaDB: a schema is a database; one per tenant on the same server.
    return Target(
        database=database, tenant=tenant, url=url.set(database=tenant).render_as_string(hide_password=False)
    )


def tenant_names(database: DatabaseConfig) -> list[str]:
    """The tenants of ``database``: from the config, or by running its query now."""
    tenants = database.tenants
    if tenants is None:
        return []
    if tenants.names is not None:
        return list(tenants.names)
    query_url = tenants.query_url or database.url
    engine = create_engine(parse_url(query_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(tenants.query or "")).all()
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise OrchestrateError(
            f"{database.name}: the tenants query failed on {mask_url(query_url)}: {mask_text(detail)}",
            hint="check `query:` (and `query_url:`) under the database's `tenants:`; it must return one column",
        ) from None
    finally:
        engine.dispose()
    names: list[str] = []
    pattern = re.compile(tenants.pattern)
    for row in rows:
        name = row[0]
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise ConfigError(
                f"{database.name}: the tenants query returned {mask_text(repr(name))}, "
                f"which does not match the tenant pattern {tenants.pattern}",
                hint="tenant names reach SQL as identifiers; fix the data or `pattern:`",
            )
        if name not in names:
            names.append(name)
    return names


def targets_of(database: DatabaseConfig) -> list[Target]:
    """Every target of one database, in a stable order (tenants as listed or queried)."""
    if database.tenants is None:
        return [make_target(database)]
    return [make_target(database, tenant) for tenant in tenant_names(database)]
