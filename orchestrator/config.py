"""Stage 1: orchestrate.yaml -> a validated, expanded :class:`Project` (pure data).

:func:`load_project` only reads: it edits no ``sys.path``, registers no secret and imports
no model. The one function with side effects is :func:`activate` (``sys.path`` and the
password mask); :meth:`Project.load_models` then imports every declared ``metadata:``, so a
command can fail with exit 2 before any target runs. A :class:`Project` (and each
:class:`DatabaseConfig`) pickles, so workers get it whole instead of re-reading the file.

The file is read once, as a bounded regular file; its YAML is checked against the bounds
below while it is parsed (nesting and node counts are those after alias expansion, so a
"billion laughs" file fails at once), composed to a node tree (the line of every key), and
built into plain data that pydantic validates strictly (no ``1.0`` for an integer, no
``"yes"`` for true/false). Every error names the file and line and says how to fix it.
Relative paths are relative to the folder holding the file, never to the working directory.

Bounds on what is read, each raised by an environment variable (read from the ``environ``
given to :func:`load_project`, else ``os.environ``):

==============================  ===========  =================================================
variable                        default      bounds
==============================  ===========  =================================================
ORCHESTRATE_MAX_CONFIG_BYTES    16777216     size of orchestrate.yaml, in bytes (16 MiB)
ORCHESTRATE_MAX_YAML_DEPTH      64           nesting of lists and mappings, aliases expanded
ORCHESTRATE_MAX_YAML_NODES      2000000      YAML nodes, each alias counted as often as used
ORCHESTRATE_MAX_STRING          65536        characters in one string, ``${VAR}`` expanded
ORCHESTRATE_MAX_URL             8192         characters in one database URL
ORCHESTRATE_MAX_TENANTS         1000000      lines of a tenants ``file:`` (and 256 bytes a
                                             line on average: the file's size)
ORCHESTRATE_MAX_DURATION        7d           any duration setting (lock_timeout, ...)
==============================  ===========  =================================================

Fixed rules: only regular files are read (a FIFO or a device is refused, never waited on);
files are UTF-8; a tenant ``pattern:`` is at most 1,000 characters and runs with a time
bound (a hostile regex cannot hang a load); tenant names are checked by the dialect
(:func:`orchestrator.dialects.tenant_name_problem`) whatever the pattern says.
"""
from __future__ import annotations

import difflib
import importlib
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from orchestrator.errors import ConfigError
from orchestrator.urls import (
    mask_text,
    mask_unparsed_url,
    mask_url,
    parse_url,
    password_forms,
    register_secret,
    secrets_of,
    unparsed_password,
)

CONFIG_FILENAME = "orchestrate.yaml"
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # use with fullmatch ($ would allow "name\n")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default}; the last branch catches any
# other ${...} so that a typo such as ${NAME:default} is an error instead of literal text.
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$\{[^}]*\}?")
# Control characters (C0, DEL, C1): never part of a URL, a name or a path.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SQLITE_HEADER = b"SQLite format 3\x00"
# Names a version table must not take: the servers' own catalogs.
_SYSTEM_TABLE_PREFIXES = ("sqlite_", "pg_")
_SYSTEM_TABLE_NAMES = frozenset({"information_schema", "performance_schema", "mysql", "sys", "pg_catalog"})
MAX_PATTERN_LENGTH = 1000
_TENANT_NAME_CAP = 255  # before any pattern runs, whatever the dialect (its own limit is lower)
_TENANT_LINE_BYTES = 256  # a tenants file may hold ORCHESTRATE_MAX_TENANTS x this many bytes
_PATTERN_BUDGET = 1.0  # seconds the tenant pattern may take on one batch of names
_PATTERN_BATCH = 10_000

Path_ = tuple[Any, ...]


# --------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Bounds:
    """Limits on what a load reads; see the module docstring for the variables."""

    config_bytes: int = 16 * 1024 * 1024
    yaml_depth: int = 64
    yaml_nodes: int = 2_000_000
    string: int = 64 * 1024
    url: int = 8 * 1024
    tenants: int = 1_000_000
    duration: float = 7 * 86400.0

    VARIABLES: ClassVar[dict[str, str]] = {
        "config_bytes": "ORCHESTRATE_MAX_CONFIG_BYTES",
        "yaml_depth": "ORCHESTRATE_MAX_YAML_DEPTH",
        "yaml_nodes": "ORCHESTRATE_MAX_YAML_NODES",
        "string": "ORCHESTRATE_MAX_STRING",
        "url": "ORCHESTRATE_MAX_URL",
        "tenants": "ORCHESTRATE_MAX_TENANTS",
        "duration": "ORCHESTRATE_MAX_DURATION",
    }

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Bounds:
        values: dict[str, Any] = {}
        for key, variable in cls.VARIABLES.items():
            raw = environ.get(variable)
            if raw is None or raw.strip() == "":
                continue
            try:
                value: float = parse_duration(raw) if key == "duration" else int(raw.strip())
            except ValueError:
                value = -1
            if value <= 0:
                raise ConfigError(
                    f"{variable}={raw[:40]!r} is not a valid bound",
                    hint=f"set it to a positive {'duration such as 30d' if key == 'duration' else 'whole number'}, "
                    f"or unset it for the default ({getattr(cls, key)})",
                )
            values[key] = value
        return cls(**values)

    def setting(self, key: str) -> str:
        """``ORCHESTRATE_MAX_X=value``: the setting that raises bound ``key``, for messages."""
        value = getattr(self, key)
        shown = _human_duration(value) if key == "duration" else str(value)
        return f"{self.VARIABLES[key]} (now {shown})"


DEFAULT_BOUNDS = Bounds()


# --------------------------------------------------------------------------- values


class _Expanded(str):
    """A string that ``${VAR}`` expansion produced: the one place where "3" may mean the
    integer 3 and "false" the boolean false (the environment only holds text)."""


