"""The config model, the committed JSON Schema and the shipped configs agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from reproseg.config import Config, deep_merge, json_schema, load_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_committed_schema_matches_model() -> None:
    committed = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    assert committed == json_schema(), (
        "workflow/schemas/config.schema.yaml is stale: run `reproseg schema > "
        "workflow/schemas/config.schema.yaml`"
    )


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(REPO) for p in (REPO / "config").rglob("*.yaml"))
)
def test_shipped_configs_validate(path: Path) -> None:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    overlay = yaml.safe_load((REPO / path).read_text(encoding="utf-8")) or {}
    merged = deep_merge(base, overlay)
    validate(merged, str(SCHEMA))  # what Snakemake does
    load_config(merged)  # what the library does


def test_default_config_matches_model_defaults() -> None:
    """config.yaml spells out every default, so it documents the real behaviour."""
    from_file = load_config(REPO / "config" / "config.yaml").model_dump()
    assert from_file == Config().model_dump()


def test_every_key_in_default_config_is_commented() -> None:
    lines = (REPO / "config" / "config.yaml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")):
            continue
        key = stripped.split(":")[0]
        # Mapping keys that open a section or a value; a comment above, or in a run of
        # sibling keys directly under a comment, documents it.
        j = i - 1
        while j >= 0 and lines[j].strip() and not lines[j].strip().startswith("#"):
            j -= 1
        assert j >= 0 and lines[j].strip().startswith("#") or key.isdigit(), (
            f"config/config.yaml line {i + 1}: key {key!r} has no comment above it"
        )


def test_unknown_key_is_rejected_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epocs: 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"(?s)bad\.yaml.*epocs"):
        load_config(bad)


def test_labels_need_background() -> None:
    with pytest.raises(ValueError, match="background"):
        Config.model_validate({"labels": {1: "liver"}})
