"""Generic code names no organ: class names and descriptions come from the config."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reproseg.aggregate import paper_table
from reproseg.config import Config
from reproseg.metrics import WHOLE_INDEX, case_metrics
from reproseg.publish import bioimageio

SRC = Path(__file__).resolve().parents[2] / "src" / "reproseg"
#: The worked example's own modules, and the config that holds its defaults.
WORKED_EXAMPLE = ("sources/synthetic/", "config.py")
#: Strings that are about the worked example on purpose (the synthetic generator's CLI help).
ALLOWED = {("cli.py", "generate the synthetic CT liver dataset")}


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not documentation (bare string statements)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_generic_modules_name_no_organ() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(WORKED_EXAMPLE):
            continue
        for line, text in _code_strings(path):
            if ("liver" in text.lower() or "couinaud" in text.lower()) and (
                rel,
                text,
            ) not in ALLOWED:
                found.append(f"{rel}:{line}: {text[:60]!r}")
    assert not found, "organ-specific strings in generic code:\n" + "\n".join(found)


def test_whole_foreground_class_takes_the_configured_name() -> None:
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[2:4, 2:6, 2:6] = 2
    labels = {0: "background", 1: "upper_pole", 2: "lower_pole"}
    cfg = Config.model_validate({"labels": labels, "foreground_name": "spleen"})
    rows = case_metrics(ref, ref, (1.0, 1.0, 1.0), cfg.labels, 2.0, whole_name=cfg.foreground_name)
    assert [(r["class_index"], r["class_name"]) for r in rows] == [
        (WHOLE_INDEX, "spleen"),
        (1, "upper_pole"),
        (2, "lower_pole"),
    ]
    # The worked example's default keeps its outputs (and the golden hashes) as they were.
    assert Config().foreground_name == "liver"
    assert case_metrics(ref, ref, (1.0, 1.0, 1.0), labels, 2.0)[0]["class_name"] == "liver"


def test_paper_table_names_the_whole_region_from_the_data() -> None:
    rows = []
    for class_index, name in ((0, "spleen"), (-1, "segments_mean")):
        for metric in ("dice", "hd95_mm", "nsd", "avd_ml"):
            rows.append(
                {
                    "method": "unet",
                    "split": "test",
                    "class_index": class_index,
                    "class_name": name,
                    "metric": metric,
                    "pooled_mean": 0.9,
                    "pooled_std": 0.01,
                    "std_over_folds": 0.02,
                    "std_over_seeds": 0.01,
                    "ci_low": 0.88,
                    "ci_high": 0.92,
                    "n": 3,
                }
            )
    table = paper_table(pd.DataFrame(rows), ["unet"])
    assert list(table["region"]) == ["whole spleen", "segments (mean)"]


def test_model_package_text_comes_from_the_metadata() -> None:
    cfg = Config.model_validate(
        {
            "metadata": {
                "modality": "MR",
                "anatomy": "the spleen",
                "keywords": ["spleen"],
                "citations": [{"text": "A spleen atlas.", "doi": "10.1000/xyz"}],
            }
        }
    )
    cites = bioimageio._citations(cfg)
    assert cites[0] == bioimageio.CITATIONS[0]
    assert cites[1:] == [{"text": "A spleen atlas.", "doi": "10.1000/xyz"}]
    assert bioimageio._intensity_unit(cfg) == ""
    assert bioimageio._intensity_unit(Config()) == " in Hounsfield units"
    # The worked example cites Couinaud from its config, not from the exporter's code.
    assert "Couinaud" in bioimageio._citations(Config())[1]["text"]
    with pytest.raises(ValueError, match="give a doi or a url"):
        Config.model_validate({"metadata": {"citations": [{"text": "No link."}]}})
