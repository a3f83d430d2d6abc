"""Read the report as a reader would: render it in headless Chromium and check what shows.

The page is built from the hand-made run of tests/fake_run.py (no pipeline needed);
a second test checks the real report of the ``tiny_run`` fixture. A copy of the page gets
a small probe script that records, after load, how many images decoded with a non-zero
natural size; the rendered DOM (``--dump-dom``) is then parsed.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reproseg.report import SECTIONS, build_report
from tests.helpers.system import require_or_skip

from ..fake_run import fake_config, report_inputs

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,3000",
]
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var probe = document.createElement('pre');
  probe.id = 'probe';
  probe.textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; }).length,
    sizes: imgs.map(function (i) { return [i.naturalWidth, i.naturalHeight]; }),
    tables: document.querySelectorAll('table').length,
    sections: Array.from(document.querySelectorAll('section')).map(function (s) { return s.id; })
  });
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture(scope="session", autouse=True)
def _chromium() -> None:
    """Check for Chromium before any other fixture: ``tiny_run`` runs the whole workflow.
    (Session scope: pytest sets up higher-scoped fixtures first, autouse first within one.)"""
    if CHROMIUM is None:
        require_or_skip(
            "chromium is not installed (Debian package 'chromium'; see tests/system_deps.sh)"
        )


def render(page: Path, tmp: Path) -> tuple[dict, str, Path]:
    """(probe result, dumped DOM, screenshot path) of ``page`` in headless Chromium."""
    if CHROMIUM is None:
        require_or_skip(
            "chromium is not installed (Debian package 'chromium'; see tests/system_deps.sh)"
        )
    probed = tmp / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    shot = tmp / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=180,
        check=True,
    )
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.DOTALL)
    assert m, "the probe script did not run: " + dom[-500:]
    return json.loads(html.unescape(m.group(1))), dom, shot


def _check(probe: dict, dom: str, shot: Path, n_images: int) -> None:
    assert probe["images"] >= n_images
    assert probe["decoded"] == probe["images"], probe["sizes"]
    assert all(w > 100 and h > 100 for w, h in probe["sizes"])
    assert [s for s, _ in SECTIONS] == probe["sections"]
    assert probe["tables"] >= 5
    assert re.search(r"<table[^>]*class=\"[^\"]*data", dom) and "Dice" in dom
    assert shot.stat().st_size > 20_000 and shot.read_bytes().startswith(b"\x89PNG")


def test_fixture_report_renders(tmp_path: Path) -> None:
    page = build_report(
        report_inputs(tmp_path / "run"), fake_config(), tmp_path / "run/results/report.html"
    )
    probe, dom, shot = render(page, tmp_path)
    _check(probe, dom, shot, n_images=4)
    assert "DOME record" in dom and "ML reproducibility checklist" in dom


@pytest.mark.slow
def test_pipeline_report_renders(tiny_run: Path, tmp_path: Path) -> None:
    probe, dom, shot = render(tiny_run / "results/report.html", tmp_path)
    _check(probe, dom, shot, n_images=3)
