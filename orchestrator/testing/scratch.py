"""Fresh, empty databases for migration tests, of each database's own dialect.

A :class:`Scratch` is one database of orchestrate.yaml moved onto throwaway storage: a
temporary SQLite file (or one file per tenant), or on a server a temporary database
(PostgreSQL: tenants become schemas inside it; MySQL/MariaDB: tenants become temporary
databases of their own). It writes a copy of orchestrate.yaml next to the original (so
every relative path still means the same) with only the URL and the tenants changed,
loads it through the normal config path, and on :meth:`Scratch.close` drops everything
it created and removes the copy.

The server comes from ``ORCHESTRATE_TEST_<NAME>_URL`` (NAME upper-cased, ``-`` -> ``_``)
or ``--orchestrate-url NAME=URL``; a database on a server without one is skipped.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from orchestrator.config import TENANT_PLACEHOLDER, DatabaseConfig, Project, load_project
from orchestrator.dialects import dialect_for
from orchestrator.targets import Target, tenant_names
from orchestrator.urls import mask_url, parse_url

#: Name prefix of every database and schema the kit creates on a server.
PREFIX = "orch_kit"


class Unavailable(Exception):
    """The database cannot get a scratch copy here (the reason says why: a skip, not a failure)."""


def url_variable(name: str) -> str:
    """``ORCHESTRATE_TEST_<NAME>_URL`` for database ``name``."""
    return f"ORCHESTRATE_TEST_{name.upper().replace('-', '_')}_URL"


def server_url(name: str, given: Mapping[str, str]) -> str | None:
    """The test server for database ``name``: ``--orchestrate-url`` first, then the variable."""
    return given.get(name) or os.environ.get(url_variable(name)) or None


# ---------------------------------------------------------------------- per server


class _Server:
    """How to make and drop throwaway databases on one kind of server."""

    per_tenant_database: ClassVar[bool] = False  # tenants in schema mode: a database each?
    create_sql: ClassVar[str] = ""  # {name}: a generated name (orch_kit_<hex>), never user text
    drop_sql: ClassVar[str] = ""

    def __init__(self, admin_url: str) -> None:
        self.admin = parse_url(admin_url)

    def sync(self, url: URL) -> URL:
        """A sync-driver URL for admin work (the project may use an async driver)."""
        database = DatabaseConfig(name="kit", url=url.render_as_string(hide_password=False), metadata_ref=None,
                                  version_table="v", version_path=Path("."), depends_on=(), lock_timeout=10,
                                  lock_wait=10, lock_retries=0, statement_timeout=None,
                                  transaction_per_migration=True, line=0)
        target = Target(database=database, url=database.url)
        return dialect_for(target).sync_url(target)

    def engine(self) -> Engine:
        return create_engine(self.sync(self.admin), poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def _execute(self, sql: str) -> None:
        engine = self.engine()
        try:
            with engine.connect() as connection:
                connection.execute(text(sql))
        finally:
            engine.dispose()

    def create(self, name: str) -> None:
        self._execute(self.create_sql.format(name=name))

    def drop(self, name: str) -> None:
        self._execute(self.drop_sql.format(name=name))

    def url_for(self, name: str) -> str:
        return self.admin.set(database=name).render_as_string(hide_password=False)


class _Postgres(_Server):
    create_sql = 'CREATE DATABASE "{name}"'
    drop_sql = 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


class _MySQL(_Server):
    per_tenant_database = True
    create_sql = "CREATE DATABASE `{name}`"
    drop_sql = "DROP DATABASE IF EXISTS `{name}`"


_SERVERS: dict[str, type[_Server]] = {"postgresql": _Postgres, "mysql": _MySQL, "mariadb": _MySQL}


# ---------------------------------------------------------------------- one scratch copy


def sample_tenants(database: DatabaseConfig, count: int = 2) -> list[str]:
    """Up to ``count`` tenants of a multi-tenant database: the first and the last declared
    (queried tenants are not asked for: the query may need production)."""
    tenants = database.tenants
    if tenants is None:
        return []
    names = list(tenants.names) if tenants.names is not None else []
    if not names and tenants.query is None:
        with contextlib.suppress(Exception):
            names = tenant_names(database)
    if len(names) >= count:
        return [names[0], names[-1]][:count] if count == 2 else names[:count]
    return names + [f"kit_tenant_{i}" for i in range(len(names), count)]


@dataclass
class Scratch:
    """One database of a project, moved onto fresh empty storage (see the module docstring)."""

    source: Project
    name: str
    config_path: Path
    project: Project
    url: str
    tenants: list[str]
    _cleanup: list[Any] = field(default_factory=list, repr=False)

    @property
    def database(self) -> DatabaseConfig:
        return self.project.databases[self.name]

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    def close(self) -> None:
        """Drop every database and schema this scratch created; remove its config copy."""
        errors: list[BaseException] = []
        for undo in reversed(self._cleanup):
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - drop the rest, then report
                errors.append(exc)
        self._cleanup.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_scratch(source: Project, names: list[str], urls: Mapping[str, str], *, tenants: int = 2,
                 replay: bool | None = None) -> Scratch:
    """A scratch copy of ``source`` where each database of ``names`` (the first is the one
    the scratch is named after) is on fresh empty storage. Raises :class:`Unavailable`."""
    raw = yaml.safe_load(source.path.read_text(encoding="utf-8"))
    cleanup: list[Any] = []
    tenant_list: list[str] = []
    urls_made: dict[str, str] = {}
    try:
        for name in names:
            database = source.databases[name]
            entry = raw["databases"][name]
            url, sampled = _place(database, urls, tenants, cleanup)
            entry["url"] = url
            urls_made[name] = url
            if database.tenants is not None:
                tenants_entry = {k: v for k, v in (entry.get("tenants") or {}).items()
                                 if k not in ("names", "file", "query", "query_url")}
                tenants_entry["names"] = sampled
                if database.tenants.mode == "schema":
                    tenants_entry["create"] = True
                entry["tenants"] = tenants_entry
                if name == names[0]:
                    tenant_list = sampled
            if replay is not None and name == names[0]:
                entry["replay"] = replay
        for name in list(raw["databases"]):
            if name not in names:
                entry = raw["databases"][name]
                entry.pop("depends_on", None)
        # only the databases asked for (others keep their real URLs out of the test)
        raw["databases"] = {n: raw["databases"][n] for n in raw["databases"] if n in names}
        for entry in raw["databases"].values():
            if "depends_on" in entry:
                entry["depends_on"] = [d for d in entry["depends_on"] if d in names]
        copy = source.path.with_name(f".{PREFIX}_{uuid.uuid4().hex[:10]}.yaml")
        copy.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        cleanup.append(lambda: copy.unlink(missing_ok=True))
        project = load_project(copy)
    except BaseException:
        for undo in reversed(cleanup):
            with contextlib.suppress(Exception):
                undo()
        raise
    return Scratch(source, names[0], copy, project, urls_made[names[0]], tenant_list, cleanup)


def _place(database: DatabaseConfig, urls: Mapping[str, str], tenants: int,
           cleanup: list[Any]) -> tuple[str, list[str]]:
    """Fresh storage for one database: its URL, and its sampled tenants (renamed where they
    must be unique on a shared server). Registers the drops in ``cleanup``."""
    configured = parse_url(database.url)
    place = _FILE_PLACES.get(configured.get_backend_name(), _place_on_server)
    return place(database, urls, sample_tenants(database, tenants) if database.tenants is not None else [], cleanup)


def _place_in_files(database: DatabaseConfig, urls: Mapping[str, str], sampled: list[str],
                    cleanup: list[Any]) -> tuple[str, list[str]]:
    """A database that is a file (SQLite): a temporary folder of files."""
    configured = parse_url(database.url)
    mode = database.tenants.mode if database.tenants is not None else None
    if mode == "schema":
        raise Unavailable(f"{database.name}: schema tenants on a file database are not supported by the test kit")
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}_"))
    cleanup.append(lambda: shutil.rmtree(folder, ignore_errors=True))
    if mode == "database":
        return configured.set(database=str(folder / f"{TENANT_PLACEHOLDER}.db")).render_as_string(
            hide_password=False), sampled
    return configured.set(database=str(folder / f"{database.name}.db")).render_as_string(hide_password=False), []


def _place_on_server(database: DatabaseConfig, urls: Mapping[str, str], sampled: list[str],
                     cleanup: list[Any]) -> tuple[str, list[str]]:
    """A server database: a temporary database on the test server (tenants inside it, or
    temporary databases of their own where a schema is a database)."""
    configured = parse_url(database.url)
    backend = configured.get_backend_name()
    mode = database.tenants.mode if database.tenants is not None else None
    admin = server_url(database.name, urls)
    if admin is None:
        raise Unavailable(
            f"{database.name} is a {backend} database: set {url_variable(database.name)} "
            f"(or --orchestrate-url {database.name}=URL) to a server the kit may create databases on")
    server_cls = _SERVERS.get(parse_url(admin).get_backend_name())
    if server_cls is None:
        raise Unavailable(f"{database.name}: the test kit cannot create databases on {parse_url(admin).get_backend_name()}")
    server = server_cls(admin)
    # keep the project's driver (async or not), on the test server
    base = configured.set(host=server.admin.host, port=server.admin.port, username=server.admin.username,
                          password=server.admin.password, query=dict(server.admin.query) or configured.query)
    unique = f"{PREFIX}_{uuid.uuid4().hex[:10]}"
    if mode == "database":
        raise Unavailable(f"{database.name}: database-per-tenant on a server is not supported by the test kit yet")
    server.create(unique)
    cleanup.append(lambda: server.drop(unique))
    if mode == "schema" and server.per_tenant_database:
        renamed = [f"{unique}_{i}" for i in range(len(sampled))]
        for tenant_db in renamed:
            cleanup.append(lambda tenant_db=tenant_db: server.drop(tenant_db))
        sampled = renamed
    return base.set(database=unique).render_as_string(hide_password=False), sampled


#: Backends whose databases are files (no server needed); every other one is a server.
_FILE_PLACES = {"sqlite": _place_in_files}


@contextlib.contextmanager
def scratch(source: Project, name: str, urls: Mapping[str, str] | None = None, **kw: Any) -> Iterator[Scratch]:
    """:func:`open_scratch` for one database, closed (everything dropped) on exit."""
    made = open_scratch(source, [name], urls or {}, **kw)
    try:
        yield made
    finally:
        made.close()
