"""What happened to each target: the plain typed objects every stage below the CLI returns.

A :class:`TargetResult` says what the version table held before and after (``None`` when
it could not be known, never ``[]``, which means base), which revisions committed, which
one did not, and why. An :class:`Outcome` is a run's results plus whether it was cut
short. The report module renders both; nothing here prints.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.targets import Target


class Status(str, Enum):
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"
    STAMPED = "stamped"
    NOOP = "noop"            # nothing to do: already there
    OK = "ok"                # a read-only command succeeded
    DIFFERENT = "different"  # check: models and database differ
    FAILED = "failed"
    LOST = "lost"            # the worker running it died; the version table was read again
    SKIPPED = "skipped"      # not attempted because a database it depends on failed
    NOT_RUN = "not_run"      # not attempted because the run stopped early

    @property
    def is_failure(self) -> bool:
        return self in (Status.FAILED, Status.DIFFERENT, Status.LOST)

    @property
    def succeeded(self) -> bool:
        return self in (Status.UPGRADED, Status.DOWNGRADED, Status.STAMPED, Status.NOOP, Status.OK)


@dataclass
class TargetResult:
    """One target's outcome.

    ``before``/``after`` are the version table's revisions (``[]``: base; ``None``: unknown,
    e.g. the server could not be reached). ``applied`` lists the revisions that committed,
    in order; ``failed_revision`` the one that did not. ``partial`` is true when that
    revision may be partly applied (servers without transactional DDL).
    """

    target: str
    database: str
    tenant: str | None
    url: str  # always masked
    status: Status
    before: list[str] | None = None
    after: list[str] | None = None
    applied: list[str] = field(default_factory=list)
    duration: float = 0.0
    failed_revision: str | None = None
    partial: bool = False
    error: str | None = None
    hint: str | None = None
    # where the target stands against its versions folder (read commands, check)
    head: list[str] | None = None
    pending: int | None = None
    version_table_exists: bool | None = None
    unversioned_tables: list[str] = field(default_factory=list)
    missing: bool = False  # a database file that does not exist yet
    differences: list[str] = field(default_factory=list)  # check: models vs database
    revisions: list[dict[str, Any]] | None = None  # history: the database's revisions, newest first
    # how it ran
    replayed: int | None = None  # revisions run from a verified recording (None: replay not used)
    live: dict[str, int] | None = None  # why the other revisions ran live: reason -> count
    attempts: int = 1
    lock_timeout: bool = False
    worker: dict[str, Any] | None = None  # {"host": ..., "pid": ...} of the process that ran it
    traceback: str | None = field(default=None, repr=False)  # of an unexpected error, masked

    @classmethod
    def for_target(cls, target: Target, status: Status, **kw: Any) -> TargetResult:
        return cls(
            target=target.name,
            database=target.database.name,
            tenant=target.tenant,
            url=target.display_url,
            status=status,
            **kw,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        out["duration"] = round(self.duration, 4)
        out.pop("traceback")
        return out


@dataclass
class Outcome:
    """Every target's result, in the order they finished, and whether the run was cut short."""

    results: list[TargetResult] = field(default_factory=list)
    interrupted: bool = False

    def __iter__(self) -> Iterator[TargetResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> list[TargetResult]:
        return [r for r in self.results if r.status.is_failure]

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status.succeeded for r in self.results)