def parse_duration(value: Any, maximum: float | None = None) -> float:
    """``10s``, ``500ms``, ``2m``, ``1h``, ``1d`` or a number of seconds -> seconds.

    Finite, not negative, and at most ``maximum`` seconds (when given).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("expected a duration such as 10s, 500ms or 2m")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not match:
            raise ValueError(f"{_short(value)} is not a duration; write it as 10s, 500ms, 2m or 1h")
        seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"]
    else:
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    if math.isnan(seconds):
        raise ValueError(f"{_short(value)} is not a duration (not a number)")
    if math.isinf(seconds) and not isinstance(value, str):
        raise ValueError(f"{_short(value)} is not a finite duration; write it as 10s, 500ms, 2m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if maximum is not None and not seconds <= maximum:
        raise ValueError(
            f"{_short(value)} is longer than {_human_duration(maximum)}, the longest duration allowed "
            f"(raise it with ORCHESTRATE_MAX_DURATION)"
        )
    if math.isinf(seconds):
        raise ValueError(f"{_short(value)} is not a finite duration")
    return seconds


def _human_duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to ``limit`` characters (a 64 KiB value is not repeated in a message)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(str(value))} characters)"


def _flag(value: Any) -> Any:
    if isinstance(value, _Expanded) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _whole(value: Any) -> Any:
    if isinstance(value, _Expanded) and re.fullmatch(r"\s*[+-]?\d{1,18}\s*", value):
        return int(value)
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]


def _replay(value: Any) -> Any:
    """``replay:``: auto, true or false (from a variable, their text), nothing else."""
    value = _flag(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    raise PydanticCustomError("replay_type", "expected auto, true or false")


#: ``replay:``: "auto" (verified replay, the default), true (replay the first recording) or false.
ReplayMode = Annotated[bool | str, PlainValidator(_replay)]
Whole = Annotated[int, BeforeValidator(_whole)]


# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


_DURATION_FIELDS = ("lock_timeout", "lock_wait", "statement_timeout", "connect_timeout", "server_timeout")


_WAVE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


class RawHalt(_Strict):
    """``rollout.halt``: the rules that stop a rollout after the wave where they fire."""

    failures: Whole | None = Field(default=None, ge=1, le=1_000_000)
    failure_ratio: float | None = Field(default=None, gt=0, le=1)
    lock_timeouts: Whole | None = Field(default=None, ge=1, le=1_000_000)


class RawRollout(_Strict):
    """``rollout:``: canary tenants, wave sizes (cumulative counts or percentages), halt rules, pause."""

    canary: list[str] | None = None
    waves: list[Any] | None = None
    halt: RawHalt | None = None
    pause: float | None = None

    @field_validator("pause", mode="before")
    @classmethod
    def _pause(cls, value: Any, info: ValidationInfo) -> float | None:
        if value is None:
            return None
        return parse_duration(value, (info.context or {}).get("max_duration", DEFAULT_BOUNDS.duration))

    @field_validator("waves")
    @classmethod
    def _waves(cls, value: list[Any] | None) -> list[Any] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("list at least one wave, e.g. [1%, 10%, 100%], or remove the key")
        for item in value:
            wave_size(item)
        return value


def wave_size(item: Any) -> tuple[float, bool]:
    """One entry of ``rollout.waves``: ``10%`` -> (10.0, True); ``25`` -> (25, False).
    Sizes are cumulative: ``[1%, 10%, 100%]`` runs 1%, then up to 10%, then the rest."""
    if isinstance(item, str):
        match = _WAVE.fullmatch(item)
        if match is None:
            if re.fullmatch(r"\s*\d{1,9}\s*", item):
                item = int(item)
            else:
                raise ValueError(f"{_short(item)} is not a wave size; write a percentage (10%) or a count (25)")
        else:
            percent = float(match[1])
            if not 0 < percent <= 100:
                raise ValueError(f"{_short(item)}: a percentage of the targets is more than 0% and at most 100%")
            return percent, True
    if isinstance(item, bool) or not isinstance(item, int) or item < 1:
        raise ValueError(f"{_short(item)} is not a wave size; write a percentage (10%) or a count of at least 1")
    return float(item), False


class RawPreflight(_Strict):
    """``preflight:``: the largest time class a target may reach (instant, seconds, minutes+)."""

    max_risk: Literal["instant", "seconds", "minutes+"] | None = None


class DatabaseSettings(_Strict):
    """Settings that ``defaults:`` gives every database and each database may override."""

    lock_timeout: float | None = None
    lock_wait: float | None = None
    lock_retries: Whole | None = Field(default=None, ge=0, le=100)
    statement_timeout: float | None = None
    #: Longest wait for a server to accept a connection (default 10s).
    connect_timeout: float | None = None
    #: Longest a server may stay silent while a statement runs (default 120s).
    server_timeout: float | None = None
    transaction_per_migration: Flag | None = None
    #: Replay SQL recorded on identical tenants: auto (after two tenants ran it live alike), true, false.
    replay: ReplayMode | None = None
    #: Folders of revision files (relative to orchestrate.yaml), all searched, as Alembic's option.
    version_locations: list[str] | None = None
    #: Read revision files in subfolders of the version locations too (default false).
    recursive_version_locations: Flag | None = None
    #: Most targets running at once against one database server, across every worker (default: no cap).
    max_per_server: Whole | None = Field(default=None, ge=1, le=10000)
    #: Staged rollouts for upgrade: canary, waves, halt rules, pause (see orchestrator.rollout).
    rollout: RawRollout | None = None
    #: What `orchestrate preflight` refuses: preflight.max_risk.
    preflight: RawPreflight | None = None

    @field_validator(*_DURATION_FIELDS, mode="before")
    @classmethod
    def _duration(cls, value: Any, info: ValidationInfo) -> float | None:
        if value is None:
            return None
        maximum = (info.context or {}).get("max_duration", DEFAULT_BOUNDS.duration)
        seconds = parse_duration(value, maximum)
        if seconds == 0 and info.field_name in ("connect_timeout", "server_timeout"):
            raise ValueError("must be more than 0 (a server must answer within some time)")
        return seconds

    @field_validator("version_locations")
    @classmethod
    def _locations(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("list at least one folder, or remove the key")
        return value


DEFAULT_TENANT_PATTERN = r"^[a-z0-9_]{1,63}$"


class RawUrlParts(_Strict):
    """``url:`` given as parts, for passwords holding ``@ : / # ? %`` or spaces."""

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: Whole | None = Field(default=None, ge=1, le=65535)
    database: str | None = None
    query: dict[str, str | list[str]] = Field(default_factory=dict)


class RawTenants(_Strict):
    mode: Literal["schema", "database"]
    names: list[str] | None = None
    file: str | None = None
    query: str | None = None
    query_url: str | None = None
    pattern: str = DEFAULT_TENANT_PATTERN
    create: Flag = False

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if len(value) > MAX_PATTERN_LENGTH:
            raise ValueError(f"a pattern of {len(value)} characters is too long (at most {MAX_PATTERN_LENGTH})")
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as exc:
            raise ValueError(f"{_short(value)} is not a regular expression: {exc}") from None
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
            raise ValueError(f"{_short(value)} is not 'module:attribute', e.g. myapp.models:metadata")
        return value

    @field_validator("version_table")
    @classmethod
    def _version_table(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"{_short(value)} is not a plain table name (letters, digits, _)")
        low = value.lower()
        if low.startswith(_SYSTEM_TABLE_PREFIXES) or low in _SYSTEM_TABLE_NAMES:
            raise ValueError(
                f"{value!r} is named like a system table of the database server "
                "(sqlite_*, pg_*, information_schema, ...); choose another name, e.g. alembic_version"
            )
        return value


class RawExecution(_Strict):
    parallel: Whole = Field(default=1, ge=1, le=256)
    #: Where targets run: serial, processes (spawned workers) or dask (a cluster; extra `orchestrate[dask]`).
    backend: Literal["serial", "processes", "dask"] | None = None
    #: The Dask scheduler's address (tcp://HOST:PORT); none: a local cluster.
    scheduler: str | None = None

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(tcp|tls|ws|wss|ucx|inproc)://[^\s/]+", value):
            raise ValueError(f"{_short(value)} is not a scheduler address like tcp://HOST:PORT")
        return value

    @model_validator(mode="after")
    def _scheduler_needs_dask(self) -> RawExecution:
        if self.scheduler is not None and self.backend not in (None, "dask"):
            raise ValueError(f"`scheduler:` is the address of a Dask scheduler; it goes with `backend: dask`, "
                             f"not `backend: {self.backend}`")
        return self


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
    query_line: int = 0  # line of `query:` in orchestrate.yaml, for messages about the query


@dataclass(frozen=True)
class HaltRules:
    """When a rollout stops: failures and lock timeouts over the rollout, failure ratio per wave."""

    failures: int | None = None
    failure_ratio: float | None = None
    lock_timeouts: int | None = None


@dataclass(frozen=True)
class RolloutConfig:
    """A database's rollout: canary tenants first, then cumulative waves (counts or percentages)."""

    canary: tuple[str, ...] = ()
    waves: tuple[tuple[float, bool], ...] = ()  # (size, is_percent), cumulative
    halt: HaltRules = field(default_factory=HaltRules)
    pause: float = 0.0


@dataclass(frozen=True)
class ExecutionConfig:
    parallel: int = 1
    backend: str | None = None  # "serial", "processes", "dask"; None: by --parallel
    scheduler: str | None = None  # the Dask scheduler's address; None: a local cluster


