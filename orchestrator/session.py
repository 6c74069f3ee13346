"""One target's connection life: connect (bounded), lock, prepare, work, release.

A :class:`Session` is the only place that opens a connection to a target. It

- connects with the dialect's bounds (``connect_timeout``, keepalives);
- takes the target's migration lock ON THE CONNECTION THAT MIGRATES (PostgreSQL advisory
  lock, MySQL GET_LOCK; SQLite an flock beside the file), so a lock cannot outlive or be
  lost apart from the migration: if that session dies, the migration dies with it;
- prepares the connection (timeouts, the tenant's schema) and hands it to ``work``;
- watches for a silent server: a :class:`Watchdog` watches the session's driver
  connection from the moment the driver has connected (before SQLAlchemy's own first
  queries on it); while work runs longer than a few seconds it probes the server on
  connections of its own, and when the server has not answered for ``server_timeout``
  it shuts the session's sockets down, so the blocked driver call fails instead of
  waiting forever (:class:`ServerSilent`, which the operation completes with the
  revision that was running);
- never lets SQLAlchemy open a dead session connection again behind its back: that
  would be a session without the lock, the timeouts and the tenant's schema
  (:class:`ConnectionLost`; a read after a failure opens a fresh Session instead);
- commits or rolls back, releases the lock, closes everything, whatever happened.

Sync and async drivers share ONE code path: for an async URL the same synchronous code
runs inside SQLAlchemy's ``greenlet_spawn`` on a private event loop (in a thread of its
own when the calling thread already runs a loop), on the async engine's ``sync_engine``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from orchestrator.dialects import Dialect, dialect_for, is_async_url
from orchestrator.dialects.base import MigrationLock
from orchestrator.errors import OrchestrateError, TargetError
from orchestrator.targets import Target
from orchestrator.urls import mask_text

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Taken from server_timeout for failing the target and closing up (at most a tenth of it).
CLEANUP_SECONDS = 5.0
#: A watchdog starts probing once work has run this long (or a quarter of server_timeout).
PROBE_AFTER_SECONDS = 5.0


class Engines:
    """One sync engine per database per process, shared by its targets.

    It pools nothing (NullPool: every connection is closed when released), and a
    ``do_connect`` hook points each new connection at the target being run, so the
    engine's dialect, event hooks and compiled-statement cache are set up once, not once
    per tenant. Where the dialect cannot share an engine between databases (MySQL), each
    tenant gets one, disposed after its target.
    """

    def __init__(self, keep_sessions: bool = False) -> None:
        self._engines: dict[str, Engine] = {}
        #: Keep a schema tenant's session for the next tenant of its database (see
        #: :meth:`take`): only where the caller closes the Engines when its run ends.
        self.keep_sessions = keep_sessions
        self._kept: dict[str, Connection] = {}
        #: Targets whose last session the Watchdog cut: their server stopped answering, so
        #: reading their version table again would only wait on it (operations ask this).
        self.silent: set[str] = set()
        self._route = threading.local()  # the target the engine's next connection goes to
        self._watching = threading.local()  # the Watchdog of the session connecting now

    def engine(self, target: Target, dialect: Dialect) -> Engine:
        key = target.database.name if dialect.engine_serves_many_databases else target.url
        engine = self._engines.get(key)
        if engine is None:
            try:
                engine = create_engine(
                    dialect.engine_url(target), poolclass=NullPool, connect_args=dialect.connect_args(target)
                )
            except (SQLAlchemyError, ImportError) as exc:
                raise connect_error(target, exc) from exc
            dialect.install(engine, target)
            route = self._route

            @event.listens_for(engine, "do_connect")
            def _to_current_target(sa_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
                routed = getattr(route, "target", None)
                if routed is not None:
                    new_args, new_params = sa_dialect.create_connect_args(dialect.engine_url(routed))
                    cargs[:] = new_args
                    cparams.clear()
                    cparams.update(new_params)
                    cparams.update(dialect.connect_args(routed))

            self.watch_connects(engine, dialect)
            self._engines[key] = engine
        return engine

    def watch_connects(self, engine: Engine, dialect: Dialect) -> None:
        """Hand every new driver connection to the Watchdog of the session that opens it
        the moment the driver has connected: before SQLAlchemy's first queries on it (the
        server's version and settings), which a silent server would otherwise block forever.
        Registered after the routing hook, so it connects with the routed arguments."""
        watching = self._watching

        @event.listens_for(engine, "do_connect")
        def _connect_watched(sa_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
            watchdog: Watchdog | None = getattr(watching, "watchdog", None)
            if watchdog is None:
                return None
            watchdog.refuse_reconnect()
            raw = sa_dialect.connect(*cargs, **cparams)
            dialect.connected(raw)
            watchdog.watch_raw(raw)
            return raw

    @contextmanager
    def watching(self, watchdog: Watchdog) -> Iterator[None]:
        """Connections opened in this thread meanwhile are watched by ``watchdog``."""
        previous = getattr(self._watching, "watchdog", None)
        self._watching.watchdog = watchdog
        try:
            yield
        finally:
            self._watching.watchdog = previous

    def routed(self, target: Target) -> _Route:
        return _Route(self._route, target)

    def release(self, target: Target, dialect: Dialect) -> None:
        """Forget a per-tenant engine (don't keep thousands)."""
        if not dialect.engine_serves_many_databases and target.database.tenants is not None:
            engine = self._engines.pop(target.url, None)
            if engine is not None:
                engine.dispose()

    def _kept_key(self, target: Target, dialect: Dialect) -> str | None:
        """Where a session may move from tenant to tenant: schema tenants of one database
        (one server, one login), on a server that can reset a session (:meth:`Dialect.reset_session`)."""
        if not self.keep_sessions or target.schema is None or not dialect.resets_sessions:
            return None
        return target.database.name

    def take(self, target: Target, dialect: Dialect) -> Connection | None:
        """The session the previous tenant of this database left, reset; None if there is none."""
        key = self._kept_key(target, dialect)
        connection = self._kept.pop(key, None) if key is not None else None
        if connection is not None and (connection.closed or connection.invalidated):
            return None
        return connection

    def keep(self, target: Target, dialect: Dialect, connection: Connection) -> bool:
        """Keep ``connection`` for the next tenant, its session reset to a fresh one's
        (settings, temporary tables, prepared statements, locks); False when it cannot be
        kept (the caller closes it)."""
        key = self._kept_key(target, dialect)
        if key is None or key in self._kept or connection.invalidated or connection.in_transaction():
            return False
        try:
            raw = connection.connection.dbapi_connection
            if raw is None or not dialect.reset_session(raw):
                return False
        except Exception:  # noqa: BLE001 - a session that cannot be reset is closed, not kept
            return False
        self._kept[key] = connection
        return True

    def close(self) -> None:
        for connection in self._kept.values():
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing a dead session
                pass
        self._kept.clear()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


class _Route:
    def __init__(self, local: threading.local, target: Target) -> None:
        self._local, self._target = local, target

    def __enter__(self) -> None:
        self._local.target = self._target

    def __exit__(self, *exc: object) -> None:
        self._local.target = None


class Session:
    """The connection life of one target (see the module docstring)."""

    def __init__(self, engines: Engines, target: Target, *, lock: bool = False, create: bool = False) -> None:
        self.engines = engines
        self.target = target
        self.dialect = dialect_for(target)
        self.lock = lock
        self.create = create  # may create the tenant's schema or database

    def run(self, work: Callable[[Connection], T]) -> T:
        """Open, prepare and lock a connection, run ``work`` on it, release everything.
        ``work`` is committed when it returns and rolled back when it raises."""
        url = self.dialect.engine_url(self.target)
        if self.create and self.target.tenant is not None:
            try:
                self.dialect.ensure_database(self.target)
            except SQLAlchemyError as exc:
                raise connect_error(self.target, exc) from exc
        if is_async_url(url):
            return run_in_greenlet(lambda: self._run_async_engine(work), self.target)
        engine = self.engines.engine(self.target, self.dialect)
        try:
            with self.engines.routed(self.target):
                return self._run_on(engine, work)
        finally:
            self.engines.release(self.target, self.dialect)

    def _run_async_engine(self, work: Callable[[Connection], T]) -> T:
        from sqlalchemy.ext.asyncio import create_async_engine  # needs greenlet: import when used

        try:
            engine = create_async_engine(
                self.dialect.engine_url(self.target), poolclass=NullPool, connect_args=self.dialect.connect_args(self.target)
            )
        except (SQLAlchemyError, ImportError) as exc:
            raise connect_error(self.target, exc) from exc
        self.dialect.install(engine.sync_engine, self.target)
        self.engines.watch_connects(engine.sync_engine, self.dialect)
        try:
            return self._run_on(engine.sync_engine, work)
        finally:
            engine.sync_engine.dispose()

    def _run_on(self, engine: Engine, work: Callable[[Connection], T]) -> T:
        target, dialect = self.target, self.dialect
        dialect.before_connect(target)
        watchdog = Watchdog(target, dialect)
        self.engines.silent.discard(target.name)
        watchdog.on_fire = lambda: self.engines.silent.add(target.name)
        with watchdog, self.engines.watching(watchdog):
            connection = self._reused(target, dialect, watchdog)
            prepared = connection is not None
            if connection is None:
                try:
                    connection = engine.connect()
                except SQLAlchemyError as exc:
                    raise watchdog.explain(connect_error(target, exc)) from exc
                watchdog.watch(connection)
            held: MigrationLock | None = None
            done = False
            try:
                if self.lock:
                    held = dialect.migration_lock(connection, target, target.database.lock_wait)
                result = _work_on(connection, target, dialect, work, create=self.create, prepared=prepared)
                done = True
                return result
            except Exception as exc:
                raise watchdog.explain(exc) from exc
            finally:
                try:
                    if held is not None and not connection.invalidated:
                        held.release()
                except Exception:  # noqa: BLE001 - a dead session has dropped its lock already
                    done = False
                finally:
                    # A session that ended well may move on to the next tenant; any other is closed.
                    if not (done and not watchdog.fired and self.engines.keep(target, dialect, connection)):
                        connection.close()

    def _reused(self, target: Target, dialect: Dialect, watchdog: Watchdog) -> Connection | None:
        """The previous tenant's session, if one was kept and still answers (its check is
        the first statement it would send anyway); None: connect afresh."""
        connection = self.engines.take(target, dialect)
        if connection is None:
            return None
        watchdog.watch(connection)
        try:
            dialect.prepare(connection, target)
            return connection
        except Exception as exc:  # gone while kept (a restart, a terminated backend): connect afresh
            try:
                connection.invalidate()
                connection.close()
            except Exception:  # noqa: BLE001
                pass
            if watchdog.fired:  # not gone but silent: a new connection would only wait on it again
                raise watchdog.explain(exc) from exc
            return None


def _work_on(
    connection: Connection, target: Target, dialect: Dialect, work: Callable[[Connection], T], create: bool,
    prepared: bool = False,
) -> T:
    if not prepared:
        dialect.prepare(connection, target)
    if target.schema is not None:
        dialect.use_schema(connection, target, create=create)
    connection.commit()  # Alembic must not see our set-up as an outer transaction
    try:
        result = work(connection)
    except BaseException:
        try:
            if connection.in_transaction():
                connection.rollback()
        except Exception:  # noqa: BLE001 - a broken connection: keep the first error
            pass
        raise
    if connection.in_transaction():
        connection.commit()
    return result


class Watchdog:
    """Bounds the wait on a server that stopped answering (see the module docstring).

    It never touches the watched connections' state: it only probes the server on a
    connection of its own and, when the server stays silent for ``server_timeout``,
    shuts the watched sockets down (the blocked driver call then fails at once).
    """

    def __init__(self, target: Target, dialect: Dialect) -> None:
        self.target = target
        self.dialect = dialect
        self.timeout = float(getattr(target.database, "server_timeout", 120.0) or 0)
        self.fired = False
        self.on_fire: Callable[[], None] | None = None  # told, in the watchdog's thread, before the cut
        self._session: Connection | None = None
        self._watched: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        if self.timeout > 0 and self.dialect.probes_server:
            self._thread = threading.Thread(target=self._run, name=f"orchestrate-watchdog:{self.target.name}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def watch(self, connection: Connection) -> None:
        """Watch the session's connection (its driver connection is watched already)."""
        self._session = connection
        try:
            self.watch_raw(connection.connection.dbapi_connection)
        except Exception:  # noqa: BLE001 - nothing to watch: the bound is then the driver's
            pass

    def refuse_reconnect(self) -> None:
        """SQLAlchemy opens a new connection for a session connection that died, at its
        next use (a read after the failure, the lock's release). That would be a session
        without the lock, the timeouts and the tenant's schema (a version table read there
        may be another one's), and on a silent server another wait: refuse it. Other
        connections (a revision's own ``engine.connect()``) go on while the session lives."""
        if self._session is not None and self._session.invalidated:
            raise ConnectionLost(
                f"{self.target.name}: the session's connection to {self.target.display_url} was lost; "
                "it is not opened again (its migration lock and settings died with it)"
            )

    def watch_raw(self, raw: Any) -> None:
        """Watch a DBAPI connection (or SQLAlchemy's adapter of an async driver's)."""
        driver = getattr(raw, "driver_connection", raw)
        if driver is not None and not any(driver is w for w in self._watched):
            self._watched.append(driver)

    def explain(self, exc: BaseException) -> BaseException:
        """The error to report: a silent-server error when the watchdog cut the session."""
        if not self.fired or isinstance(exc, ServerSilent):
            return exc
        detail = "" if isinstance(exc, OrchestrateError) else f" ({type(exc).__name__})"
        return ServerSilent(
            self.target.name,
            f"the server at {self.target.display_url} stopped answering for {self.timeout:g}s "
            f"(server_timeout); the session was cut{detail}",
        )

    def _run(self) -> None:
        first = min(PROBE_AFTER_SECONDS, self.timeout / 4)
        last_answer = time.monotonic()  # the session began: the server answered its connect
        if self._stop.wait(first):
            return
        interval = max(0.5, min(5.0, self.timeout / 4))
        # The cut comes a little before server_timeout, so that the target has failed, its
        # report been written and its connections closed within server_timeout of silence.
        window = self.timeout - min(CLEANUP_SECONDS, self.timeout / 10)
        while not self._stop.is_set():
            # Neither a probe nor the pause after it runs past the end of the silence window.
            left = window - (time.monotonic() - last_answer)
            if self._probe(max(0.5, min(interval * 2, left))):
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer >= window:
                if self._stop.is_set():
                    return
                self.fired = True
                if self.on_fire is not None:
                    self.on_fire()
                for raw in self._watched:
                    self.dialect.cut(raw)
                return
            left = window - (time.monotonic() - last_answer)
            if self._stop.wait(max(0.0, min(interval, left))):
                return

    def _probe(self, timeout: float) -> bool:
        """Does the server answer a trivial query within ``timeout``? (Own thread, bounded.)"""
        answered = threading.Event()
        holder: list[Any] = []

        def probe() -> None:
            try:
                raw = self.dialect.probe_connect(self.target, timeout)
                holder.append(raw)
                self.dialect.probe_query(raw)
                answered.set()
            except Exception as exc:  # noqa: BLE001 - a failed probe is an answer of silence
                log.debug("probe of %s failed: %s", self.target.name, mask_text(str(exc)))
            finally:
                for raw in holder:
                    try:
                        raw.close()
                    except Exception:  # noqa: BLE001
                        pass

        thread = threading.Thread(target=probe, name=f"orchestrate-probe:{self.target.name}", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while thread.is_alive() and not self._stop.is_set() and time.monotonic() < deadline:
            thread.join(min(0.1, max(0.0, deadline - time.monotonic())))  # the session may end meanwhile
        if thread.is_alive():
            for raw in holder:
                self.dialect.cut(raw)
            return False
        return answered.is_set()


class ConnectionLost(OrchestrateError):
    """A session's connection died and is not opened again (see :meth:`Watchdog.refuse_reconnect`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="the server or the network dropped the session; check them, "
                         "then rerun (a rolled-back revision runs again; on MySQL/MariaDB check for partial DDL)")


class ServerSilent(OrchestrateError):
    """The Watchdog cut a session whose server stopped answering for ``server_timeout``.

    Not a :class:`TargetError`: the operation that ran adds what it knows (the revision
    that did not commit, where the version table is). ``message`` names the target;
    ``str()`` does not, for the operation's own message that names it already.
    """

    def __init__(self, target_name: str, text: str) -> None:
        super().__init__(
            f"{target_name}: {text}",
            hint="check the server and the network; raise `server_timeout` for statements that legitimately "
            "keep a silent server (the watchdog probes the server, so a busy healthy server is not cut)",
        )
        self.text = text

    def __str__(self) -> str:
        return self.text


def run_in_greenlet(fn: Callable[[], T], target: Target) -> T:
    """Run sync SQLAlchemy code over an async driver: inside ``greenlet_spawn`` on a private
    event loop; in a thread of its own when this thread already runs a loop."""
    from sqlalchemy.util import greenlet_spawn

    async def main() -> T:
        return await greenlet_spawn(fn)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    box: dict[str, Any] = {}

    def in_thread() -> None:
        try:
            box["value"] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=in_thread, name=f"orchestrate-async:{target.name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def connect_error(target: Target, exc: BaseException) -> TargetError:
    detail = getattr(exc, "orig", None) or exc
    first = str(detail).strip().splitlines()[0] if str(detail).strip() else type(detail).__name__
    hint = "is the server running and the URL right? (URLs come from orchestrate.yaml and its ${VARIABLES})"
    if target.tenant is not None:
        hint = (
            f"does the tenant's database exist? create it, or set `create: true` under the tenants "
            f"of `{target.database.name}` (schema mode); " + hint
        )
    return TargetError(f"{target.name}: cannot connect to {target.display_url}: {mask_text(first)}", hint=hint)


def host_and_pid() -> dict[str, Any]:
    """Where a target ran: this process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


__all__ = [
    "ConnectionLost", "Engines", "OrchestrateError", "ServerSilent", "Session", "Watchdog", "connect_error",
    "host_and_pid", "run_in_greenlet",
]
