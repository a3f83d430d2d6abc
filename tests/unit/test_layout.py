"""The run layout (reproseg.layout) is the one place that spells out the run's paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reproseg import layout

REPO = Path(__file__).resolve().parents[2]
PATTERNS = {
    name: getattr(layout, name)
    for name in layout.__all__
    if name.isupper() and isinstance(getattr(layout, name), str)
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_fill_then_match_gives_the_wildcards_back(name: str) -> None:
    pattern = PATTERNS[name]
    values = {w: f"v{i}" for i, w in enumerate(layout.wildcards_of(pattern))}
    path = layout.fill(pattern, **values)
    if pattern.startswith("results/"):
        assert layout.match(pattern, f"/tmp/run/{path}") == values
        # a results folder with another name fits too
        assert layout.in_results(pattern, "/tmp/out", **values).as_posix().startswith("/tmp/out/")
        assert layout.match(pattern, layout.in_results(pattern, "/tmp/out", **values)) == values


def test_fill_rejects_missing_and_unknown_wildcards() -> None:
    with pytest.raises(ValueError, match="fold"):
        layout.fill(layout.MODEL, model="unet", seed=0)
    with pytest.raises(ValueError, match="name"):
        layout.fill(layout.SPLITS, name="x")


def test_match_rejects_paths_of_other_patterns() -> None:
    assert layout.match(layout.MODEL, "results/models/unet/fold0/seed1/model.pt") == {
        "model": "unet",
        "fold": "0",
        "seed": "1",
    }
    assert layout.match(layout.MODEL, "results/models/unet/fold0/seed1/history.tsv") is None
    assert layout.match(layout.METRICS, "results/eval/unet/ensemble/seed1/metrics.tsv") is None
    assert layout.match(layout.ENSEMBLE_METRICS, "results/eval/unet/ensemble/seed1/metrics.tsv")


def test_rule_files_take_their_paths_from_the_layout() -> None:
    """No rule file spells out a run path (only Snakemake's own benchmark and log files)."""
    literal = re.compile(r"""["']results/(?!benchmarks/)[^"']*["']""")
    offenders = [
        f"{smk.relative_to(REPO)}:{i}: {line.strip()}"
        for smk in [REPO / "workflow" / "Snakefile", *sorted(REPO.glob("workflow/rules/*.smk"))]
        for i, line in enumerate(smk.read_text(encoding="utf-8").splitlines(), 1)
        if literal.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_every_pattern_is_exported() -> None:
    defined = {n for n, v in vars(layout).items() if n.isupper() and isinstance(v, str)}
    assert defined == set(PATTERNS)