@dataclass(frozen=True)
class DatabaseConfig:
    """One database of the project, every value resolved (paths absolute, variables expanded).

    Plain data that pickles: :attr:`metadata` is imported on first use (Python's module
    cache keeps it), never held in a field.
    """

    name: str
    url: str = field(repr=False)
    metadata_ref: str | None
    version_table: str
    version_path: Path  # where `revision` writes; always one of version_locations
    depends_on: tuple[str, ...]
    lock_timeout: float
    lock_wait: float
    lock_retries: int
    statement_timeout: float | None
    transaction_per_migration: bool
    line: int
    tenants: TenantsConfig | None = None
    #: "auto": replay a recording once two tenants ran the revision live with the same SQL
    #: (the default); True: from the first recording on; False: always live.
    replay: bool | str = "auto"
    #: Seconds a connection attempt may take before the target fails.
    connect_timeout: float = 10.0
    #: Seconds a server may stay silent while a statement runs before the target fails.
    server_timeout: float = 120.0
    #: Every folder Alembic searches for this database's revisions (version_path among them).
    version_locations: tuple[Path, ...] = ()
    recursive_version_locations: bool = False
    #: Staged rollout of upgrade (None: one wave).
    rollout: RolloutConfig | None = None
    #: The largest preflight time class allowed (None: no limit).
    preflight_max_risk: str | None = None
    #: Most targets of this database running at once against its server (None: no cap).
    max_per_server: int | None = None
    #: orchestrate.yaml, and the line of `metadata:` in it: where an import error points.
    config_path: Path = field(default=Path(CONFIG_FILENAME), repr=False, compare=False)
    metadata_line: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.version_locations:
            object.__setattr__(self, "version_locations", (self.version_path,))

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    @property
    def metadata(self) -> MetaData | None:
        """The MetaData named by ``metadata_ref`` (None without one), imported on first use.

        Needs :func:`activate` (``sys_path:``) first. Raises :class:`ConfigError` naming
        the file and the line of ``metadata:``.
        """
        if self.metadata_ref is None:
            return None
        return import_metadata(self.metadata_ref, self._metadata_where())

    def _metadata_where(self) -> str:
        return f"{self.config_path}:{self.metadata_line or self.line}: databases.{self.name}.metadata:"


@dataclass(frozen=True)
class Project:
    """The whole orchestrate.yaml: where it is, where env.py lives, and its databases in file order."""

    path: Path
    root: Path
    script_location: Path
    sys_path: tuple[Path, ...]
    databases: dict[str, DatabaseConfig]
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    #: Every password of every URL in the file (as written and percent-encoded);
    #: :func:`activate` makes the mask hide them.
    secrets: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def where(self, line: int | None) -> str:
        return f"{self.path}:{line}" if line else str(self.path)

    def load_models(self) -> dict[str, MetaData]:
        """Import every declared ``metadata:`` now (call :func:`activate` first), so that a
        broken models module is a config error (exit 2) before any target runs.

        Returns database name -> MetaData for the databases that declare one. Raises
        :class:`ConfigError` naming the file and the line of the failing ``metadata:``;
        its text never shows a password of this project.
        """
        models: dict[str, MetaData] = {}
        for name, database in self.databases.items():
            if database.metadata_ref is None:
                continue
            models[name] = import_metadata(database.metadata_ref, database._metadata_where(), self.secrets)
        return models


def activate(project: Project) -> None:
    """The one place loading has side effects: put the project's ``sys_path:`` in front of
    ``sys.path`` (once), and make the password mask hide every password of the project.
    Call it in each process that runs the project (the CLI, the API, every worker)."""
    for entry in reversed(project.sys_path):
        if str(entry) not in sys.path:
            sys.path.insert(0, str(entry))
    for secret in project.secrets:
        register_secret(password=secret)


def import_metadata(ref: str, where: str, secrets: Iterable[str] = ()) -> MetaData:
    """Import ``module:attribute`` and return its MetaData (or a declarative Base's).

    ``where`` starts every error message (``file:line: databases.x.metadata:``).
    """
    module_name, _, attr = ref.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        importlib.invalidate_caches()  # a module written since the last import is found
        try:
            obj = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a user's module may raise anything on import
            raise ConfigError(
                f"{where} cannot import `{module_name}`: {type(exc).__name__}: {mask_text(str(exc), secrets)}",
                hint="check the module name and `sys_path:` (folders are relative to orchestrate.yaml)",
            ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = sorted(n for n in dir(obj) if isinstance(getattr(obj, n, None), MetaData))
            raise ConfigError(
                f"{where} `{module_name}` has no attribute `{attr}`",
                hint=f"MetaData objects found there: {', '.join(names)}"
                if names
                else f"point it at a MetaData (or a declarative Base) defined in `{module_name}`",
            ) from None
    if not isinstance(obj, MetaData) and isinstance(getattr(obj, "metadata", None), MetaData):
        obj = obj.metadata  # a declarative base class
    if not isinstance(obj, MetaData):
        raise ConfigError(
            f"{where} `{ref}` is {_a(type(obj).__name__)}, not a SQLAlchemy MetaData",
            hint="point it at a MetaData object or a declarative Base class (its .metadata is used)",
        )
    return obj


# --------------------------------------------------------------------------- YAML


class _Lines:
    """Line numbers (1-based) of every key and value path in a YAML document.

    Paths use the keys as YAML reads them (``123:`` is the int 123, ``no:`` is False), the
    same values the loaded data and pydantic's error locations hold. Keys written twice in
    one mapping are collected in ``duplicates`` (YAML itself silently keeps the last one).
    The node tree was checked against the bounds first, so the walk is shallow.
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
        return f"<{getattr(node, 'id', 'node')} at line {node.start_mark.line + 1}>"

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self._seen:  # an alias of a node already walked
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


class _Constructor(yaml.constructor.SafeConstructor):
    """SafeConstructor whose every failure is a ConstructorError with the node's line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.constructor.ConstructorError:
            raise
        except Exception as exc:  # noqa: BLE001 - `!!int abc`: ValueError, and the like
            value = node.value if isinstance(node, yaml.ScalarNode) else getattr(node, "id", "node")
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_short(value)} as {_tag(node.tag)}: {exc}", node.start_mark
            ) from None

    def construct_undefined(self, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"the YAML tag {_tag(node.tag)} is not allowed (orchestrate.yaml holds plain text, numbers, "
            "true/false, lists and mappings)",
            node.start_mark,
        )


_Constructor.add_constructor(None, _Constructor.construct_undefined)  # type: ignore[type-var]


def _tag(tag: str | None) -> str:
    tag = tag or "?"
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _dotted(path: Path_) -> str:
    return ".".join(
        f"[{p}]" if isinstance(p, int) and not isinstance(p, bool) else str(p) for p in path
    ).replace(".[", "[")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


_YAML_KINDS = {dict: "mapping", list: "list", str: "string", int: "number", float: "number", bool: "true/false"}


def _kind(value: Any) -> str:
    return _YAML_KINDS.get(type(value), type(value).__name__)


def read_regular_file(
    path: Path, limit: int, too_big: Callable[[int], ConfigError], fail: Callable[[str, str | None], ConfigError]
) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    A FIFO, socket or device is refused at once (checked before opening, and the file is
    opened non-blocking), never waited on. ``too_big(size)`` and ``fail(message, hint)``
    make the errors; FileNotFoundError is left to the caller.
    """
    status = os.stat(path)
    _must_be_regular(status.st_mode, fail)
    if status.st_size > limit:
        raise too_big(status.st_size)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        _must_be_regular(os.fstat(fd).st_mode, fail)  # it may have been swapped since the stat
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise too_big(size)
    return b"".join(chunks)


def _must_be_regular(mode: int, fail: Callable[[str, str | None], ConfigError]) -> None:
    if stat.S_ISREG(mode):
        return
    kind = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise fail(f"is {kind}, not a regular file", "orchestrate reads only regular files; point it at one")


def decode_utf8(data: bytes, where: Callable[[int, int], ConfigError]) -> str:
    """``data`` as UTF-8 text; ``where(line, offset)`` makes the error for a bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise where(data.count(b"\n", 0, exc.start) + 1, exc.start) from None
    return text.removeprefix("\ufeff")


# --------------------------------------------------------------------------- loading


