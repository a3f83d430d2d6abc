"""Run every benchmark, check its targets, write the results; exit 1 on any missed target.

Each benchmark is run in its own process with ``--json <file>`` and must write the result
format of ``benchmarks/_result.py``: ``{"benchmark", "targets": [{"name", "value",
"target", "comparison", "unit", "conditions"}], "machine", "details"}``. The runner
decides pass / fail from ``value <comparison> target`` itself; a benchmark that crashes,
times out, or writes no (or a malformed) result counts as failed too, and so does a
``benchmarks/bench_*.py`` that is not registered in :data:`BENCHMARKS` (unless ``--only``).

    .venv/bin/python benchmarks/run_all.py            # full sizes (make benchmarks)
    .venv/bin/python benchmarks/run_all.py --quick    # small sizes, ~10 min on 2 cores
    .venv/bin/python benchmarks/run_all.py --only train metrics
    .venv/bin/python benchmarks/run_all.py --from-json a.json b.json   # check results only

Writes ``<out-dir>/results.json`` (machine, versions, load average at start, every
result, the verdicts), ``<out-dir>/<benchmark>.json`` and ``<out-dir>/summary.md``
(default out-dir: docs/benchmarks, committed so that a regression shows in review).
Timings are noisy on a shared machine, so this is not part of the test command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _result import COMPARISONS, machine, met

from reproseg.io import write_json, write_text

#: name -> (script, full-size arguments, quick arguments). ``--json FILE`` is appended.
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "train": ("bench_train.py", [], ["--rounds", "3", "--steps", "2"]),
    "metrics": ("bench_metrics.py", ["--size", "256"], ["--size", "256"]),  # target size
    "synthetic": ("bench_synthetic.py", ["--size", "256", "--dataset"], ["--size", "96"]),
    "dag": ("bench_dag.py", ["--subjects", "100", "1000", "5000"], ["--subjects", "1000"]),
    "omero_read": (
        "bench_omero_read.py",
        [],
        ["--size-xy", "256", "--size-z", "20", "--repeat", "1"],
    ),
    "preprocess": (
        "bench_preprocess.py",
        [],
        ["--cases", "2", "--shape", "128", "128", "48"],
    ),
    "train_memory": (
        "bench_train_memory.py",
        [],
        ["--cases", "2", "4", "--shape", "96", "96", "48", "--steps", "2", "--reference-max", "0"],
    ),
    "predict": ("bench_predict.py", [], ["--sizes", "60", "--reps", "2", "--threads", "1"]),
    "predict_batch": (
        "bench_predict_batch.py",
        ["--cases", "4", "--slices", "80", "--slice-mm", "2.5", "--target-mm", "1.5"],
        ["--cases", "2", "--slices", "40", "--slice-mm", "5", "--target-mm", "3", "--threads", "1"],
    ),
    "train_compile": ("bench_train_compile.py", [], []),  # full mode only: compiles for minutes
}
QUICK_SKIP = {"train_compile"}
REQUIRED = ("name", "value", "target", "comparison", "unit", "conditions")


def check_result(doc: Any, source: str) -> list[str]:
    """Problems of a result document (empty when well-formed)."""
    if not isinstance(doc, dict):
        return [f"{source}: not a JSON object"]
    targets = doc.get("targets")
    if not isinstance(targets, list) or not targets:
        return [f"{source}: no 'targets' list (every benchmark must state at least one)"]
    problems = []
    for i, t in enumerate(targets):
        missing = [k for k in REQUIRED if not isinstance(t, dict) or k not in t]
        if missing:
            problems.append(f"{source}: target {i} lacks {missing}")
        elif t["comparison"] not in COMPARISONS:
            problems.append(
                f"{source}: target {t['name']!r}: unknown comparison {t['comparison']!r}"
            )
        else:
            try:
                float(t["value"]), float(t["target"])
            except (TypeError, ValueError):
                problems.append(f"{source}: target {t['name']!r}: value/target not numbers")
    return problems


def evaluate(results: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """One row per target (plus one per failed benchmark) and whether everything passed."""
    rows, ok = [], True
    for name, res in results.items():
        problems = list(res.get("problems", [])) + (
            check_result(res["doc"], res["source"]) if res.get("doc") is not None else []
        )
        if res.get("doc") is None and not problems:
            problems = [f"{res['source']}: no result written"]
        if problems:
            ok = False
            rows.append(
                {
                    "benchmark": name,
                    "name": "(benchmark)",
                    "verdict": "ERROR",
                    "note": "; ".join(problems),
                }
            )
            continue
        for t in res["doc"]["targets"]:
            passed = met(t)
            ok &= passed
            rows.append(
                {
                    "benchmark": name,
                    "name": t["name"],
                    "value": float(t["value"]),
                    "target": f"{t['comparison']} {t['target']:g}",
                    "unit": t["unit"],
                    "verdict": "pass" if passed else "MISSED",
                    "note": t["conditions"],
                }
            )
    return rows, ok


def table(rows: list[dict[str, Any]]) -> str:
    """Plain-text summary table (one line per target)."""
    head = f"{'benchmark':<14}{'target':<42}{'value':>12}  {'goal':<12}{'unit':<10}verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        value = f"{r['value']:.4g}" if "value" in r else "-"
        lines.append(
            f"{r['benchmark']:<14}{r['name'][:41]:<42}{value:>12}  {r.get('target', '-'):<12}"
            f"{r.get('unit', '-')[:9]:<10}{r['verdict']}"
        )
        if r["verdict"] == "ERROR":
            lines.append(f"    {r['note'][:400]}")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Machine description: CPU model, cores, memory, versions, load average now."""
    env = machine()
    try:
        kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()
            if line.startswith("MemTotal:")
        )
        env["memory_gb"] = round(kb / 1024**2, 1)
    except (OSError, StopIteration):
        env["memory_gb"] = None
    versions = {"python": platform.python_version()}
    for mod in ("torch", "monai", "numpy", "snakemake"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - an absent package is recorded, not fatal
            versions[mod] = None
    env["versions"] = versions
    env["platform"] = platform.platform()
    return env


def markdown(env: dict[str, Any], rows: list[dict[str, Any]], ok: bool, meta: dict) -> str:
    """The committed summary page."""
    v = env["versions"]
    out = [
        "# Benchmark results",
        "",
        (
            f"Written by `benchmarks/run_all.py{' --quick' if meta['quick'] else ''}` on "
            f"{meta['started']} (UTC); overall: **{'all targets met' if ok else 'TARGETS MISSED'}**."
        ),
        "Timings are wall-clock or CPU seconds on the machine below, shared with other jobs:",
        "read ratios measured within one run rather than absolute seconds."
        + (
            " Quick mode: small sizes, so absolute figures are not the full-size ones."
            if meta["quick"]
            else ""
        ),
        "",
        f"- CPU: {env['cpu']}, {env['cores']} cores, {env['memory_gb']} GB memory",
        (
            f"- load average at start: {', '.join(f'{x:.2f}' for x in meta['loadavg_start'])}"
            f"; at end: {', '.join(f'{x:.2f}' for x in meta['loadavg_end'])}"
        ),
        (
            f"- Python {v['python']}, torch {v['torch']}, MONAI {v['monai']}, NumPy {v['numpy']}, "
            f"Snakemake {v['snakemake']}; {env['platform']}"
        ),
        f"- OMP_NUM_THREADS={meta['omp']}; run time {meta['seconds']:.0f} s",
        "",
        "| benchmark | target | value | goal | unit | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{r['value']:.4g}" if "value" in r else "-"
        out.append(
            f"| {r['benchmark']} | {r['name']} | {value} | {r.get('target', '-')} | "
            f"{r.get('unit', '-')} | {r['verdict']} |"
        )
    out += ["", "## Conditions", ""]
    for r in rows:
        out.append(f"- **{r['benchmark']} / {r['name']}**: {r['note']}")
    out += [
        "",
        "Per-benchmark JSON (details, raw timings): `docs/benchmarks/<benchmark>.json`.",
        "",
    ]
    return "\n".join(out)


def run_one(name: str, quick: bool, out_dir: Path, timeout: float) -> dict[str, Any]:
    """Run one benchmark in a fresh process; its result document (or the problems)."""
    script, full, small = BENCHMARKS[name]
    path = out_dir / f"{name}.json"
    if path.exists():
        path.unlink()  # never report a previous run's figures as this run's
    cmd = [sys.executable, str(HERE / script), *(small if quick else full), "--json", str(path)]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {
            "source": str(path),
            "doc": None,
            "problems": [f"{script}: timed out after {timeout:.0f} s"],
        }
    seconds = time.perf_counter() - t0
    write_text(out_dir / "logs" / f"{name}.log", proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    print(proc.stdout[-1500:], flush=True)
    problems = []
    if proc.returncode != 0:
        problems.append(f"{script}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    doc = None
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"{path}: not JSON ({exc})")
    if isinstance(doc, dict):
        doc["seconds"] = round(seconds, 1)
    print(f"   ({seconds:.0f} s)", flush=True)
    return {"source": str(path), "doc": doc, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (~10 min on 2 cores)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="these benchmarks")
    parser.add_argument("--from-json", nargs="+", type=Path, help="check these result files only")
    parser.add_argument("--out-dir", type=Path, default=HERE.parent / "docs" / "benchmarks")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load0 = list(os.getloadavg())
    env = environment()
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    if args.from_json:
        for p in args.from_json:
            try:
                doc = json.loads(p.read_text(encoding="utf-8"))
                results[str(doc.get("benchmark", p.stem)) if isinstance(doc, dict) else p.stem] = {
                    "source": str(p),
                    "doc": doc,
                }
            except (OSError, json.JSONDecodeError) as exc:
                results[p.stem] = {"source": str(p), "doc": None, "problems": [f"{p}: {exc}"]}
    else:
        names = args.only or [n for n in BENCHMARKS if not (args.quick and n in QUICK_SKIP)]
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            results[name] = run_one(name, args.quick, args.out_dir, args.timeout)
        if not args.only:  # a benchmark the runner does not know is a benchmark nobody enforces
            known = {script for script, _, _ in BENCHMARKS.values()}
            for path in sorted(HERE.glob("bench_*.py")):
                if path.name not in known:
                    results[path.stem] = {
                        "source": str(path),
                        "doc": None,
                        "problems": [f"{path.name}: not registered in run_all.BENCHMARKS"],
                    }
    rows, ok = evaluate(results)
    meta = {
        "quick": args.quick,
        "started": started,
        "loadavg_start": load0,
        "loadavg_end": list(os.getloadavg()),
        "seconds": time.perf_counter() - t0,
        "omp": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
    print()
    print(table(rows))
    print(f"\n{'ALL TARGETS MET' if ok else 'FAILED: a target was missed or a benchmark failed'}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"environment": env, "run": meta, "passed": ok, "rows": rows}
    summary["results"] = {n: r.get("doc") for n, r in results.items()}
    write_json(args.out_dir / "results.json", summary)
    write_text(args.out_dir / "summary.md", markdown(env, rows, ok, meta))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
