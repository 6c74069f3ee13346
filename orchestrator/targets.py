"""Stage 2: databases x tenants -> targets, the things that each have one version table.

Every tenant name, whatever its source (``names:``, a tenants file, the tenant query, the
command line, a ``--retry-failed`` report), passes the same checks before it reaches SQL
or a file name: the dialect's rules (reserved names, identifier limit, safe file names,
no control characters) and the database's ``pattern:``, run with a time bound
(:func:`orchestrator.config.first_mismatch`). Names from the config were checked when it
was loaded; :func:`check_tenant_names` checks the others, in one batch.

The tenant query reads at most ``ORCHESTRATE_MAX_TENANTS`` rows (default 1,000,000); a
query that fails or returns something other than a name is a configuration error (exit 2)
naming the file and line of ``query:``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from orchestrator.config import (
    TENANT_PLACEHOLDER,
    Bounds,
    DatabaseConfig,
    first_mismatch,
    tenant_name_problem_text,
)
from orchestrator.dialects import for_backend
from orchestrator.errors import ConfigError, OrchestrateError, SelectionError
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


def make_target(database: DatabaseConfig, tenant: str | None = None, *, checked: bool = False) -> Target:
    """The target for one tenant of ``database`` (or the database itself).

    The tenant name is checked (dialect rules, then ``pattern:``) unless ``checked`` says
    it already was: names reach SQL as identifiers and file names, so every path in checks.
    """
    tenants = database.tenants
    if tenants is None or tenant is None:
        return Target(database=database, url=database.url)
    if not checked:
        check_tenant_names(database, [tenant])
    url = parse_url(database.url)
    if tenants.mode == "database":
        return Target(
            database=database,
            tenant=tenant,
            url=url.set(database=(url.database or "").replace(TENANT_PLACEHOLDER, tenant)).render_as_string(
                hide_password=False
            ),
        )
    # PostgreSQL: a schema in the one database; MySQL/MariaDB: a database per tenant.
    tenant_url, schema = for_backend(url.get_backend_name()).schema_tenant(url, tenant)
    shown = database.url if tenant_url is url else tenant_url.render_as_string(hide_password=False)
    return Target(database=database, tenant=tenant, url=shown, schema=schema)


def tenant_problems(database: DatabaseConfig, names: Sequence[str], pattern: bool = True) -> tuple[int, str] | None:
    """The first of ``names`` that cannot be a tenant of ``database``, as (index, reason);
    None when all can. Dialect rules first, then (with ``pattern``) the pattern, bounded in time."""
    tenants = database.tenants
    if tenants is None:
        return (0, f"`{database.name}` has no tenants") if names else None
    backend = parse_url(database.url).get_backend_name()
    for index, name in enumerate(names):
        if not isinstance(name, str):
            return index, f"a tenant name must be text, not {type(name).__name__}"
        if not name.isascii():
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes of a command line arrive as lone surrogates
                return index, f"tenant name {_short(name)} is not valid UTF-8 text"
        problem = tenant_name_problem_text(backend, name)
        if problem:
            return index, problem
    if not pattern:
        return None
    try:
        index = first_mismatch(tenants.pattern, names)
    except Exception:  # noqa: BLE001 - config's _PatternTimeout: the pattern ran past its time bound
        return 0, f"the tenant pattern {_short(tenants.pattern)} took too long on these tenant names"
    if index >= 0:
        return index, f"tenant name {_short(names[index])} does not match the tenant pattern {_short(tenants.pattern)}"
    return None


def invalid_tenant_names(database: DatabaseConfig, names: Sequence[str]) -> dict[int, str]:
    """Every one of ``names`` that cannot be a tenant of ``database``: {index: reason}.
    One pass over the names (the pattern runs on what is left after each mismatch)."""
    found: dict[int, str] = {}
    rest: list[int] = []
    for index, name in enumerate(names):
        problem = tenant_problems(database, [name], pattern=False)
        if problem is not None:
            found[index] = problem[1]
        else:
            rest.append(index)
    tenants = database.tenants
    if tenants is None or not rest:
        return found
    start = 0
    candidates = [names[i] for i in rest]
    while start < len(candidates):
        try:
            at = first_mismatch(tenants.pattern, _Tail(candidates, start))
        except Exception:  # noqa: BLE001 - config's _PatternTimeout: the pattern ran past its time bound
            found[rest[start]] = f"the tenant pattern {_short(tenants.pattern)} took too long on these tenant names"
            break
        if at < 0:
            break
        index = rest[start + at]
        found[index] = (f"tenant name {_short(names[index])} does not match the tenant pattern "
                        f"{_short(tenants.pattern)}")
        start += at + 1
    return found


class _Tail(Sequence[str]):
    """``items[start:]`` without a copy."""

    def __init__(self, items: list[str], start: int) -> None:
        self.items, self.start = items, start

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.items[self.start:][index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.items[self.start + index]


def check_tenant_names(database: DatabaseConfig, names: Sequence[str],
                       where: Callable[[int], str] | None = None) -> None:
    """Raise SelectionError (exit 2) for the first of ``names`` that cannot be a tenant of
    ``database``; ``where(index)`` names its place (an option, a file's line)."""
    found = tenant_problems(database, names)
    if found is None:
        return
    index, problem = found
    place = where(index) if where is not None else database.name
    raise SelectionError(
        f"{place}: {problem}",
        hint=f"tenant names of `{database.name}` become schema, database or file names on the server; "
        "they must match `pattern:` under its `tenants:` and the server's naming rules",
    )


def tenant_names(database: DatabaseConfig) -> list[str]:
    """The tenants of ``database``: from the config, or by running its query now.

    Query results are bounded (``ORCHESTRATE_MAX_TENANTS`` rows) and each checked like a
    name in the config; a failing query or a bad value is a ConfigError naming ``query:``.
    """
    tenants = database.tenants
    if tenants is None:
        return []
    if tenants.names is not None:
        return list(tenants.names)
    query_url = tenants.query_url or database.url
    where = _query_where(database)
    bounds = Bounds.from_environ(os.environ)
    limit = bounds.tenants
    engine = create_engine(parse_url(query_url), poolclass=NullPool)
    try:
        try:
            connection = engine.connect()
        except SQLAlchemyError as exc:
            raise OrchestrateError(
                f"{database.name}: cannot connect to {mask_url(query_url)} to list the tenants: {_first_line(exc)}",
                hint=f"the tenants query of {where} runs there; is the server up?",
            ) from None
        with connection:
            try:
                result = connection.execution_options(stream_results=True).execute(text(tenants.query or ""))
                rows = result.fetchmany(limit + 1)
                result.close()
            except SQLAlchemyError as exc:
                raise ConfigError(
                    f"{where}: the tenants query failed on {mask_url(query_url)}: {_first_line(exc)}",
                    hint="check `query:` (and `query_url:`) under the database's `tenants:`; "
                    "it must return one column of tenant names",
                ) from None
    finally:
        engine.dispose()
    if len(rows) > limit:
        raise ConfigError(
            f"{where}: the tenants query returned more than {limit} rows",
            hint=f"if this is intended, raise the bound with {bounds.setting('tenants')}",
        )
    names: list[Any] = []
    seen: set[str] = set()
    for row in rows:
        value = _row_value(row)
        if not isinstance(value, str):
            names.append(value)  # reported below (it may not even be hashable)
            break
        if value not in seen:
            seen.add(value)
            names.append(value)
    found = tenant_problems(database, names)
    if found is not None:
        index, problem = found
        value = names[index]
        shown = (f"returned {problem}" if isinstance(value, str)
                 else f"returned {_short(value)}, which is not a tenant name ({problem})")
        raise ConfigError(
            f"{where}: the tenants query {shown}",
            hint="tenant names reach SQL as identifiers; fix the data, the query or `pattern:`",
        )
    return names


def _row_value(row: Sequence[object]) -> object:
    return row[0] if len(row) else None


def _query_where(database: DatabaseConfig) -> str:
    """``orchestrate.yaml:LINE: databases.NAME.tenants.query`` (the line of ``query:``)."""
    tenants = database.tenants
    line = getattr(tenants, "query_line", 0) or database.line
    return f"{database.config_path}:{line}: databases.{database.name}.tenants.query"


def _first_line(exc: BaseException) -> str:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask_text(detail[0] if detail else type(exc).__name__)


def _short(value: object, limit: int = 80) -> str:
    shown = repr(value)
    return mask_text(shown if len(shown) <= limit else shown[: limit - 3] + "...")


def targets_of(database: DatabaseConfig) -> list[Target]:
    """Every target of one database, in a stable order (tenants as listed or queried)."""
    if database.tenants is None:
        return [make_target(database)]
    return [make_target(database, tenant, checked=True) for tenant in tenant_names(database)]
