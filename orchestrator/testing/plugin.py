"""The pytest plugin (entry point ``pytest11: orchestrate = orchestrator.testing.plugin``).

Off unless enabled: ``pytest --orchestrate``, ``orchestrate_tests = true`` in the pytest
ini, or a test module holding a :class:`MigrationTests` object (what ``orchestrate init
--tests`` writes). Enabled, it reads orchestrate.yaml (``--orchestrate-config``, default
``./orchestrate.yaml``) and generates, for every database, the tests of
:data:`orchestrator.testing.checks.CHECKS`, named ``test_<kind>[<database>]``. Servers
for PostgreSQL/MariaDB databases: ``--orchestrate-url NAME=URL`` or
``ORCHESTRATE_TEST_<NAME>_URL``.

Fixtures for tests of your own: ``orchestrate_project`` (the loaded Project),
``empty_target`` (``empty_target("users")`` -> a Scratch on fresh storage, dropped after
the test) and ``orchestrate_runner`` (``orchestrate_runner("users")`` -> a Runner on one).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the plugin loads in every pytest run of the environment: import the engine when used
    from orchestrator.config import Project
    from orchestrator.testing.checks import Kit
    from orchestrator.testing.runner import Runner
    from orchestrator.testing.scratch import Scratch


class MigrationTests:
    """Put one in a test module to have the kit's tests generated there:

        from orchestrator.testing import MigrationTests
        migrations = MigrationTests()          # or MigrationTests("path/to/orchestrate.yaml")
    """

    def __init__(self, config: str | Path | None = None, only: list[str] | None = None) -> None:
        self.config = Path(config) if config is not None else None
        self.only = only  # test kinds to generate (default: all), e.g. ["test_stairway"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("orchestrate", "orchestrate migration tests")
    group.addoption("--orchestrate", action="store_true", default=False,
                    help="Generate migration tests for every database of orchestrate.yaml.")
    group.addoption("--orchestrate-config", default=None, metavar="PATH",
                    help="The orchestrate.yaml the migration tests read (default: ./orchestrate.yaml).")
    group.addoption("--orchestrate-url", action="append", default=[], metavar="NAME=URL",
                    help="A server the tests of database NAME may create databases on "
                         "(or set ORCHESTRATE_TEST_<NAME>_URL).")
    parser.addini("orchestrate_tests", type="bool", default=False,
                  help="Generate orchestrate's migration tests (as --orchestrate does).")


def _enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("orchestrate") or config.getini("orchestrate_tests"))


def _config_path(config: pytest.Config, given: Path | None = None) -> Path:
    option = config.getoption("orchestrate_config")
    if option:
        return Path(option).resolve()
    if given is not None:
        return given.resolve()
    return (config.invocation_params.dir / "orchestrate.yaml").resolve()


def _urls(config: pytest.Config) -> dict[str, str]:
    urls: dict[str, str] = {}
    for item in config.getoption("orchestrate_url") or []:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise pytest.UsageError(f"--orchestrate-url {item!r}: expected NAME=URL")
        urls[name] = url
    return urls


# ---------------------------------------------------------------------- collection


class KitCollector(pytest.Collector):
    """The generated tests of one orchestrate.yaml."""

    def __init__(self, *, tests: MigrationTests, **kw: Any) -> None:
        super().__init__(**kw)
        self.tests = tests

    def collect(self) -> list[pytest.Item]:
        from orchestrator.config import load_project
        from orchestrator.errors import OrchestrateError
        from orchestrator.testing.checks import CHECKS

        path = _config_path(self.config, self.tests.config)
        try:
            project = load_project(path)
        except OrchestrateError as exc:
            raise self.CollectError(f"orchestrate migration tests: {exc.message}") from None
        items: list[pytest.Item] = []
        for database in project.databases:
            for test, (check, applies) in CHECKS.items():
                if self.tests.only is not None and test not in self.tests.only:
                    continue
                if applies(project, database):
                    items.append(KitItem.from_parent(self, name=f"{test}[{database}]", project=project,
                                                     database=database, check=check))
        return items

    class CollectError(Exception):
        pass

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, self.CollectError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class KitItem(pytest.Item):
    """One generated test: a check of :mod:`orchestrator.testing.checks` for one database."""

    def __init__(self, *, project: Project, database: str, check: Callable[[Kit, str], None], **kw: Any) -> None:
        super().__init__(**kw)
        self.project = project
        self.database = database
        self.check = check

    def runtest(self) -> None:
        from orchestrator.testing.checks import Kit
        from orchestrator.testing.scratch import Unavailable

        kit = Kit(self.project, _urls(self.config))
        try:
            self.check(kit, self.database)
        except Unavailable as exc:
            pytest.skip(str(exc))
        finally:
            if kit.notes:
                self.add_report_section("call", "orchestrate", "\n".join(kit.notes))

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        from orchestrator.testing.runner import KitFailure

        if isinstance(excinfo.value, KitFailure):
            return f"{self.name}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"orchestrate {self.name}"


def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Any:
    if isinstance(obj, MigrationTests):
        return KitCollector.from_parent(collector, name=name, tests=obj)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """--orchestrate / orchestrate_tests: the generated tests, unless a module already holds them."""
    if not _enabled(config) or any(isinstance(item, KitItem) for item in items):
        return
    path = _config_path(config)
    try:
        nodeid = str(path.relative_to(config.rootpath))
    except ValueError:
        nodeid = str(path)
    collector = KitCollector.from_parent(session, name=path.name, path=path, nodeid=nodeid, tests=MigrationTests())
    report = collector.ihook.pytest_make_collect_report(collector=collector)
    if report.failed:
        raise pytest.UsageError(str(report.longrepr))
    items[:0] = [item for item in report.result if isinstance(item, pytest.Item)]


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def orchestrate_project(request: pytest.FixtureRequest) -> Project:
    """The project of orchestrate.yaml (``--orchestrate-config``, default ./orchestrate.yaml)."""
    from orchestrator.config import load_project

    return load_project(_config_path(request.config))


@pytest.fixture
def empty_target(request: pytest.FixtureRequest, orchestrate_project: Project) -> Iterator[Callable[..., Scratch]]:
    """``empty_target("users")``: that database on fresh, empty storage of its own dialect
    (skips the test without a server for it); everything is dropped after the test."""
    from orchestrator.testing.scratch import Unavailable, open_scratch

    made: list[Scratch] = []

    def make(name: str, *, with_dependencies: bool = False, replay: bool | None = None) -> Scratch:
        names = [name]
        if with_dependencies:
            names += [d for d in orchestrate_project.databases[name].depends_on if d not in names]
        try:
            scratch = open_scratch(orchestrate_project, names, _urls(request.config), replay=replay)
        except Unavailable as exc:
            pytest.skip(str(exc))
        made.append(scratch)
        return scratch

    yield make
    for scratch in reversed(made):
        scratch.close()


@pytest.fixture
def orchestrate_runner(empty_target: Callable[..., Scratch]) -> Callable[..., Runner]:
    """``orchestrate_runner("users")``: a Runner (upgrade, downgrade, current, schema,
    connection) on that database's fresh empty storage."""

    from orchestrator.testing.runner import Runner

    def make(name: str, **kw: Any) -> Runner:
        return Runner(empty_target(name, **kw))

    return make
