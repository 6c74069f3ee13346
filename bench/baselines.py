"""The benchmark's baselines, each run by bench/run.py as a subprocess (timed whole, start-up
included, like every other mode):

    python bench/baselines.py loop  ALEMBIC_INI TARGETS_FILE
        plain Alembic in one process: ``alembic.command.upgrade(config, "head")`` per tenant,
        with a fresh Config each time (as a script looping over tenants would);
    python bench/baselines.py floor sqlite     SQL_FILE TARGETS_FILE
    python bench/baselines.py floor postgresql SQL_FILE TARGETS_FILE
    python bench/baselines.py floor mysql      SQL_FILE TARGETS_FILE
        the raw SQL of the history (rendered once by ``orchestrate upgrade --sql``) executed
        per tenant on a fresh connection: what the migrations cost with no tool at all.
        With a last argument ``--fast`` (untimed set-up of fleets at head), commits do not
        wait for the disk.

TARGETS_FILE holds one tenant per line, ``URL<TAB>SCHEMA`` (the schema empty for SQLite;
for ``floor sqlite`` the URL is the SQLite file's path, for ``floor postgresql`` a libpq
conninfo; for ``floor mysql`` a SQLAlchemy URL naming the tenant's database, the schema empty).
"""
from __future__ import annotations

import sys
from argparse import Namespace


def _targets(path: str) -> list[tuple[str, str]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line:
                url, _, schema = line.partition("\t")
                rows.append((url, schema))
    return rows


def loop(ini: str, targets_file: str) -> None:
    from alembic import command
    from alembic.config import Config

    for url, schema in _targets(targets_file):
        config = Config(ini)
        config.cmd_opts = Namespace(x=[f"url={url}"] + ([f"schema={schema}"] if schema else []))
        command.upgrade(config, "head")


def floor(backend: str, sql_file: str, targets_file: str, fast: bool = False) -> None:
    """``fast`` (set-up only, never timed): commits without waiting for the disk."""
    with open(sql_file, encoding="utf-8") as handle:
        script = handle.read()
    targets = _targets(targets_file)
    if backend == "sqlite":
        import sqlite3

        for path, _ in targets:
            connection = sqlite3.connect(path, isolation_level=None)
            try:
                if fast:
                    connection.execute("PRAGMA synchronous = OFF")
                connection.executescript(script)
            finally:
                connection.close()
    elif backend == "postgresql":
        import psycopg
        from psycopg import sql

        for conninfo, schema in targets:
            with psycopg.connect(conninfo, autocommit=True) as connection:
                if fast:
                    connection.execute("SET synchronous_commit TO off")
                connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
                connection.execute(script.encode())  # no parameters: sent as is, statements and all
    elif backend == "mysql":
        import pymysql
        from pymysql.constants import CLIENT
        from sqlalchemy.engine import make_url

        for url, _ in targets:
            u = make_url(url)
            connection = pymysql.connect(
                host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root", password=u.password or "",
                database=u.database, autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS,
            )
            try:
                with connection.cursor() as cursor:
                    # One round trip for the whole script; every result read, as a client must.
                    cursor.execute(script)
                    while cursor.nextset():
                        pass
            finally:
                connection.close()
    else:
        raise SystemExit(f"unknown backend {backend}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["loop"] and len(argv) == 3:
        loop(argv[1], argv[2])
    elif argv[:1] == ["floor"] and len(argv) in (4, 5) and argv[4:] in ([], ["--fast"]):
        floor(argv[1], argv[2], argv[3], fast=argv[4:] == ["--fast"])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
