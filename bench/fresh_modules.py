"""What fresh revision modules per target cost (issue 15), in ms per revision per target.

orchestrate executes every revision a target runs into a module of its own (the file is
compiled once per process; ``ScriptCache.fresh``), where it used to run every target of a
process on the modules its versions folder was loaded with ("warm" modules). This script
measures the difference on the benchmark's 40-revision history (bench/history.py) and a
fleet of SQLite tenants on tmpfs:

- **step**: ``ScriptCache.fresh`` alone over the 40-step plan, once per target (the first
  target of a process reuses the loaded modules, so targets 2..N are timed): the pure cost.
- **upgrade**: ``orchestrate upgrade`` (the command layer, serial, in this process) of N empty
  tenants to head, with fresh modules (the default) and with warm modules (``fresh`` patched
  to hand the steps back unchanged); the
  difference per tenant, divided by the 40 revisions (median of ``--repeat`` runs each,
  alternated; CPU time of this process, and wall time).

    .venv/bin/python bench/fresh_modules.py [--tenants 50] [--repeat 3] [--sqlite-dir /dev/shm]
"""
from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from history import write_history  # noqa: E402

from orchestrator import commands, scripts  # noqa: E402
from orchestrator.commands import RunOptions, Selection  # noqa: E402
from orchestrator.config import activate, load_project  # noqa: E402
from orchestrator.operations import Workspace  # noqa: E402

CONFIG = """\
databases:
  sq:
    url: sqlite:///{folder}/{{tenant}}.db
    version_path: versions/app
    tenants:
      mode: database
      file: tenants.txt
"""


@contextmanager
def warm_modules() -> Iterator[None]:
    """Run every target on the modules the versions folder was loaded with (the old way)."""
    original = scripts.ScriptCache.fresh
    scripts.ScriptCache.fresh = lambda self, database, steps: steps  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        scripts.ScriptCache.fresh = original  # type: ignore[method-assign]


def time_steps(project: Any, targets: int) -> tuple[float, int]:
    """Seconds ScriptCache.fresh takes for ``targets`` targets after the first; the plan's length."""
    ws = Workspace(project)
    database = project.databases["sq"]
    script = ws.scripts.script(database)
    plan = scripts.steps(script, "heads", (), True)
    ws.scripts.fresh(database, plan)  # the first target: the loaded modules
    started = time.perf_counter()
    for _ in range(targets - 1):
        ws.scripts.fresh(database, plan)
    return time.perf_counter() - started, len(plan)


def time_upgrade(project: Any, folder: Path, tenants: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one serial upgrade of every tenant from empty, in this process."""
    for path in folder.glob("*.db"):
        path.unlink()
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    result = commands.upgrade(project, Selection(names=("sq",)), RunOptions(parallel=1))
    elapsed = (time.perf_counter() - started, time.process_time() - cpu)
    bad = [r for r in result.outcome.results if r.status.value != "upgraded"]
    if bad or len(result.outcome.results) != tenants:
        raise SystemExit(f"the upgrade did not do the whole work: {bad[:1]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sqlite-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="orch_fid_bench_"))
    folder = Path(tempfile.mkdtemp(prefix="orch_fid_tenants_", dir=args.sqlite_dir))
    try:
        ids = write_history(root / "versions" / "app")
        (root / "tenants.txt").write_text("".join(f"t{i:05d}\n" for i in range(args.tenants)), encoding="utf-8")
        (root / "orchestrate.yaml").write_text(CONFIG.format(folder=folder), encoding="utf-8")
        from orchestrator.scaffold import init as scaffold_init

        scaffold_init((root / "orchestrate.yaml").resolve(), force=True)
        project = load_project(root / "orchestrate.yaml")
        activate(project)

        started = time.perf_counter()
        for path in sorted((root / "versions" / "app").glob("*.py")):
            scripts.compiled(path)
        compile_ms = (time.perf_counter() - started) * 1000

        steps_seconds, revisions = time_steps(project, args.tenants)
        step_ms = steps_seconds * 1000 / (args.tenants - 1) / revisions

        runs: dict[str, list[tuple[float, float]]] = {"fresh": [], "warm": []}
        modes: dict[str, Callable[[], Any]] = {"fresh": contextmanager(lambda: iter([None])), "warm": warm_modules}
        time_upgrade(project, folder, args.tenants)  # warm-up: imports, first connections
        for turn in range(args.repeat):
            for mode in (("fresh", "warm") if turn % 2 else ("warm", "fresh")):  # alternated
                with modes[mode]():
                    runs[mode].append(time_upgrade(project, folder, args.tenants))
        # per tenant, ms: the median run's wall and CPU time
        wall = {mode: statistics.median(w for w, _ in times) * 1000 / args.tenants for mode, times in runs.items()}
        cpu = {mode: statistics.median(c for _, c in times) * 1000 / args.tenants for mode, times in runs.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)

    print(f"history: {len(ids)} revisions; fleet: {args.tenants} SQLite tenants in {folder.parent}")
    print(f"compiling the {len(ids)} files once per process: {compile_ms:.1f} ms")
    print("")
    print("| measure | warm modules | fresh modules | cost of fresh modules |")
    print("|---|---|---|---|")
    print(f"| ScriptCache.fresh alone, per revision per target | - | {step_ms:.3f} ms | {step_ms:.3f} ms |")
    for label, figures in (("CPU", cpu), ("wall", wall)):
        extra = figures["fresh"] - figures["warm"]
        print(f"| upgrade, {label} ms per tenant ({revisions} revisions) | {figures['warm']:.1f} | "
              f"{figures['fresh']:.1f} | {extra:+.1f} ms per tenant = {extra / revisions:+.3f} ms per revision "
              f"({(figures['fresh'] / figures['warm'] - 1) * 100:+.1f}%) |")
    print(f"\nmedian of {args.repeat} runs per mode, alternated; the CPU figure is the one that holds on a busy machine")

if __name__ == "__main__":
    main()
