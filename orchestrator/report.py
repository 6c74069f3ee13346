"""Stage 6: results -> what people and machines read (console lines, tables, JSON report)."""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from orchestrator.config import Project
from orchestrator.errors import SelectionError
from orchestrator.results import Outcome, Status, TargetResult
from orchestrator.targets import tenant_names

#: The report document's version; its JSON Schema ships as orchestrator/report.schema.json.
REPORT_VERSION = 2
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
#: Longest --retry-failed report read (ORCHESTRATE_MAX_REPORT_BYTES raises it).
MAX_REPORT_BYTES = 256 * 1024 * 1024

_STYLE = {
    Status.UPGRADED: "green",
    Status.DOWNGRADED: "green",
    Status.STAMPED: "green",
    Status.NOOP: "dim",
    Status.OK: "green",
    Status.DIFFERENT: "yellow",
    Status.FAILED: "bold red",
    Status.LOST: "bold red",
    Status.SKIPPED: "yellow",
    Status.NOT_RUN: "yellow",
}
_WORDS = {Status.NOOP: "up to date", Status.NOT_RUN: "not run"}


def revisions(revs: list[str] | None) -> str:
    """``a, b``; ``base`` for an empty version table; ``unknown`` when it could not be read."""
    if revs is None:
        return "unknown"
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
            extra = f", {result.replayed} replayed" if result.replayed else ""
            if result.replayed and result.live:
                extra += f", live: {'; '.join(f'{n} {why}' for why, n in result.live.items())}"
            line.append(f" ({count} revision{'s' if count != 1 else ''}{extra})", style="dim")
    elif result.status is Status.NOOP:
        line.append(revisions(result.after), style="dim")
    elif result.status.is_failure and result.failed_revision:
        line.append(f"in revision {result.failed_revision}", style="red")
        if result.partial:
            line.append(" (may be partly applied)", style="red")
    line.append(f"  {result.duration:.2f}s", style="dim")
    return line


def print_result(console: Console, result: TargetResult) -> None:
    console.print(target_line(result))
    if result.error and result.status is not Status.NOOP:
        style = "red" if result.status.is_failure else "yellow"
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


def document(command: str, outcome: Outcome, config_path: Path, started: datetime | None = None, *,
             halted: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
             per_target: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The one machine-readable document of every command (``--json``, ``--report``):
    ``version``, the command, and one entry per target (see report.schema.json).

    ``halted`` (a rollout that stopped: its wave and the rule that fired) and ``extra``
    (top-level fields of one command, e.g. ``rollout``) are added when given;
    ``per_target`` adds fields to the entry of each named target (lint, preflight)."""
    now = datetime.now(UTC)
    doc = _document(command, outcome, config_path, started, now)
    if halted is not None:
        doc["halted"] = halted
    for key, value in (extra or {}).items():
        doc.setdefault(key, value)
    if per_target:
        for entry in doc["targets"]:
            entry.update(per_target.get(entry["target"], {}))
    return doc


def _document(command: str, outcome: Outcome, config_path: Path, started: datetime | None,
              now: datetime) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "command": command,
        "config": str(config_path),
        "started_at": (started or now).isoformat(timespec="seconds"),
        "finished_at": now.isoformat(timespec="seconds"),
        "ok": outcome.ok,
        "interrupted": outcome.interrupted,
        "counts": {s.value: n for s, n in Counter(r.status for r in outcome.results).items()},
        "targets": [r.to_json() for r in outcome.results],
    }


def check_writable(path: Path) -> None:
    """Refuse, before a run starts, a --report path that could not be written at its end."""
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # missing folders are created when the report is written
    problem = None
    if path.is_dir():
        problem = "it is a folder"
    elif path.exists() and not path.is_file():
        problem = "it is not a regular file"
    elif not folder.is_dir():
        problem = f"{folder} is not a folder"
    elif not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        problem = "it is not writable"
    if problem:
        raise SelectionError(f"--report {path}: cannot write the report there: {problem}",
                             hint="give a path in a writable folder")


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


class Live:
    """What a person watches during a run: a progress bar in a terminal (failures printed
    above it), one plain line per target otherwise (CI logs), nothing with ``quiet``."""

    def __init__(self, console: Console, total: int, quiet: bool = False) -> None:
        self.console = console
        self.total = total
        self.quiet = quiet
        self.failed = 0
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> Live:
        return self

    def start(self, total: int) -> None:
        """The run's plan is known: show a bar for ``total`` targets (in a terminal)."""
        self.total = total
        if not self.quiet and self.console.is_terminal and self.total > 1:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[red]{task.fields[failed]} failed"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("migrating", total=self.total, failed=0)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_result(self, result: TargetResult) -> None:
        if result.status.is_failure:
            self.failed += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, failed=self.failed)
            print_result(self.console, result)  # printed above the bar
        elif not self.quiet:
            print_result(self.console, result)

    def on_stop(self, reason: str) -> None:
        if not self.quiet:
            self.console.print(Text(
                f"stopping: {reason}; letting running targets finish (Ctrl-C again to abort)", style="yellow"
            ))


