"""Who blocks a migration: the servers' own views of lock waits, read while the migration waits.

A migration that waits for a table lock fails after ``lock_timeout``; by then the wait is
over and the server no longer says who it was waiting for. So, while a migration runs, a
:class:`PollingWatch` thread asks the server every few hundred milliseconds (only once
the migration has been running for a while, so quick revisions cost nothing) and keeps
the last answer for the error message. It runs on a spare connection, never on the
migration's own, and is stopped and joined before that spare connection is used again.

The queries here take no user input: identifiers come from the server's catalogs and
every value is a bound parameter.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from orchestrator.dialects.base import BlockerWatch
from orchestrator.urls import mask_text

log = logging.getLogger(__name__)

#: How often a watch asks the server again, at most.
POLL_SECONDS = 0.3
#: Longest a watch waits before its first look (shorter for a short lock_timeout).
FIRST_LOOK_SECONDS = 1.0
#: A watch's own queries never wait longer than this (they only read catalogs).
WATCH_STATEMENT_MS = 2000
_QUERY_CHARS = 200


def _short(query: str | None) -> str | None:
    if not query:
        return None
    flat = " ".join(query.split())
    return mask_text(flat if len(flat) <= _QUERY_CHARS else flat[: _QUERY_CHARS - 3] + "...")


def _seconds(value: Any) -> str:
    try:
        return f"{float(value):.1f}s"
    except (TypeError, ValueError):
        return "?"


class PollingWatch(BlockerWatch):
    """A :class:`orchestrator.dialects.BlockerWatch` that polls the server from a thread.

    ``connect`` opens (or lends) the connection the thread uses and returns it with a
    function that gives it back; ``poll`` returns a description of each blocker seen now
    (an empty list when nothing blocks). :meth:`describe` returns the last non-empty
    answer: that of the moment closest to the lock timeout.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], tuple[Connection, Callable[[], None]]],
        poll: Callable[[Connection], list[str]],
        lock_timeout: float,
    ) -> None:
        self.name = name
        self._connect = connect
        self._poll = poll
        self.delay = min(FIRST_LOOK_SECONDS, max(lock_timeout, 0.05) / 2)
        self.interval = min(POLL_SECONDS, max(lock_timeout, 0.05) / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: list[str] = []
        self.polls = 0

    def __enter__(self) -> PollingWatch:
        self._thread = threading.Thread(target=self._run, name=f"orchestrate-blockers:{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)  # bounded: a watch stuck on a silent server is left behind
            self._thread = None

    def describe(self) -> str | None:
        return "; ".join(self._seen) if self._seen else None

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return  # the migration finished before anything could be worth a look
        give_back: Callable[[], None] | None = None
        try:
            connection, give_back = self._connect()
            while not self._stop.is_set():
                try:
                    found = self._poll(connection)
                    self.polls += 1
                finally:
                    if connection.in_transaction():
                        connection.rollback()  # never sit idle in a transaction; fresh stats next time
                if found:
                    self._seen = found
                if self._stop.wait(self.interval):
                    break
        except Exception as exc:  # noqa: BLE001 - a watch must never break the migration it watches
            log.debug("blocker watch %s stopped: %s", self.name, mask_text(str(exc)))
        finally:
            if give_back is not None:
                try:
                    give_back()
                except Exception:  # noqa: BLE001
                    pass


# ---------------------------------------------------------------------- PostgreSQL


def postgresql_blockers(connection: Connection, pid: int) -> list[str]:
    """The sessions that ``pid`` waits for now (pg_blocking_pids), each described."""
    connection.execute(text("SELECT set_config('statement_timeout', :v, true)"), {"v": f"{WATCH_STATEMENT_MS}ms"})
    waiting = connection.execute(
        text(
            "SELECT l.mode, l.locktype, l.relation::regclass::text AS relation FROM pg_locks l "
            "WHERE l.pid = :pid AND NOT l.granted LIMIT 1"
        ),
        {"pid": pid},
    ).mappings().first()
    rows = connection.execute(
        text(
            "SELECT a.pid, a.state, a.usename, a.application_name, host(a.client_addr) AS addr, "
            "EXTRACT(EPOCH FROM now() - a.xact_start) AS xact_age, "
            "EXTRACT(EPOCH FROM now() - a.state_change) AS state_age, a.query "
            "FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids(:pid)) ORDER BY a.xact_start NULLS LAST"
        ),
        {"pid": pid},
    ).mappings().all()
    if not rows:
        return []
    wants = ""
    if waiting is not None:
        if waiting["relation"]:
            wants = f" (the revision waits for {waiting['mode']} on {waiting['relation']})"
        elif waiting["locktype"] in ("transactionid", "tuple"):
            wants = " (the revision waits for a row it locked)"
        else:
            wants = f" (the revision waits for {waiting['mode']} on a {waiting['locktype']})"
    found = []
    for row in rows:
        parts = [f"pid {row['pid']}{wants}"]
        who = []
        if row["usename"]:
            who.append(f"user {row['usename']}")
        if row["application_name"]:
            who.append(f"application {row['application_name']!r}")
        who.append(f"from {row['addr'] or 'local socket'}")
        parts.append(", ".join(who))
        if row["state"]:
            parts.append(f"{row['state']} for {_seconds(row['state_age'])}")
        if row["xact_age"] is not None:
            parts.append(f"transaction open for {_seconds(row['xact_age'])}")
        query = _short(row["query"])
        if query:
            parts.append(f"{'query' if row['state'] == 'active' else 'last query'}: {query}")
        found.append(", ".join(parts))
    return found


# ---------------------------------------------------------------------- MySQL / MariaDB


def mysql_has_metadata_lock_info(connection: Connection) -> bool:
    """Is MariaDB's metadata_lock_info plugin there (the only way it names MDL holders)?"""
    try:
        row = connection.execute(
            text(
                "SELECT 1 FROM information_schema.plugins "
                "WHERE plugin_name = 'METADATA_LOCK_INFO' AND plugin_status = 'ACTIVE'"
            )
        ).first()
        return row is not None
    except Exception:  # noqa: BLE001 - no such view: no plugin
        return False
    finally:
        if connection.in_transaction():
            connection.rollback()


def _mysql_ids(connection: Connection, sql: str, **params: Any) -> list[int] | None:
    """Connection ids from ``sql``; None when the server refuses (no such view on this
    server, or no PROCESS privilege for the InnoDB views)."""
    try:
        return [int(r[0]) for r in connection.execute(text(sql), params) if r[0] is not None]
    except Exception:  # noqa: BLE001
        if connection.in_transaction():
            connection.rollback()
        return None


def mysql_blockers(connection: Connection, me: int, database: str | None, mdl_plugin: bool) -> list[str]:
    """Who blocks connection ``me``: row locks (innodb_lock_waits) name their holder exactly;
    a metadata (table) lock names its holders with the metadata_lock_info plugin, and
    otherwise the sessions with an open transaction, one of which holds it."""
    own = connection.execute(text("SELECT CONNECTION_ID()")).scalar()
    mine = connection.execute(
        text("SELECT state, info FROM information_schema.processlist WHERE id = :me"), {"me": me}
    ).mappings().first()
    if mine is None:
        return []
    state = (mine["state"] or "").lower()
    exact: list[int] | None = _mysql_ids(
        connection,
        "SELECT DISTINCT b.trx_mysql_thread_id FROM information_schema.innodb_lock_waits w "
        "JOIN information_schema.innodb_trx b ON b.trx_id = w.blocking_trx_id "
        "JOIN information_schema.innodb_trx r ON r.trx_id = w.requesting_trx_id "
        "WHERE r.trx_mysql_thread_id = :me",
        me=me,
    )
    lead = "row lock"
    certain = True
    unsure = ("one of these sessions with an open transaction holds it "
              "(MariaDB names the holder only with the metadata_lock_info plugin)")
    blind = exact is None  # no PROCESS privilege: the InnoDB views are closed to this user
    if not exact and "metadata lock" in state:
        lead = "table metadata lock"
        if mdl_plugin:
            exact = _mysql_ids(
                connection,
                "SELECT DISTINCT thread_id FROM information_schema.metadata_lock_info "
                "WHERE table_schema = :db AND thread_id NOT IN (:me, :own)",
                db=database or "", me=me, own=own,
            )
        if not exact:
            certain = False
            exact = _mysql_ids(
                connection,
                "SELECT t.trx_mysql_thread_id FROM information_schema.innodb_trx t "
                "LEFT JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                "WHERE t.trx_mysql_thread_id NOT IN (:me, :own) ORDER BY (p.db = :db) DESC, t.trx_started",
                db=database or "", me=me, own=own,
            )
            blind = blind or exact is None
    if not exact and blind and state.startswith("waiting"):
        # All this user may see: its own sessions on the same database.
        certain = False
        unsure = "this user may not see transactions (no PROCESS privilege); its other sessions on this database"
        exact = _mysql_ids(
            connection,
            "SELECT id FROM information_schema.processlist WHERE db = :db AND id NOT IN (:me, :own) ORDER BY time DESC",
            db=database or "", me=me, own=own,
        )
        if not exact:
            return [f"a session this user cannot see holds the {lead} (grant the PROCESS privilege to name it)"]
    if not exact:
        return []
    try:
        rows = connection.execute(
            text(
                "SELECT p.id, p.user, p.host, p.db, p.command, p.time, p.state, p.info, "
                "t.trx_started, TIMESTAMPDIFF(SECOND, t.trx_started, NOW()) AS trx_age, t.trx_query "
                "FROM information_schema.processlist p "
                "LEFT JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = p.id "
                "WHERE p.id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": exact},
        ).mappings().all()
    except Exception:  # noqa: BLE001 - no PROCESS privilege: the processlist alone
        if connection.in_transaction():
            connection.rollback()
        rows = connection.execute(
            text(
                "SELECT p.id, p.user, p.host, p.db, p.command, p.time, p.state, p.info, "
                "NULL AS trx_started, NULL AS trx_age, NULL AS trx_query "
                "FROM information_schema.processlist p WHERE p.id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": exact},
        ).mappings().all()
    by_id = {int(r["id"]): r for r in rows}
    found = []
    for ident in exact:
        row = by_id.get(ident)
        if row is None:
            continue
        parts = [f"connection {row['id']} ({row['user']}@{row['host']}" + (f", database {row['db']}" if row["db"] else "") + ")"]
        parts.append(f"{row['command']} for {row['time']}s" + (f" ({row['state']})" if row["state"] else ""))
        if row["trx_started"] is not None:
            parts.append(f"transaction open for {row['trx_age']}s (since {row['trx_started']})")
        query = _short(row["info"] or row["trx_query"])
        if query:
            parts.append(f"query: {query}")
        found.append(", ".join(parts))
    if not found:
        return []
    if certain:
        return [f"{lead} held by {item}" for item in found]
    return [f"{lead}: {unsure}: " + " | ".join(found)]


# ---------------------------------------------------------------------- SQLite

# SQLite's lock bytes (rollback journal) in the database file, and the WAL writer's lock
# in the -shm file: a WRITE lock on either means a connection is writing.
_SQLITE_WRITE_BYTES = range(0x40000000, 0x40000002)  # PENDING, RESERVED
_SQLITE_WAL_WRITE_BYTE = 120


# A reader holds a READ lock on the SHARED range while its read transaction is open.
_SQLITE_SHARED_BYTES = range(0x40000002, 0x40000002 + 510)


def sqlite_write_lock_holders(database: str) -> list[str]:
    """Processes that hold SQLite's write lock on ``database`` (its database file, or the
    WAL writer's byte in ``-shm``), from /proc/locks (Linux)."""
    return _lock_holders({database: _SQLITE_WRITE_BYTES, database + "-shm": (_SQLITE_WAL_WRITE_BYTE,)}, "WRITE")


def sqlite_readers(database: str) -> list[str]:
    """Processes with a read transaction open on ``database`` (a READ lock on its SHARED bytes)."""
    return _lock_holders({database: _SQLITE_SHARED_BYTES}, "READ")


def _lock_holders(files: dict[str, range | tuple[int, ...]], kind: str) -> list[str]:
    """Processes holding a POSIX/OFD ``kind`` lock on any of the given bytes of ``files``,
    from /proc/locks. Named by pid and command name only (never a command line, which may
    hold secrets); empty when nothing can be told."""
    wanted: dict[tuple[int, int, int], range | tuple[int, ...]] = {}
    for path, places in files.items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        wanted[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = places
    try:
        lines = Path("/proc/locks").read_text().splitlines() if wanted else []
    except OSError:
        return []
    pids: list[int] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->" or fields[1] not in ("POSIX", "OFDLCK") or fields[3] != kind:
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            start = int(fields[6])
            end = int(fields[7]) if fields[7] != "EOF" else 1 << 62
        except ValueError:
            continue
        found = wanted.get(key)
        if found is None or not any(start <= b <= end for b in found):
            continue
        if pid > 0 and pid not in pids:
            pids.append(pid)
    holders: list[str] = []
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            name = "?"
        holders.append(f"pid {pid} ({name}{', this process' if pid == os.getpid() else ''})")
    return holders
