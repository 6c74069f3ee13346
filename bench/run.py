"""Benchmark: orchestrate against plain Alembic on the same 40-revision history, per tenant.

    python bench/run.py [--sizes 20,200] [--mysql-sizes 10,40] [--beside 1000,50]
                        [--memory-tenants 200,2000] [--status-tenants 2000] [--subprocess-sample 20]
                        [--skip-postgres] [--skip-mariadb] [--skip-memory] [--quick] [--keep]

Generates into a temporary folder an orchestrate project (three multi-tenant databases:
``sq``, one SQLite file per tenant on tmpfs; ``pg``, one PostgreSQL schema per tenant in a
throwaway database with synchronous_commit off, dropped at the end; ``my``, one MariaDB
database per tenant, named ``bnx_<pid>_t*`` and dropped at the end), with default settings
(no ``replay:`` key, so verified replay) and a copy with ``replay: false``, and a plain
Alembic project on the same revision files, then times, on each backend, from empty tenants
every time, each mode at a small and a large fleet (per tenant = the difference over the
tenants added: marginal, the run's fixed cost aside):

- ``orchestrate upgrade`` with default settings, with ``replay: false``, and ``--parallel 2``;
- plain Alembic as a loop of ``alembic upgrade head`` subprocesses (sampled on a subset
  of the tenants: it is by far the slowest, and its tenants share nothing, so its
  marginal cost is the mean);
- plain Alembic as a loop of ``alembic.command.upgrade`` calls in one process;
- the raw SQL of the history (rendered once by ``orchestrate upgrade --sql``) executed per
  tenant: the floor, what the migrations cost with no tool at all;

then the peak memory of ``orchestrate upgrade`` (serial and ``--parallel 2``, SQLite) for two
fleet sizes; on PostgreSQL, 50 new tenants migrated in an empty database and beside 1,000
tenant schemas at head (each cost: the run minus the same run again, nothing pending); and
``orchestrate upgrade`` with nothing pending beside ``orchestrate status`` on 2,000 tenants at
head (SQLite, PostgreSQL). Every command is timed whole with time.perf_counter, in a
subprocess, so interpreter start-up counts for every mode alike. After every mode each
tenant's version table is checked to be at head, and the schema and row counts of the first
and last tenants are compared across modes: a mode that did not do the whole work is
reported INVALID and the run exits 1. The targets of issue 8 are checked as ratios of this run.

Prints a markdown report (figures, ratios, target checks) and writes it to bench/results.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from history import HEAD, REVISIONS  # noqa: E402
from project import REPLAY_FALSE_YAML, generate  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/"
BACKENDS = ("sqlite", "postgresql", "mysql")
DEFAULT_MODE = "orchestrate upgrade"
REPLAY_FALSE_MODE = "orchestrate upgrade (replay: false)"
SUBPROCESS_MODE = "alembic upgrade head (subprocess per tenant)"
LOOP_MODE = "alembic.command.upgrade (loop, one process)"
FLOOR_MODE = "raw SQL per tenant (floor)"

# Runs ``orchestrate`` (argv after the wrapper) and, at exit, writes the process's own peak
# RSS and that of its largest waited-for child (the --parallel workers) to $BENCH_RSS_FILE.
# RUSAGE_CHILDREN is read inside this fresh process, so earlier runs cannot mask it.
RSS_WRAPPER = (
    "import atexit, os, resource, runpy, sys\n"
    "def _rss():\n"
    "    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "    with open(os.environ['BENCH_RSS_FILE'], 'w') as f:\n"
    "        f.write(f'{me} {kids}\\n')\n"
    "atexit.register(_rss)\n"
    "sys.argv = ['orchestrate', *sys.argv[1:]]\n"
    "runpy.run_module('orchestrator.cli', run_name='__main__', alter_sys=True)\n"
)


def tenant_names(n: int, prefix: str = "t", start: int = 1) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(start, start + n)]


# ---------------------------------------------------------------------- results


@dataclass
class Row:
    mode: str
    backend: str
    tenants: int  # tenants actually run
    seconds: float  # measured
    fleet: int  # tenants of the fleet the row speaks for (> tenants when sampled)
    cpu: float = 0.0  # user + system seconds of the command's own processes (not the database server's)
    valid: bool = True

    @property
    def ms_per_tenant(self) -> float:
        return self.seconds * 1000 / self.tenants

    @property
    def sampled(self) -> bool:
        return self.tenants < self.fleet


@dataclass
class Marginal:
    """A mode at two fleet sizes: its cost per tenant is the difference over the tenants added."""

    mode: str
    backend: str
    small: Row | None  # None: the subprocess loop (no cost shared between tenants: marginal = mean)
    large: Row

    @property
    def ms_per_tenant(self) -> float:
        if self.small is None:
            return self.large.ms_per_tenant
        return (self.large.seconds - self.small.seconds) * 1000 / (self.large.tenants - self.small.tenants)

    @property
    def cpu_ms_per_tenant(self) -> float:
        if self.small is None:
            return self.large.cpu * 1000 / self.large.tenants
        return (self.large.cpu - self.small.cpu) * 1000 / (self.large.tenants - self.small.tenants)

    @property
    def fixed(self) -> float:
        """Seconds of a run that do not depend on its tenants (start-up, project loading)."""
        return 0.0 if self.small is None else self.small.seconds - self.small.tenants * self.ms_per_tenant / 1000

    @property
    def valid(self) -> bool:
        return self.large.valid and (self.small is None or self.small.valid)


@dataclass
class MemoryRow:
    mode: str
    tenants: int
    seconds: float
    parent_kb: int
    workers_kb: int
    valid: bool = True


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    status: list[tuple[str, int, float, bool]] = field(default_factory=list)  # backend, tenants, s, valid
    marginal: list[Marginal] = field(default_factory=list)
    pending: list[tuple[str, int, float, bool]] = field(default_factory=list)  # upgrade, nothing pending
    # "50 new tenants beside 1,000 schemas": case -> (existing, new, first run s, again s, valid)
    beside: dict[str, tuple[int, int, float, float, bool]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path, sq_dir: Path) -> None:
        self.args = args
        self.root = root
        self.yaml = root / "orchestrate.yaml"
        self.ini = root / "alembic" / "alembic.ini"
        self.sq_dir = sq_dir
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.report = Report()
        self.pg_admin: str | None = None  # libpq conninfo of the admin database
        self.pg_conninfo: str | None = None  # ... of the throwaway database
        self.pg_sqlalchemy_url: str | None = None
        self.pg_db: str | None = None
        self.my_server: Any = None  # sqlalchemy URL of the MariaDB server (no database)
        self.my_prefix = f"bnx_{os.getpid()}_"  # every MariaDB database of this run starts with it
        self.my_home = f"{self.my_prefix}home"  # the database the project's `my` entry connects to
        self.my_sqlalchemy_url: str | None = None
        self.reference: dict[str, dict[str, object]] = {}  # backend -> fingerprint
        self.sql: dict[str, Path] = {}
        self._run_no = 0
        self.cpu = 0.0  # CPU seconds of the commands run since the last reset_cpu()
        self.max_load = 0.0  # highest 1-minute load average seen as a timed command started

    # ------------------------------------------------------------ setup

    def setup_postgres(self) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.args.pg_url)
        self.pg_db = f"orch_bench_{os.getpid()}"
        libpq = url.set(drivername="postgresql")
        self.pg_admin = libpq.render_as_string(hide_password=False)
        self.pg_conninfo = libpq.set(database=self.pg_db).render_as_string(hide_password=False)
        self.pg_sqlalchemy_url = url.set(drivername="postgresql+psycopg", database=self.pg_db).render_as_string(
            hide_password=False
        )
        try:
            with psycopg.connect(self.pg_admin, autocommit=True, connect_timeout=5) as connection:
                version = connection.execute("SHOW server_version").fetchone()[0]
        except psycopg.Error as exc:
            self.pg_db = None  # nothing to drop
            raise SystemExit(f"cannot reach PostgreSQL at {url.render_as_string()}: {exc}\n"
                             "start it, point --pg-url (or ORCH_TEST_PG_URL) at one, or pass --skip-postgres") from None
        self.report.notes.append(f"PostgreSQL {version} at {url.host}:{url.port or 5432}, throwaway database {self.pg_db}")

    def drop_postgres(self) -> None:
        if self.pg_db is None:
            return
        import psycopg

        with psycopg.connect(self.pg_admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')

    def my_connect(self, database: str | None = None) -> Any:  # a pymysql connection (imported lazily)
        import pymysql
        from sqlalchemy.engine import make_url

        url = make_url(self.args.mysql_url)
        return pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
                               password=url.password or "", database=database, autocommit=True, connect_timeout=5)

    def setup_mysql(self) -> None:
        """A home database for the project's `my` entry; tenants are databases named with my_prefix."""
        import pymysql
        from sqlalchemy.engine import make_url

        url = make_url(self.args.mysql_url)
        try:
            connection = self.my_connect()
        except pymysql.Error as exc:
            raise SystemExit(f"cannot reach MariaDB/MySQL at {url.render_as_string()}: {exc}\n"
                             "start it, point --mysql-url at one, or pass --skip-mariadb") from None
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit")
            version, flush = cursor.fetchone()
            cursor.execute(f"CREATE DATABASE `{self.my_home}`")
        self.my_server = url.set(drivername="mysql+pymysql", database=None)
        self.my_sqlalchemy_url = self.my_url(self.my_home)
        self.report.notes.append(
            f"MariaDB/MySQL {version} at {url.host}:{url.port or 3306}, tenants are databases {self.my_prefix}t*, "
            f"dropped at the end (innodb_flush_log_at_trx_commit = {flush}: a server setting, left alone)"
        )

    def my_url(self, database: str) -> str:
        return self.my_server.set(database=database).render_as_string(hide_password=False)

    def my_databases(self) -> list[str]:
        """This run's MariaDB tenant databases (the home database aside)."""
        with self.my_connect() as connection, connection.cursor() as cursor:
            cursor.execute("SHOW DATABASES LIKE %s", (self.my_prefix.replace("_", "\\_") + "%",))
            return [r[0] for r in cursor.fetchall() if r[0] != self.my_home]

    def drop_mysql(self) -> None:
        if self.my_server is None:
            return
        with self.my_connect() as connection, connection.cursor() as cursor:
            for name in [*self.my_databases(), self.my_home]:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def names(self, backend: str, n: int, start: int = 1) -> list[str]:
        """Tenant names on a backend: on MariaDB, databases of the server, so prefixed with this run's."""
        return tenant_names(n, self.my_prefix + "t" if backend == "mysql" else "t", start)

    def fresh(self, backend: str, tenants: list[str]) -> None:
        """Empty tenants: no SQLite files; a new database holding empty schemas; on MariaDB,
        this run's databases dropped and the tenants' created empty."""
        if backend == "sqlite":
            shutil.rmtree(self.sq_dir, ignore_errors=True)
            self.sq_dir.mkdir()
            return
        if backend == "mysql":
            with self.my_connect() as connection, connection.cursor() as cursor:
                for name in self.my_databases():
                    cursor.execute(f"DROP DATABASE `{name}`")
            self.create_containers(backend, tenants)
            return
        import psycopg

        with psycopg.connect(self.pg_admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{self.pg_db}"')
            # As FIGURES asks: commits do not wait for the disk, so fsync does not hide the tools' cost.
            connection.execute(f'ALTER DATABASE "{self.pg_db}" SET synchronous_commit = off')
        self.create_containers(backend, tenants)

    def create_containers(self, backend: str, tenants: list[str]) -> None:
        """Empty schemas (PostgreSQL) or databases (MariaDB) for ``tenants``; SQLite: nothing."""
        if backend == "mysql":
            with self.my_connect() as connection, connection.cursor() as cursor:
                for name in tenants:  # validated names (prefix + tNNNNN)
                    cursor.execute(f"CREATE DATABASE `{name}`")
        elif backend == "postgresql":
            import psycopg

            with psycopg.connect(self.pg_conninfo) as connection:
                for name in tenants:  # validated names (tNNNNN)
                    connection.execute(f'CREATE SCHEMA "{name}"')

    def set_tenants(self, backend: str, tenants: list[str]) -> None:
        file = self.root / f"tenants_{self.db_name(backend)}.txt"
        file.write_text("".join(f"{t}\n" for t in tenants), encoding="utf-8")

    def db_name(self, backend: str) -> str:
        return {"sqlite": "sq", "postgresql": "pg", "mysql": "my"}[backend]

    # ------------------------------------------------------------ running commands

    def run(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> float:
        """Run a command to completion; its wall time in seconds. Fails the bench if it fails."""
        self._run_no += 1
        out = self.logs / f"{self._run_no:03d}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}.log"
        self.max_load = max(self.max_load, os.getloadavg()[0])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with out.open("wb") as handle:
            started = time.perf_counter()
            done = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=self.root, env=env)
            seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU times add up: deltas are exact
        self.cpu += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            tail = out.read_text(errors="replace")[-3000:]
            self.report.problems.append(f"{label}: exit code {done.returncode} (log {out})")
            log(f"FAILED: {label}: exit {done.returncode}\n{tail}")
        return seconds

    def orchestrate(self, *args: str, yaml: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "orchestrator.cli", "-c", str(yaml or self.yaml), *args]

    def targets_file(self, backend: str, tenants: list[str], name: str, floor: bool = False) -> Path:
        lines = []
        for t in tenants:
            if backend == "sqlite":
                path = self.sq_dir / f"{t}.db"
                lines.append(f"{path if floor else 'sqlite:///' + str(path)}\t")
            elif backend == "mysql":
                lines.append(f"{self.my_url(t)}\t")
            else:
                lines.append(f"{self.pg_conninfo if floor else self.pg_sqlalchemy_url}\t{t}")
        file = self.root / name
        file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return file

    # ------------------------------------------------------------ checking the work

    def versions(self, backend: str, tenants: list[str]) -> dict[str, list[str]]:
        """tenant -> revisions in its version table (missing tenants: [])."""
        found: dict[str, list[str]] = {t: [] for t in tenants}
        if backend == "sqlite":
            for t in tenants:
                path = self.sq_dir / f"{t}.db"
                if not path.exists():
                    continue
                connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    found[t] = sorted(r[0] for r in connection.execute("SELECT version_num FROM alembic_version"))
                except sqlite3.Error:
                    pass
                finally:
                    connection.close()
            return found
        if backend == "mysql":
            with self.my_connect() as connection, connection.cursor() as cursor:
                cursor.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'")
                names = sorted({r[0] for r in cursor.fetchall()} & set(tenants))
                for start in range(0, len(names), 500):
                    cursor.execute(" UNION ALL ".join(
                        f"SELECT '{n}' AS t, version_num FROM `{n}`.alembic_version" for n in names[start:start + 500]
                    ))
                    for tenant, version in cursor.fetchall():
                        found[tenant].append(version)
            return found
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.pg_conninfo) as connection:
            have = {
                r[0]
                for r in connection.execute(
                    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'"
                )
            } & set(tenants)
            names = sorted(have)
            for start in range(0, len(names), 500):
                part = names[start:start + 500]
                union = sql.SQL(" UNION ALL ").join(
                    sql.SQL("SELECT {} AS t, version_num FROM {}.alembic_version").format(
                        sql.Literal(n), sql.Identifier(n)
                    )
                    for n in part
                )
                for tenant, version in connection.execute(union):
                    found[tenant].append(version)
        return found

    def fingerprint(self, backend: str, tenant: str) -> dict[str, object]:
        """Tables, their columns, indexes and row counts: what the history left behind."""
        if backend == "sqlite":
            connection = sqlite3.connect(f"file:{self.sq_dir / tenant}.db?mode=ro", uri=True)
            try:
                objects = sorted(
                    connection.execute(
                        "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 1, 2"
                    ).fetchall()
                )
                tables = [name for kind, name, _ in objects if kind == "table"]
                columns = {  # as sets: a table rebuilt by batch mode may order its columns differently
                    t: sorted((c[1], c[3]) for c in connection.execute(f'PRAGMA table_info("{t}")')) for t in tables
                }
                rows = {t: connection.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
                return {"objects": objects, "columns": columns, "rows": rows}
            finally:
                connection.close()
        if backend == "mysql":
            with self.my_connect() as connection, connection.cursor() as cursor:
                cursor.execute("SELECT table_name, column_name, is_nullable FROM information_schema.columns "
                               "WHERE table_schema = %s", (tenant,))
                my_columns: dict[str, list[tuple[str, str]]] = {}
                for table, column, nullable in cursor.fetchall():
                    my_columns.setdefault(table, []).append((column, nullable))
                cursor.execute("SELECT DISTINCT table_name, index_name FROM information_schema.statistics "
                               "WHERE table_schema = %s", (tenant,))
                my_indexes = sorted(cursor.fetchall())
                my_rows = {}
                for table in my_columns:
                    cursor.execute(f"SELECT count(*) FROM `{tenant}`.`{table}`")
                    my_rows[table] = cursor.fetchone()[0]
            return {"columns": {t: sorted(c) for t, c in my_columns.items()}, "indexes": my_indexes, "rows": my_rows}
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.pg_conninfo) as connection:
            columns: dict[str, list[tuple[str, str]]] = {}
            for table, column, nullable in connection.execute(
                "SELECT table_name, column_name, is_nullable FROM information_schema.columns "
                "WHERE table_schema = %s ORDER BY table_name, ordinal_position",
                (tenant,),
            ):
                columns.setdefault(table, []).append((column, nullable))
            columns = {t: sorted(c) for t, c in columns.items()}
            indexes = sorted(
                r[0] for r in connection.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (tenant,))
            )
            rows = {
                t: connection.execute(
                    sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(tenant), sql.Identifier(t))
                ).fetchone()[0]
                for t in columns
            }
            return {"columns": columns, "indexes": indexes, "rows": rows}

    def verify(self, label: str, backend: str, tenants: list[str]) -> bool:
        """Every tenant at head, and the first and last tenants' schema and data as in every other mode."""
        versions = self.versions(backend, tenants)
        wrong = [t for t in tenants if versions.get(t) != [HEAD]]
        ok = True
        if wrong:
            ok = False
            sample = ", ".join(f"{t}={versions.get(t) or 'base'}" for t in wrong[:5])
            self.report.problems.append(
                f"{label}: {len(wrong)} of {len(tenants)} tenants not at head {HEAD} ({sample})"
            )
        for t in {tenants[0], tenants[-1]}:
            if t in wrong:
                continue
            print_ = self.fingerprint(backend, t)
            reference = self.reference.setdefault(backend, print_)
            if print_ != reference:
                ok = False
                diff = {k: (reference.get(k), print_.get(k)) for k in print_ if print_.get(k) != reference.get(k)}
                self.report.problems.append(f"{label}: tenant {t} differs from the first mode's result: {diff}")
        log(f"  verified {label}: {'OK' if ok else 'INVALID'} ({len(tenants) - len(wrong)}/{len(tenants)} at head)")
        return ok

    # ------------------------------------------------------------ modes

    def render_sql(self, backend: str) -> None:
        """The raw SQL of the history, rendered once by orchestrate (offline) for the floor."""
        self.set_tenants(backend, self.names(backend, 1))
        out = self.root / f"history-{backend}.sql"
        with out.open("w", encoding="utf-8") as handle:
            done = subprocess.run(
                self.orchestrate("upgrade", "-n", self.db_name(backend), "--sql"), stdout=handle,
                stderr=subprocess.PIPE, text=True, cwd=self.root,
            )
        if done.returncode != 0:
            raise SystemExit(f"orchestrate upgrade --sql failed on {backend}:\n{done.stderr}")
        body = "".join(
            line for line in out.read_text(encoding="utf-8").splitlines(keepends=True)
            if not line.startswith("-- orchestrate:") and not line.startswith("SET search_path")
        )
        if backend == "sqlite" and not re.search(r"(?m)^BEGIN", body):
            # The offline SQLite script has no transactions: wrap each revision in one, as
            # orchestrate does online (transaction_per_migration), else every statement
            # would commit on its own and the "floor" would be slower than the tools.
            blocks = re.split(r"(?m)^(?=-- Running upgrade)", body)
            blocks = [blocks[0] + blocks[1], *blocks[2:]] if len(blocks) > 1 else blocks
            body = "".join(f"BEGIN;\n{b.strip()}\nCOMMIT;\n\n" for b in blocks)
            self.report.notes.append(
                "`orchestrate upgrade --sql` renders the SQLite history without BEGIN/COMMIT (the online "
                "`transactional_ddl` option is not applied offline); the floor wraps each revision in a "
                "transaction, as orchestrate does online"
            )
        runs = len(re.findall(r"(?m)^-- Running upgrade", body))
        if runs != len(REVISIONS):
            raise SystemExit(f"the rendered {backend} SQL has {runs} revisions, not {len(REVISIONS)}")
        path = self.root / f"floor-{backend}.sql"
        path.write_text(body, encoding="utf-8")
        self.sql[backend] = path

    def mode(self, backend: str, mode: str, tenants: list[str], fleet: int) -> Row:
        label = f"{mode} [{backend}, {len(tenants)} tenants]"
        log(f"{label}: preparing")
        self.fresh(backend, tenants)
        self.set_tenants(backend, tenants)
        db = self.db_name(backend)
        self.cpu = 0.0
        if mode == DEFAULT_MODE:
            seconds = self.run(label, self.orchestrate("upgrade", "-n", db))
        elif mode == "orchestrate upgrade --parallel 2":
            seconds = self.run(label, self.orchestrate("upgrade", "-n", db, "--parallel", "2"))
        elif mode == DASK_MODE:
            seconds = self.run(label, self.orchestrate("upgrade", "-n", db, "--backend", "dask", "--parallel", "2"))
        elif mode == REPLAY_FALSE_MODE:
            seconds = self.run(label, self.orchestrate("upgrade", "-n", db, yaml=self.root / REPLAY_FALSE_YAML))
        elif mode == SUBPROCESS_MODE:
            started = time.perf_counter()
            for t in tenants:
                if backend == "sqlite":
                    x = ["-x", f"url=sqlite:///{self.sq_dir / t}.db"]
                elif backend == "mysql":
                    x = ["-x", f"url={self.my_url(t)}"]
                else:
                    x = ["-x", f"url={self.pg_sqlalchemy_url}", "-x", f"schema={t}"]
                self.run(f"{label} {t}", [sys.executable, "-m", "alembic", "-c", str(self.ini), *x, "upgrade", "head"])
            seconds = time.perf_counter() - started
        elif mode == LOOP_MODE:
            file = self.targets_file(backend, tenants, "loop-targets.txt")
            seconds = self.run(label, [sys.executable, str(BENCH / "baselines.py"), "loop", str(self.ini), str(file)])
        elif mode == "raw SQL per tenant (floor)":
            file = self.targets_file(backend, tenants, "floor-targets.txt", floor=True)
            seconds = self.run(
                label, [sys.executable, str(BENCH / "baselines.py"), "floor", backend, str(self.sql[backend]), str(file)]
            )
        else:
            raise ValueError(mode)
        valid = self.verify(label, backend, tenants)
        row = Row(mode, backend, len(tenants), seconds, fleet, self.cpu, valid)
        log(f"{label}: {seconds:.2f}s ({self.cpu:.2f}s CPU), {row.ms_per_tenant:.1f} ms/tenant")
        self.report.rows.append(row)
        return row

    def backend(self, backend: str) -> None:
        """Every mode at the small and at the large fleet size (run one after the other, so both
        see the same machine); the subprocess loop on a sample (its tenants share no cost)."""
        small, large = self.args.mysql_sizes if backend == "mysql" else self.args.sizes
        self.render_sql(backend)
        # Warm the OS cache and the revisions' bytecode before anything is timed.
        subprocess.run(self.orchestrate("heads", "-n", self.db_name(backend)), capture_output=True, cwd=self.root)
        subprocess.run([sys.executable, "-m", "alembic", "-c", str(self.ini), "heads"], capture_output=True, cwd=self.root)
        for mode in (DEFAULT_MODE, REPLAY_FALSE_MODE, "orchestrate upgrade --parallel 2", LOOP_MODE, FLOOR_MODE):
            rows = [self.mode(backend, mode, self.names(backend, n), n) for n in (small, large)]
            self.report.marginal.append(Marginal(mode, backend, rows[0], rows[1]))
        sample = self.names(backend, min(self.args.subprocess_sample, large))
        self.report.marginal.append(Marginal(SUBPROCESS_MODE, backend, None,
                                             self.mode(backend, SUBPROCESS_MODE, sample, large)))

    def memory(self) -> None:
        """Peak RSS of `orchestrate upgrade` on SQLite fleets; the largest fleet is left at head."""
        sizes = sorted(self.args.memory_sizes)
        plan = [(n, p) for n in sizes for p in (2, 1)]  # serial last: its fleet stays for `status`
        for n, parallel in plan:
            tenants = tenant_names(n)
            mode = "orchestrate upgrade" + (f" --parallel {parallel}" if parallel > 1 else "")
            label = f"memory: {mode} [sqlite, {n} tenants]"
            log(f"{label}: preparing")
            self.fresh("sqlite", tenants)
            self.set_tenants("sqlite", tenants)
            rss_file = self.root / "rss.txt"
            rss_file.unlink(missing_ok=True)
            argv = [sys.executable, "-c", RSS_WRAPPER, "-c", str(self.yaml), "upgrade", "-n", "sq"]
            if parallel > 1:
                argv += ["--parallel", str(parallel)]
            seconds = self.run(label, argv, env={**os.environ, "BENCH_RSS_FILE": str(rss_file)})
            parent, workers = (int(v) for v in rss_file.read_text().split()) if rss_file.exists() else (0, 0)
            valid = self.verify(label, "sqlite", tenants)
            self.report.memory.append(MemoryRow(mode, n, seconds, parent, workers, valid))
            log(f"{label}: {seconds:.1f}s, parent {parent / 1024:.0f} MB, workers {workers / 1024:.0f} MB")

    def build_at_head(self, label: str, backend: str, tenants: list[str]) -> None:
        """Bring existing empty tenants to head, the quickest way (untimed set-up): the floor's
        SQL (what orchestrate --sql renders), in two processes."""
        log(f"{label}: bringing {len(tenants)} tenants to head with the raw SQL")
        halves = [tenants[0::2], tenants[1::2]]
        procs = []
        for i, half in enumerate(h for h in halves if h):
            file = self.targets_file(backend, half, f"setup-targets-{i}.txt", floor=True)
            procs.append(subprocess.Popen(
                [sys.executable, str(BENCH / "baselines.py"), "floor", backend, str(self.sql[backend]), str(file),
                 "--fast"], cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            ))
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                self.report.problems.append(f"{label}: set-up failed: {err.decode(errors='replace')[-1000:]}")

    def status(self, backend: str, n: int, have: int) -> None:
        """Time `orchestrate status`, then `orchestrate upgrade` with nothing pending, on ``n``
        tenants at head. ``have``: how many of the first tenants are at head already in the
        current fleet (SQLite: left by memory(); PostgreSQL: by beside()); 0: a fresh fleet."""
        tenants = tenant_names(n)
        label = f"orchestrate status [{backend}, {n} tenants at head]"
        if have == 0:
            self.fresh(backend, tenants)
        else:
            self.create_containers(backend, tenants[have:])
        if tenants[have:]:
            self.build_at_head(label, backend, tenants[have:])
        self.set_tenants(backend, tenants)
        if self.verify(f"{label} (fleet)", backend, tenants) is False:
            self.report.status.append((backend, n, float("nan"), False))
            return
        pending_label = f"orchestrate upgrade, nothing pending [{backend}, {n} tenants at head]"
        pending = self.run(pending_label, self.orchestrate("upgrade", "-n", self.db_name(backend)))
        self.report.pending.append((backend, n, pending, self.verify(pending_label, backend, tenants)))
        log(f"{pending_label}: {pending:.2f}s")
        seconds = self.run(label, self.orchestrate("status", "-n", self.db_name(backend)))
        # The same command for machines: every tenant must be reported at head, nothing pending.
        done = subprocess.run(self.orchestrate("status", "-n", self.db_name(backend), "--json"),
                              capture_output=True, text=True, cwd=self.root)
        valid = done.returncode == 0
        if valid:
            import json

            listed = json.loads(done.stdout)["targets"]  # the report document (version 2)
            bad = [r for r in listed if r.get("after") != [HEAD] or r.get("pending") != 0]
            if bad or len(listed) != n:
                valid = False
                self.report.problems.append(
                    f"{label}: --json listed {len(listed)} targets, {len(bad)} not at head with 0 pending"
                )
        else:
            self.report.problems.append(f"{label}: status --json exited {done.returncode}: {done.stderr[-500:]}")
        self.report.status.append((backend, n, seconds, valid))
        log(f"{label}: {seconds:.2f}s")

    def beside(self, existing: int, new: int) -> None:
        """PostgreSQL: `new` empty tenants migrated (default settings) in an empty database, then
        in a database already holding `existing` tenant schemas at head; each cost is the run
        minus the same run again with nothing pending. Only the new tenants are selected. The
        database is left holding the `existing` tenants (t00001...) at head for status()."""
        backend = "postgresql"
        newcomers = tenant_names(new, "n")
        for case, old in (("empty", 0), ("beside", existing)):
            label = f"{new} new tenants beside {old} schemas [{backend}]"
            log(f"{label}: preparing")
            self.fresh(backend, newcomers)
            if old:
                olds = tenant_names(old)
                self.create_containers(backend, olds)
                self.build_at_head(label, backend, olds)
                if not self.verify(f"{label} (existing fleet)", backend, olds):
                    continue
            self.set_tenants(backend, newcomers)
            first = self.run(label, self.orchestrate("upgrade", "-n", "pg"))
            valid = self.verify(label, backend, newcomers)
            again = self.run(f"{label}, again", self.orchestrate("upgrade", "-n", "pg"))
            valid = self.verify(f"{label}, again", backend, newcomers) and valid
            self.report.beside[case] = (old, new, first, again, valid)
            log(f"{label}: {first:.2f}s, again {again:.2f}s: {(first - again) * 1000 / new:.1f} ms/tenant")


