"""orchestrate's test kit: migration tests for every database of orchestrate.yaml.

The pytest plugin (:mod:`orchestrator.testing.plugin`, registered through the ``pytest11``
entry point) generates, per database: single head, upgrade on an empty database,
stairway (up, down, up per revision, schemas compared), models match migrations,
depends_on order for ``--all``, replay vs live on two sampled tenants, and upgrade from
inside a running event loop. Enable it with ``pytest --orchestrate``, with
``orchestrate_tests = true`` in the pytest ini, or with a :class:`MigrationTests` object in
a test module (``orchestrate init --tests`` writes one).
"""
from __future__ import annotations

import importlib
from typing import Any

from orchestrator.testing.plugin import MigrationTests

#: name -> the module that defines it (imported on first use: the pytest plugin loads this
#: package in every pytest run of the environment, so it stays light).
_LAZY = {
    "CHECKS": "checks", "Kit": "checks", "KitFailure": "runner", "Runner": "runner", "read_schema": "runner",
    "schema_diff": "runner", "Scratch": "scratch", "Unavailable": "scratch", "open_scratch": "scratch",
    "url_variable": "scratch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"orchestrator.testing.{module}"), name)


__all__ = ["MigrationTests", *_LAZY]