class _Loader:
    def __init__(self, path: Path, environ: Mapping[str, str], bounds: Bounds) -> None:
        self.path = path
        self.environ = environ
        self.bounds = bounds
        self.lines = _Lines(None)
        self.text = ""
        #: every password met so far: no message of this load may show one
        self.secrets: set[str] = set()

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
        return self.plain_error(f"{self.path}:{line}:{shown} {message}", hint)

    def plain_error(self, message: str, hint: str | None = None) -> ConfigError:
        """A ConfigError whose text shows no password met in this load."""
        return ConfigError(mask_text(message, self.secrets), mask_text(hint, self.secrets) if hint else hint)

    def bound_error(self, where: str, what: str, key: str) -> ConfigError:
        return self.plain_error(
            f"{where}: {what}",
            hint=f"if this is intended, raise the bound with {self.bounds.setting(key)}",
        )

    # -- read ----------------------------------------------------------------

    def read(self) -> Any:
        try:
            data = read_regular_file(
                self.path,
                self.bounds.config_bytes,
                lambda size: self.bound_error(
                    str(self.path),
                    f"the file is larger than {self.bounds.config_bytes} bytes ({size} bytes or more)",
                    "config_bytes",
                ),
                lambda message, hint: self.plain_error(f"{self.path}: {message}", hint),
            )
        except FileNotFoundError:
            raise ConfigError(
                f"{self.path}: no such file",
                hint="run `orchestrate init` to write a starter orchestrate.yaml, or pass -c PATH",
            ) from None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        text = decode_utf8(
            data,
            lambda line, offset: ConfigError(
                f"{self.path}:{line}: not UTF-8 text (byte {offset}, 0x{data[offset]:02x})",
                hint="save the file as UTF-8",
            ),
        )
        self.text = text
        root = self.parse(text)
        self.lines = _Lines(root)
        try:
            value = _Constructor().construct_document(root) if root is not None else None
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(self, exc) from None
        if value is None:
            raise ConfigError(
                f"{self.path}:1: the file is empty",
                hint="declare at least one database under `databases:`, e.g.\n"
                "databases:\n  users:\n    url: sqlite:///var/users.db",
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"{self.path}:{root.start_mark.line + 1 if root else 1}: "
                f"expected a mapping with a `databases:` key, found {_a(_kind(value))}",
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
        self.collect_secrets(value)
        return self.expand(value, ())

    def parse(self, text: str) -> yaml.Node | None:
        """The node tree of ``text``, its bounds checked while parsing, before composing.

        libyaml does the work when it is there; PyYAML's own parser words errors better
        (and marks where an unclosed quote opened), so a small file that libyaml refuses
        is parsed again by it for the message.
        """
        try:
            _check_events(self, yaml.parse(text, Loader=_FAST_LOADER))
            return yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError as fast_error:
            if _FAST_LOADER is yaml.SafeLoader or len(text) > 1 << 20:
                raise _yaml_error(self, fast_error) from None
        try:
            _check_events(self, yaml.parse(text, Loader=yaml.SafeLoader))
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise _yaml_error(self, exc) from None

    # -- expand --------------------------------------------------------------

    def expand(self, value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {k: self.expand(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            expanded = _VAR.sub(lambda m: self._substitute(m, path), value)
            if len(expanded) > self.bounds.string:
                raise self.bound_error(
                    f"{self.path}:{self.lines.of(path) or 1}: {_dotted(path)}",
                    f"with its variables expanded, the value is {len(expanded)} characters long "
                    f"(at most {self.bounds.string})",
                    "string",
                )
            return _Expanded(expanded) if "${" in value else expanded
        return value

    def _substitute(self, match: re.Match[str], path: Path_) -> str:
        if match[0] == "$$":
            return "$"
        if match[1] is None:
            raise self.error(
                path,
                f"`{_short(match[0])[1:-1]}` is not a valid variable reference",
                hint="write ${NAME}, ${NAME:-default} or ${NAME-default} (NAME: letters, digits, _); "
                "write $$ for a literal $",
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
        if len(value) > self.bounds.string:
            raise self.bound_error(
                f"{self.path}:{self.lines.of(path) or 1}: {_dotted(path)}",
                f"environment variable {name} holds {len(value)} characters (at most {self.bounds.string})",
                "string",
            )
        return value

    # -- check ---------------------------------------------------------------

    def collect_secrets(self, data: dict[Any, Any]) -> None:
        """Know every password before anything can fail, so that no message can show one
        (values still unexpanded here; expanded URLs are added as they are resolved)."""
        for url in _urls_in(data):
            if isinstance(url, dict):
                password = url.get("password")
                if isinstance(password, str):
                    self.secrets |= password_forms(password)
            elif isinstance(url, str):
                self.add_url_secrets(url)

    def add_url_secrets(self, url: str) -> None:
        self.secrets |= secrets_of(url)

    def check_keys(self, value: Any, path: Path_) -> None:
        """Every key is text (YAML reads ``123:`` as a number, ``no:`` as false)."""
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    text = self.lines.key_text.get(path + (key,), str(key))
                    raise self.error(
                        path + (key,),
                        f"the key `{_short(text)[1:-1]}` is not text (YAML reads it as {_short(key)})",
                        hint="quote it, or fix its name",
                        subject=path,
                    )
                self.check_keys(item, path + (key,))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.check_keys(item, path + (index,))

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
            raise self.error(
                ("databases",),
                f"expected a mapping of database names to their settings, found {_a(_kind(databases))}",
                hint=example,
            )
        for name in databases:
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
                text = self.lines.key_text.get(("databases", name), str(name))
                why = "" if isinstance(name, str) else f" (YAML reads it as {name!r}; quote it to keep it text)"
                raise self.error(
                    ("databases", name),
                    f"`{_short(text)[1:-1]}` is not a valid database name{why}",
                    hint="use letters, digits and _, not starting with a digit, e.g. my_db",
                    subject=("databases",),
                )
            if databases[name] is None:
                raise self.error(
                    ("databases", name),
                    f"database `{name}` has no settings",
                    hint=f"add at least its url, indented under it, e.g.\n  {name}:\n    url: sqlite:///var/{name}.db",
                )

    def url_parts(self, data: dict[str, Any]) -> None:
        """``url:`` (and ``query_url:``) given as a mapping of parts -> one URL string, built
        by SQLAlchemy so that any password round-trips."""
        databases = data.get("databases")
        if not isinstance(databases, dict):
            return
        for name, settings in databases.items():
            if not isinstance(settings, dict):
                continue
            here = ("databases", name)
            if isinstance(settings.get("url"), dict):
                settings["url"] = self._url_from_parts(here + ("url",), settings["url"])
            tenants = settings.get("tenants")
            if isinstance(tenants, dict) and isinstance(tenants.get("query_url"), dict):
                tenants["query_url"] = self._url_from_parts(here + ("tenants", "query_url"), tenants["query_url"])

    def _url_from_parts(self, path: Path_, parts: dict[str, Any]) -> str:
        try:
            raw = RawUrlParts.model_validate(parts)
        except ValidationError as exc:
            errors = exc.errors()
            first = min(errors, key=lambda e: (e["type"] == "missing", self.lines.of(path + _loc(e)) or 0))
            raise _pydantic_error(self, path + _loc(first), first, len(errors)) from None
        for key in ("drivername", "username", "host", "database"):
            value = getattr(raw, key)
            if value is not None and _CONTROL.search(value):
                raise self.error(path + (key,), "holds a control character (newline, NUL, ...)", hint="remove it")
        if raw.password:
            self.secrets |= password_forms(raw.password)
        url = URL.create(
            raw.drivername,
            username=raw.username,
            password=raw.password,
            host=raw.host,
            port=raw.port,
            database=raw.database,
            query=raw.query,
        )
        return _Expanded(url.render_as_string(hide_password=False).replace("%7Btenant%7D", TENANT_PLACEHOLDER))

    def validate(self, data: Any) -> RawProject:
        try:
            return RawProject.model_validate(data, context={"max_duration": self.bounds.duration})
        except ValidationError as exc:
            errors = exc.errors()
            # Report the problem nearest the top of the file, not the first pydantic met; a
            # missing key last (`urll:` explains a missing `url:`, not the other way round).
            first = min(errors, key=lambda e: (e["type"] == "missing", self.lines.of(_loc(e)) or 0))
            raise _pydantic_error(self, _loc(first), first, len(errors)) from None

def _check_events(loader: _Loader, events: Iterable[Any]) -> None:
    """Nesting, node count and string length, with aliases expanded, while parsing:
    an alias counts the nodes (and adds the depth) of what it refers to, so an
    exponential "billion laughs" file fails after a few hundred events."""
    bounds = loader.bounds
    stack: list[list[Any]] = []  # [expanded nodes, height, anchor] of each open collection
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, height)
    open_anchors: set[str] = set()
    total = 0

    def add(size: int, height: int, event: Any) -> None:
        nonlocal total
        total += size
        if total > bounds.yaml_nodes:
            raise loader.bound_error(
                f"{loader.path}:{event.start_mark.line + 1}",
                f"more than {bounds.yaml_nodes} YAML nodes (aliases counted each time they are used)",
                "yaml_nodes",
            )
        if len(stack) + height > bounds.yaml_depth:
            raise loader.bound_error(
                f"{loader.path}:{event.start_mark.line + 1}",
                f"lists and mappings are nested more than {bounds.yaml_depth} levels deep"
                + (" (aliases expanded)" if isinstance(event, yaml.AliasEvent) else ""),
                "yaml_depth",
            )
        if stack:
            top = stack[-1]
            top[0] += size
            top[1] = max(top[1], height)

    scalar_event, max_string, max_nodes = yaml.ScalarEvent, bounds.string, bounds.yaml_nodes
    for event in events:
        kind = type(event)
        if kind is scalar_event:  # most events: kept short
            if len(event.value) > max_string:
                raise loader.bound_error(
                    f"{loader.path}:{event.start_mark.line + 1}",
                    f"a string of {len(event.value)} characters (at most {bounds.string})",
                    "string",
                )
            total += 1
            if total > max_nodes:
                add(0, 0, event)  # says so
            if stack:
                stack[-1][0] += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0)
        elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
            if len(stack) + 1 > bounds.yaml_depth:
                raise loader.bound_error(
                    f"{loader.path}:{event.start_mark.line + 1}",
                    f"lists and mappings are nested more than {bounds.yaml_depth} levels deep",
                    "yaml_depth",
                )
            total += 1
            stack.append([1, 0, event.anchor])
            if event.anchor is not None:
                open_anchors.add(event.anchor)
        elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
            size, height, anchor = stack.pop()
            total -= size  # counted as it grew; add() counts it once more, whole
            if anchor is not None:
                anchors[anchor] = (size, height + 1)
                open_anchors.discard(anchor)
            add(size, height + 1, event)
        elif kind is yaml.AliasEvent:
            if event.anchor in open_anchors:
                raise loader.plain_error(
                    f"{loader.path}:{event.start_mark.line + 1}: the alias *{event.anchor} refers to a "
                    "list or mapping that contains it (a recursive alias)",
                    hint="an alias may only repeat a value defined before it, outside it",
                )
            size, height = anchors.get(event.anchor, (1, 0))  # an unknown one: compose says so
            add(size, height, event)


def _yaml_error(loader: _Loader, exc: yaml.YAMLError) -> ConfigError:
    if isinstance(exc, yaml.reader.ReaderError):
        number = loader.text.count("\n", 0, max(exc.position or 0, 0)) + 1
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return loader.plain_error(
            f"{loader.path}:{number}: invalid YAML: {exc.reason} ({character!r})",
            hint="remove that character (YAML files hold printable text)",
        )
    if isinstance(exc, yaml.MarkedYAMLError):
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
        if isinstance(exc, yaml.constructor.ConstructorError):
            return loader.plain_error(
                f"{loader.path}{line}: {problem}",
                hint="write the value without a YAML tag (quote it if it must stay text)",
            )
        return loader.plain_error(
            f"{loader.path}{line}: invalid YAML: {problem}",
            hint="check indentation and quoting on that line (values with ':' or '#' need quotes)",
        )
    return loader.plain_error(f"{loader.path}:1: invalid YAML: {exc}")


def _pydantic_error(loader: _Loader, loc: Path_, err: Any, count: int) -> ConfigError:
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        suggestion = f"did you mean `{close[0]}`? " if close else ""
        suggestion += f"allowed keys here: {', '.join(allowed)}"
        return loader.error(loc, f"unknown key `{_short(key)[1:-1]}`{more}", hint=suggestion, subject=loc[:-1])
    if kind == "missing":
        key = str(loc[-1])
        example = {
            "url": "e.g. url: sqlite:///var/{name}.db or url: ${{{upper}_URL}}",
            "databases": "e.g.\ndatabases:\n  users:\n    url: sqlite:///var/users.db",
            "drivername": "e.g. drivername: postgresql+psycopg",
        }.get(key)
        name = str(loc[-2]) if len(loc) >= 2 else ""
        add = f"add `{key}:`" + (", " + example.format(name=name, upper=name.upper()) if example else "")
        return loader.error(loc[:-1], f"missing required key `{key}`{more}", hint=add)
    if value is None and kind.endswith(("_type", "_parsing")):
        return loader.error(loc, f"has no value{more}", hint="give it a value, or remove the line to get the default")
    got = f" (got {_short(value)})" if _is_scalar(value) else ""
    hint: str | None = None
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if len(loc) == 2 and loc[0] == "databases":
            message = f"expected the settings of database `{loc[1]}` (a mapping), found {_a(_kind(value))}"
            hint = f"write them indented under it, e.g.\n  {loc[1]}:\n    url: sqlite:///var/{loc[1]}.db"
        else:
            message = f"expected a mapping (indented `key: value` lines), found {_a(_kind(value))}"
    elif kind == "list_type":
        message = "expected a list"
        if isinstance(value, str):
            hint = f"write it as [{_short(value)[1:-1]}], or one `- item` per line"
    elif kind in ("bool_type", "bool_parsing"):
        message = "expected true or false"
        hint = "write true or false, unquoted"
    elif kind == "replay_type":
        message = "expected auto, true or false"
        hint = "write auto, true or false, unquoted"
        got = f" (got {_short(value)})" if _is_scalar(value) else ""
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = "expected a whole number"
        hint = "write it without quotes or decimals, e.g. 3"
    elif kind in ("string_type",):
        message = "expected a string"
        hint = "quote the value"
    elif kind in ("float_type", "float_parsing"):
        message = "expected a number"
    else:
        message = err["msg"].removeprefix("Value error, ")
        got = got if kind.endswith(("_type", "_parsing")) else ""
    return loader.error(loc, f"{message}{got}{more}", hint=hint)


def _urls_in(data: dict[Any, Any]) -> list[Any]:
    urls: list[Any] = []
    databases = data.get("databases")
    if isinstance(databases, dict):
        for settings in databases.values():
            if isinstance(settings, dict):
                urls.append(settings.get("url"))
                tenants = settings.get("tenants")
                if isinstance(tenants, dict):
                    urls.append(tenants.get("query_url"))
    return urls


def _loc(err: Any) -> Path_:
    return tuple(err["loc"])


def _allowed_keys(parent: Path_) -> list[str]:
    model: type[BaseModel]
    if not parent:
        model = RawProject
    elif parent == ("defaults",):
        model = DatabaseSettings
    elif parent == ("execution",):
        model = RawExecution
    elif parent[-1] in ("url", "query_url"):
        model = RawUrlParts
    elif len(parent) == 3 and parent[2] == "tenants":
        model = RawTenants
    elif parent[1 if parent[0] == "defaults" else 2:] in (("rollout",), ("rollout", "halt"), ("preflight",)):
        nested: dict[str, type[BaseModel]] = {"rollout": RawRollout, "halt": RawHalt, "preflight": RawPreflight}
        model = nested[str(parent[-1])]
    else:
        model = RawDatabase
    return list(model.model_fields)


def load_project(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Project:
    """Read, expand and validate orchestrate.yaml, and check the whole. Pure: no sys.path
    edit, no global state, no import of models (see :func:`activate` and
    :meth:`Project.load_models`).

    Variables (``${VAR}`` and the bounds of the module docstring) come from ``environ``,
    else from ``os.environ``. Raises :class:`ConfigError` naming the file and line of the
    first problem found.
    """
    environ = dict(os.environ if environ is None else environ)
    bounds = Bounds.from_environ(environ)
    path = Path(path or environ.get("ORCHESTRATE_CONFIG") or os.environ.get("ORCHESTRATE_CONFIG") or CONFIG_FILENAME)
    try:
        path = path.resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{mask_text(str(path))[:200]}: cannot use this path: {exc}") from None
    loader = _Loader(path, environ, bounds)
    data = loader.read()
    loader.check_databases(data)
    loader.check_keys(data, ())
    loader.url_parts(data)
    raw = loader.validate(data)
    root = path.parent

    sys_path = tuple(_path(loader, ("sys_path", i), p, root) for i, p in enumerate(raw.sys_path))
    script_location = _path(loader, ("script_location",), raw.script_location, root, inside=True)

    databases: dict[str, DatabaseConfig] = {}
    for name, db in raw.databases.items():
        here = ("databases", name)
        url = _resolve_url(loader, here + ("url",), db.url, root)
        _check_migrated_url(loader, here, url, tenants=db.tenants is not None)
        for index, dep in enumerate(db.depends_on):
            if dep not in raw.databases:
                close = difflib.get_close_matches(dep, list(raw.databases), n=1)
                raise loader.error(
                    here + ("depends_on", index),
                    f"`{name}` depends on unknown database `{_short(dep)[1:-1]}`",
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
        version_path, version_locations = _version_folders(loader, here, db, raw.defaults, root)
        recursive = _first(db.recursive_version_locations, raw.defaults.recursive_version_locations, False)
        if not recursive:
            _check_flat_versions(loader, here, db, raw.defaults, version_locations)
        databases[name] = DatabaseConfig(
            name=name,
            url=url,
            metadata_ref=db.metadata,
            version_table=db.version_table,
            version_path=version_path,
            depends_on=tuple(db.depends_on),
            lock_timeout=_first(db.lock_timeout, raw.defaults.lock_timeout, 10.0),
            lock_wait=_first(db.lock_wait, raw.defaults.lock_wait, 60.0),
            lock_retries=_first(db.lock_retries, raw.defaults.lock_retries, 0),
            statement_timeout=_first(db.statement_timeout, raw.defaults.statement_timeout, 0.0) or None,
            transaction_per_migration=_first(db.transaction_per_migration, raw.defaults.transaction_per_migration, True),
            line=loader.lines.of(here) or 0,
            tenants=_resolve_tenants(loader, here + ("tenants",), db.tenants, url, root) if db.tenants else None,
            replay=_first(db.replay, raw.defaults.replay, "auto"),
            connect_timeout=_first(db.connect_timeout, raw.defaults.connect_timeout, 10.0),
            server_timeout=_first(db.server_timeout, raw.defaults.server_timeout, 120.0),
            version_locations=version_locations,
            recursive_version_locations=recursive,
            rollout=_rollout(loader, here, db, raw.defaults),
            preflight_max_risk=_first(db.preflight and db.preflight.max_risk,
                                      raw.defaults.preflight and raw.defaults.preflight.max_risk, "") or None,
            max_per_server=_first(db.max_per_server, raw.defaults.max_per_server, 0) or None,
            config_path=path,
            metadata_line=loader.lines.of(here + ("metadata",)) or 0,
        )

    _check_cycles(loader, databases)
    _check_version_tables(loader, databases)
    return Project(
        path=path,
        root=root,
        script_location=script_location,
        sys_path=sys_path,
        databases=databases,
        execution=ExecutionConfig(parallel=raw.execution.parallel, backend=raw.execution.backend,
                                  scheduler=raw.execution.scheduler),
        secrets=frozenset(loader.secrets),
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _rollout(loader: _Loader, here: Path_, db: RawDatabase, defaults: DatabaseSettings) -> RolloutConfig | None:
    """``rollout:`` of a database over ``defaults.rollout``, key by key; None without either.
    A canary tenant the database does not declare is an error at its line."""
    own, base = db.rollout or RawRollout(), defaults.rollout or RawRollout()
    if db.rollout is None and defaults.rollout is None:
        return None
    halt = own.halt or base.halt or RawHalt()
    canary = own.canary if own.canary is not None else (base.canary or [])
    if own.canary and db.tenants is not None and db.tenants.names is not None:
        known = set(db.tenants.names)
        for index, name in enumerate(own.canary):
            if name not in known:
                raise loader.error(here + ("rollout", "canary", index),
                                   f"canary tenant `{_short(name)[1:-1]}` is not a tenant of `{here[-1]}`",
                                   hint="list tenants declared under `tenants:`", subject=here + ("rollout", "canary"))
    return RolloutConfig(
        canary=tuple(canary),
        waves=tuple(wave_size(w) for w in (own.waves if own.waves is not None else (base.waves or []))),
        halt=HaltRules(halt.failures, halt.failure_ratio, halt.lock_timeouts),
        pause=_first(own.pause, base.pause, 0.0),
    )


def _path(loader: _Loader, at: Path_, written: str, root: Path, inside: bool = False) -> Path:
    """``written`` resolved against the project folder (``..`` and symlinks resolved);
    with ``inside``, it must stay in the project folder."""
    if _CONTROL.search(written):
        raise loader.error(at, "a path cannot hold control characters (newline, NUL, ...)", hint="remove them")
    try:
        resolved = (root / written).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise loader.error(at, f"cannot use the path {_short(written)}: {exc}") from None
    if inside and not resolved.is_relative_to(root):
        raise loader.error(
            at,
            f"{resolved} is outside the project folder {root}",
            hint="keep env.py and revision folders inside the folder of orchestrate.yaml "
            "(a symlink pointing out of it counts as outside)",
        )
    return resolved


def _version_folders(
    loader: _Loader, here: Path_, db: RawDatabase, defaults: DatabaseSettings, root: Path
) -> tuple[Path, tuple[Path, ...]]:
    """(version_path, version_locations): where revisions are written, and every folder
    searched (version_path among them)."""
    own = db.version_locations is not None
    written = db.version_locations if own else defaults.version_locations
    where = here + ("version_locations",) if own else ("defaults", "version_locations")
    locations = [_path(loader, where + (i,), p, root, inside=True) for i, p in enumerate(written or [])]
    if db.version_path is not None:
        version_path = _path(loader, here + ("version_path",), db.version_path, root, inside=True)
    elif locations:
        version_path = locations[0]
    else:
        version_path = _path(loader, here, f"versions/{here[-1]}", root, inside=True)
    if version_path not in locations:
        locations.append(version_path)
    return version_path, tuple(dict.fromkeys(locations))


def _check_flat_versions(
    loader: _Loader, here: Path_, db: RawDatabase, defaults: DatabaseSettings, locations: tuple[Path, ...]
) -> None:
    """With recursive_version_locations off, Alembic reads only the top of each folder: a
    revision file in a subfolder would silently be left out of the history."""
    for location in locations:
        found = _nested_revision(location)
        if found is None:
            continue
        if db.version_locations is not None:
            at: Path_ = here + ("version_locations",)
        elif db.version_path is not None:
            at = here + ("version_path",)
        elif defaults.version_locations is not None:
            at = ("defaults", "version_locations")
        else:
            at = here
        folder, file = found
        raise loader.error(
            at,
            f"the subfolder {folder} of the version location {location} holds revision files ({file}), "
            "which are not read with recursive_version_locations: false",
            hint="set `recursive_version_locations: true` (for this database or under defaults:) to read "
            f"subfolders, or move the files into {location}",
            subject=here,
        )


def _nested_revision(location: Path) -> tuple[Path, str] | None:
    """The first subfolder (any depth, ``__pycache__`` and hidden folders skipped) holding
    a revision file, and that file's name."""
    if not location.is_dir():
        return None
    for folder, dirs, files in os.walk(location):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        if Path(folder) == location:
            continue
        for file in sorted(files):
            if file.endswith(".py") and file != "__init__.py" and not file.startswith((".#", "__")):
                return Path(folder), file
    return None


def _resolve_url(loader: _Loader, path: Path_, url: str, root: Path) -> str:
    """Check and parse a URL string; a SQLite file becomes absolute (relative to ``root``)."""
    loader.add_url_secrets(url)
    if len(url) > loader.bounds.url:
        raise loader.error(
            path,
            f"a URL of {len(url)} characters is longer than {loader.bounds.url}",
            hint=f"if this is intended, raise the bound with {loader.bounds.setting('url')}",
        )
    if _CONTROL.search(url):
        raise loader.error(
            path, "the URL holds a control character (newline, NUL, ...)", hint="remove it (check the variable's value)"
        )
    hint = "write it as dialect+driver://user:password@host:port/dbname, or sqlite:///file.db"
    unparsed = unparsed_password(url)
    if unparsed is not None and "@" in unparsed:
        raise loader.error(
            path,
            f"the URL {mask_unparsed_url(url)!r} has more than one '@' after its user name, so where the "
            "password ends is unclear",
            hint="write '@' in a password as %40, or give the URL as parts: url: {drivername: ..., username: ..., "
            "password: ..., host: ..., database: ...}",
        )
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise loader.error(path, str(exc), hint=hint) from None
    try:
        parsed.get_dialect()
    except Exception:  # noqa: BLE001 - NoSuchModuleError, or a plugin failing to load
        raise loader.error(
            path,
            f"unknown database dialect or driver `{_short(parsed.drivername)[1:-1]}`",
            hint="write it as dialect+driver://..., e.g. postgresql+psycopg://, mysql+pymysql://, sqlite:///",
        ) from None
    if _dialect(parsed).file_based:
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:") and not os.path.isabs(database):
            parsed = parsed.set(database=str(root / database))
    # The URL renderer escapes braces; a tenant template keeps its {tenant} readable.
    return parsed.render_as_string(hide_password=False).replace("%7Btenant%7D", TENANT_PLACEHOLDER)


TENANT_PLACEHOLDER = "{tenant}"


def _check_migrated_url(loader: _Loader, here: Path_, url: str, tenants: bool) -> None:
    """What the URL of a migrated database means: a SQLite file that can hold the version
    table, and {tenant} only where there are tenants."""
    at = here + ("url",)
    if TENANT_PLACEHOLDER in url and not tenants:
        raise loader.error(
            at,
            "the URL holds {tenant} but the database declares no tenants",
            hint="add `tenants:` (mode: database, and names:, file: or query:) or remove {tenant} from the URL",
        )
    parsed = parse_url(url)
    if not _dialect(parsed).file_based:
        return
    database = parsed.database or ""
    memory = parsed.query.get("mode") == "memory"
    if not database or database == ":memory:" or memory:
        raise loader.error(
            at,
            "an in-memory SQLite database forgets its tables and version table when the connection closes, "
            "so it cannot be migrated",
            hint="give it a file, e.g. url: sqlite:///var/app.db",
        )
    if TENANT_PLACEHOLDER in database or database.startswith("file:"):
        return
    problem = _sqlite_file_problem(Path(database))
    if problem:
        raise loader.error(at, f"{database}: {problem}", hint="point the URL at a SQLite database file, or a new file")


def _sqlite_file_problem(file: Path) -> str | None:
    try:
        status = os.stat(file)
    except FileNotFoundError:
        return None  # created on first connect
    except OSError as exc:
        return f"cannot use this file: {exc.strerror or exc}"
    if stat.S_ISDIR(status.st_mode):
        return "is a folder, not a SQLite database file"
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file (a FIFO, socket or device), so not a SQLite database"
    if status.st_size == 0:
        return None  # SQLite writes its header on first use
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            header = os.read(fd, len(_SQLITE_HEADER))
        finally:
            os.close(fd)
    except OSError as exc:
        return f"cannot read this file: {exc.strerror or exc}"
    if header != _SQLITE_HEADER:
        return "exists and is not a SQLite database (it does not start with 'SQLite format 3')"
    return None


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
        if not _dialect(parsed).schema_tenants:
            raise loader.error(
                path + ("mode",),
                f"`mode: schema` needs PostgreSQL or MySQL/MariaDB, not {backend}",
                hint="for SQLite use `mode: database` with a url like sqlite:///var/tenants/{tenant}.db",
            )
    elif in_url and TENANT_PLACEHOLDER in (parsed.host or "") + (parsed.username or ""):
        raise loader.error(path + ("mode",), "{tenant} may only appear in the database part of the url")

    names: tuple[str, ...] | None = None
    source = "names"
    if raw.names is not None:
        checker = _TenantChecker(loader, backend, raw.pattern)
        for index, name in enumerate(raw.names):

            def fail(message: str, hint: str | None, index: int = index) -> ConfigError:
                return loader.error(path + ("names", index), message, hint)

            checker.check(name, fail)
        checker.finish()
        names = tuple(raw.names)
        first: dict[str, int] = {}
        for index, name in enumerate(names):
            if name in first:
                raise loader.error(
                    path + ("names", index),
                    f"tenant {name!r} is listed twice (first as item {first[name] + 1})",
                    hint="remove one of them",
                )
            first[name] = index
    elif raw.file is not None:
        file = _path(loader, path + ("file",), raw.file, root)
        source = str(file)
        names = tuple(_read_tenant_file(loader, path + ("file",), file, backend, raw.pattern))
    query_url = None
    if raw.query_url is not None:
        query_url = _resolve_url(loader, path + ("query_url",), raw.query_url, root)
    return TenantsConfig(
        mode=raw.mode,
        names=names,
        query=raw.query,
        query_url=query_url,
        pattern=raw.pattern,
        create=raw.create,
        source=source if raw.query is None else "query",
        query_line=(loader.lines.of(path + ("query",)) or 0) if raw.query is not None else 0,
    )


class _PatternTimeout(Exception):
    pass


class _TenantChecker:
    """Checks tenant names one by one: control characters and the dialect's rules
    (reserved names, identifier length, safe file names) first, whatever the pattern; then
    the pattern, in batches that each run with a time bound."""

    def __init__(self, loader: _Loader, backend: str, pattern: str) -> None:
        # imported here: the dialects import targets, which import this module
        from orchestrator.dialects import tenant_name_problem

        self.loader = loader
        self.backend = backend
        self.pattern = pattern
        self.regex = re.compile(pattern)
        self.dialect_problem = tenant_name_problem
        self.pending: list[tuple[str, Callable[[str, str | None], ConfigError]]] = []

    def check(self, name: str, fail: Callable[[str, str | None], ConfigError]) -> None:
        problem = tenant_name_problem_text(self.backend, name, self.dialect_problem)
        if problem:
            raise fail(
                problem,
                "tenant names become schema, database or file names on the server, whatever `pattern:` "
                "allows; rename the tenant",
            )
        self.pending.append((name, fail))
        if len(self.pending) >= _PATTERN_BATCH:
            self.flush()

    def finish(self) -> None:
        self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        names = [name for name, _ in batch]
        try:
            index = first_mismatch(self.pattern, names, _PATTERN_BUDGET)
        except _PatternTimeout as timeout:
            name, fail = batch[int(str(timeout) or 0)]
            raise fail(
                f"the tenant pattern {_short(self.pattern)} took more than {_PATTERN_BUDGET:g}s on tenant "
                f"names ({_short(name)} among them)",
                "a pattern with nested repeats such as (a+)+ can take forever on some names; simplify it, "
                f"e.g. the default {DEFAULT_TENANT_PATTERN}",
            ) from None
        if index >= 0:
            name, fail = batch[index]
            raise fail(
                f"tenant name {_short(name)} does not match the tenant pattern {_short(self.pattern)[1:-1]}",
                "tenant names reach SQL as identifiers, so they must match `pattern:` (default "
                f"{DEFAULT_TENANT_PATTERN}); fix the name or the pattern",
            )


def tenant_name_problem_text(
    backend: str, name: str, dialect_problem: Callable[[str, str], str | None] | None = None
) -> str | None:
    """Why ``name`` cannot be a tenant on ``backend``, as a message naming it, or None."""
    shown = _short(name)
    if not name:
        return "a tenant name cannot be empty"
    if _CONTROL.search(name):
        return f"tenant name {shown} holds a control character (newline, NUL, ...)"
    if len(name) > _TENANT_NAME_CAP:
        return f"tenant name {shown} is longer than {_TENANT_NAME_CAP} characters"
    if dialect_problem is None:
        from orchestrator.dialects import tenant_name_problem

        dialect_problem = tenant_name_problem
    problem = dialect_problem(backend, name)
    if not problem:
        return None
    return problem if repr(name) in problem else f"tenant name {shown}: {problem}"


def first_mismatch(pattern: str, names: Sequence[str], budget: float = _PATTERN_BUDGET) -> int:
    """Index of the first of ``names`` that ``pattern`` does not fully match, or -1.

    A pattern other than the default runs with a time bound of ``budget`` seconds for the
    whole batch: a SIGALRM timer in the main thread (the regex engine checks signals), else
    a child process that is killed past the bound. Raises _PatternTimeout(index) then.
    """
    regex = re.compile(pattern)
    if pattern == DEFAULT_TENANT_PATTERN:
        return _first_mismatch(regex, names)
    if (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    ):
        return _first_mismatch_with_alarm(regex, names, budget)
    return _first_mismatch_in_child(pattern, names, budget)


def _first_mismatch(regex: re.Pattern[str], names: Sequence[str], progress: list[int] | None = None) -> int:
    for index, name in enumerate(names):
        if progress is not None:
            progress[0] = index
        if not regex.fullmatch(name):
            return index
    return -1


def _first_mismatch_with_alarm(regex: re.Pattern[str], names: Sequence[str], budget: float) -> int:
    progress = [0]

    def expired(_signum: int, _frame: Any) -> None:
        raise _PatternTimeout(str(progress[0]))

    previous = signal.signal(signal.SIGALRM, expired)
    try:
        signal.setitimer(signal.ITIMER_REAL, budget)
        try:
            return _first_mismatch(regex, names, progress)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


_CHILD = """
import json, re, signal, sys
data = json.load(sys.stdin)
regex = re.compile(data["pattern"])
at = [0]
def expired(*_):
    print(json.dumps({"timeout": at[0]})); sys.stdout.flush(); sys.exit(0)
signal.signal(signal.SIGALRM, expired)
signal.setitimer(signal.ITIMER_REAL, data["budget"])
for index, name in enumerate(data["names"]):
    at[0] = index
    if not regex.fullmatch(name):
        print(json.dumps({"index": index})); break
else:
    print(json.dumps({"index": -1}))
"""


def _first_mismatch_in_child(pattern: str, names: Sequence[str], budget: float) -> int:
    payload = json.dumps({"pattern": pattern, "names": list(names), "budget": budget})
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD],
            input=payload,
            capture_output=True,
            text=True,
            timeout=budget + 10,
            check=False,
        )
        answer = json.loads(done.stdout)
    except subprocess.TimeoutExpired:
        raise _PatternTimeout("0") from None
    except (OSError, ValueError):
        answer = {}
    if "timeout" in answer:
        raise _PatternTimeout(str(answer["timeout"]))
    if "index" in answer:
        return int(answer["index"])
    # No child could run (no fork allowed here?): bound the names instead, and match here.
    return _first_mismatch(re.compile(pattern), names)


def tenant_lines(data: bytes, shown: str, limit: int, too_many: Callable[[], Exception]) -> list[tuple[int, str]]:
    """(line number, name) of a tenants list: one name a line, ``#`` comments and blank lines
    skipped; UTF-8 (an error names the line and the byte), at most ``limit`` lines."""
    text = decode_utf8(
        data,
        lambda line, offset: ConfigError(
            f"{shown}:{line}: not UTF-8 text (byte {offset}, 0x{data[offset]:02x})",
            hint="save the tenants file as UTF-8",
        ),
    )
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > limit:
        raise too_many()
    return [(number, name) for number, line in enumerate(lines, start=1) if (name := line.split("#", 1)[0].strip(" \t\r"))]


def _read_tenant_file(loader: _Loader, path: Path_, file: Path, backend: str, pattern: str) -> list[str]:
    """The names of a tenants file: one a line, ``#`` comments and blank lines skipped;
    bounded in lines and bytes, UTF-8, each name checked (errors name the file's line)."""
    bounds = loader.bounds
    limit = bounds.tenants * _TENANT_LINE_BYTES
    try:
        data = read_regular_file(
            file,
            limit,
            lambda size: loader.bound_error(
                str(file),
                f"the tenants file is larger than {limit} bytes ({size} bytes or more; "
                f"{_TENANT_LINE_BYTES} bytes a line for {bounds.tenants} lines)",
                "tenants",
            ),
            lambda message, hint: loader.error(path, f"the tenants file {file} {message}", hint),
        )
    except OSError as exc:
        raise loader.error(path, f"cannot read the tenants file {file}: {exc.strerror or exc}") from None
    listed = tenant_lines(
        data, str(file), bounds.tenants,
        lambda: loader.bound_error(
            f"{file}:{bounds.tenants + 1}", f"the tenants file has more than {bounds.tenants} lines", "tenants"
        ),
    )
    checker = _TenantChecker(loader, backend, pattern)
    names: list[str] = []
    first: dict[str, int] = {}
    for number, name in listed:

        def fail(message: str, hint: str | None, number: int = number) -> ConfigError:
            return loader.plain_error(
                f"{file}:{number}: {message}", (hint or "") + f" (the tenants file of {loader.path})"
            )

        checker.check(name, fail)
        if name in first:
            raise fail(f"tenant {name!r} is listed twice (first on line {first[name]})", "remove one of them")
        first[name] = number
        names.append(name)
    checker.finish()
    return names


def _check_cycles(loader: _Loader, databases: dict[str, DatabaseConfig]) -> None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in databases[name].depends_on:
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
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
    return _dialect(parsed).version_table_place(parsed, schema, version_table)


def _dialect(parsed: Any) -> Any:
    from orchestrator.dialects import for_backend  # the dialects know where things live

    return for_backend(parsed.get_backend_name())


def _server_of(db: DatabaseConfig) -> tuple[Any, ...]:
    """Which server (or, for SQLite, which machine) a database's targets live on."""
    parsed = parse_url(db.url)
    return tuple(_dialect(parsed).server_key(parsed))


def _version_table_places(db: DatabaseConfig) -> list[tuple[Any, ...]]:
    """Where the version tables of ``db``'s targets live, as far as the file tells
    (a fleet whose tenants come from a query is only known when it runs)."""
    # the one place that knows where a tenant lives (imported here: it imports this module)
    from orchestrator.targets import make_target

    tenants = db.tenants
    if tenants is None:
        place = version_table_place(db.url, None, db.version_table)
        return [] if place is None else [place]
    if not tenants.names:
        return []
    # A large fleet: derive each tenant's place from the URL (one parse, one realpath),
    # as long as that derivation agrees with make_target on the first tenant.
    derive = _tenant_place_deriver(db)
    first = make_target(db, tenants.names[0], checked=True)  # checked by this load
    if derive is not None and derive(tenants.names[0]) == version_table_place(first.url, first.schema, db.version_table):
        return [derive(name) for name in tenants.names]
    targets = [make_target(db, name, checked=True) for name in tenants.names]
    places = [version_table_place(t.url, t.schema, db.version_table) for t in targets]
    return [p for p in places if p is not None]


def _tenant_place_deriver(db: DatabaseConfig) -> Callable[[str], tuple[Any, ...]] | None:
    tenants = db.tenants
    assert tenants is not None
    parsed = parse_url(db.url)
    place: Callable[[str], tuple[Any, ...]] | None = _dialect(parsed).tenant_place(parsed, tenants.mode, db.version_table)
    return place


def _check_version_tables(loader: _Loader, databases: dict[str, DatabaseConfig]) -> None:
    # Two databases can only share a version table on one server and under one table name;
    # the tenants of one database never share (their names differ). So the (possibly many)
    # targets are only listed where two databases could meet.
    groups: dict[tuple[Any, ...], list[DatabaseConfig]] = {}
    for db in databases.values():
        groups.setdefault((_server_of(db), db.version_table), []).append(db)
    for group in groups.values():
        if len(group) < 2:
            continue
        seen: dict[tuple[Any, ...], str] = {}
        for db in group:
            for place in dict.fromkeys(_version_table_places(db)):
                if place in seen:
                    raise loader.error(
                        ("databases", db.name),
                        f"`{db.name}` and `{seen[place]}` would share the version table "
                        f"`{db.version_table}` in {db.display_url}",
                        hint=f"give one of them its own `version_table:`, "
                        f"e.g. version_table: alembic_version_{db.name}",
                    )
                seen[place] = db.name