# ---------------------------------------------------------------------- output


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "n/a"


def render(report: Report, args: argparse.Namespace, started: datetime, elapsed: float) -> str:
    out: list[str] = []
    out.append("# orchestrate benchmark results\n")
    out.append(
        f"Run {started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min{' (--quick smoke run)' if args.quick else ''}. "
        f"History: {len(REVISIONS)} linear revisions (tables, columns, indexes, batch alters, data migrations). "
        "Each mode starts from empty tenants; times are wall-clock around the whole command "
        "(interpreter start-up included); every tenant was checked to be at head after every mode. "
        "`orchestrate upgrade` runs with default settings (no `replay:` key: verified replay, `auto`).\n"
    )
    out.append("## Upgrade, per tenant (marginal)\n")
    out.append("| mode | backend | s at small | s at large | ms/tenant (marginal) | ratio vs default serial | "
               "fixed s | CPU ms/tenant (marginal) |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for backend in BACKENDS:
        rows = [g for g in report.marginal if g.backend == backend]
        if not rows:
            continue
        base = next((g.ms_per_tenant for g in rows if g.mode == DEFAULT_MODE), 0.0)
        for g in rows:
            mode = g.mode + ("" if g.valid else " **INVALID**")
            if g.small is None:
                small, large, fixed = "-", f"{g.large.seconds:.2f} ({g.large.tenants} sampled)", "-"
            else:
                small = f"{g.small.seconds:.2f} ({g.small.tenants})"
                large, fixed = f"{g.large.seconds:.2f} ({g.large.tenants})", f"{g.fixed:.2f}"
            out.append(f"| {mode} | {backend} | {small} | {large} | {g.ms_per_tenant:.1f} | "
                       f"{ratio(g.ms_per_tenant, base)} | {fixed} | {g.cpu_ms_per_tenant:.1f} |")
    out.append(
        "\nms/tenant is marginal: (time at the large fleet - time at the small fleet) / (tenants added), for "
        "every mode and baseline alike, so a run's fixed cost (interpreter, project, start-up; the `fixed s` "
        "column) does not count per tenant. The `alembic upgrade head` subprocess loop runs one process per "
        "tenant, which share nothing: its figure is the mean over the sampled tenants (start-up included, as "
        "it is paid per tenant). Ratios: the mode's ms/tenant over default serial `orchestrate upgrade` on the "
        "same backend (above 1: the default is faster).\n"
    )
    out.append(
        "CPU ms/tenant: user + system time of the command's own processes (workers included, the "
        "database server excluded), marginal too, for reference when the machine is busy; ratios use wall time.\n"
    )
    if report.pending:
        out.append("## Nothing pending: tenants at head\n")
        out.append("| backend | tenants | `orchestrate upgrade` s | `orchestrate status` s |")
        out.append("|---|---:|---:|---:|")
        status = {(b, n): s for b, n, s, _ in report.status}
        for backend, n, seconds, valid in report.pending:
            st = status.get((backend, n))
            out.append(f"| {backend} | {n} | {seconds:.2f}{'' if valid else ' **INVALID**'} | "
                       f"{'-' if st is None else f'{st:.2f}'} |")
        out.append("")
    if report.beside:
        out.append("## New tenants beside existing schemas (PostgreSQL, default settings)\n")
        out.append("| database holds | new tenants | upgrade s | same run again (nothing pending) s | cost s | "
                   "ms/new tenant |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for case, (old, new, first, again, valid) in report.beside.items():
            holds = "nothing else" if case == "empty" else f"{old:,} tenant schemas at head"
            out.append(f"| {holds}{'' if valid else ' **INVALID**'} | {new} | {first:.2f} | {again:.2f} | "
                       f"{first - again:.2f} | {(first - again) * 1000 / new:.1f} |")
        out.append("\nOnly the new tenants are selected (tenants file); cost = the run minus the same run again.\n")
    if report.memory:
        out.append("## Peak memory of `orchestrate upgrade` (SQLite)\n")
        out.append("| mode | tenants | total s | ms/tenant | peak RSS, main process | peak RSS, largest worker |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for m in report.memory:
            workers = f"{m.workers_kb / 1024:.1f} MB" if m.workers_kb else "-"
            mode = m.mode + ("" if m.valid else " **INVALID**")
            out.append(
                f"| {mode} | {m.tenants} | {m.seconds:.1f} | {m.seconds * 1000 / m.tenants:.1f} | "
                f"{m.parent_kb / 1024:.1f} MB | {workers} |"
            )
        out.append(
            "\nru_maxrss read at exit inside the orchestrate process itself (RUSAGE_SELF), and for its "
            "--parallel workers RUSAGE_CHILDREN of that process (the largest worker).\n"
        )
    out.append("## Targets\n")
    for line in checks(report, args):
        out.append(f"- {line}")
    out.append("")
    if report.problems:
        out.append("## Problems (the figures above are not valid)\n")
        out.extend(f"- {p}" for p in report.problems)
        out.append("")
    out.append("## Environment\n")
    out.extend(f"- {n}" for n in report.notes)
    out.append("")
    return "\n".join(out)


def checks(report: Report, args: argparse.Namespace) -> list[str]:
    lines = []

    def verdict(ok: bool) -> str:
        return "**PASS**" if ok else "**FAIL**"

    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB"}
    by = {(m.backend, m.mode): m for m in report.marginal}

    def faster(backend: str, other: str, what: str, at_least: float) -> None:
        mine, base = by.get((backend, DEFAULT_MODE)), by.get((backend, other))
        if not mine or not base:
            return
        x = base.ms_per_tenant / mine.ms_per_tenant if mine.ms_per_tenant > 0 else float("inf")
        goal = f"at least {at_least:g}x faster than" if at_least != 1 else "never slower than"
        lines.append(f"{verdict(x >= at_least and mine.valid and base.valid)} {names[backend]}, default serial "
                     f"`orchestrate upgrade` {goal} {what}: {x:.2f}x ({mine.ms_per_tenant:.1f} vs "
                     f"{base.ms_per_tenant:.1f} ms/tenant, marginal)")

    faster("sqlite", LOOP_MODE, "the `alembic.command.upgrade` loop", 5)
    faster("sqlite", SUBPROCESS_MODE, "the `alembic upgrade head` subprocess loop", 20)
    faster("postgresql", LOOP_MODE, "the `alembic.command.upgrade` loop", 2)
    for backend in ("sqlite", "postgresql"):
        mine, floor = by.get((backend, DEFAULT_MODE)), by.get((backend, FLOOR_MODE))
        if mine and floor:
            x = mine.ms_per_tenant / floor.ms_per_tenant if floor.ms_per_tenant > 0 else float("inf")
            lines.append(f"{verdict(x <= 1.5 and mine.valid and floor.valid)} {names[backend]}, default serial "
                         f"`orchestrate upgrade` within 1.5x of the raw SQL floor per tenant: {x:.2f}x "
                         f"({mine.ms_per_tenant:.1f} vs {floor.ms_per_tenant:.1f} ms/tenant, marginal)")
    for backend, n, seconds, valid in report.pending:
        note = "" if n == 2000 else f" (measured on {n} tenants, not 2,000)"
        lines.append(f"{verdict(valid and seconds < 3.0)} `upgrade` with nothing pending on 2,000 tenants at head "
                     f"in under 3 s, {backend}: {seconds:.2f} s{note}")
    if {"empty", "beside"} <= set(report.beside):
        old, new, first, again, valid_b = report.beside["beside"]
        _, _, first_e, again_e, valid_e = report.beside["empty"]
        x = (first - again) / (first_e - again_e) if first_e > again_e else float("inf")
        note = "" if (old, new) == (1000, 50) else f" (measured with {new} beside {old})"
        lines.append(f"{verdict(x <= 1.2 and valid_b and valid_e)} PostgreSQL, 50 new tenants beside 1,000 schemas "
                     f"cost at most 1.2x what they cost in an empty database: {x:.2f}x ({first - again:.2f} vs "
                     f"{first_e - again_e:.2f} s){note}")
    for backend in BACKENDS:
        faster(backend, REPLAY_FALSE_MODE, "`replay: false`", 1)
        faster(backend, LOOP_MODE, "the `alembic.command.upgrade` loop", 1)
    for backend, n, seconds, valid in report.status:
        note = "" if n == 2000 else f" (measured on {n} tenants, not 2,000)"
        lines.append(f"{verdict(valid and seconds < 3.0)} `status` of 2,000 tenants at head in under 3 s, "
                     f"{backend}: {seconds:.2f} s{note}")
    if report.memory:
        sizes = sorted({m.tenants for m in report.memory})
        small, large = sizes[0], sizes[-1]
        note = "" if (small, large) == (200, 2000) else f" (measured at N={small} and N={large}, not 200 and 2000)"
        for mode in dict.fromkeys(m.mode for m in report.memory):
            a = next((m for m in report.memory if m.mode == mode and m.tenants == small), None)
            b = next((m for m in report.memory if m.mode == mode and m.tenants == large), None)
            if not a or not b or a is b:
                continue
            parts = [("main process", a.parent_kb, b.parent_kb)]
            if a.workers_kb and b.workers_kb:
                parts.append(("largest worker", a.workers_kb, b.workers_kb))
            for what, x, y in parts:
                r = y / x if x else float("inf")
                lines.append(f"{verdict(r <= 1.5 and a.valid and b.valid)} peak memory at N={large} within 1.5x of "
                             f"N={small}, `{mode}`, {what}: {r:.2f}x ({x / 1024:.1f} -> {y / 1024:.1f} MB){note}")
    return lines


def environment(report: Report) -> None:
    import alembic
    import sqlalchemy

    report.notes.append(
        f"Python {platform.python_version()}, Alembic {alembic.__version__}, SQLAlchemy {sqlalchemy.__version__}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=BENCH.parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "orchestrator"], capture_output=True, text=True,
                               cwd=BENCH.parent).stdout.strip()
        if head:
            report.notes.append(f"orchestrate at commit {head}" + (" with uncommitted changes in orchestrator/" if dirty else ""))
    except OSError:
        pass


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, help="with --dask: tenants per backend (default 100; --quick 10)")
    parser.add_argument("--sizes", help="the small and large fleet of the upgrade modes on SQLite and PostgreSQL, "
                        "SMALL,LARGE: per tenant figures are (time at LARGE - time at SMALL) / (LARGE - SMALL) "
                        "(default 20,200: 180 tenants between the two, so a pause of the machine weighs little; --quick 5,20)")
    parser.add_argument("--mysql-sizes", help="the same on MariaDB (default 10,40; --quick 3,10)")
    parser.add_argument("--beside", help="EXISTING,NEW: NEW tenants migrated beside EXISTING tenant schemas at head "
                        "(PostgreSQL; default 1000,50; --quick 100,10)")
    parser.add_argument("--memory-tenants", help="fleet sizes for peak memory, e.g. 200,2000 (--quick: 20,200)")
    parser.add_argument("--status-tenants", type=int, help="tenants at head for `status` (default 2000; --quick 200)")
    parser.add_argument("--subprocess-sample", type=int, help="tenants run by the alembic subprocess loop (default 20; --quick 5)")
    parser.add_argument("--skip-postgres", action="store_true", help="no PostgreSQL")
    parser.add_argument("--skip-mariadb", action="store_true", help="no MariaDB")
    parser.add_argument("--mysql-url", default=os.environ.get("ORCH_TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
                        help="a MariaDB/MySQL server whose databases bnx_<pid>_* this run creates and drops "
                        f"(default $ORCH_TEST_MYSQL_URL or {DEFAULT_MYSQL_URL})")
    parser.add_argument("--skip-memory", action="store_true", help="no peak-memory runs (status then runs on SQLite "
                        "fleets of --status-tenants made with the raw SQL)")
    parser.add_argument("--quick", action="store_true", help="a ~3 minute smoke run at small sizes")
    parser.add_argument("--pg-url", default=os.environ.get("ORCH_TEST_PG_URL", DEFAULT_PG_URL),
                        help="a PostgreSQL server to create the throwaway database on (default $ORCH_TEST_PG_URL or "
                        f"{DEFAULT_PG_URL})")
    parser.add_argument("--sqlite-dir", type=Path, help="where to create the SQLite tenants' folder (default: "
                        "/dev/shm, a tmpfs, when it exists, else the system temp dir)")
    parser.add_argument("--output", type=Path, default=BENCH / "results.md", help="where to write the report")
    parser.add_argument("--keep", action="store_true", help="keep the generated project folder (its path is printed)")
    parser.add_argument("--dask", action="store_true", help="only compare --backend dask (a local cluster of 2 "
                        "workers) with --parallel 2, per backend, at two fleet sizes; prints the marginal cost per "
                        "target of each (and their ratio) apart from the fixed cost of a run (cluster start-up)")
    parser.add_argument("--dask-sizes", help="with --dask: the two fleet sizes, SMALL,LARGE (default: a third of "
                        "--tenants, and --tenants)")
    parser.add_argument("--dask-repeat", type=int, default=1, help="with --dask: runs per mode and size (the "
                        "fastest counts; default 1)")
    parser.add_argument("--dask-backends", default="sqlite,postgresql", help="with --dask: which backends "
                        "(default sqlite,postgresql; --skip-postgres drops postgresql)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.tenants = args.tenants or (10 if quick else 100)
    args.memory_sizes = [int(v) for v in (args.memory_tenants or ("20,200" if quick else "200,2000")).split(",") if v]
    args.status_tenants = args.status_tenants or (200 if quick else 2000)
    args.subprocess_sample = args.subprocess_sample or (5 if quick else 20)

    def pair(text: str, option: str) -> tuple[int, int]:
        try:
            a, b = (int(v) for v in text.split(","))
        except ValueError:
            parser.error(f"{option}: two numbers, e.g. 20,100")
        return a, b

    args.sizes = pair(args.sizes or ("5,20" if quick else "20,200"), "--sizes")
    args.mysql_sizes = pair(args.mysql_sizes or ("3,10" if quick else "10,40"), "--mysql-sizes")
    args.beside = pair(args.beside or ("100,10" if quick else "1000,50"), "--beside")
    if any(not 0 < a < b for a, b in (args.sizes, args.mysql_sizes)):
        parser.error("--sizes / --mysql-sizes: SMALL,LARGE with 0 < SMALL < LARGE")
    if args.tenants < 1 or args.status_tenants < 1 or any(n < 1 for n in [*args.memory_sizes, *args.beside]):
        parser.error("tenant counts must be positive")
    if args.beside[0] > args.status_tenants and not args.skip_postgres:
        parser.error("--beside: EXISTING at most --status-tenants (the status fleet grows from it)")
    return args


DASK_MODE = "orchestrate upgrade --backend dask (local cluster, 2 workers)"
PARALLEL_MODE = "orchestrate upgrade --parallel 2"


def dask_comparison(bench: Bench, args: argparse.Namespace, root: Path, sq_dir: Path) -> int:
    """--dask: the same fleet through --parallel 2 and through a local Dask cluster of 2
    workers, in the same run, at two fleet sizes (SMALL and LARGE tenants, empty each time).

    A run's wall time is a fixed cost (interpreter, project, for Dask the LocalCluster's
    start and the project shipped to each worker) plus a cost per target. Per mode, the
    marginal cost per target is (time at LARGE - time at SMALL) / (LARGE - SMALL) and the
    fixed cost what is left at SMALL; the target compares the marginal costs (Dask within
    10% of --parallel 2), the fixed costs are reported beside them. Sizes are run small,
    large, and modes alternate in order between repeats; the fastest of the repeats counts."""
    if args.dask_sizes:
        small, large = sorted(int(v) for v in args.dask_sizes.split(","))
    else:
        small, large = max(1, args.tenants // 3), args.tenants
    if small < 1 or large <= small:
        raise SystemExit("--dask-sizes: two different positive sizes, e.g. 100,300")
    backends = [b for b in args.dask_backends.split(",") if b and not (b == "postgresql" and args.skip_postgres)]
    if set(backends) - {"sqlite", "postgresql"}:
        raise SystemExit("--dask-backends: sqlite and/or postgresql")
    modes = [PARALLEL_MODE, DASK_MODE]
    lines = [
        f"Fleets of {small} and {large} tenants, 40 revisions, best of {max(1, args.dask_repeat)} run(s) each.",
        "",
        "| backend | mode | s at " + str(small) + " | s at " + str(large) + " | per target ms (marginal) | fixed s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    verdicts: list[str] = []
    try:
        if "postgresql" in backends:
            bench.setup_postgres()
        generate(root, sq_dir, bench.pg_sqlalchemy_url if "postgresql" in backends else None)
        for backend in backends:
            subprocess.run(bench.orchestrate("heads", "-n", bench.db_name(backend)), capture_output=True, cwd=root)
            best: dict[tuple[str, int], float] = {}
            for repeat in range(max(1, args.dask_repeat)):
                for n in (small, large):
                    for mode in modes if repeat % 2 == 0 else modes[::-1]:
                        row = bench.mode(backend, mode, tenant_names(n), n)
                        best[mode, n] = min(best.get((mode, n), row.seconds), row.seconds)
            marginal: dict[str, float] = {}
            fixed: dict[str, float] = {}
            for mode in modes:
                marginal[mode] = (best[mode, large] - best[mode, small]) / (large - small)
                fixed[mode] = best[mode, small] - small * marginal[mode]
                name = "--parallel 2" if mode == PARALLEL_MODE else "--backend dask (2 workers)"
                lines.append(f"| {backend} | {name} | {best[mode, small]:.2f} | {best[mode, large]:.2f} | "
                             f"{marginal[mode] * 1000:.1f} | {fixed[mode]:.2f} |")
            per_target = ratio(marginal[DASK_MODE], marginal[PARALLEL_MODE])
            met = marginal[DASK_MODE] <= 1.10 * marginal[PARALLEL_MODE]
            verdicts.append(
                f"- {backend}: per target, dask/--parallel 2 = {per_target} "
                f"({(marginal[DASK_MODE] - marginal[PARALLEL_MODE]) * 1000:+.1f} ms/target)"
                + (f" — target within 10%: {'met' if met else 'NOT met'}" if backend == "postgresql" else "")
                + f"; fixed cost of a run {fixed[DASK_MODE]:.2f} s with Dask, {fixed[PARALLEL_MODE]:.2f} s with "
                f"--parallel 2 (Dask's start-up: {fixed[DASK_MODE] - fixed[PARALLEL_MODE]:+.2f} s); whole runs at "
                f"{large}: {ratio(best[DASK_MODE, large], best[PARALLEL_MODE, large])}"
            )
    finally:
        bench.drop_postgres()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(sq_dir, ignore_errors=True)
    load = f"; busiest 1-minute load average {bench.max_load:.1f} on {os.cpu_count()} CPUs" if bench.max_load else ""
    print("\n".join([*lines, "", *verdicts, f"- machine: {os.cpu_count()} CPUs{load}", *bench.report.problems]))
    return 1 if bench.report.problems else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="orchestrate-bench-"))
    sqlite_base = args.sqlite_dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    sq_dir = Path(tempfile.mkdtemp(prefix="orchestrate-bench-sqlite-", dir=sqlite_base))
    log(f"project in {root}, SQLite tenants in {sq_dir}")
    bench = Bench(args, root, sq_dir)
    if args.dask:
        return dask_comparison(bench, args, root, sq_dir)
    try:
        if not args.skip_postgres:
            bench.setup_postgres()
        if not args.skip_mariadb:
            bench.setup_mysql()
        generate(root, sq_dir, None if args.skip_postgres else bench.pg_sqlalchemy_url, bench.my_sqlalchemy_url)
        environment(bench.report)
        fs = subprocess.run(["df", "--output=fstype", str(sq_dir)], capture_output=True, text=True).stdout.split()
        bench.report.notes.append(
            f"SQLite tenant files in {sq_dir} ({fs[-1] if fs else 'unknown filesystem'})"
            + ("; on tmpfs commits cost no fsync, so the figures show the tools' own cost (run with "
               "--sqlite-dir on a disk to include it: the same for every mode, and on a VM noisy)"
               if fs and fs[-1] == "tmpfs" else "")
        )
        bench.backend("sqlite")
        if not args.skip_postgres:
            bench.backend("postgresql")
        if not args.skip_mariadb:
            bench.backend("mysql")
            bench.fresh("mysql", [])  # its tenants dropped now; the home database at the end
        sq_fleet_at_head = False
        if not args.skip_memory and args.memory_sizes:
            bench.memory()
            sq_fleet_at_head = max(args.memory_sizes) == args.status_tenants
        bench.status("sqlite", args.status_tenants, have=args.status_tenants if sq_fleet_at_head else 0)
        if not args.skip_postgres:
            bench.beside(*args.beside)
            bench.status("postgresql", args.status_tenants, have=args.beside[0] if "beside" in bench.report.beside else 0)
    finally:
        bench.drop_postgres()
        bench.drop_mysql()
        if args.keep:
            log(f"kept {root} and {sq_dir}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(sq_dir, ignore_errors=True)
    if bench.max_load > (os.cpu_count() or 1) * 0.75:
        bench.report.notes.append(
            f"the machine was busy: 1-minute load average up to {bench.max_load:.1f} on {os.cpu_count()} CPUs when "
            "timed commands started (other processes compete for the CPUs: wall times are noisy)"
        )
    text = render(bench.report, args, started, time.perf_counter() - t0)
    print(text)
    args.output.write_text(text, encoding="utf-8")
    log(f"wrote {args.output}")
    return 1 if bench.report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
