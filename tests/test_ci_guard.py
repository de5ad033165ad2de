"""tests/conftest.py: with CI set a skipped test fails the run; without CI it does not.

Each case runs pytest in a subprocess on a small generated test file in tmp_path, with an empty ini there
(so the repo's pyproject options do not apply) and the repo's conftest loaded as a plugin
(`-p tests.conftest`, importable through PYTHONPATH): the hook under test is the real one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ONE_SKIPPED = """
    import pytest

    def test_runs():
        assert True

    def test_skipped():
        pytest.skip("chromium not installed")
"""
MODULE_SKIPPED = """
    import pytest

    pytest.skip("pyrealsense2 not installed", allow_module_level=True)

    def test_never_collected():
        assert True
"""
NO_SKIP = """
    import pytest

    def test_runs():
        assert True

    @pytest.mark.xfail(reason="known bug", strict=True)
    def test_expected_failure():
        assert False
"""


def run_pytest(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_generated.py").write_text(textwrap.dedent(source))
    (tmp_path / "test_other.py").write_text("def test_other_runs():\n    assert True\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest",
           "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "-q", "-rs", "test_generated.py", "test_other.py"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_the_hook_is_loaded_from_the_repo(tmp_path):
    r = run_pytest(tmp_path, NO_SKIP, ci=None)
    assert r.returncode == 0, r.stdout + r.stderr
    plugins = subprocess.run(
        [sys.executable, "-c", "import tests.conftest as c; print(c.__file__)"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60)
    assert Path(plugins.stdout.strip()) == REPO / "tests" / "conftest.py", plugins.stderr


@pytest.mark.parametrize("source, skipped", [(ONE_SKIPPED, "test_generated.py::test_skipped"),
                                             (MODULE_SKIPPED, "test_generated.py")])
def test_a_skip_fails_the_run_with_ci_and_not_without(tmp_path, source, skipped):
    local = run_pytest(tmp_path, source, ci=None)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "skipped tests fail the run" not in local.stdout

    for value in ("1", "true"):
        ci = run_pytest(tmp_path, source, ci=value)
        assert ci.returncode == 1, ci.stdout + ci.stderr
        assert "skipped tests fail the run" in ci.stdout
        reason = "chromium not installed" if "test_skipped" in skipped else "pyrealsense2 not installed"
        assert f"SKIPPED {skipped} - {reason}" in ci.stdout, ci.stdout

    off = run_pytest(tmp_path, source, ci="0")  # CI=0 / false: a local run
    assert off.returncode == 0, off.stdout + off.stderr


def test_without_skips_ci_passes_and_failures_keep_their_status(tmp_path):
    r = run_pytest(tmp_path, NO_SKIP, ci="1")  # an xfail is not a skip
    assert r.returncode == 0, r.stdout + r.stderr
    failing = ONE_SKIPPED + "\n    def test_fails():\n        assert False\n"
    r = run_pytest(tmp_path, failing, ci="1")
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout + r.stderr
