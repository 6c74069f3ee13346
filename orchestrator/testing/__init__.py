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

from orchestrator.testing.checks import CHECKS, Kit
from orchestrator.testing.plugin import MigrationTests
from orchestrator.testing.runner import KitFailure, Runner, read_schema, schema_diff
from orchestrator.testing.scratch import Scratch, Unavailable, open_scratch, scratch, url_variable

__all__ = [
    "CHECKS", "Kit", "KitFailure", "MigrationTests", "Runner", "Scratch", "Unavailable", "open_scratch",
    "read_schema", "schema_diff", "scratch", "url_variable",
]
