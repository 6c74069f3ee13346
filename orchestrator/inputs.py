"""Bounded reading of what the command line points at, and the checks of what it writes.

Everything here refuses bad input with a :class:`~orchestrator.errors.SelectionError`
(exit 2) that names the option and, for files, the line:

- ``--tenants-from FILE``: a regular file (a FIFO or device is refused at once, never
  waited on) or ``-`` for standard input; UTF-8; at most ``ORCHESTRATE_MAX_TENANTS`` lines
  (default 1,000,000) and 256 bytes a line on average.
- ``revision --rev-id``: ``[A-Za-z0-9_]{1,64}``, not a word Alembic reads as a symbol,
  not an id the database's history already has.
- ``revision -m``: any text; :func:`docstring_safe` escapes it for the revision file's
  docstring (the docstring still reads as the text given), and :func:`check_revision_file`
  compiles the written file (a file that does not compile is removed: exit 2).
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.config import Bounds, read_regular_file, tenant_lines
from orchestrator.errors import ConfigError, SelectionError

#: A tenants file may hold ORCHESTRATE_MAX_TENANTS lines of this many bytes on average.
TENANT_LINE_BYTES = 256
REV_ID = re.compile(r"[A-Za-z0-9_]{1,64}")
#: Words Alembic reads as symbols, never as a revision id.
RESERVED_REV_IDS = frozenset({"head", "heads", "base"})


def read_tenant_lines(path: Path | str, option: str = "--tenants-from",
                      stdin: BinaryIO | None = None) -> list[tuple[int, str]]:
    """The tenant names of a tenants file as (line number, name): one name a line, ``#``
    comments and blank lines skipped. ``-`` reads standard input."""
    bounds = Bounds.from_environ(os.environ)
    limit = bounds.tenants * TENANT_LINE_BYTES
    shown = str(path)

    def too_big(size: int) -> ConfigError:
        return ConfigError(
            f"{option} {shown}: larger than {limit} bytes ({size} bytes or more; "
            f"{TENANT_LINE_BYTES} bytes a line for {bounds.tenants} lines)",
            hint=f"if this is intended, raise the bound with {bounds.setting('tenants')}",
        )

    def fail(message: str, hint: str | None) -> ConfigError:
        return ConfigError(f"{option} {shown}: {message}", hint)

    if shown == "-":
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if stream is None:
            raise SelectionError(f"{option} -: standard input cannot be read")
        data = stream.read(limit + 1)
        if isinstance(data, str):  # a text stream without a buffer (tests, embedders)
            data = data.encode("utf-8", "surrogateescape")
        if len(data) > limit:
            raise too_big(len(data))
    else:
        try:
            data = read_regular_file(Path(path), limit, too_big, fail)
        except FileNotFoundError:
            raise SelectionError(f"{option} {shown}: no such file") from None
        except OSError as exc:
            raise SelectionError(f"{option} {shown}: cannot read it: {exc.strerror or exc}") from None
    return tenant_lines(
        data, f"{option} {shown}", bounds.tenants,
        lambda: ConfigError(
            f"{option} {shown}:{bounds.tenants + 1}: more than {bounds.tenants} lines",
            hint=f"if this is intended, raise the bound with {bounds.setting('tenants')}",
        ),
    )


def check_rev_id(rev_id: str, database: str, known: Iterable[str] | None) -> None:
    """Refuse a ``--rev-id`` that is not ``[A-Za-z0-9_]{1,64}``, is a symbol, or is taken."""
    if not REV_ID.fullmatch(rev_id):
        raise SelectionError(
            f"--rev-id {_short(rev_id)}: a revision id is 1 to 64 letters, digits or underscores",
            hint="it becomes part of a file name and of every version table; e.g. --rev-id 20240101_add_users",
        )
    if rev_id.lower() in RESERVED_REV_IDS:
        raise SelectionError(f"--rev-id {rev_id}: Alembic reads {rev_id!r} as a symbol, not a revision id",
                             hint="choose another id")
    if known is not None and rev_id in set(known):
        raise SelectionError(
            f"--rev-id {rev_id}: `{database}` already has a revision with this id",
            hint=f"see `orchestrate history -n {database}`; choose another id",
        )


_UNSAFE_IN_DOCSTRING = re.compile(r'[\\"\x00-\x08\x0b-\x1f\x7f\ud800-\udfff\u2028\u2029\x85]')


def docstring_safe(message: str) -> str:
    """``message`` escaped for a ``\"\"\"`` docstring: the string literal reads back as
    ``message``, whatever quotes, backslashes, control characters or lone surrogates it
    holds. Newlines and tabs stay as they are."""

    def escape(match: re.Match[str]) -> str:
        char = match[0]
        if char in '\\"':
            return "\\" + char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE_IN_DOCSTRING.sub(escape, message)


def check_revision_file(path: Path) -> None:
    """Compile the written revision file; remove it and refuse (exit 2) if it does not."""
    try:
        source = path.read_bytes()
        compile(source, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OSError) as exc:
        path.unlink(missing_ok=True)
        where = f"{path}:{exc.lineno}" if isinstance(exc, SyntaxError) and exc.lineno else str(path)
        raise SelectionError(
            f"revision: the file written from the template would not load ({where}: {_short(str(exc))}); removed it",
            hint="check the -m text and envs/script.py.mako",
        ) from None


def write_revision(database: Any, message: str, rev_id: str | None,
                   known_ids: Callable[[], Iterable[str]], write: Callable[[str], Any]) -> Any:
    """Write one revision file with ``write(message)`` and make sure it loads and stays in
    the database's versions folders; every failure of the input is exit 2 and leaves no file."""
    if rev_id is not None:
        check_rev_id(rev_id, database.name, known_ids())
    folders = [Path(folder) for folder in database.version_locations]
    before = _files(folders)
    try:
        made = write(docstring_safe(message))
    except (SyntaxError, ValueError, UnicodeError) as exc:  # Alembic loads the file it wrote
        for path in _files(folders) - before:
            path.unlink(missing_ok=True)
        raise SelectionError(
            f"revision: the file written from the template would not load ({_short(str(exc))}); removed it",
            hint="check the -m text and envs/script.py.mako",
        ) from None
    path = Path(made.path)
    if not any(path.resolve().is_relative_to(folder.resolve()) for folder in folders):
        path.unlink(missing_ok=True)
        raise SelectionError(f"revision: Alembic wrote {path}, outside the versions folders of "
                             f"`{database.name}`; removed it", hint="check `version_path:` and the file template")
    check_revision_file(path)
    return made


def _files(folders: list[Path]) -> set[Path]:
    found: set[Path] = set()
    for folder in folders:
        if folder.is_dir():
            found.update(p for p in folder.iterdir() if p.is_file())
    return found


def _short(value: str, limit: int = 80) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
