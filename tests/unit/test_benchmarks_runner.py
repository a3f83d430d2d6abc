"""benchmarks/run_all.py enforces targets: a missed target (or a malformed result) fails.

Uses fake result files in the benchmark JSON format, never timings.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def run_all():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake(path: Path, value: float, goal: float = 1.0, comparison: str = ">=") -> Path:
    doc = {
        "benchmark": path.stem,
        "targets": [
            {
                "name": "speed_ratio",
                "value": value,
                "target": goal,
                "comparison": comparison,
                "unit": "x",
                "conditions": "fake result for the runner test",
            }
        ],
        "details": {},
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_missed_target_fails_the_run(run_all, tmp_path: Path, capsys) -> None:
    ok = _fake(tmp_path / "fast.json", 1.5)
    missed = _fake(tmp_path / "slow.json", 0.8)
    out = tmp_path / "out"
    assert run_all.main(["--from-json", str(ok), "--out-dir", str(out)]) == 0
    assert run_all.main(["--from-json", str(ok), str(missed), "--out-dir", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "MISSED" in printed and "FAILED" in printed
    summary = json.loads((out / "results.json").read_text(encoding="utf-8"))
    verdicts = {r["benchmark"]: r["verdict"] for r in summary["rows"]}
    assert verdicts == {"fast": "pass", "slow": "MISSED"}
    assert "TARGETS MISSED" in (out / "summary.md").read_text(encoding="utf-8")


def test_upper_bound_and_malformed_results_fail(run_all, tmp_path: Path) -> None:
    out = tmp_path / "out"
    over = _fake(tmp_path / "memory.json", 1.3, goal=1.2, comparison="<=")
    assert run_all.main(["--from-json", str(over), "--out-dir", str(out)]) == 1
    under = _fake(tmp_path / "memory.json", 1.1, goal=1.2, comparison="<=")
    assert run_all.main(["--from-json", str(under), "--out-dir", str(out)]) == 0
    no_targets = tmp_path / "empty.json"
    no_targets.write_text(json.dumps({"benchmark": "empty", "targets": []}), encoding="utf-8")
    assert run_all.main(["--from-json", str(no_targets), "--out-dir", str(out)]) == 1
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    assert rows[0]["verdict"] == "ERROR" and "targets" in rows[0]["note"]
