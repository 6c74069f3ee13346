"""``orchestrate report merge OUT IN...``: shard reports -> one report document.

Machines of a CI matrix or pods of a Kubernetes Indexed Job each run one shard
(``--shard I/N`` / ``--shard auto``) and write a report; merging them gives the one
document a local run would have written (:func:`orchestrator.report.document`'s shape,
each target once), which ``--retry-failed`` accepts.

Merging refuses, naming the targets, when shards **overlap** (a target in two reports, or
twice in one) or leave a **gap** (a target of the selection that no report names). The
selection is the one the shards ran with: ``-n``/``--all``/``--tenant``/``--tenants-from``
when given, else every target of the databases the reports name, as the config declares
them. Reports of different commands are not merged.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.config import Project
from orchestrator.errors import OrchestrateError, SelectionError
from orchestrator.report import MAX_REPORT_BYTES, REPORT_VERSION

#: Targets named in an error before "and N more".
NAMED = 20


class MergeError(OrchestrateError):
    """Shards that overlap or leave a gap: exit 1, naming the targets."""

    exit_code = 1


def read_report(path: Path) -> dict[str, Any]:
    """One shard's report, checked to be an orchestrate report document."""
    limit = int(os.environ.get("ORCHESTRATE_MAX_REPORT_BYTES", MAX_REPORT_BYTES))
    try:
        if not path.is_file():
            raise SelectionError(f"report merge: {path}: not a regular file")
        if path.stat().st_size > limit:
            raise SelectionError(f"report merge: {path}: larger than {limit} bytes",
                                 hint="raise the bound with ORCHESTRATE_MAX_REPORT_BYTES if the report is genuine")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("targets"), list):
            raise TypeError("no `targets` list")
        if data.get("version") != REPORT_VERSION:
            raise ValueError(f"report version {data.get('version')!r}, expected {REPORT_VERSION}")
        for entry in data["targets"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("database"), str) or "status" not in entry:
                raise ValueError("a target entry without `database` or `status`")
    except SelectionError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise SelectionError(f"report merge: {path}: not an orchestrate report ({exc})") from None
    return data


def _name(pair: tuple[str, str | None]) -> str:
    return pair[0] if pair[1] is None else f"{pair[0]}/{pair[1]}"


def _listed(pairs: list[tuple[str, str | None]]) -> str:
    shown = ", ".join(_name(p) for p in pairs[:NAMED])
    return shown + (f" and {len(pairs) - NAMED} more" if len(pairs) > NAMED else "")


def merge(project: Project, paths: list[Path], expected: set[tuple[str, str | None]] | None) -> dict[str, Any]:
    """The merged document of the reports at ``paths``; ``expected``: the (database,
    tenant) pairs the shards together must cover exactly (None: every target of the
    databases they name). Raises :class:`MergeError` on an overlap or a gap."""
    reports = [(path, read_report(path)) for path in paths]
    commands = sorted({str(data.get("command")) for _, data in reports})
    if len(commands) > 1:
        raise SelectionError(f"report merge: the reports are of different commands ({', '.join(commands)})",
                             hint="merge the shards of one run")
    where: dict[tuple[str, str | None], list[str]] = {}
    entries: list[dict[str, Any]] = []
    for path, data in reports:
        for entry in data["targets"]:
            pair = (entry["database"], entry.get("tenant"))
            where.setdefault(pair, []).append(str(path))
            entries.append(entry)
    unknown = sorted({p for p in where if p[0] not in project.databases}, key=_key)
    if unknown:
        raise SelectionError(f"report merge: the reports name databases this config does not declare: "
                             f"{_listed(unknown)}", hint=f"were they written for another config than {project.path}?")
    if expected is None:
        from orchestrator.plan import select

        plan = select(project, tuple(dict.fromkeys(p[0] for p in where)) or (), all_=not where)
        expected = {(t.database.name, t.tenant) for t in plan.targets}
    overlap = sorted((p for p, found in where.items() if len(found) > 1), key=_key)
    gap = sorted(expected - set(where), key=_key)
    extra = sorted(set(where) - expected, key=_key)
    problems = []
    if overlap:
        problems.append(f"{len(overlap)} target{'s' if len(overlap) != 1 else ''} in more than one shard "
                        f"(overlap): {_listed(overlap)}")
    if gap:
        problems.append(f"{len(gap)} target{'s' if len(gap) != 1 else ''} of the selection in no shard (gap): "
                        f"{_listed(gap)}")
    if extra:
        problems.append(f"{len(extra)} target{'s' if len(extra) != 1 else ''} outside the selection: {_listed(extra)}")
    if problems:
        raise MergeError("report merge: " + "; ".join(problems),
                         hint="run every shard of one --shard I/N split (same N, each I once) with the same selection")
    started = [str(d["started_at"]) for _, d in reports if d.get("started_at")]
    finished = [str(d["finished_at"]) for _, d in reports if d.get("finished_at")]
    interrupted = any(bool(d.get("interrupted")) for _, d in reports)
    return {
        "version": REPORT_VERSION,
        "command": commands[0] if commands else "upgrade",
        "config": str(project.path),
        "started_at": min(started) if started else None,
        "finished_at": max(finished) if finished else None,
        "ok": not interrupted and all(bool(d.get("ok")) for _, d in reports),
        "interrupted": interrupted,
        "counts": dict(Counter(str(e["status"]) for e in entries)),
        "targets": entries,
        "merged_from": [str(path) for path, _ in reports],
    }


def _key(pair: tuple[str, str | None]) -> tuple[str, str]:
    return pair[0], pair[1] or ""
