"""Stage 1: orchestrate.yaml -> a validated, expanded :class:`Project`.

The file is parsed twice over the same text: once as a YAML node tree, to know the line
of every key, and once into plain data that pydantic validates. Every error names the
file and line and says how to fix it. Relative paths are relative to the folder holding
the file, never to the working directory.
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import MetaData

from orchestrator.errors import ConfigError
from orchestrator.urls import mask_text, mask_url, parse_url, register_secret

CONFIG_FILENAME = "orchestrate.yaml"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
# $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default}; the last branch catches any
# other ${...} so that a typo such as ${NAME:default} is an error instead of literal text.
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$\{[^}]*\}?")
# Ports a URL may leave out: host/db and host:5432/db are the same place.
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}

Path_ = tuple[str | int, ...]


# --------------------------------------------------------------------------- schema


def parse_duration(value: Any) -> float:
    """``10s``, ``500ms``, ``2m``, ``1h`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 500ms or 2m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write it as 10s, 500ms, 2m or 1h")
        factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match[2] or "s"]
        seconds = float(match[1]) * factor
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class DatabaseSettings(_Strict):
    """Settings that ``defaults:`` gives every database and each database may override."""

    lock_timeout: float | None = None
    lock_wait: float | None = None
    lock_retries: int | None = Field(default=None, ge=0, le=100)
    statement_timeout: float | None = None
    transaction_per_migration: bool | None = None
    replay: bool | None = None

    @field_validator("lock_timeout", "lock_wait", "statement_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)


DEFAULT_TENANT_PATTERN = r"^[a-z0-9_]{1,63}$"


class RawTenants(_Strict):
    mode: Literal["schema", "database"]
    names: list[str] | None = None
    file: str | None = None
    query: str | None = None
    query_url: str | None = None
    pattern: str = DEFAULT_TENANT_PATTERN
    create: bool = False

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RawTenants:
        sources = [k for k in ("names", "file", "query") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of `names:`, `file:` or `query:` for the tenants"
                + (f" (found {', '.join(sources)})" if sources else "")
            )
        if self.query_url is not None and self.query is None:
            raise ValueError("`query_url:` goes with `query:`")
        return self


class RawDatabase(DatabaseSettings):
    url: str
    metadata: str | None = None
    version_table: str = "alembic_version"
    version_path: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    tenants: RawTenants | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_ref(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError(f"{value!r} is not 'module:attribute', e.g. myapp.models:metadata")
        return value

    @field_validator("version_table")
    @classmethod
    def _version_table(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} is not a plain table name (letters, digits, _)")
        return value


class RawExecution(_Strict):
    parallel: int = Field(default=1, ge=1, le=256)


class RawProject(_Strict):
    script_location: str = "envs"
    sys_path: list[str] = Field(default_factory=lambda: ["."])
    defaults: DatabaseSettings = Field(default_factory=DatabaseSettings)
    execution: RawExecution = Field(default_factory=RawExecution)
    databases: dict[str, RawDatabase]

    @field_validator("databases")
    @classmethod
    def _names(cls, value: dict[str, RawDatabase]) -> dict[str, RawDatabase]:
        if not value:
            raise ValueError("declare at least one database")
        return value


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class TenantsConfig:
    """Where a multi-tenant database's tenants come from, and how they are laid out."""

    mode: str  # "schema" (a schema, or on MySQL a database, per tenant) or "database" ({tenant} in the url)
    names: tuple[str, ...] | None  # from `names:` or `file:`, known when the file is read
    query: str | None = None
    query_url: str | None = field(default=None, repr=False)
    pattern: str = DEFAULT_TENANT_PATTERN
    create: bool = False
    source: str = "names"  # for messages: "names", "tenants.txt", "query"


@dataclass(frozen=True)
class ExecutionConfig:
    parallel: int = 1


@dataclass(frozen=True)
class DatabaseConfig:
    """One database of the project, every value resolved (paths absolute, variables expanded)."""

    name: str
    url: str = field(repr=False)
    metadata_ref: str | None
    metadata: MetaData | None = field(repr=False, compare=False)
    version_table: str
    version_path: Path
    depends_on: tuple[str, ...]
    lock_timeout: float
    lock_wait: float
    lock_retries: int
    statement_timeout: float | None
    transaction_per_migration: bool
    line: int
    tenants: TenantsConfig | None = None
    replay: bool = False

    @property
    def display_url(self) -> str:
        return mask_url(self.url)


@dataclass(frozen=True)
class Project:
    """The whole orchestrate.yaml: where it is, where env.py lives, and its databases in file order."""

    path: Path
    root: Path
    script_location: Path
    sys_path: tuple[Path, ...]
    databases: dict[str, DatabaseConfig]
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def where(self, line: int | None) -> str:
        return f"{self.path}:{line}" if line else str(self.path)


# --------------------------------------------------------------------------- loading


class _Lines:
    """Line numbers (1-based) of every key and value path in a YAML document.

    Paths use the keys as YAML reads them (``123:`` is the int 123, ``no:`` is False), the
    same values the loaded data and pydantic's error locations hold. Keys written twice in
    one mapping are collected in ``duplicates`` (YAML itself silently keeps the last one).
    """

    def __init__(self, node: yaml.Node | None) -> None:
        self.lines: dict[Path_, int] = {}
        self.key_text: dict[Path_, str] = {}
        self.duplicates: list[tuple[Path_, int, int]] = []  # (path, line, line of the first one)
        self._constructor = yaml.constructor.SafeConstructor()
        self._seen: set[int] = set()
        if node is not None:
            self._walk(node, ())

    def _key(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            try:
                value = self._constructor.construct_object(node)
                hash(value)
                return value
            except Exception:  # noqa: BLE001 - an odd key: fall back to its text
                return node.value
        return f"<{node.id} at line {node.start_mark.line + 1}>"

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self._seen:  # an alias of a node already walked (or a recursive one)
            return
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges, it is not a key
                    self._walk(value, path)
                    continue
                name = self._key(key)
                sub = path + (name,)
                line = key.start_mark.line + 1
                if name in first:
                    self.duplicates.append((sub, line, first[name]))
                else:
                    first[name] = line
                    self.lines[sub] = line
                    self.key_text[sub] = str(key.value)
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, path + (index,))

    def of(self, path: Path_) -> int | None:
        """Line of ``path``, or of its nearest ancestor that is in the file."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _dotted(path: Path_) -> str:
    return ".".join(
        f"[{p}]" if isinstance(p, int) and not isinstance(p, bool) else str(p) for p in path
    ).replace(".[", "[")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


_YAML_KINDS = {dict: "mapping", list: "list", str: "string", int: "number", float: "number", bool: "true/false"}


class _Loader:
    def __init__(self, path: Path, environ: dict[str, str]) -> None:
        self.path = path
        self.environ = environ
        self.lines = _Lines(None)

    def error(
        self,
        path: Path_,
        message: str,
        hint: str | None = None,
        *,
        subject: Path_ | None = None,
        line: int | None = None,
    ) -> ConfigError:
        """``file:line: subject: message``; the line is that of ``path`` unless given."""
        line = line or self.lines.of(path) or 1
        subject = path if subject is None else subject
        shown = f" {_dotted(subject)}:" if subject else ""
        return ConfigError(f"{self.path}:{line}:{shown} {message}", hint)

    # -- parse ---------------------------------------------------------------

    def read(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{self.path}: no such file",
                hint="run `orchestrate init` to write a starter orchestrate.yaml, or pass -c PATH",
            ) from None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.lines = _Lines(root)
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            # An unclosed quote or bracket is found at the end of the file (or far below);
            # the line to fix is where it was opened.
            if exc.context_mark is not None and (
                isinstance(exc, yaml.scanner.ScannerError) or "flow" in (exc.context or "")
            ):
                mark = exc.context_mark
            mark = mark or exc.context_mark
            line = f":{mark.line + 1}" if mark else ""
            problem = ", ".join(p for p in (exc.context, exc.problem) if p)
            raise ConfigError(
                f"{self.path}{line}: invalid YAML: {problem}",
                hint="check indentation and quoting on that line (values with ':' or '#' need quotes)",
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.path}:1: invalid YAML: {exc}") from None
        if data is None:
            raise ConfigError(
                f"{self.path}:1: the file is empty",
                hint="declare at least one database under `databases:`, e.g.\n"
                "databases:\n  users:\n    url: sqlite:///var/users.db",
            )
        if not isinstance(data, dict):
            kind = _YAML_KINDS.get(type(data), type(data).__name__)
            raise ConfigError(
                f"{self.path}:{root.start_mark.line + 1 if root else 1}: "
                f"expected a mapping with a `databases:` key, found {_a(kind)}",
                hint="the file holds `key: value` lines at the top level: script_location:, sys_path:, "
                "defaults:, databases:",
            )
        for path, line, first in self.lines.duplicates:
            raise self.error(
                path,
                f"`{self.lines.key_text.get(path, path[-1])}` is written twice "
                f"(first on line {first}); YAML would silently keep only the last one",
                hint="remove or rename one of them",
                subject=path[:-1],
                line=line,
            )
        return self.expand(data, ())

    def expand(self, value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {k: self.expand(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return _VAR.sub(lambda m: self._substitute(m, path), value)
        return value

    def _substitute(self, match: re.Match[str], path: Path_) -> str:
        if match[0] == "$$":
            return "$"
        if match[1] is None:
            raise self.error(
                path,
                f"`{match[0]}` is not a valid variable reference",
                hint="write ${NAME}, ${NAME:-default} or ${NAME-default} (NAME: letters, digits, _); "
                "$$ for a literal $",
            )
        name, op, default = match[1], match[2], match[3]
        value = self.environ.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        if value is None:
            raise self.error(
                path,
                f"environment variable {name} is not set",
                hint=f"export {name}=..., or give a default: ${{{name}:-value}}",
            )
        return value

    # -- validate ------------------------------------------------------------

    def register_secrets(self, data: dict[str, Any]) -> None:
        """Know every password before anything can fail, so that no message can show one."""
        databases = data.get("databases")
        if isinstance(databases, dict):
            for settings in databases.values():
                if isinstance(settings, dict) and isinstance(settings.get("url"), str):
                    register_secret(settings["url"])

    def check_databases(self, data: dict[str, Any]) -> None:
        """``databases:`` is a non-empty mapping of valid names (before pydantic, which would
        word these errors in its own terms)."""
        if "databases" not in data:
            return  # pydantic reports the missing key
        databases = data["databases"]
        example = "e.g.\ndatabases:\n  users:\n    url: sqlite:///var/users.db"
        if databases is None or databases == {}:
            raise self.error(
                ("databases",), "no database is declared", hint=f"declare at least one under `databases:`, {example}"
            )
        if not isinstance(databases, dict):
            kind = _YAML_KINDS.get(type(databases), type(databases).__name__)
            raise self.error(
                ("databases",),
                f"expected a mapping of database names to their settings, found {_a(kind)}",
                hint=example,
            )
        for name in databases:
            if not isinstance(name, str) or not NAME_PATTERN.match(name):
                text = self.lines.key_text.get(("databases", name), str(name))
                why = "" if isinstance(name, str) else f" (YAML reads it as {name!r}; quote it to keep it text)"
                raise self.error(
                    ("databases", name),
                    f"`{text}` is not a valid database name{why}",
                    hint="use letters, digits and _, not starting with a digit, e.g. my_db",
                    subject=("databases",),
                )
            if databases[name] is None:
                raise self.error(
                    ("databases", name),
                    f"database `{name}` has no settings",
                    hint=f"add at least its url, indented under it, e.g.\n  {name}:\n    url: sqlite:///var/{name}.db",
                )

    def validate(self, data: Any) -> RawProject:
        try:
            return RawProject.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            # Report the problem nearest the top of the file, not the first pydantic met; a
            # missing key last (`urll:` explains a missing `url:`, not the other way round).
            first = min(errors, key=lambda e: (e["type"] == "missing", self.lines.of(_loc(e)) or 0))
            raise self._pydantic_error(_loc(first), first, len(errors)) from None

    def _pydantic_error(self, loc: Path_, err: dict[str, Any], count: int) -> ConfigError:
        more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            key = str(loc[-1])
            allowed = _allowed_keys(loc[:-1])
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            hint += f"allowed keys here: {', '.join(allowed)}"
            return self.error(loc, f"unknown key `{key}`{more}", hint=hint, subject=loc[:-1])
        if kind == "missing":
            key = str(loc[-1])
            example = {
                "url": "e.g. url: sqlite:///var/{name}.db or url: ${{{upper}_URL}}",
                "databases": "e.g.\ndatabases:\n  users:\n    url: sqlite:///var/users.db",
            }.get(key)
            name = str(loc[-2]) if len(loc) >= 2 else ""
            hint = f"add `{key}:`" + (", " + example.format(name=name, upper=name.upper()) if example else "")
            return self.error(loc[:-1], f"missing required key `{key}`{more}", hint=hint)
        if value is None and kind.endswith(("_type", "_parsing")):
            return self.error(loc, f"has no value{more}", hint="give it a value, or remove the line to get the default")
        got = f" (got {mask_text(repr(value))})" if _is_scalar(value) else ""
        hint = None
        if kind in ("dict_type", "model_type", "model_attributes_type"):
            kind_found = _YAML_KINDS.get(type(value), type(value).__name__)
            if len(loc) == 2 and loc[0] == "databases":
                message = f"expected the settings of database `{loc[1]}` (a mapping), found {_a(kind_found)}"
                hint = f"write them indented under it, e.g.\n  {loc[1]}:\n    url: sqlite:///var/{loc[1]}.db"
            else:
                message = f"expected a mapping (indented `key: value` lines), found {_a(kind_found)}"
        elif kind == "list_type":
            message = "expected a list"
            if isinstance(value, str):
                hint = f"write it as [{value}], or one `- item` per line"
        elif kind in ("bool_type", "bool_parsing"):
            message = "expected true or false"
        elif kind in ("string_type",):
            message = "expected a string"
            hint = "quote the value"
        else:
            message = err["msg"].removeprefix("Value error, ")
            got = got if kind.endswith(("_type", "_parsing")) else ""
        return self.error(loc, f"{message}{got}{more}", hint=hint)


def _loc(err: Any) -> Path_:
    return tuple(err["loc"])


def _allowed_keys(parent: Path_) -> list[str]:
    if not parent:
        model: type[BaseModel] = RawProject
    elif parent == ("defaults",):
        model = DatabaseSettings
    elif parent == ("execution",):
        model = RawExecution
    elif len(parent) == 3 and parent[2] == "tenants":
        model = RawTenants
    else:
        model = RawDatabase
    return list(model.model_fields)


def load_project(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Project:
    """Read, expand and validate orchestrate.yaml, import every metadata, and check the whole.

    Raises :class:`ConfigError` naming the file and line of the first problem found.
    """
    path = Path(path or os.environ.get("ORCHESTRATE_CONFIG") or CONFIG_FILENAME).resolve()
    loader = _Loader(path, dict(os.environ if environ is None else environ))
    data = loader.read()
    loader.register_secrets(data)
    loader.check_databases(data)
    raw = loader.validate(data)
    root = path.parent

    sys_path = tuple((root / p).resolve() for p in raw.sys_path)
    for entry in reversed(sys_path):
        if str(entry) not in sys.path:
            sys.path.insert(0, str(entry))

    databases: dict[str, DatabaseConfig] = {}
    for name, db in raw.databases.items():
        here = ("databases", name)
        url = _resolve_url(loader, here + ("url",), db.url, root)
        register_secret(url)
        for index, dep in enumerate(db.depends_on):
            if dep not in raw.databases:
                close = difflib.get_close_matches(dep, list(raw.databases), n=1)
                raise loader.error(
                    here + ("depends_on", index),
                    f"`{name}` depends on unknown database `{dep}`",
                    hint=(f"did you mean `{close[0]}`? " if close else "")
                    + f"declared databases: {', '.join(raw.databases)}",
                    subject=here + ("depends_on",),
                )
            if dep == name:
                raise loader.error(
                    here + ("depends_on", index),
                    f"`{name}` depends on itself",
                    hint=f"remove `{name}` from its own depends_on",
                    subject=here + ("depends_on",),
                )
        metadata = _import_metadata(loader, here + ("metadata",), db.metadata) if db.metadata else None
        lock_timeout = _first(db.lock_timeout, raw.defaults.lock_timeout, 10.0)
        databases[name] = DatabaseConfig(
            name=name,
            url=url,
            metadata_ref=db.metadata,
            metadata=metadata,
            version_table=db.version_table,
            version_path=(root / (db.version_path or f"versions/{name}")).resolve(),
            depends_on=tuple(db.depends_on),
            lock_timeout=lock_timeout,
            lock_wait=_first(db.lock_wait, raw.defaults.lock_wait, 60.0),
            lock_retries=_first(db.lock_retries, raw.defaults.lock_retries, 0),
            statement_timeout=_first(db.statement_timeout, raw.defaults.statement_timeout, 0.0) or None,
            transaction_per_migration=_first(db.transaction_per_migration, raw.defaults.transaction_per_migration, True),
            line=loader.lines.of(here) or 0,
            tenants=_resolve_tenants(loader, here + ("tenants",), db.tenants, url, root) if db.tenants else None,
            replay=_first(db.replay, raw.defaults.replay, False),
        )

    _check_cycles(loader, databases)
    _check_version_tables(loader, databases)
    return Project(
        path=path,
        root=root,
        script_location=(root / raw.script_location).resolve(),
        sys_path=sys_path,
        databases=databases,
        execution=ExecutionConfig(parallel=raw.execution.parallel),
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _resolve_url(loader: _Loader, path: Path_, url: str, root: Path) -> str:
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise loader.error(
            path, str(exc), hint="write it as dialect+driver://user:password@host:port/dbname, or sqlite:///file.db"
        ) from None
    try:
        parsed.get_dialect()
    except Exception:  # noqa: BLE001 - NoSuchModuleError, or a plugin failing to load
        raise loader.error(
            path,
            f"unknown database dialect or driver `{parsed.drivername}`",
            hint="write it as dialect+driver://..., e.g. postgresql+psycopg://, mysql+pymysql://, sqlite:///",
        ) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            if not os.path.isabs(database):
                parsed = parsed.set(database=str(root / database))
    # The URL renderer escapes braces; a tenant template keeps its {tenant} readable.
    return parsed.render_as_string(hide_password=False).replace("%7Btenant%7D", TENANT_PLACEHOLDER)


TENANT_PLACEHOLDER = "{tenant}"


def _resolve_tenants(loader: _Loader, path: Path_, raw: RawTenants, url: str, root: Path) -> TenantsConfig:
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    in_url = TENANT_PLACEHOLDER in url
    if raw.mode == "database" and TENANT_PLACEHOLDER not in (parsed.database or ""):
        raise loader.error(
            path + ("mode",),
            "`mode: database` needs {tenant} in the database part of the url",
            hint="e.g. url: sqlite:///var/tenants/{tenant}.db, or postgresql+psycopg://host/{tenant}",
        )
    if raw.mode == "schema":
        if in_url:
            raise loader.error(
                path + ("mode",),
                "`mode: schema` takes a plain url; {tenant} belongs to `mode: database`",
                hint="remove {tenant} from the url, or use `mode: database`",
            )
        if backend not in ("postgresql", "mysql", "mariadb"):
            raise loader.error(
                path + ("mode",),
                f"`mode: schema` needs PostgreSQL or MySQL/MariaDB, not {backend}",
                hint="for SQLite use `mode: database` with a url like sqlite:///var/tenants/{tenant}.db",
            )
    elif in_url and TENANT_PLACEHOLDER in (parsed.host or "") + (parsed.username or ""):
        raise loader.error(path + ("mode",), "{tenant} may only appear in the database part of the url")

    pattern = re.compile(raw.pattern)
    names: tuple[str, ...] | None = None
    source = "names"
    if raw.names is not None:
        for index, name in enumerate(raw.names):
            _check_tenant(loader, path + ("names", index), name, pattern, raw.pattern)
        names = tuple(raw.names)
    elif raw.file is not None:
        file = (root / raw.file).resolve()
        source = str(file)
        names = tuple(_read_tenant_file(loader, path + ("file",), file, pattern, raw.pattern))
    if names is not None:
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise loader.error(path, f"tenant{'s' if len(duplicates) > 1 else ''} listed twice: {', '.join(duplicates)}")
    query_url = None
    if raw.query_url is not None:
        query_url = _resolve_url(loader, path + ("query_url",), raw.query_url, root)
        register_secret(query_url)
    return TenantsConfig(
        mode=raw.mode,
        names=names,
        query=raw.query,
        query_url=query_url,
        pattern=raw.pattern,
        create=raw.create,
        source=source if raw.query is None else "query",
    )


def _check_tenant(loader: _Loader, path: Path_, name: Any, pattern: re.Pattern[str], shown: str) -> None:
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise loader.error(
            path,
            f"tenant name {name!r} does not match the tenant pattern {shown}",
            hint="tenant names reach SQL as identifiers, so they must match `pattern:` (default "
            f"{DEFAULT_TENANT_PATTERN}); fix the name or the pattern",
        )


def _read_tenant_file(
    loader: _Loader, path: Path_, file: Path, pattern: re.Pattern[str], shown: str
) -> list[str]:
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise loader.error(path, f"cannot read the tenants file {file}: {exc.strerror}") from None
    names = []
    for number, line in enumerate(lines, start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not pattern.fullmatch(name):
            raise ConfigError(
                f"{file}:{number}: tenant name {name!r} does not match the tenant pattern {shown}",
                hint=f"fix that line, or the `pattern:` of the tenants in {loader.path}",
            )
        names.append(name)
    return names


def _import_metadata(loader: _Loader, path: Path_, ref: str) -> MetaData:
    module_name, _, attr = ref.partition(":")
    importlib.invalidate_caches()  # a module written since the last import is found
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # the user's module may raise anything while importing
        raise loader.error(
            path,
            f"cannot import `{module_name}`: {type(exc).__name__}: {mask_text(str(exc))}",
            hint="check the module name and `sys_path:` (folders are relative to orchestrate.yaml)",
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if isinstance(getattr(obj, n, None), MetaData)]
            raise loader.error(
                path,
                f"`{module_name}` has no attribute `{attr}`",
                hint=f"MetaData objects found there: {', '.join(names)}"
                if names
                else f"point it at a MetaData (or a declarative Base) defined in `{module_name}`",
            ) from None
    if not isinstance(obj, MetaData) and isinstance(getattr(obj, "metadata", None), MetaData):
        obj = obj.metadata  # a declarative base class
    if not isinstance(obj, MetaData):
        raise loader.error(
            path,
            f"`{ref}` is {_a(type(obj).__name__)}, not a SQLAlchemy MetaData",
            hint="point it at a MetaData object or a declarative Base class (its .metadata is used)",
        )
    return obj


def _check_cycles(loader: _Loader, databases: dict[str, DatabaseConfig]) -> None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in databases[name].depends_on:
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise loader.error(
                    ("databases", name, "depends_on"),
                    f"depends_on forms a cycle: {' -> '.join(cycle)}",
                    hint="remove one of these dependencies",
                )
            if dep not in state:
                visit(dep, stack + [dep])
        state[name] = 2

    for name in databases:
        if name not in state:
            visit(name, [name])


def version_table_place(url: str, schema: str | None, version_table: str) -> tuple[Any, ...] | None:
    """Where a version table lives: same tuple = the same table. None for in-memory SQLite."""
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return None
        return (backend, os.path.realpath(parsed.database), schema, version_table)
    host = (parsed.host or "localhost").lower()
    return (backend, host, parsed.port or _DEFAULT_PORTS.get(backend), parsed.database, schema, version_table)


def _version_table_places(db: DatabaseConfig) -> list[tuple[Any, ...]]:
    """Where the version tables of ``db``'s targets live, as far as the file tells
    (a fleet whose tenants come from a query is only known when it runs)."""
    from orchestrator.targets import make_target  # the one place that knows where a tenant lives

    tenants = db.tenants
    if tenants is not None and tenants.names is None:
        return []
    targets = [make_target(db, name) for name in tenants.names] if tenants is not None else [make_target(db)]
    places = [version_table_place(t.url, t.schema, db.version_table) for t in targets]
    return [p for p in places if p is not None]


def _check_version_tables(loader: _Loader, databases: dict[str, DatabaseConfig]) -> None:
    seen: dict[tuple[Any, ...], str] = {}
    for db in databases.values():
        for place in dict.fromkeys(_version_table_places(db)):
            if place in seen:
                raise loader.error(
                    ("databases", db.name),
                    f"`{db.name}` and `{seen[place]}` would share the version table "
                    f"`{db.version_table}` in {db.display_url}",
                    hint=f"give one of them its own `version_table:`, e.g. version_table: alembic_version_{db.name}",
                )
            seen[place] = db.name
