"""The guard of issue 14: property-based fuzzing of every input orchestrate reads.

Each example is a project (the shop example: ``users`` on SQLite, ``catalog`` on a
PostgreSQL database of this session's own, reached with a password in its URL, ``orders``
one SQLite file per tenant), a mutation of its orchestrate.yaml (a key deleted, retyped,
renamed, enlarged, unicode, YAML tags, anchors and aliases, duplicate keys), a command
line (known commands with mutated options, revisions, tenant names, shards), and the
files that command line names (tenants files, ``--retry-failed`` reports). It runs
in-process (click's CliRunner) under a time bound, and is classified:

- ``accepted``: exit 0; ``clean error``: exit 1 or 2 with an ``error:`` or target line;
- ``internal``: a traceback, "unexpected", an exit code outside {0, 1, 2, 130};
- ``hang``: past the time bound; ``leak``: the password in the output or a written file;
- ``unsafe write``: a file created outside the project's folders (``var/``, ``versions/``,
  ``reports/``, ``inputs/``), a SQLite tenant file outside ``var/tenants/``, or a
  PostgreSQL schema other than the declared ones.

The test asserts that every example is ``accepted`` or a ``clean error``. In ``.ci/run``
it is derandomized with a fixed budget (``ORCH_FUZZ_EXAMPLES``, default 300, about 35 s);
``bench/fuzz.py --examples 10000`` runs the same examples on demand and counts outcomes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "Fz9SecretPw"
PG_URL = os.environ.get("ORCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BOUND = float(os.environ.get("ORCH_FUZZ_BOUND", "20"))  # seconds an example may take (a loaded 2-core machine)
OUTCOMES = ("clean error", "accepted", "internal", "hang", "leak", "unsafe write")
TENANTS = ["acme", "globex"]
ALLOWED_TOP = {"orchestrate.yaml", "envs", "versions", "var", "reports", "inputs"}


# --------------------------------------------------------------------------- the project


def base_config(pg_url: str | None) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    catalog = "sqlite:///var/catalog.db"
    if pg_url:
        catalog = make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    return {
        "sys_path": [str(REPO)],
        "databases": {
            "users": {"url": "sqlite:///var/users.db", "metadata": "examples.shop.models:users_metadata",
                      "version_table": "alembic_version_users", "lock_timeout": "5s"},
            "catalog": {"url": catalog, "metadata": "examples.shop.models:catalog_metadata",
                        "version_table": "alembic_version_catalog", "connect_timeout": "5s"},
            "orders": {"url": "sqlite:///var/tenants/{tenant}.db", "metadata": "examples.shop.models:orders_metadata",
                       "version_table": "alembic_version_orders", "depends_on": ["users", "catalog"],
                       "tenants": {"mode": "database", "names": list(TENANTS)}},
        },
    }


class Template:
    """A project folder made once (versions copied, ``init`` run), copied for each example."""

    def __init__(self, folder: Path, pg_url: str | None) -> None:
        from click.testing import CliRunner

        from orchestrator.cli import cli

        self.folder = folder
        self.pg_url = pg_url
        self.config = base_config(pg_url)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO / "versions", folder / "versions", dirs_exist_ok=True)
        (folder / "orchestrate.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        result = CliRunner().invoke(cli, ["-c", str(folder / "orchestrate.yaml"), "init"])
        assert result.exit_code == 0, result.output

    def copy(self, root: Path) -> Path:
        project = root / "project"
        shutil.copytree(self.folder, project, ignore=shutil.ignore_patterns("var", "__pycache__"))
        return project


# --------------------------------------------------------------------------- strategies

_UNICODE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_ODD_TEXT = st.one_of(
    _UNICODE,
    st.sampled_from(["", " ", "\n", "~", "null", "-1", "1e999", ".inf", ".nan", "true", "0x10", "${HOME}", "${NOPE}",
                     "${X:-y}", "$$", "../../etc/passwd", "/dev/zero", "{tenant}", "%s%%", "😀", "a\u0000b",
                     "pg_catalog", "public", "A" * 300, "x" * 70_000]),
)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                     _ODD_TEXT, st.just([]), st.just({}), st.lists(_UNICODE, max_size=3),
                     st.dictionaries(_UNICODE, _UNICODE, max_size=2))


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, prefix + (index,))
    return found


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


@st.composite
def configs(draw: st.DrawFn, base: dict[str, Any]) -> str:
    """orchestrate.yaml text: the base config with a few data mutations, then perhaps one
    text mutation (tags, anchors, duplicates, garbage)."""
    data = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _get(data, path[:-1])
        kind = draw(st.sampled_from(["delete", "retype", "rename", "enlarge", "unicode", "add"]))
        key = path[-1]
        if kind == "delete":
            del parent[key]
        elif kind == "retype":
            parent[key] = draw(_SCALARS)
        elif kind == "rename" and isinstance(parent, dict):
            parent[draw(_ODD_TEXT)] = parent.pop(key)
        elif kind == "enlarge":
            value = parent[key]
            parent[key] = (value * draw(st.integers(2, 2000)))[:100_000] if isinstance(value, str | list) \
                else [value] * 50
        elif kind == "unicode":
            parent[key] = draw(_UNICODE)
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["tenants", "depends_on", "pattern", "query", "file", "mode", "create",
                                         "version_path", "version_locations", "lock_timeout", "parallel",
                                         "defaults", "execution", "bogus"]))] = draw(_SCALARS)
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))
    except (yaml.YAMLError, ValueError):
        text = json.dumps(data)
    mutation = draw(st.sampled_from(["none"] * 4 + ["tag", "anchor", "duplicate", "garbage", "bom", "truncate"]))
    lines = text.splitlines()
    at = draw(st.integers(0, max(0, len(lines) - 1)))
    if mutation == "tag" and lines:
        tag = draw(st.sampled_from(["!!int", "!!float", "!!binary", "!!python/object:os.system", "!custom", "!!set",
                                    "!!omap", "!!timestamp", "!!str", "!!map", "!!seq"]))
        line = lines[at]
        if ": " in line:
            k, v = line.split(": ", 1)
            lines[at] = f"{k}: {tag} {v}"
    elif mutation == "anchor":
        lines.append("x-anchors: &big [" + ", ".join(["*a"] * 0 + ["lol"] * 9) + "]")
        lines.append("x-more: &a [*big, *big, *big, *big, *big, *big, *big, *big, *big]")
        lines.append("x-most: [*a, *a, *a, *a, *a, *a, *a, *a, *a]")
    elif mutation == "duplicate" and lines:
        lines.insert(at, lines[at])
    elif mutation == "garbage":
        lines.insert(at, draw(st.sampled_from(["{", "]", "- - -", ": :", "\t", "%YAML 9.9", "---", "...",
                                               "key: [unclosed", "? complex", "&x *x", "<<: *nope"])))
    elif mutation == "truncate":
        text = "\n".join(lines)
        return text[: draw(st.integers(0, len(text)))]
    text = "\n".join(lines) + "\n"
    if mutation == "bom":
        text = "\ufeff" + text
    return text


_REVISIONS = st.one_of(st.sampled_from(["heads", "head", "base", "-1", "+1", "+2", "-3", "8e21d6f0a5b3", "3f9a",
                                        "8e21d6f0a5b3@head", "base:head", "head:base", "a:b:c", "", "nosuch",
                                        "users@head", "heads-1", ":", "--bad", "-x", "x\udcffy"]), _UNICODE)
_TENANT_NAMES = st.one_of(st.sampled_from(TENANTS + ["initech", "../x", "a/b", "pg_catalog", "UPPER", "x" * 300,
                                                     "a\nb", "pct%s", ".", "..", "-x", "😀", " ", "acme ", "x\udcffy"]),
                          _UNICODE)
_SHARDS = st.one_of(st.sampled_from(["1/2", "2/2", "1/1", "", "0/1", "3/2", "1/0", "x", "1/" + "9" * 40]),
                    _UNICODE)


@dataclass
class Example:
    config: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes | None = None


@st.composite
def tenants_files(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(_TENANT_NAMES, max_size=6))
    text = "\n".join(names + draw(st.lists(st.sampled_from(["# comment", "", "  acme  # x", "\r"]), max_size=2)))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data += draw(st.binary(max_size=8))
    return data


@st.composite
def reports(draw: st.DrawFn) -> bytes:
    entry = {"target": "orders/acme", "database": "orders", "tenant": "acme", "status": "failed"}
    entries = []
    for _ in range(draw(st.integers(0, 3))):
        item = dict(entry)
        for key in draw(st.lists(st.sampled_from(["target", "database", "tenant", "status"]), max_size=2)):
            item[key] = draw(st.one_of(_SCALARS, _TENANT_NAMES, st.sampled_from(["users", "orders", "catalog",
                                                                                 "ok", "skipped", "not run"])))
        entries.append(item)
    document: Any = {"version": 2, "targets": entries}
    shape = draw(st.sampled_from(["good"] * 4 + ["list", "string", "nested", "garbage", "nonutf8"]))
    if shape == "list":
        document = entries
    elif shape == "string":
        document = "report"
    elif shape == "nested":
        return b"[" * draw(st.integers(10, 200_000))
    elif shape == "garbage":
        return draw(st.binary(max_size=40))
    text = json.dumps(document, indent=2, default=str)
    return text.encode() + (b"\xff" if shape == "nonutf8" else b"")


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[str], dict[str, bytes], dict[str, str], bytes | None]:
    command = draw(st.sampled_from(["upgrade", "upgrade", "downgrade", "stamp", "current", "status", "heads",
                                    "history", "check", "revision", "bogus"]))
    argv = [command]
    files: dict[str, bytes] = {}
    env: dict[str, str] = {}
    stdin = None
    if command in ("upgrade", "downgrade", "stamp") and draw(st.integers(0, 5)):
        argv.append(draw(_REVISIONS))
    selection = draw(st.sampled_from(["all", "all", "n", "n", "nn", "none"]))
    if selection == "all" and command != "revision":
        argv.append("--all")
    elif selection in ("n", "nn"):
        for _ in range(1 if selection == "n" or command == "revision" else 2):
            argv += ["-n", draw(st.sampled_from(["users", "catalog", "orders", "orders", "nope", ""]))]
    if draw(st.integers(0, 5)) == 0:
        argv.insert(0, "--debug")  # a global option: before the command
    # Mostly the options each command has (so that examples get past parsing), sometimes any.
    fitting = {
        "upgrade": ["tenant", "tenants-from", "stdin", "shard", "sql", "json", "report", "retry", "fail-fast",
                    "parallel", "bound"],
        "current": ["tenant", "tenants-from", "stdin", "shard", "json", "bound"],
        "heads": ["json"],
        "revision": ["rev-id", "message", "message", "bound"],
    }
    fitting["downgrade"] = fitting["stamp"] = fitting["upgrade"]
    fitting["status"] = fitting["check"] = fitting["current"]
    fitting["history"] = fitting["bogus"] = fitting["heads"]
    every = sorted({o for options in fitting.values() for o in options} | {"unknown"})
    pool = every if draw(st.integers(0, 9)) == 0 else fitting[command]
    for option in draw(st.lists(st.sampled_from(pool), max_size=3, unique=True)):
        if option == "tenant":
            for _ in range(draw(st.integers(1, 2))):
                argv += ["--tenant", draw(_TENANT_NAMES)]
        elif option == "tenants-from":
            files["inputs/tenants.txt"] = draw(tenants_files())
            argv += ["--tenants-from", "{root}/inputs/tenants.txt"]
        elif option == "stdin":
            stdin = draw(tenants_files())
            argv += ["--tenants-from", "-"]
        elif option == "shard":
            argv += ["--shard", draw(_SHARDS)]
        elif option in ("sql", "json", "fail-fast"):
            argv.append(f"--{option}")
        elif option == "report":
            where = draw(st.sampled_from(["{root}/reports/run.json", "{root}/reports", "{root}/orchestrate.yaml/x",
                                          "{root}/reports/deep/er/run.json"]))
            argv += ["--report", where]
        elif option == "retry":
            files["inputs/report.json"] = draw(reports())
            argv += ["--retry-failed", "{root}/inputs/report.json"]
        elif option == "parallel":
            argv += ["--parallel", draw(st.sampled_from(["0", "-1", "x", "999", ""]))]
        elif option == "rev-id":
            argv += ["--rev-id", draw(st.one_of(st.sampled_from(["abc123", "../x", "a/b", "head", "8e21d6f0a5b3",
                                                                 "x" * 65, ""]), _UNICODE))]
        elif option == "message":
            argv += ["-m", draw(st.one_of(_ODD_TEXT, st.sampled_from(['"""', "\\", "a\\N{x}", "\\x", "'''", "x\udcffy"])))]
        elif option == "bound":
            env[draw(st.sampled_from(["ORCHESTRATE_MAX_TENANTS", "ORCHESTRATE_MAX_REPORT_BYTES",
                                      "ORCHESTRATE_MAX_STRING", "ORCHESTRATE_MAX_YAML_NODES"]))] = draw(
                st.sampled_from(["1", "2", "0", "-5", "x", "10"]))
        elif option == "unknown":
            argv.append(draw(st.sampled_from(["--bogus", "-z", "--all=1", "--tenant"])))
    if command == "revision" and "-m" not in argv and draw(st.booleans()):
        argv += ["-m", "fuzz"]
    return argv, files, env, stdin


