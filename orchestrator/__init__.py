"""orchestrate: run Alembic migrations across many databases and tenants from one orchestrate.yaml."""
from __future__ import annotations

from orchestrator.errors import ConfigError, OrchestrateError, SelectionError, TargetError

__all__ = ["ConfigError", "OrchestrateError", "SelectionError", "TargetError"]
__version__ = "0.1.0"
