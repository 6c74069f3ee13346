"""What the generated ``envs/env.py`` imports: the current target, as Alembic runs it.

orchestrate runs env.py once per target. Before it does, the runner puts the target and,
online, an open connection into ``config.attributes``; :func:`current_target` reads them
back as one object. The runner opens, prepares and closes connections itself (sync and
async drivers alike), so env.py never creates an engine and cannot leak one.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from orchestrator.errors import OrchestrateError
from orchestrator.targets import Target

TARGET_KEY = "orchestrate.target"
CONNECTION_KEY = "connection"
OPTIONS_KEY = "orchestrate.configure_options"
#: The ``-x KEY=VALUE`` arguments of the run, as a JSON list (inherited by spawned workers).
X_ENV = "ORCHESTRATE_X"


def x_arguments() -> list[str]:
    """The run's ``-x`` arguments (``KEY=VALUE`` strings), as the CLI set them."""
    raw = os.environ.get(X_ENV)
    if not raw:
        return []
    try:
        values = json.loads(raw)
    except ValueError:
        return []
    return [str(v) for v in values] if isinstance(values, list) else []


def apply_x_arguments(config: Any) -> None:
    """Put the run's ``-x`` arguments where Alembic reads them (``config.cmd_opts.x``), so
    ``context.get_x_argument()`` works in env.py as it does under the alembic command."""
    values = x_arguments()
    if config.cmd_opts is None:
        config.cmd_opts = argparse.Namespace(x=values)
    else:
        config.cmd_opts.x = values


@dataclass
class EnvTarget:
    """The target env.py is running for, with everything ``context.configure`` needs."""

    target: Target = field(repr=False)
    connection: Connection | None = field(repr=False)
    offline: bool
    runtime_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def database(self) -> str:
        """The database's name in orchestrate.yaml (``users``)."""
        return self.target.database.name

    @property
    def tenant(self) -> str | None:
        return self.target.tenant

    @property
    def schema(self) -> str | None:
        return self.target.schema

    @property
    def dialect(self) -> str:
        """``postgresql``, ``mysql``, ``sqlite``..."""
        return self.target.dialect

    @property
    def metadata(self) -> MetaData | None:
        return self.target.database.metadata

    @property
    def x(self) -> dict[str, str]:
        """The ``-x KEY=VALUE`` arguments of the run (a bare ``-x KEY`` gives ``""``)."""
        return {key: value for key, _, value in (item.partition("=") for item in x_arguments())}

    @property
    def version_table(self) -> str:
        return self.target.database.version_table

    def configure_args(self) -> dict[str, Any]:
        """Arguments for ``context.configure`` that orchestrate owns: where to connect,
        which version table, transactions, and its progress hooks."""
        args: dict[str, Any] = {
            "version_table": self.version_table,
            # Online, a tenant's connection is already pinned to its schema (search_path), so
            # the version table is named without one, like every other table of the tenant;
            # offline, orchestrate heads the script with the search_path to set.
            "version_table_schema": None,
            "transaction_per_migration": self.target.database.transaction_per_migration,
        }
        if self.offline:
            args.update(url=self.target.url, literal_binds=True, dialect_opts={"paramstyle": "named"})
        else:
            args.update(connection=self.connection)
            args.update(self.runtime_options)
        return args


def current_target(context: Any) -> EnvTarget:
    """The target orchestrate is running env.py for (``context`` is ``alembic.context``)."""
    attributes = context.config.attributes
    target = attributes.get(TARGET_KEY)
    if not isinstance(target, Target):
        raise OrchestrateError(
            "this env.py is run by orchestrate, not by the alembic command",
            hint="run `orchestrate upgrade -n NAME` (or --all) instead of `alembic upgrade`",
        )
    offline = bool(context.is_offline_mode())
    return EnvTarget(
        target=target,
        connection=None if offline else attributes.get(CONNECTION_KEY),
        offline=offline,
        runtime_options=dict(attributes.get(OPTIONS_KEY, {})),
    )
