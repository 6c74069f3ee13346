"""Revision scripts: one warm ScriptDirectory per database, fresh revision modules per target,
and the planning of steps.

Loading a database's versions folder parses and imports every revision file, which is
most of what ``alembic.command.upgrade`` costs per call. A :class:`ScriptCache` loads each
database's folder once per process and keeps its revision map for every target it runs.

What it does not keep is the state of revision modules: plain Alembic imports each file
afresh for every run, so a module-level value (a dict that ``upgrade()`` pops from, a
``uuid4()`` made at import) is new for each database it migrates. orchestrate does the
same per target: each file is compiled once per process (the code object is cached by
path and content hash, :func:`compiled`), and :meth:`ScriptCache.fresh` executes it into a
new module for every target that runs it (the module the folder was loaded with serves the
first one). Only the revisions a target will run are executed again.

A revision file that cannot load (a syntax error, an exception or ``sys.exit()`` at import,
one that closes standard output) is a :class:`RevisionFileError`: exit 2, naming the file
and line, raised before any target is migrated. Planning (which steps lead from a version
table's heads to a destination, how far a target lags, which planned revisions a version
table shows as committed) lives here too, on top of the private Alembic calls that
:mod:`orchestrator.alembic_compat` owns.
"""
from __future__ import annotations

import datetime
import decimal
import functools
import hashlib
import importlib.util
import itertools
import os
import re
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from orchestrator import alembic_compat
from orchestrator.config import DatabaseConfig, Project
from orchestrator.errors import OrchestrateError, SelectionError
from orchestrator.urls import mask_text

#: Longest error text quoted from a revision file's exception.
MAX_QUOTED = 2000


class RevisionFileError(OrchestrateError):
    """A revision file cannot be loaded (or broke the process while it ran): the message
    names the file and, where Python gives one, the line. Input error: exit 2."""

    exit_code = 2