def failed_targets(path: Path, project: Project) -> set[tuple[str, str | None]]:
    """The (database, tenant) pairs of an earlier report that did not succeed, each checked
    against the config: a report can only select targets the config declares."""
    limit = int(os.environ.get("ORCHESTRATE_MAX_REPORT_BYTES", MAX_REPORT_BYTES))
    try:
        if not path.is_file():
            raise SelectionError(f"--retry-failed {path}: not a regular file")
        if path.stat().st_size > limit:
            raise SelectionError(
                f"--retry-failed {path}: larger than {limit} bytes",
                hint="raise the bound with ORCHESTRATE_MAX_REPORT_BYTES if the report is genuine",
            )
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise SelectionError(
                f"--retry-failed {path}:{line}: not UTF-8 text "
                f"(byte {exc.start}, 0x{raw[exc.start]:02x}); not an orchestrate report",
                hint="give the JSON report an earlier run wrote with --report",
            ) from None
        data = json.loads(text)
        targets = data["targets"]
        if not isinstance(targets, list):
            raise TypeError("`targets` is not a list")
    except SelectionError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise SelectionError(f"--retry-failed {path}: not an orchestrate report ({_clip(exc)})") from None
    wanted = {Status.FAILED.value, Status.NOT_RUN.value, Status.SKIPPED.value, Status.DIFFERENT.value,
              Status.LOST.value}
    pairs: set[tuple[str, str | None]] = set()
    known: dict[str, set[str]] = {}
    for index, entry in enumerate(targets):
        if not isinstance(entry, dict) or not isinstance(entry.get("status"), str) or entry["status"] not in wanted:
            continue
        where = f"--retry-failed {path}:{_line_of(text, entry, index)}"
        database, tenant = entry.get("database"), entry.get("tenant")
        if not isinstance(database, str) or database not in project.databases:
            raise SelectionError(
                f"{where}: the report names database {database!r}, which this config does not declare",
                hint=f"was it written for another orchestrate.yaml than {project.path}?",
            )
        db = project.databases[database]
        if db.tenants is None:
            if tenant is not None:
                raise SelectionError(f"{where}: `{database}` has no tenants, but the report names tenant {tenant!r}")
        else:
            if not isinstance(tenant, str):
                raise SelectionError(
                    f"{where}: `{database}` is multi-tenant, but the report's entry names no tenant",
                    hint="a report written by orchestrate names each tenant; was the file edited?",
                )
            if database not in known:
                known[database] = set(tenant_names(db))
            if tenant not in known[database]:
                raise SelectionError(
                    f"{where}: tenant {tenant!r} of `{database}` is not declared in {project.path}",
                    hint="only declared tenants are migrated; add it to the config, or remove it from the report",
                )
        pairs.add((database, tenant))
    if not pairs:
        raise SelectionError(f"--retry-failed {path}: nothing to retry, every target in it succeeded")
    return pairs


def _clip(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _line_of(text: str, entry: dict[str, Any], index: int) -> str:
    """The line of a report entry (found by its target name), else its position."""
    name = entry.get("target")
    if isinstance(name, str):
        needle = json.dumps(name)
        at = text.find(f'"target": {needle}')
        if at < 0:
            at = text.find(needle)
        if at >= 0:
            return str(text.count("\n", 0, at) + 1)
    return f"targets[{index}]"


LAGGING_SHOWN = 20


def print_status(console: Console, project: Project, results: list[TargetResult]) -> None:
    """Databases without tenants as one table; each multi-tenant database summarised."""
    shown = list(dict.fromkeys(r.database for r in results))
    fleets = {name for name in shown if project.databases[name].tenants is not None}
    single = [r for r in results if r.database not in fleets]
    if single:
        console.print(status_table(single))
    for name in [n for n in shown if n in fleets]:
        console.print(fleet_summary(name, [r for r in results if r.database == name]))


def fleet_summary(database: str, results: list[TargetResult]) -> Table:
    heads = next((r.head for r in results if r.head is not None), [])
    failed = [r for r in results if r.status is Status.FAILED]
    counts = Counter(tuple(r.after or []) for r in results if r.status is not Status.FAILED)
    table = Table(title=f"{database}: {len(results)} tenants, head {revisions(heads)}", show_edge=False,
                  title_justify="left", title_style="bold")
    table.add_column("revision")
    table.add_column("tenants", justify="right")
    table.add_column("note")
    for revs, count in sorted(counts.items(), key=lambda kv: (list(kv[0]) != heads, -kv[1])):
        at_head = list(revs) == heads
        table.add_row(revisions(list(revs)), str(count), Text("at head" if at_head else "behind",
                                                             style="green" if at_head else "yellow"))
    if failed:
        table.add_row("?", str(len(failed)), Text("could not be read", style="red"))
    lagging = [r for r in results if r.status is not Status.FAILED and r.after != heads]
    if lagging or failed:
        shown = ", ".join(r.tenant or r.target for r in (failed + lagging)[:LAGGING_SHOWN])
        more = len(failed) + len(lagging) - LAGGING_SHOWN
        table.caption = f"not at head: {shown}" + (f" and {more} more (--json lists all)" if more > 0 else "")
        table.caption_justify = "left"
    return table


def status_table(results: list[TargetResult]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("database", "current", "head", "pending", "note"):
        table.add_column(column, justify="right" if column == "pending" else "left")
    for r in results:
        if r.status is Status.FAILED:
            table.add_row(r.target, "?", "", "", Text(r.error or "", style="red"))
            continue
        pending = r.pending or 0
        note = ""
        if r.unversioned_tables:
            note = f"tables but no version table: `orchestrate stamp -n {r.database} head`?"
        elif pending:
            note = "behind"
        table.add_row(
            r.target,
            revisions(r.after or []),
            revisions(r.head or []),
            Text(str(pending), style="yellow" if pending else "green"),
            Text(note, style="yellow") if note else "",
        )
    return table
