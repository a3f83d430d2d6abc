"""The outputs of a run that may differ between two identical runs, and why: ONE list.

Everything a run writes is byte-identical between two runs of the same code, config and
data on the same kind of machine, EXCEPT what :data:`VOLATILE` lists. Each entry names the
reason. A key is either

* a path glob (relative to the Snakemake working directory; ``**`` spans folders): the
  whole file may differ, or
* ``(path glob, field)``: only that field may differ. For ``.json`` files the field is a
  dotted path into the document, ``*`` matching any key or list index
  (``"child_run_ids.*"``), and three selectors of list items: ``[type=T]`` (JSON-LD
  entities of ``@type`` T), ``[id=I]`` (the entity with ``@id`` I) and ``[volatile]``
  (entities whose ``@id`` is a file, relative to the JSON file's folder, that is volatile
  or has volatile fields); a field ending in ``[order]`` makes only the order of that list
  volatile; for ``.tsv`` files it is a column name; for ``.yaml`` a dotted path as JSON.

:func:`compare_runs` applies the list to two working directories; the byte-stability
test (tests/workflow/test_byte_stability.py) and a reproduce tool use it. Adding an entry
is a claim that the value is not scientific: say why in its reason.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

#: Output -> why it may differ between two identical runs.
VOLATILE: dict[str | tuple[str, str], str] = {
    # Files that are records of the execution, not results.
    ".snakemake/**": "Snakemake's own bookkeeping (job metadata, locks, timestamps).",
    "logs/**": "Log lines carry timestamps and durations.",
    "results/benchmarks/**": "Snakemake `benchmark:` files: wall time, CPU time, memory per rule.",
    "results/models/*/fold*/seed*/emissions.json": (
        "codecarbon record of one training job: duration, energy and CO2 are measured "
        "(or estimated from load) and change with machine load."
    ),
    ("results/cache/preprocessed/*/meta.json", "seconds"): (
        "Wall time of preprocessing the case; the cached arrays and the rest of the record "
        "are deterministic."
    ),
    ("results/models/*/fold*/seed*/history.tsv", "seconds"): (
        "Wall time of each epoch; every other column (loss, val_dice, lr) is deterministic."
    ),
    # MLflow: its identifiers are random UUIDs by design, its store records times.
    "results/mlflow/**": (
        "MLflow tracking store: run and model ids are random UUIDs (also in artifact paths), "
        "start/end times are wall-clock."
    ),
    ("results/publish/mlflow.json", "parent_run_id"): "MLflow run id (random UUID).",
    ("results/publish/mlflow.json", "child_run_ids.*"): "MLflow run ids (random UUIDs).",
    ("results/publish/mlflow.json", "logged_model_uri"): "MLflow logged-model id (random).",
    # Pages and packages that show the volatile values above.
    "results/report.html": (
        "Shows each training job's wall time and energy (emissions.json) and links the "
        "MLflow runs by id."
    ),
    ("results/publish/mlflow.json", "tracking_uri"): (
        "With the default local store: a sqlite:/// URI holding the working directory's "
        "absolute path."
    ),
    ("results/publish/mlflow.json", "weights_uri"): (
        "Artifact URI of the weights: contains the MLflow run id (and the local store's path)."
    ),
    # RO-Crate: the files' entities are stable; the execution entities are not.
    ("results/ro-crate-metadata.json", "@graph.[type=CreateAction].@id"): (
        "Identifier of each rule execution (CreateAction): a random UUID."
    ),
    ("results/ro-crate-metadata.json", "@graph.[type=CreateAction].startTime"): (
        "Wall-clock start of a rule job."
    ),
    ("results/ro-crate-metadata.json", "@graph.[type=CreateAction].endTime"): (
        "Wall-clock end of a rule job."
    ),
    ("results/ro-crate-metadata.json", "@graph.[id=./].mentions"): (
        "The root's list of CreateActions, referenced by their random UUIDs."
    ),
    ("results/ro-crate-metadata.json", "@graph.[id=./].datePublished"): (
        "Date the crate was written."
    ),
    ("results/ro-crate-metadata.json", "@graph.[order]"): (
        "Order of the entities: the rule executions are listed as Snakemake finished them, "
        "which varies between runs; a JSON-LD @graph is a set, so only its content is compared."
    ),
    ("results/ro-crate-metadata.json", "@graph.[volatile].sha256"): (
        "Hash of a file that is volatile or has volatile fields (listed here), e.g. "
        "emissions.json, history.tsv."
    ),
    ("results/ro-crate-metadata.json", "@graph.[volatile].contentSize"): (
        "Size of a file that is volatile or has volatile fields (listed here)."
    ),
    "results/ro-crate.zip": (
        "Zip of the run's files including ro-crate-metadata.json and report.html (volatile "
        "fields above); every member is also compared as a file of results/."
    ),
}


def volatile_files() -> dict[str, str]:
    """The whole-file entries of :data:`VOLATILE` (glob -> reason)."""
    return {k: v for k, v in VOLATILE.items() if isinstance(k, str)}


def volatile_fields(path: str) -> list[str]:
    """The fields of ``path`` (relative, ``/``-separated) that :data:`VOLATILE` exempts."""
    return [
        field
        for key in VOLATILE
        if isinstance(key, tuple)
        for glob, field in [key]
        if _match(path, glob)
    ]


def is_volatile(path: str) -> bool:
    """True when the whole file at ``path`` (relative, ``/``-separated) may differ."""
    return any(_match(path, glob) for glob in volatile_files())


def _match(path: str, glob: str) -> bool:
    """fnmatch where ``**`` spans folders and ``*`` stays within one path component."""
    parts, gparts = path.split("/"), glob.split("/")
    return _match_parts(parts, gparts)


def _match_parts(parts: list[str], gparts: list[str]) -> bool:
    if not gparts:
        return not parts
    if gparts[0] == "**":
        return any(_match_parts(parts[i:], gparts[1:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], gparts[0])
        and _match_parts(parts[1:], gparts[1:])
    )


def _split_field(field: str) -> list[str]:
    """Split a dotted field path, keeping ``[...]`` selectors (which may hold dots) whole."""
    parts, depth, cur = [], 0, ""
    for ch in field:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "." and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def _selected(item: Any, head: str, folder: str) -> bool:
    """Whether a list item matches a selector (module docstring)."""
    if head == "*":
        return True
    if not isinstance(item, dict):
        return False
    if head.startswith("[type=") and head.endswith("]"):
        types = item.get("@type")
        return head[6:-1] in (types if isinstance(types, list) else [types])
    if head.startswith("[id=") and head.endswith("]"):
        return item.get("@id") == head[4:-1]
    if head == "[volatile]":
        ident = str(item.get("@id", ""))
        path = f"{folder}/{ident}".lstrip("/")
        return (
            bool(ident)
            and not ident.startswith(("#", "http"))
            and (is_volatile(path) or bool(volatile_fields(path)))
        )
    return False


def _drop(obj: Any, field: list[str], folder: str = "") -> None:
    """Delete the dotted ``field`` from ``obj`` in place (selectors: module docstring)."""
    if not field:
        return
    head, rest = field[0], field[1:]
    if isinstance(obj, dict):
        keys = list(obj) if head == "*" else [head] if head in obj else []
        for k in keys:
            if rest:
                _drop(obj[k], rest, folder)
            else:
                del obj[k]
    elif isinstance(obj, list):
        idx = [
            i
            for i, item in enumerate(obj)
            if (head.isdigit() and i == int(head)) or _selected(item, head, folder)
        ]
        for i in reversed(idx):
            if rest:
                _drop(obj[i], rest, folder)
            else:
                del obj[i]


def _sort(obj: Any, field: list[str]) -> None:
    """Sort the list at the dotted ``field`` by the canonical JSON of its items."""
    for key in field:
        if not isinstance(obj, dict) or key not in obj:
            return
        obj = obj[key]
    if isinstance(obj, list):
        obj.sort(key=lambda item: json.dumps(item, sort_keys=True))


def stable_content(path: Path, rel: str) -> Any:
    """What must be identical in ``path``: its bytes, or its parsed content minus the
    volatile fields when :data:`VOLATILE` lists fields of it."""
    fields = volatile_fields(rel)
    if not fields:
        return path.read_bytes()
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        import pandas as pd

        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        return frame.drop(columns=[f for f in fields if f in frame.columns]).to_csv(
            sep="\t", index=False
        )
    text = path.read_text(encoding="utf-8")
    obj = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
    for field in sorted(fields, key=lambda f: f.endswith(".[order]")):  # order last
        if field.endswith(".[order]"):
            _sort(obj, _split_field(field)[:-1])
        else:
            _drop(obj, _split_field(field), folder)
    return json.dumps(obj, sort_keys=True)


def _files(root: Path) -> Iterator[str]:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            yield p.relative_to(root).as_posix()


def compare_runs(a: str | Path, b: str | Path) -> list[str]:
    """Every difference between two runs' working directories that :data:`VOLATILE` does
    not excuse: files present in one run only, and files whose stable content differs.
    An empty list means the two runs are byte-identical where it matters."""
    a, b = Path(a), Path(b)
    fa = {r for r in _files(a) if not is_volatile(r)}
    fb = {r for r in _files(b) if not is_volatile(r)}
    problems = [f"only in {a}: {r}" for r in sorted(fa - fb)]
    problems += [f"only in {b}: {r}" for r in sorted(fb - fa)]
    for rel in sorted(fa & fb):
        if stable_content(a / rel, rel) != stable_content(b / rel, rel):
            fields = volatile_fields(rel)
            problems.append(
                f"{rel}: differs" + (f" (besides the volatile fields {fields})" if fields else "")
            )
    return problems