@st.composite
def examples(draw: st.DrawFn, base: dict[str, Any]) -> Example:
    config = draw(configs(base)) if draw(st.integers(0, 2)) == 0 else yaml.safe_dump(base, sort_keys=False)
    argv, files, env, stdin = draw(command_lines())
    argv = [a.replace("\x00", "") for a in argv]  # a real command line cannot hold NUL
    return Example(config, argv, files, env, stdin)


# --------------------------------------------------------------------------- running one example


class _Hang(KeyboardInterrupt):
    """Raised by the example's timer; a KeyboardInterrupt so that no handler swallows it."""


@dataclass
class Verdict:
    outcome: str
    detail: str = ""
    seconds: float = 0.0


@contextlib.contextmanager
def _bounded(seconds: float) -> Iterator[list[bool]]:
    fired = [False]

    def expired(_signum: int, _frame: Any) -> None:
        fired[0] = True
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if "__pycache__" not in p.parts}


def _declared_tenants(config: str) -> set[str]:
    """The tenant names the example's config declares (best effort: it may not even parse)."""
    try:
        data = yaml.safe_load(config)
        names = data["databases"]["orders"]["tenants"]["names"]
        return {n for n in names if isinstance(n, str)}
    except Exception:  # any broken config: only the template's names
        return set()


