"""Stage 6: results -> what people and machines read (console lines, tables, JSON report)."""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.executor import Outcome
from orchestrator.results import Status, TargetResult

REPORT_VERSION = 1

_STYLE = {
    Status.UPGRADED: "green",
    Status.DOWNGRADED: "green",
    Status.STAMPED: "green",
    Status.NOOP: "dim",
    Status.OK: "green",
    Status.DIFFERENT: "yellow",
    Status.FAILED: "bold red",
    Status.SKIPPED: "yellow",
    Status.NOT_RUN: "yellow",
}
_WORDS = {Status.NOOP: "up to date", Status.NOT_RUN: "not run"}


def revisions(revs: list[str]) -> str:
    return ", ".join(revs) if revs else "base"


def target_line(result: TargetResult) -> Text:
    """One line for one target, e.g. ``users  upgraded  base -> 8e21d6f0a5b3 (2 revisions, 0.04s)``."""
    line = Text()
    line.append(f"{result.target:<24} ", style="bold")
    line.append(f"{_WORDS.get(result.status, result.status.value):<13} ", style=_STYLE[result.status])
    if result.status in (Status.UPGRADED, Status.DOWNGRADED, Status.STAMPED):
        line.append(f"{revisions(result.before)} -> {revisions(result.after)}")
        if result.applied:
            count = len(result.applied)
            line.append(f" ({count} revision{'s' if count != 1 else ''})", style="dim")
    elif result.status is Status.NOOP:
        line.append(revisions(result.after), style="dim")
    elif result.status is Status.FAILED and result.failed_revision:
        line.append(f"in revision {result.failed_revision}", style="red")
    line.append(f"  {result.duration:.2f}s", style="dim")
    return line


def print_result(console: Console, result: TargetResult) -> None:
    console.print(target_line(result))
    if result.error and result.status is not Status.NOOP:
        style = "red" if result.status is Status.FAILED else "yellow"
        for text in result.error.splitlines():
            console.print(Text(f"    {text}", style=style))
    if result.hint:
        console.print(Text(f"    hint: {result.hint}", style="cyan"))


def summary(outcome: Outcome) -> str:
    counts = Counter(r.status for r in outcome.results)
    parts = [f"{n} {_WORDS.get(s, s.value)}" for s, n in counts.items()]
    total = len(outcome.results)
    text = f"{total} target{'s' if total != 1 else ''}: " + ", ".join(parts)
    if outcome.interrupted:
        text += " (interrupted)"
    return text


def print_summary(console: Console, outcome: Outcome) -> None:
    style = "green" if outcome.ok else "bold red"
    console.print(Text(summary(outcome), style=style))
    failed = outcome.failed
    if failed and len(outcome.results) > 1:
        console.print(Text("failed:", style="bold red"))
        for result in failed:
            first = (result.error or "").splitlines()[0] if result.error else result.status.value
            console.print(Text(f"  {first}", style="red"))


def report_json(command: str, outcome: Outcome, config_path: Path, started: datetime) -> dict[str, Any]:
    """The machine-readable report of a run (also what ``--report PATH`` writes)."""
    return {
        "version": REPORT_VERSION,
        "command": command,
        "config": str(config_path),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ok": outcome.ok,
        "interrupted": outcome.interrupted,
        "counts": {s.value: n for s, n in Counter(r.status for r in outcome.results).items()},
        "targets": [r.to_json() for r in outcome.results],
    }


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def status_table(results: list[TargetResult]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("database", "tenant", "current", "head", "pending", "note"):
        table.add_column(column, justify="right" if column == "pending" else "left")
    for r in results:
        if r.status is Status.FAILED:
            table.add_row(r.database, r.tenant or "", "?", "", "", Text(r.error or "", style="red"))
            continue
        pending = r.data.get("pending", 0)
        note = ""
        if r.data.get("unversioned_tables"):
            note = f"tables but no version table: `orchestrate stamp -n {r.database} head`?"
        elif pending:
            note = "behind"
        table.add_row(
            r.database,
            r.tenant or "",
            revisions(r.after),
            revisions(r.data.get("head", [])),
            Text(str(pending), style="yellow" if pending else "green"),
            Text(note, style="yellow") if note else "",
        )
    return table
