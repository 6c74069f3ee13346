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
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import MetaData

from orchestrator.errors import ConfigError
from orchestrator.urls import mask_text, mask_url, parse_url, register_secret

CONFIG_FILENAME = "orchestrate.yaml"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")

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
    transaction_per_migration: bool | None = None

    @field_validator("lock_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)


class RawDatabase(DatabaseSettings):
    url: str
    metadata: str | None = None
    version_table: str = "alembic_version"
    version_path: str | None = None
    depends_on: list[str] = Field(default_factory=list)

    @field_validator("metadata")
    @classmethod
    def _metadata_ref(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[\w.]+:[\w.]+$", value):
            raise ValueError(f"{value!r} is not 'module:attribute', e.g. myapp.models:metadata")
        return value

    @field_validator("version_table")
    @classmethod
    def _version_table(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} is not a plain table name (letters, digits, _)")
        return value


class RawProject(_Strict):
    script_location: str = "envs"
    sys_path: list[str] = Field(default_factory=lambda: ["."])
    defaults: DatabaseSettings = Field(default_factory=DatabaseSettings)
    databases: dict[str, RawDatabase]

    @field_validator("databases")
    @classmethod
    def _names(cls, value: dict[str, RawDatabase]) -> dict[str, RawDatabase]:
        if not value:
            raise ValueError("declare at least one database")
        return value


# --------------------------------------------------------------------------- result


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
    transaction_per_migration: bool
    line: int

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

    def where(self, line: int | None) -> str:
        return f"{self.path}:{line}" if line else str(self.path)


# --------------------------------------------------------------------------- loading


class _Lines:
    """Line numbers (1-based) of every key and value path in a YAML document."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.lines: dict[Path_, int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (key.value,)
                self.lines[sub] = key.start_mark.line + 1
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
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


class _Loader:
    def __init__(self, path: Path, environ: dict[str, str]) -> None:
        self.path = path
        self.environ = environ
        self.lines = _Lines(None)

    def error(self, path: Path_, message: str, hint: str | None = None) -> ConfigError:
        line = self.lines.of(path)
        where = f"{self.path}:{line}" if line else str(self.path)
        subject = f" {_dotted(path)}:" if path else ""
        return ConfigError(f"{where}:{subject} {message}", hint)

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
            self.lines = _Lines(yaml.compose(text, Loader=yaml.SafeLoader))
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f":{mark.line + 1}" if mark else ""
            problem = " ".join(p for p in (exc.context, exc.problem) if p)
            raise ConfigError(
                f"{self.path}{line}: invalid YAML: {problem}",
                hint="check indentation and quoting on that line (values with ':' or '#' need quotes)",
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.path}: invalid YAML: {exc}") from None
        if data is None:
            raise ConfigError(f"{self.path}: the file is empty", hint="declare at least one database under `databases:`")
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}:1: expected a mapping with a `databases:` key, found {type(data).__name__}")
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

    def validate(self, data: Any) -> RawProject:
        try:
            return RawProject.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = tuple(first["loc"])
            raise self._pydantic_error(loc, first, len(exc.errors())) from None

    def _pydantic_error(self, loc: Path_, err: dict[str, Any], count: int) -> ConfigError:
        more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            allowed = _allowed_keys(loc[:-1])
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            hint += f"allowed keys here: {', '.join(allowed)}"
            return self.error(loc[:-1], f"unknown key `{key}`{more}", hint=hint)
        if kind == "missing":
            return self.error(loc[:-1], f"missing required key `{loc[-1]}`{more}")
        message = err["msg"].removeprefix("Value error, ")
        shown = err.get("input")
        got = f" (got {mask_text(repr(shown))})" if kind.endswith("_type") or kind.endswith("_parsing") else ""
        return self.error(loc, f"{message}{got}{more}")


def _allowed_keys(parent: Path_) -> list[str]:
    if not parent:
        model: type[BaseModel] = RawProject
    elif parent == ("defaults",):
        model = DatabaseSettings
    else:
        model = RawDatabase
    return list(model.model_fields)


def load_project(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Project:
    """Read, expand and validate orchestrate.yaml, import every metadata, and check the whole.

    Raises :class:`ConfigError` naming the file and line of the first problem found.
    """
    path = Path(path or os.environ.get("ORCHESTRATE_CONFIG") or CONFIG_FILENAME).resolve()
    loader = _Loader(path, dict(os.environ if environ is None else environ))
    raw = loader.validate(loader.read())
    root = path.parent

    for name in raw.databases:
        if not NAME_PATTERN.match(name):
            raise loader.error(
                ("databases", name),
                f"`{name}` is not a valid database name",
                hint="use letters, digits and _, not starting with a digit",
            )

    sys_path = tuple((root / p).resolve() for p in raw.sys_path)
    for entry in reversed(sys_path):
        if str(entry) not in sys.path:
            sys.path.insert(0, str(entry))

    databases: dict[str, DatabaseConfig] = {}
    for name, db in raw.databases.items():
        here = ("databases", name)
        url = _resolve_url(loader, here + ("url",), db.url, root)
        register_secret(url)
        metadata = _import_metadata(loader, here + ("metadata",), db.metadata) if db.metadata else None
        for dep in db.depends_on:
            if dep not in raw.databases:
                raise loader.error(
                    here + ("depends_on",),
                    f"`{name}` depends on unknown database `{dep}`",
                    hint=f"declared databases: {', '.join(raw.databases)}",
                )
            if dep == name:
                raise loader.error(here + ("depends_on",), f"`{name}` depends on itself")
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
            transaction_per_migration=_first(db.transaction_per_migration, raw.defaults.transaction_per_migration, True),
            line=loader.lines.of(here) or 0,
        )

    _check_cycles(loader, databases)
    _check_version_tables(loader, databases)
    return Project(
        path=path,
        root=root,
        script_location=(root / raw.script_location).resolve(),
        sys_path=sys_path,
        databases=databases,
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
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            if not os.path.isabs(database):
                parsed = parsed.set(database=str(root / database))
    return parsed.render_as_string(hide_password=False)


def _import_metadata(loader: _Loader, path: Path_, ref: str) -> MetaData:
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
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
                hint=f"MetaData objects found there: {', '.join(names)}" if names else None,
            ) from None
    if not isinstance(obj, MetaData) and isinstance(getattr(obj, "metadata", None), MetaData):
        obj = obj.metadata  # a declarative base class
    if not isinstance(obj, MetaData):
        raise loader.error(path, f"`{ref}` is a {type(obj).__name__}, not a SQLAlchemy MetaData")
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
    return (backend, parsed.host or "localhost", parsed.port, parsed.database, schema, version_table)


def _check_version_tables(loader: _Loader, databases: dict[str, DatabaseConfig]) -> None:
    seen: dict[tuple[Any, ...], str] = {}
    for db in databases.values():
        place = version_table_place(db.url, None, db.version_table)
        if place is None:
            continue
        if place in seen:
            raise loader.error(
                ("databases", db.name),
                f"`{db.name}` and `{seen[place]}` would share the version table "
                f"`{db.version_table}` in {db.display_url}",
                hint=f"give one of them its own `version_table:`, e.g. version_table: alembic_version_{db.name}",
            )
        seen[place] = db.name
