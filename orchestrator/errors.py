"""The one exception family. Each error carries a message for a person and, where useful, a hint."""
from __future__ import annotations


class OrchestrateError(Exception):
    """Base of every error orchestrate raises on purpose.

    ``message`` says what is wrong, ``hint`` (optional) says how to fix it. The CLI prints
    them as ``error:`` and ``hint:`` lines. ``exit_code`` is what the CLI exits with.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class ConfigError(OrchestrateError):
    """orchestrate.yaml is invalid: the message names the file and line."""

    exit_code = 2


class SelectionError(OrchestrateError):
    """The command line asks for something that does not exist or does not fit (exit 2)."""

    exit_code = 2


class TargetError(OrchestrateError):
    """One target failed: the message names the database (and tenant) and the revision."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        revision: str | None = None,
        lock_timeout: bool = False,
        partial: bool = False,
    ) -> None:
        super().__init__(message, hint)
        self.revision = revision
        #: True when ``revision`` may be partly applied (DDL that is not transactional).
        self.partial = partial
        #: True when the target failed waiting for a lock (so `lock_retries` may retry it).
        self.lock_timeout = lock_timeout
