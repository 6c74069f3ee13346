"""What happened to each target: the plain objects the runner returns and the report reads."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from orchestrator.targets import Target


class Status(str, Enum):
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"
    STAMPED = "stamped"
    NOOP = "noop"          # nothing to do: already there
    OK = "ok"              # a read-only command succeeded
    DIFFERENT = "different"  # check: models and database differ
    FAILED = "failed"
    SKIPPED = "skipped"    # not attempted because a database it depends on failed
    NOT_RUN = "not_run"    # not attempted because the run stopped early

    @property
    def is_failure(self) -> bool:
        return self in (Status.FAILED, Status.DIFFERENT)


@dataclass
class TargetResult:
    """One target's outcome. ``before``/``after`` are the version table's revisions."""

    target: str
    database: str
    tenant: str | None
    url: str  # always masked
    status: Status
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    duration: float = 0.0
    failed_revision: str | None = None
    error: str | None = None
    hint: str | None = None
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

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
        return out
