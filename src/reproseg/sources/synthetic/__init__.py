"""The embedded synthetic CT liver dataset (``source.kind: synthetic``).

Two styles, chosen by ``source.synthetic.style``:

* ``phantom`` (default, :mod:`.phantom`): a fixed-recipe portal-venous phantom with the 8
  Couinaud segments, small and fast, byte-identical per seed; the default ``make run`` data.
* ``randomised`` (:mod:`.randomised`): domain randomisation for synthetic-to-real transfer:
  more organs, liver-shape variation, contrast phases, per-scan HU, textured noise, streaks,
  slice thickness, spacing, slice count, field of view and patient size, each drawn from a
  range set in the config.

:mod:`.dataset` writes either to disk with the same layout; :mod:`.raters` simulates
annotators. See docs/synthetic.md.
"""

from reproseg.sources.synthetic.dataset import (
    cli,
    followup_subjects,
    generate_case,
    generate_dataset,
)
from reproseg.sources.synthetic.phantom import (
    HU_MAX,
    HU_MIN,
    SCANNERS,
    Anatomy,
    Scan,
    SyntheticVolume,
    generate_volume,
    render,
    sample_anatomy,
    sample_scan,
)
from reproseg.sources.synthetic.raters import rater_label

__all__ = [
    "HU_MAX",
    "HU_MIN",
    "SCANNERS",
    "Anatomy",
    "Scan",
    "SyntheticVolume",
    "cli",
    "followup_subjects",
    "generate_case",
    "generate_dataset",
    "generate_volume",
    "rater_label",
    "render",
    "sample_anatomy",
    "sample_scan",
]
