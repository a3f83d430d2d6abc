"""The JSON every benchmark writes, so that ``run_all.py`` can enforce its targets.

A result file holds ``{"benchmark": name, "targets": [...], "details": {...}}``; each target
is ``{"name", "value", "target", "comparison", "unit", "conditions"}`` with ``comparison``
one of ``>=``, ``<=``, ``>``, ``<``, ``==``. The runner, not the benchmark, decides
pass / fail from these fields (a benchmark cannot mark itself passed).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from reproseg.io import write_json

COMPARISONS = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    "<": lambda v, t: v < t,
    "==": lambda v, t: v == t,
}


def target(
    name: str, value: float, target: float, comparison: str, unit: str, conditions: str
) -> dict[str, Any]:
    """One measured figure with its goal; ``conditions`` says what was measured, and how."""
    if comparison not in COMPARISONS:
        raise ValueError(f"target {name!r}: unknown comparison {comparison!r}")
    return {
        "name": name,
        "value": float(value),
        "target": float(target),
        "comparison": comparison,
        "unit": unit,
        "conditions": conditions,
    }


def met(t: dict[str, Any]) -> bool:
    """Whether a target dict (as written by :func:`target`) is met."""
    return bool(COMPARISONS[t["comparison"]](float(t["value"]), float(t["target"])))


def machine() -> dict[str, Any]:
    """CPU, cores and load of the machine now (the conditions every timing depends on)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg": list(os.getloadavg())}


def write_result(
    path: str | Path, benchmark: str, targets: list[dict[str, Any]], details: dict[str, Any]
) -> None:
    """Write the result file (atomically, so the runner never reads half a file)."""
    doc = {"benchmark": benchmark, "targets": targets, "machine": machine(), "details": details}
    write_json(Path(path), json.loads(json.dumps(doc, default=str)))
