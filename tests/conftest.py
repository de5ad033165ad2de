"""Session policy for the test suite: with the environment variable CI set, a skipped test fails the run.

CI (`.ci/run` exports CI=1) installs every extra and the system packages they need (scripts/setup.sh dev
franka viz, as root), so a skip there means a test silently did not run: the franka / realsense tests without
franky or pyrealsense2, the HTML report test without chromium, the Rerun tests without rerun-sdk, ... The run
then exits with status 1 and the terminal summary lists every skipped test with its reason. Locally (CI unset, empty, "0", "false",
"no" or "off") skips stay skips. Expected failures (xfail) are not skips.
"""

from __future__ import annotations

import os

import pytest

CI_OFF = {"", "0", "false", "no", "off"}


def ci_enabled() -> bool:
    return os.environ.get("CI", "").strip().lower() not in CI_OFF


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        path, line, message = longrepr
        reason = str(message).removeprefix("Skipped: ")
        return f"{reason} ({path}:{line})"
    return str(longrepr)


class SkipsFailInCI:
    """Collects skipped tests and modules; with CI set, turns a passing exit status into 1 and says why."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:  # a module-level skip (pytest.skip(allow_module_level=True), importorskip)
            self.skipped.append((report.nodeid, _skip_reason(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append((report.nodeid, _skip_reason(report)))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skipped and ci_enabled() and session.exitstatus in (pytest.ExitCode.OK,
                                                                     pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if not (self.skipped and ci_enabled()):
            return
        tr = terminalreporter
        tr.section(f"CI={os.environ.get('CI')!r}: skipped tests fail the run", sep="=", red=True, bold=True)
        for nodeid, reason in self.skipped:
            tr.line(f"SKIPPED {nodeid} - {reason}", red=True)
        tr.line(f"{len(self.skipped)} test(s)/module(s) skipped while CI is set: CI must run every test. Install "
                "what the reasons name (`bash scripts/setup.sh dev franka viz` as root installs the extras and the "
                "system packages), or unset CI to allow skips.", red=True, bold=True)


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("skips-fail-in-ci"):
        config.pluginmanager.register(SkipsFailInCI(), "skips-fail-in-ci")
