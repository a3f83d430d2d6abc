"""System tests that cannot silently disappear.

The SLURM tests (tests/slurm), the browser tests (tests/browser) and the MLflow server tests
(tests/unit/test_publish_mlflow.py) need things outside the Python environment: root to start
a SLURM cluster, Chromium, a local ``mlflow server``. On a developer's machine a test that
lacks them is skipped, with the reason. A CI machine must not pass with those checks gone:
``.ci/run`` sets ``REPROSEG_REQUIRE_SYSTEM_TESTS=1``, under which

- :func:`require_or_skip` fails instead of skipping, and
- :func:`system_skip_to_failure` (called by the ``pytest_runtest_makereport`` hook of
  tests/conftest.py) turns *any* skip of a system test (a ``skipif`` marker, an
  ``importorskip``, a skip in a fixture) into a failure naming the test and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import pytest

#: The environment variable that makes the system tests mandatory.
REQUIRE_VAR = "REPROSEG_REQUIRE_SYSTEM_TESTS"
#: Markers of the system tests; tests/conftest.py adds them by location as well.
SYSTEM_MARKERS = ("slurm", "browser", "mlflow_server")
#: Where the system tests live (relative to tests/): a test here gets its marker.
SYSTEM_LOCATIONS = {
    "slurm": "slurm",
    "browser": "browser",
    "unit/test_publish_mlflow.py": "mlflow_server",
}


def system_tests_required() -> bool:
    """True when ``REPROSEG_REQUIRE_SYSTEM_TESTS`` is set to a true value (1, true, yes)."""
    return os.environ.get(REQUIRE_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def require_or_skip(reason: str) -> NoReturn:
    """Skip the calling test for ``reason``, or fail it when system tests are required."""
    if system_tests_required():
        pytest.fail(
            f"system test cannot run: {reason} ({REQUIRE_VAR}=1: a skip is a failure here; "
            "run tests/system_deps.sh as root, or unset it on a developer machine)",
            pytrace=False,
        )
    pytest.skip(reason)


def system_marker_for(path: str | Path, tests_root: str | Path) -> str | None:
    """The system marker a test file gets from its location under ``tests_root``, if any."""
    try:
        rel = Path(path).resolve().relative_to(Path(tests_root).resolve()).as_posix()
    except ValueError:
        return None
    for prefix, marker in SYSTEM_LOCATIONS.items():
        if rel == prefix or rel.startswith(prefix.rstrip("/") + "/"):
            return marker
    return None


def system_skip_to_failure(item: pytest.Item, report: Any) -> None:
    """Turn the skip ``report`` of a system test into a failure when system tests are required.

    ``report`` is the ``TestReport`` of one phase (setup, call or teardown). A test marked
    ``xfail`` is left alone (its "skip" is an expected failure, not a missing system).
    """
    if not report.skipped or not system_tests_required() or hasattr(report, "wasxfail"):
        return
    markers = [m for m in SYSTEM_MARKERS if item.get_closest_marker(m) is not None]
    if not markers:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"{item.nodeid}: {markers[0]} system test skipped ({reason}) but {REQUIRE_VAR}=1: "
        "a CI run must not pass without it (run tests/system_deps.sh as root)"
    )
