"""A FastAPI app that migrates its databases when it starts, without blocking its loop.

Run it from the repository root (the bundled example: three SQLite files under var/):

    .venv/bin/uvicorn examples.fastapi_app.app:app

or against any project: ``ORCHESTRATE_CONFIG=/path/to/orchestrate.yaml uvicorn ...``.

- At startup, the lifespan awaits :func:`orchestrator.upgrade_async`: every database is
  upgraded (dependencies first, each under its migration lock and lock_timeout) in a
  worker thread, so the event loop stays free. Several replicas starting at once are
  safe: the migration lock lets one migrate each database while the others wait, then
  find it up to date. If a database cannot be migrated the app does not start
  (``MigrationFailed``; passwords are never in its text).
- ``GET /health`` reports each database's revision, its head and how many revisions it
  lags (503 while any lags or cannot be read).
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import orchestrator
from orchestrator.results import Status

REPO = Path(__file__).resolve().parents[2]


def config_path() -> str:
    return os.environ.get("ORCHESTRATE_CONFIG") or str(REPO / "orchestrate.yaml")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    outcome = await orchestrator.upgrade_async(config_path=config_path(), all_=True)
    app.state.migrated = {
        result.target: {"status": result.status.value, "applied": result.applied} for result in outcome.results
    }
    yield


app = FastAPI(title="shop", lifespan=lifespan)


@app.get("/health")
async def health() -> JSONResponse:
    results = (await orchestrator.current_async(config_path())).results
    databases: dict[str, Any] = {}
    for result in results:
        databases[result.target] = {
            "current": result.after,
            "head": result.head,
            "pending": result.pending,
            "error": result.error,
        }
    ok = all(r.status is Status.OK and r.pending == 0 for r in results)
    body = {"ok": ok, "databases": databases, "migrated_at_startup": getattr(app.state, "migrated", {})}
    return JSONResponse(body, status_code=200 if ok else 503)
