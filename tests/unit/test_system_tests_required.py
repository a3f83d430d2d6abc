"""REPROSEG_REQUIRE_SYSTEM_TESTS: a skipped SLURM / browser / MLflow server test fails CI.

The helper is checked directly, and the hook of tests/conftest.py end to end: a copy of it
runs a small pytest session (in a subprocess) with skips of every kind, with and without
the variable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.system import (
    REQUIRE_VAR,
    require_or_skip,
    system_marker_for,
    system_tests_required,
)

REPO = Path(__file__).resolve().parents[2]


def test_require_or_skip_skips_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_VAR, raising=False)
    assert not system_tests_required()
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        require_or_skip("chromium is not installed")
    monkeypatch.setenv(REQUIRE_VAR, "0")
    with pytest.raises(pytest.skip.Exception):
        require_or_skip("no root")


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_require_or_skip_fails_with_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(REQUIRE_VAR, value)
    assert system_tests_required()
    with pytest.raises(pytest.fail.Exception, match=r"system test cannot run: no root .*=1"):
        require_or_skip("no root")


def test_system_marker_by_location(tmp_path: Path) -> None:
    assert system_marker_for(tmp_path / "slurm" / "test_slurm.py", tmp_path) == "slurm"
    assert system_marker_for(tmp_path / "browser" / "test_x.py", tmp_path) == "browser"
    assert (
        system_marker_for(tmp_path / "unit" / "test_publish_mlflow.py", tmp_path) == "mlflow_server"
    )
    assert system_marker_for(tmp_path / "unit" / "test_qc.py", tmp_path) is None
    assert system_marker_for(tmp_path / "slurmish" / "test_x.py", tmp_path) is None
    assert system_marker_for("/elsewhere/slurm/test_x.py", tmp_path) is None


def _session(root: Path) -> None:
    """A test tree with the real conftest hook and one skip of each kind."""
    (root / "conftest.py").write_text(
        (REPO / "tests" / "conftest.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    files = {
        "slurm/test_cluster.py": (
            "import pytest\n"
            "@pytest.fixture\n"
            "def cluster():\n"
            "    pytest.skip('slurmctld missing')\n"
            "def test_on_cluster(cluster):\n"
            "    pass\n"
            "@pytest.mark.xfail(reason='known', strict=True)\n"
            "def test_expected_failure():\n"
            "    assert False\n"
        ),
        "browser/test_page.py": (
            "import pytest\n"
            "@pytest.mark.skipif(True, reason='chromium missing')\n"
            "def test_render():\n"
            "    pass\n"
        ),
        "unit/test_publish_mlflow.py": (
            "import pytest\n"
            "def test_server():\n"
            "    pytest.importorskip('no_such_mlflow_module_here')\n"
        ),
        "unit/test_plain.py": (
            "import pytest\ndef test_optional():\n    pytest.skip('an ordinary optional test')\n"
        ),
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _run(root: Path, required: bool) -> tuple[int, str]:
    env = dict(os.environ)
    env.pop(REQUIRE_VAR, None)
    if required:
        env[REQUIRE_VAR] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _counts(out: str) -> dict[str, int]:
    summary = out.strip().splitlines()[-1]
    return {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", summary)}


def test_hook_turns_system_skips_into_failures(tmp_path: Path) -> None:
    _session(tmp_path)
    rc, out = _run(tmp_path, required=False)
    assert rc == 0, out
    assert _counts(out) == {"skipped": 4, "xfailed": 1}, out

    rc, out = _run(tmp_path, required=True)
    assert rc == 1, out
    # The three system tests fail, naming themselves and their skip reason (a skip during
    # setup, from a skipif marker or a fixture, is reported as an error; one in the test
    # body as a failure); the ordinary optional test stays skipped, the xfail expected.
    assert _counts(out) == {"failed": 1, "skipped": 1, "xfailed": 1, "errors": 2}, out
    for nodeid, reason in [
        ("slurm/test_cluster.py::test_on_cluster", "slurmctld missing"),
        ("browser/test_page.py::test_render", "chromium missing"),
        ("unit/test_publish_mlflow.py::test_server", "no_such_mlflow_module_here"),
    ]:
        assert re.search(rf"{re.escape(nodeid)}: \w+ system test skipped \(.*{reason}", out), (
            nodeid,
            out,
        )
    assert "an ordinary optional test" in out


def _deps(tmp_path: Path, uid: int, apt_ok: bool, **env: str) -> subprocess.CompletedProcess:
    """Run tests/system_deps.sh with fake ``id``, ``sudo`` and ``apt-get`` first on PATH.

    Nothing is installed: the fake apt-get only records its call (or fails).
    """
    import shutil

    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    log = tmp_path / "apt.log"
    scripts = {
        "id": f"#!/bin/sh\necho {uid}\n",
        "sudo": "#!/bin/sh\nexit 1\n",  # no passwordless sudo
        "apt-get": f'#!/bin/sh\necho "$@" >> {log}\nexit {0 if apt_ok else 100}\n',
    }
    for name, text in scripts.items():
        (fake / name).write_text(text, encoding="utf-8")
        (fake / name).chmod(0o755)
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run(
        [bash, str(REPO / "tests" / "system_deps.sh")],
        env={"PATH": str(fake), **env},  # no chromium on this PATH: something is missing
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_system_deps_fails_when_it_cannot_install(tmp_path: Path) -> None:
    not_root = _deps(tmp_path, 1000, apt_ok=True)
    assert not_root.returncode == 1, not_root.stderr
    assert "missing" in not_root.stderr and "chromium" in not_root.stderr
    assert "not root" in not_root.stderr
    assert not (tmp_path / "apt.log").exists()
    # A developer may opt out explicitly, but never under the CI variable.
    allowed = _deps(tmp_path, 1000, apt_ok=True, REPROSEG_ALLOW_MISSING_SYSTEM_DEPS="1")
    assert allowed.returncode == 0 and "will be skipped" in allowed.stderr
    ci = _deps(
        tmp_path,
        1000,
        apt_ok=True,
        REPROSEG_ALLOW_MISSING_SYSTEM_DEPS="1",
        REPROSEG_REQUIRE_SYSTEM_TESTS="1",
    )
    assert ci.returncode == 1, ci.stderr
    # Root, but apt-get fails (offline mirror): an error too.
    apt_fails = _deps(tmp_path, 0, apt_ok=False)
    assert apt_fails.returncode == 1 and "apt-get update failed" in apt_fails.stderr
    # Root, apt-get "succeeds" but the commands are still absent: an error, not a pass.
    silent = _deps(tmp_path, 0, apt_ok=True)
    assert silent.returncode == 1 and "still missing after installing" in silent.stderr
    assert "install -y" in (tmp_path / "apt.log").read_text(encoding="utf-8")