def _allowed(project: Path, path: Path, tenants: set[str]) -> bool:
    try:
        relative = path.relative_to(project)
    except ValueError:
        return False
    parts = relative.parts
    if not parts or parts[0] not in ALLOWED_TOP:
        return False
    if parts[0] == "var" and len(parts) >= 2:
        # Where a URL of the config puts a database: a file named after one of the databases or
        # declared tenants (a mutated URL may move the folder); a tenant name never makes another.
        if parts[1] == "tenants" and len(parts) == 3:
            return parts[2].split(".db")[0] in tenants
        return any(name in "/".join(parts[1:]) for name in (*tenants, "users", "catalog"))
    return True


def _pg_schemas(pg_url: str) -> set[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT nspname FROM pg_namespace")).scalars())
    finally:
        engine.dispose()


def run_example(template: Template, example: Example) -> Verdict:
    """Run one example in a fresh copy of the project and classify what happened."""
    from click.testing import CliRunner

    from orchestrator import urls
    from orchestrator.cli import cli

    with tempfile.TemporaryDirectory(prefix="orch_fuz_") as tmp:
        root = Path(tmp)
        project = template.copy(root)
        (root / "cwd").mkdir()
        (project / "orchestrate.yaml").write_text(example.config, encoding="utf-8", errors="surrogatepass")
        for name, data in example.files.items():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            (project / name).write_bytes(data)
        (project / "reports").mkdir(exist_ok=True)
        argv = ["-c", str(project / "orchestrate.yaml"), *[a.replace("{root}", str(project)) for a in example.argv]]
        before = _snapshot(root)
        schemas = _pg_schemas(template.pg_url) if template.pg_url else set()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
        env.update(example.env)
        saved_path, saved_secrets, saved_cwd = list(sys.path), set(urls._known_secrets), os.getcwd()
        started = time.monotonic()
        result = None
        error: BaseException | None = None
        fired = [False]
        try:
            os.chdir(root / "cwd")
            with _bounded(BOUND) as fired:
                result = CliRunner().invoke(cli, argv, input=example.stdin, env={
                    k: example.env.get(k) for k in ("ORCHESTRATE_MAX_TENANTS", "ORCHESTRATE_MAX_REPORT_BYTES",
                                                    "ORCHESTRATE_MAX_STRING", "ORCHESTRATE_MAX_YAML_NODES")
                }, catch_exceptions=True)
        except _Hang:
            fired[0] = True
        except BaseException as exc:  # anything escaping the CLI is an internal error
            error = exc
        finally:
            os.chdir(saved_cwd)
            sys.path[:] = saved_path
            urls._known_secrets.clear()
            urls._known_secrets.update(saved_secrets)
        seconds = time.monotonic() - started
        if fired[0]:
            return Verdict("hang", f"over {BOUND:g}s", seconds)
        if error is not None or result is None:
            return Verdict("internal", f"{type(error).__name__}: {error}", seconds)
        out = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return Verdict("internal", f"{type(result.exception).__name__}: {result.exception}", seconds)
        debug = "--debug" in example.argv  # tracebacks are asked for: only orchestrate's own bugs count
        if result.exit_code not in (0, 1, 2, 130) or ("error: unexpected" in out if debug else (
                "Traceback" in out or "unexpected" in out)):
            return Verdict("internal", f"exit {result.exit_code}: {out[-600:]}", seconds)
        if PASSWORD in out:
            return Verdict("leak", out[-600:], seconds)
        after = _snapshot(root)
        for path in sorted(after - before):
            if path.is_file() and not _allowed(project, path, set(TENANTS) | _declared_tenants(example.config)):
                return Verdict("unsafe write", str(path.relative_to(root)), seconds)
            if path.is_file() and path.suffix in (".json", ".py", ".sql", ".txt") and PASSWORD in path.read_text(
                    errors="replace"):
                return Verdict("leak", f"in {path.relative_to(root)}", seconds)
        if template.pg_url:
            made = _pg_schemas(template.pg_url) - schemas
            if made:
                return Verdict("unsafe write", f"schemas {sorted(made)}", seconds)
        if result.exit_code == 0:
            return Verdict("accepted", "", seconds)
        return Verdict("clean error", out.strip().splitlines()[0][:200] if out.strip() else f"exit {result.exit_code}",
                       seconds)


# --------------------------------------------------------------------------- the test (in .ci/run)


@contextlib.contextmanager
def fuzz_template(pg: bool = True) -> Iterator[Template]:
    """A template project; with ``pg``, ``catalog`` lives in a PostgreSQL database of its own."""
    pg_url = None
    admin = None
    name = f"orch_fuz_{uuid.uuid4().hex[:10]}"
    if pg:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        admin = create_engine(PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            pg_url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        except Exception:  # no server: fuzz SQLite only
            admin.dispose()
            admin = None
    folder = Path(tempfile.mkdtemp(prefix="orch_fuz_template_"))
    try:
        yield Template(folder / "project", pg_url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if admin is not None:
            from sqlalchemy import text

            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


@pytest.fixture(scope="module")
def template() -> Iterator[Template]:
    with fuzz_template() as made:
        yield made


BASE = base_config("postgresql+psycopg://postgres@127.0.0.1:5432/placeholder")
EXAMPLES = int(os.environ.get("ORCH_FUZZ_EXAMPLES", "300"))


def test_every_input_is_a_clean_outcome(template: Template) -> None:
    base = template.config

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(examples(base))
    def check(example: Example) -> None:
        verdict = run_example(template, example)
        assert verdict.outcome in ("accepted", "clean error"), (verdict, example)

    check()