class ScriptCache:
    """Each database's ScriptDirectory, loaded on first use and kept; fresh modules per target."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._scripts: dict[str, ScriptDirectory] = {}
        #: (database, revision) whose module, as loaded with the folder, a target has run.
        self._used: set[tuple[str, str]] = set()

    def alembic_config(self, database: DatabaseConfig, output: Any = None) -> Config:
        """An in-memory Alembic Config for one database: the shared env.py, its own versions."""
        config = Config(output_buffer=output)
        config.set_main_option("script_location", str(self.project.script_location))
        config.set_main_option("path_separator", "os")
        locations = getattr(database, "version_locations", None) or (database.version_path,)
        config.set_main_option("version_locations", _join(locations))
        if getattr(database, "recursive_version_locations", False):
            config.set_main_option("recursive_version_locations", "true")
        return config

    def script(self, database: DatabaseConfig) -> ScriptDirectory:
        """The database's ScriptDirectory with every revision file loaded, once per process.

        Raises :class:`RevisionFileError` (exit 2) naming the file a revision cannot be
        loaded from, or the history's flaw (a missing down_revision, a cycle).
        """
        script = self._scripts.get(database.name)
        if script is None:
            if not (self.project.script_location / "env.py").is_file():
                raise OrchestrateError(
                    f"no env.py in {self.project.script_location}",
                    hint="run `orchestrate init` to generate it",
                )
            for location in getattr(database, "version_locations", None) or (database.version_path,):
                if not Path(location).is_dir():
                    raise OrchestrateError(
                        f"{database.name}: the versions folder {location} does not exist",
                        hint=f"run `orchestrate init`, or check `version_path:` of `{database.name}` "
                        f"in {self.project.where(database.line)}",
                    )
            script = ScriptDirectory.from_config(self.alembic_config(database))
            _load_all(script, database)
            self._scripts[database.name] = script
            self._used = {used for used in self._used if used[0] != database.name}
        return script

    def check_loads(self, databases: Any) -> None:
        """Load every database's revision files now: a file that cannot load raises
        :class:`RevisionFileError` (exit 2) before any target runs. Other problems (no
        versions folder) are left to the targets, which fail with them."""
        for database in databases:
            try:
                self.script(database)
            except RevisionFileError:
                raise
            except Exception:  # noqa: BLE001 - each target reports it
                continue

    def forget(self, database: DatabaseConfig) -> None:
        """Drop the cached ScriptDirectory (after a new revision file was written)."""
        self._scripts.pop(database.name, None)

    def fresh(self, database: DatabaseConfig, steps: list[Any]) -> list[Any]:
        """``steps`` whose revisions run from modules of their own, as if each file were
        imported for the first time: call once per target, right before its steps run.

        The first target of a process runs the modules the folder was loaded with; every
        later one gets each planned file executed again (from the cached code object).
        Stamp steps pass unchanged. Every migration function also checks, after it ran,
        that it left standard input, output and error usable (:func:`streams_kept`).
        """
        made = []
        for step in steps:
            if not alembic_compat.is_revision_step(step):
                made.append(step)
                continue
            path = Path(step.revision.path)
            key = (database.name, step.revision.revision)
            if key in self._used:
                module = load_revision(path)
            else:
                self._used.add(key)
                module = step.revision.module
            fresh = alembic_compat.with_module(step, module, functools.partial(_guarded, path))
            fresh.import_state = import_state(module)  # replay keys recordings by it
            made.append(fresh)
        return made


def _join(paths: Any) -> str:
    return os.pathsep.join(str(p) for p in paths)


def write_location(database: DatabaseConfig, requested: str | Path | None) -> Path:
    """Where ``revision`` writes: ``--version-path`` when given (it must be one of the
    database's version locations), else ``version_path`` (by default the first location)."""
    if requested is None:
        return Path(database.version_path)
    given = Path(requested)
    wanted = {given.resolve(), (Path(database.config_path).parent / given).resolve()}  # from here or the project
    for location in database.version_locations:
        if Path(location).resolve() in wanted:
            return Path(location)
    raise SelectionError(
        f"--version-path {requested} is not one of the version locations of `{database.name}` "
        f"({', '.join(str(p) for p in database.version_locations)})",
        hint=f"add it to `version_locations:` of `{database.name}`, or name one of those",
    )


# ---------------------------------------------------------------------- loading revision files

#: path -> (mtime_ns, size, sha256 of the content): what was last read from the file.
_SEEN: dict[str, tuple[int, int, str]] = {}
#: (path, sha256) -> the compiled module code; once per process.
_CODE: dict[tuple[str, str], CodeType] = {}


def compiled(path: Path) -> CodeType:
    """The code object of a revision file, compiled once per process per content."""
    key = str(path)
    stat = os.stat(key)
    seen = _SEEN.get(key)
    if seen is not None and seen[:2] == (stat.st_mtime_ns, stat.st_size) and (key, seen[2]) in _CODE:
        return _CODE[(key, seen[2])]
    source = Path(key).read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    _SEEN[key] = (stat.st_mtime_ns, stat.st_size, digest)
    code = _CODE.get((key, digest))
    if code is None:
        code = compile(source, key, "exec", dont_inherit=True)
        _CODE[(key, digest)] = code
    return code


def execute(path: Path) -> ModuleType:
    """A new module executed from ``path``'s cached code, made as Alembic's loader makes it
    (same module name, spec, ``__file__``); never put in ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(re.sub(r"\W", "_", path.name), path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compiled(path), module.__dict__)
    return module


def load_revision(path: Path) -> ModuleType:
    """:func:`execute`, with every failure turned into a :class:`RevisionFileError`."""
    try:
        with streams_kept(path, "while it was imported"):
            return execute(path)
    except KeyboardInterrupt:
        raise
    except RevisionFileError:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit, GeneratorExit...: the file's fault
        raise RevisionFileError(describe(exc, path, "cannot be loaded"),
                                hint="fix the revision file; nothing was migrated") from None


def _load_file(dir_: Any, filename: Any) -> ModuleType:
    """Alembic's ``load_python_file`` contract, for revision files: compiled once per process."""
    path = Path(dir_) / Path(filename).name
    if path.suffix != ".py" or not path.is_file():  # a sourceless .pyc: Alembic's own way
        from alembic.util.pyfiles import load_python_file

        return load_python_file(dir_, filename)
    return load_revision(path)


def _load_all(script: ScriptDirectory, database: DatabaseConfig) -> None:
    """Read every revision file of ``script`` now (Alembic reads them lazily), so that a
    file that cannot load is an input error before any target runs."""
    try:
        with alembic_compat.revision_loader(_load_file):
            script.revision_map.get_revisions("heads")
    except RevisionFileError as exc:
        raise RevisionFileError(f"{database.name}: {exc.message}", hint=exc.hint) from None
    except (CommandError, RevisionError) as exc:
        raise RevisionFileError(
            f"{database.name}: the revision history in {_join(database.version_locations)} "
            f"cannot be read: {clean(str(exc))}",
            hint="fix the revision files (down_revision, revision ids); nothing was migrated",
        ) from None


def _guarded(path: Path, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with streams_kept(path, f"in {fn.__name__}()"):
                return fn(*args, **kwargs)
        except BaseException as exc:  # SystemExit, GeneratorExit...: a failed target all the same
            if not isinstance(exc, KeyboardInterrupt):
                _printable_args(exc)
            raise

    return run


_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def _printable_args(exc: BaseException) -> None:
    """Escape NUL, control characters and lone surrogates in the text of an exception a
    revision raised, so that its message prints (and goes into a JSON report) as text."""
    try:
        if any(isinstance(arg, str) and _UNPRINTABLE.search(arg) for arg in exc.args):
            exc.args = tuple(clean(arg) if isinstance(arg, str) else arg for arg in exc.args)
    except Exception:  # noqa: BLE001 - an exception type that refuses new args keeps its own
        pass


_STREAMS = (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w"))


@contextmanager
def streams_kept(path: Path, when: str) -> Iterator[None]:
    """Run a revision's code; if it closed or replaced sys.stdin/stdout/stderr, put usable
    ones back (orchestrate must still print its summary) and raise RevisionFileError."""
    saved = [getattr(sys, name) for name, _, _ in _STREAMS]
    try:
        yield
    except BaseException:
        _restore(saved)
        raise
    broken = _restore(saved)
    if broken:
        raise RevisionFileError(
            f"the revision file {path} {'closed' if _closed(saved, broken) else 'replaced'} "
            f"sys.{' and sys.'.join(broken)} {when}",
            hint="a revision must leave the process's standard streams as it found them",
        )


def _restore(saved: list[Any]) -> list[str]:
    """Put back the standard streams a revision closed or replaced; their names."""
    broken = []
    for (name, fd, mode), stream in zip(_STREAMS, saved, strict=True):
        if getattr(sys, name) is stream and not getattr(stream, "closed", False):
            continue
        broken.append(name)
        setattr(sys, name, stream if not getattr(stream, "closed", False) else _reopen(fd, mode))
    return broken


def _closed(saved: list[Any], broken: list[str]) -> bool:
    names = [name for name, _, _ in _STREAMS]
    return any(getattr(saved[names.index(name)], "closed", False) for name in broken)


def _reopen(fd: int, mode: str) -> Any:
    """A new text stream on the process's own file descriptor ``fd`` (or the null device)."""
    try:
        os.fstat(fd)
        return open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False)
    except OSError:
        return open(os.devnull, mode, encoding="utf-8")


def clean(text: str, limit: int = MAX_QUOTED) -> str:
    """Quoted exception text made printable: passwords masked, NUL and lone surrogates (and
    other control characters but newline and tab) escaped, length bounded."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(ch if ch in "\n\t" or ch >= " " and ch != "\x7f" else f"\\x{ord(ch):02x}" for ch in text)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return mask_text(text)


def describe(exc: BaseException, path: Path, what: str) -> str:
    """``the revision file PATH (line N) WHAT: <exception>``: where in the file it happened."""
    line = _line_in(exc, path)
    where = f"{path}, line {line}" if line else str(path)
    if isinstance(exc, SystemExit):
        detail = f"it called sys.exit({clean(repr(exc.code))})"
    elif isinstance(exc, SyntaxError) and exc.msg:
        detail = f"SyntaxError: {clean(exc.msg)}"
    else:
        text = clean(str(exc))
        detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"the revision file {where} {what}: {detail}"


def _line_in(exc: BaseException, path: Path) -> int | None:
    if isinstance(exc, SyntaxError) and exc.lineno and Path(exc.filename or "") == path:
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == str(path):
            line = lineno  # the innermost frame in the file
    return line


_PLAIN = (str, bytes, int, float, complex, bool, type(None), uuid.UUID, datetime.date, datetime.time,
          datetime.timedelta, decimal.Decimal)
#: Most values import_state looks at; a module holding more is never replayed.
MAX_STATE_VALUES = 10_000
_unknown_states = itertools.count()


def import_state(module: ModuleType) -> str:
    """A digest of the plain data a revision module holds at import (strings, numbers, UUIDs,
    dates, in lists, tuples, sets and dicts; functions, classes and other objects ignored).
    Two executions that made different values (a ``uuid4()``, ``datetime.now()``) differ, so
    a recording made with one module is never replayed for the other."""
    digest = hashlib.sha256()
    budget = [MAX_STATE_VALUES]

    def feed(value: Any) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise OverflowError
        if isinstance(value, _PLAIN):
            digest.update(f"{type(value).__name__}:{value!r};".encode("utf-8", "backslashreplace"))
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__}[".encode())
            for item in value:
                feed(item)
            digest.update(b"]")
        elif isinstance(value, dict):
            digest.update(b"{")
            for key, item in value.items():
                feed(key)
                feed(item)
            digest.update(b"}")
        elif isinstance(value, (set, frozenset)):
            digest.update(repr(sorted(map(repr, value))).encode("utf-8", "backslashreplace"))

    try:
        for name, value in sorted(vars(module).items()):
            if not name.startswith("__"):
                digest.update(name.encode("utf-8", "backslashreplace") + b"=")
                feed(value)
    except (OverflowError, RecursionError):
        return f"unknown-{next(_unknown_states)}"
    return digest.hexdigest()


# ---------------------------------------------------------------------- planning


def _memo(script: ScriptDirectory) -> dict[Any, Any]:
    """Answers about ``script``'s revision graph, kept on it: a fleet asks the same ones
    (the steps from one starting point, the ancestry of one head) for every tenant."""
    memo: dict[Any, Any] = script.__dict__.setdefault("_orchestrate_memo", {})
    return memo


def steps(script: ScriptDirectory, revision: str, heads: tuple[str, ...], upgrade: bool) -> list[Any]:
    """Alembic's steps from ``heads`` to ``revision``, up or down."""
    memo, key = _memo(script), ("steps", revision, heads, upgrade)
    if key not in memo:
        memo[key] = tuple(alembic_compat.upgrade_steps(script, revision, heads) if upgrade
                          else alembic_compat.downgrade_steps(script, revision, heads))
    return list(memo[key])


#: Alembic's relative destinations (``-1``, ``+2``, ``head-1``, ``rev@+1``): never "already there".
_RELATIVE = re.compile(r"(?:(.+?)@)?(\w+)?([+-]\d+)")


def destination(script: ScriptDirectory, revision: str) -> frozenset[str] | None:
    """The exact heads ``upgrade revision`` ends at, for ``heads``, ``head`` (one head
    only) and a revision id, prefix or label; None where that is not a fixed set of
    revisions (relative, ``@``, a range, base, several heads for ``head``, unknown)."""
    if revision == "heads":
        heads = frozenset(script.get_heads())
        return heads or None
    if revision == "head":
        heads = frozenset(script.get_heads())
        return heads if len(heads) == 1 else None
    if not revision or revision == "base" or "@" in revision or ":" in revision or _RELATIVE.fullmatch(revision):
        return None
    try:
        found = script.revision_map.get_revisions(revision)
    except Exception:  # noqa: BLE001 - ambiguous or unknown: the normal path says what is wrong
        return None
    revisions = frozenset(r.revision for r in found if r is not None and not isinstance(r, str))
    return revisions or None


def position(script: ScriptDirectory, current: list[str]) -> tuple[list[str], int]:
    """The head revisions, and how many revisions lie between ``current`` and them.

    Raises CommandError when ``current`` names a revision this checkout does not have.
    """
    return sorted(script.get_heads()), len(alembic_compat.upgrade_steps(script, "heads", tuple(current)))


def ancestry(script: ScriptDirectory, heads: list[str]) -> set[str]:
    """Every revision ``heads`` include (themselves and their ancestors)."""
    if not heads:
        return set()
    memo, key = _memo(script), ("ancestry", tuple(sorted(heads)))
    if key not in memo:
        memo[key] = frozenset(rev.revision for rev in script.iterate_revisions(tuple(heads), "base"))
    return set(memo[key])


def committed(script: ScriptDirectory, planned: list[str], after: list[str], upgrade: bool) -> list[str]:
    """Of ``planned`` revisions, those the version table (``after``) shows as done: applied
    when upgrading, undone when downgrading. Read from the table, not from Alembic's
    callbacks, so a revision whose COMMIT failed is never counted."""
    try:
        reached = ancestry(script, after)
    except CommandError:
        return []
    return [rev for rev in planned if (rev in reached) == upgrade]
