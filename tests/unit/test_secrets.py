"""Credential values never leave the process (reproseg.secrets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reproseg import secrets


def test_secret_values_skips_short_and_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMERO_PASSWORD", "long-enough-password")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "short")
    monkeypatch.delenv("OMERO_SESSION_KEY", raising=False)
    assert secrets.secret_values() == {"OMERO_PASSWORD": "long-enough-password"}


def test_scan_names_the_file_and_variable_not_the_value(tmp_path: Path) -> None:
    leak = tmp_path / "record.json"
    leak.write_text('{"uri": "https://u:hunter2-secret@host"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"record\.json: contains the value of \$TOKEN") as err:
        secrets.scan_for_secrets([leak], {"TOKEN": "hunter2-secret"})
    assert "hunter2" not in str(err.value)
    secrets.scan_for_secrets([leak], {"TOKEN": "not-in-the-file"})


def test_redact_text_and_uri() -> None:
    assert secrets.redact("login failed for pw=abc123xyz", ["abc123xyz", ""]) == (
        "login failed for pw=***"
    )
    assert secrets.redact_uri("https://alice:s3cret@mlflow.example.org/p?token=abc") == (
        "https://mlflow.example.org/p"
    )
    assert secrets.redact_uri("sqlite:////abs/results/mlflow/mlflow.db") == (
        "sqlite:////abs/results/mlflow/mlflow.db"
    )
