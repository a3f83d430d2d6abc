"""Dry-run DAG construction at study scale, and SLURM jobs with grouping on vs off.

For a study of N subjects x K folds x S seeds x M models (default: 100 / 1,000 / 5,000
subjects x 5 x 3 x 2), this builds the workflow's full DAG with ``snakemake --dry-run`` in a
temporary directory, without generating any image: the upstream outputs the DAG may read
(manifest, QC report, splits) are written as small fake files for N subjects.

It prints, per N:

- ``dag_s``: wall seconds of the whole ``snakemake -n`` (start-up, parsing, DAG, scheduling
  plan); ``cpu_s``: its CPU seconds (user + system), steadier on a loaded machine;
- ``startup_s`` / ``startup_cpu``: the same command for one upstream target (start-up +
  parsing only), so that ``dag_s - startup_s`` is the part that grows with the study;
- ``jobs``: jobs in the DAG; ``sbatch_ungrouped``: SLURM submissions without grouping
  (every job except local rules); ``sbatch_grouped``: submissions with the ``groups`` /
  ``group-components`` of profiles/slurm/config.yaml;
- ratios against the smallest study.

Target (issue 7): at most 10 s at 1,000 subjects. Timings are wall-clock on a shared,
noisy machine: read them as ratios within one run (``--repeat`` takes the best of R runs).

    .venv/bin/python benchmarks/bench_dag.py                    # 100, 1000, 5000 subjects
    .venv/bin/python benchmarks/bench_dag.py --subjects 1000 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _result import target, write_result

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
#: Rules Snakemake runs on the submitting node rather than through sbatch.
TARGET_ONLY_RULES = {"all"}


def study_config(n_subjects: int, folds: int, seeds: int, models: int) -> dict[str, Any]:
    """Config overlay of config/config.yaml describing the study."""
    archs = [
        ("unet", {"arch": "UNet"}),
        ("segresnet", {"arch": "SegResNet"}),
        ("unet_res", {"arch": "UNet", "num_res_units": 2}),
    ]
    if not 1 <= models <= len(archs):
        raise ValueError(f"--models: between 1 and {len(archs)}, got {models}")
    return {
        "run_name": f"bench-{n_subjects}",
        "source": {"kind": "synthetic", "synthetic": {"n_subjects": n_subjects}},
        "split": {"k": folds},
        "train": {"seeds": list(range(seeds)), "models": dict(archs[:models])},
    }


def fake_upstream(workdir: Path, n_subjects: int, folds: int) -> None:
    """Small manifest / QC / splits files for N subjects (no images), as ingest/qc/split write them."""
    rows = []
    for s in range(n_subjects):
        for scan in range(1 + (s % 3 == 0)):  # a third of the subjects have a follow-up scan
            case = f"sub{s:05d}_scan{scan}"
            rows.append(
                {
                    "case_id": case,
                    "subject_id": f"sub{s:05d}",
                    "image": f"results/data/raw/images/{case}.nii.gz",
                    "label": f"results/data/raw/labels/{case}.nii.gz",
                    "annotator": "rater1",
                    "raters": "rater1",
                    "rater_labels": f"rater1=results/data/raw/labels/{case}.nii.gz",
                    "shape": "64,64,64",
                    "spacing": "1.5,1.5,2.5",
                }
            )
    header = list(rows[0])
    tsv = "\t".join(header) + "\n" + "".join("\t".join(r[h] for h in header) + "\n" for r in rows)
    data = workdir / "results" / "data"
    data.mkdir(parents=True)
    (data / "manifest.tsv").write_text(tsv, encoding="utf-8")
    sha = hashlib.sha256(tsv.encode()).hexdigest()
    (data / "manifest.json").write_text(
        json.dumps({"rows": rows, "manifest_sha256": sha}), encoding="utf-8"
    )
    (workdir / "results" / "qc").mkdir(parents=True)
    (workdir / "results" / "qc" / "qc.json").write_text(
        json.dumps({"ok": True, "n_cases": len(rows), "errors": [], "warnings": [], "excluded": []})
    )
    subjects = sorted({r["subject_id"] for r in rows})
    n_test = max(1, len(subjects) // 5)
    test, rest = subjects[:n_test], subjects[n_test:]
    cases = {s: [r["case_id"] for r in rows if r["subject_id"] == s] for s in subjects}
    fold_list = []
    for f in range(folds):
        val = rest[f::folds]
        train = [s for s in rest if s not in set(val)]
        fold_list.append(
            {
                "fold": f,
                "train_subjects": train,
                "train_cases": [c for s in train for c in cases[s]],
                "val_subjects": val,
                "val_cases": [c for s in val for c in cases[s]],
            }
        )
    splits = {
        "method": "grouped-hash-v1",
        "k": folds,
        "manifest_sha256": sha,
        "test": {"subjects": test, "cases": [c for s in test for c in cases[s]]},
        "folds": fold_list,
    }
    splits["sha256"] = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()
    (workdir / "results" / "splits").mkdir(parents=True)
    (workdir / "results" / "splits" / "splits.json").write_text(
        json.dumps(splits), encoding="utf-8"
    )


def slurm_grouping_args() -> list[str]:
    """``--groups`` / ``--group-components`` arguments from profiles/slurm/config.yaml."""
    profile = yaml.safe_load(
        (REPO / "profiles" / "slurm" / "config.yaml").read_text(encoding="utf-8")
    )
    args: list[str] = []
    if profile.get("groups"):
        args += ["--groups", *[f"{r}={g}" for r, g in profile["groups"].items()]]
    if profile.get("group-components"):
        args += [
            "--group-components",
            *[f"{g}={n}" for g, n in profile["group-components"].items()],
        ]
    return args


def dry_run(workdir: Path, overlay: Path, *args: str) -> tuple[float, str, float]:
    """Run ``snakemake --dry-run``; return (wall seconds, stdout, CPU seconds).

    CPU seconds (user + system of the child) are less sensitive than wall-clock time to
    other load on a shared machine.
    """
    cmd = [
        str(SNAKEMAKE),
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(overlay),
        "--cores", "1",
        "--dry-run",
        *args,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return seconds, proc.stdout, cpu


def count_submissions(dry_run_stdout: str) -> tuple[int, int]:
    """(jobs, SLURM submissions) from a dry run's job listing.

    A top-level ``rule X:`` is one submission, a ``Group job`` header one submission for all
    its indented jobs; ``localrule`` jobs and target-only rules run on the submitting node.
    """
    jobs = submissions = 0
    for line in dry_run_stdout.splitlines():
        if re.match(r"^\[.*\] Group job ", line):
            submissions += 1
            continue
        m = re.match(r"^(\s*)(?:\[.*\]\s*)?(local)?rule (\w+):", line)
        if not m:
            continue
        jobs += 1
        if not m.group(1) and not m.group(2) and m.group(3) not in TARGET_ONLY_RULES:
            submissions += 1
    return jobs, submissions


def has_checkpoints() -> bool:
    """Whether the workflow uses data-dependent checkpoints (then the DAG is not forced)."""
    return any(
        re.search(r"^checkpoint \w+:", p.read_text(encoding="utf-8"), flags=re.MULTILINE)
        for p in (REPO / "workflow" / "rules").glob("*.smk")
    )


def bench(n_subjects: int, folds: int, seeds: int, models: int, repeat: int) -> dict[str, Any]:
    """Measure one study size."""
    with tempfile.TemporaryDirectory(prefix=f"bench_dag_{n_subjects}_") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        overlay = Path(tmp) / "study.yaml"
        overlay.write_text(yaml.safe_dump(study_config(n_subjects, folds, seeds, models)))
        fake_upstream(work, n_subjects, folds)
        # Without checkpoints every job is planned (-F); with them, the fake upstream files
        # stand in for the checkpoint outputs and everything downstream is planned.
        force = [] if has_checkpoints() else ["--forceall"]
        times, cpus, out = [], [], ""
        for _ in range(repeat):
            seconds, out, cpu = dry_run(work, overlay, *force)
            times.append(seconds)
            cpus.append(cpu)
        jobs, ungrouped = count_submissions(out)
        _, out_grouped, _ = dry_run(work, overlay, *force, *slurm_grouping_args())
        _, grouped = count_submissions(out_grouped)
        startup = [
            dry_run(work, overlay, "--forceall", "results/data/manifest.tsv") for _ in range(repeat)
        ]
    return {
        "subjects": n_subjects,
        "dag_s": min(times),
        "dag_cpu_s": min(cpus),
        "startup_s": min(r[0] for r in startup),
        "startup_cpu_s": min(r[2] for r in startup),
        "jobs": jobs,
        "sbatch_ungrouped": ungrouped,
        "sbatch_grouped": grouped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="best of R timings")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    rows = [bench(n, args.folds, args.seeds, args.models, args.repeat) for n in args.subjects]
    base = rows[0]
    print(
        f"Dry-run DAG: subjects x {args.folds} folds x {args.seeds} seeds x {args.models} models"
        f"{' (checkpoints: downstream of the fake upstream)' if has_checkpoints() else ''}"
    )
    head = (
        f"{'subjects':>8} {'dag_s':>7} {'cpu_s':>6} {'startup_s':>9} {'startup_cpu':>11} "
        f"{'dag/base':>8} {'jobs':>6} {'sbatch':>7} {'grouped':>7} {'saved':>6}"
    )
    print(head)
    for r in rows:
        saved = 1 - r["sbatch_grouped"] / r["sbatch_ungrouped"] if r["sbatch_ungrouped"] else 0.0
        print(
            f"{r['subjects']:>8} {r['dag_s']:>7.2f} {r['dag_cpu_s']:>6.2f} {r['startup_s']:>9.2f} "
            f"{r['startup_cpu_s']:>11.2f} {r['dag_s'] / base['dag_s']:>8.2f} {r['jobs']:>6} "
            f"{r['sbatch_ungrouped']:>7} {r['sbatch_grouped']:>7} {saved:>6.0%}"
        )
    at_1000 = [r for r in rows if r["subjects"] == 1000]
    if at_1000:
        verdict = "OK" if at_1000[0]["dag_s"] <= 10 else "OVER TARGET"
        print(f"1,000 subjects: {at_1000[0]['dag_s']:.2f} s (target <= 10 s): {verdict}")
    if args.json:
        largest = max(rows, key=lambda r: r["subjects"])
        ref = at_1000[0] if at_1000 else largest
        cond = (
            f"snakemake --dry-run of {ref['subjects']} subjects x {args.folds} folds x "
            f"{args.seeds} seeds x {args.models} models (fake upstream files), best of "
            f"{args.repeat}; CPU seconds (user + system) of the snakemake process incl. "
            f"start-up, because wall-clock on a shared machine measures the load (wall here: "
            f"{ref['dag_s']:.1f} s at load {os.getloadavg()[0]:.1f})"
        )
        targets = [
            target(
                f"dag_cpu_s_{ref['subjects']}_subjects", ref["dag_cpu_s"], 10.0, "<=", "CPU s", cond
            )
        ]
        write_result(args.json, "dag", targets, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
