"""The contract every data source fulfils.

A source writes each case's image and label(s) as NIfTI under ``raw_dir`` and returns one
:class:`CaseRecord` per image. ``reproseg.manifest`` then hashes and describes the files;
nothing downstream knows which source produced them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CaseConversionError",
    "CaseRecord",
    "CasesFailed",
    "FailedCase",
]


@dataclass
class CaseRecord:
    """One image with its annotation(s), as produced by a source.

    Paths are relative to the working directory (the Snakemake workdir), so that
    manifests are portable between machines.
    """

    case_id: str
    """Unique, filesystem-safe identifier of the image (e.g. ``liver_007_s1``)."""
    subject_id: str
    """Patient / subject the image belongs to: the grouping unit of the splits."""
    image: str
    """Path of the image NIfTI."""
    label: str
    """Path of the training label NIfTI (primary annotator or consensus)."""
    source_uri: str
    """Where the case came from: ``synthetic:seed=42#case``, a file path, ``omero://host/Image:ID``."""
    annotator: str = "rater0"
    """Annotator of ``label``."""
    rater_labels: dict[str, str] = field(default_factory=dict)
    """Per-annotator label paths, when several annotators exist (annotator -> path)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Extra sample metadata (scanner, has_lesion, acquisition details...); becomes manifest columns."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FailedCase:
    """A case a source found but could not read or convert, kept so that QC reports it.

    Ingest writes it into the manifest (paths of the source files, ``ingest_errors``) instead
    of stopping, so one QC report lists every problem of every case and the QC policy
    (``qc.on_error``) decides for all cases alike.
    """

    case_id: str
    subject_id: str
    image: str
    label: str
    source_uri: str
    problems: list[tuple[str, str]]
    """``(file, problem)`` pairs, one per file that failed."""
    annotator: str = "rater0"
    rater_labels: dict[str, str] = field(default_factory=dict)


class CaseConversionError(ValueError):
    """One case's files failed; ``problems`` holds ``(file, problem)`` for each of them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{file}: {problem}" for file, problem in problems))
        self.problems = problems


class CasesFailed(ValueError):
    """Some cases failed, the others were converted.

    Still a ``ValueError`` with the full message for callers that only want to stop; ingest
    catches it and carries on with ``records`` and ``failed``.
    """

    def __init__(self, message: str, records: list[CaseRecord], failed: list[FailedCase]) -> None:
        super().__init__(message)
        self.records = records
        self.failed = failed
