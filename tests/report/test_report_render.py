"""The HTML report opens in headless Chromium with every picture decoded, and the PDF pages render.

Data: MSD Task04_Hippocampus labels and images when present (else synthetic Hippocampus-sized volumes);
the "predictions" are those labels perturbed on purpose (medmamba.report.bench.perturb), not model outputs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medmamba.report import build_report
from medmamba.report.bench import make_dataset
from medmamba.report.figures import REF_COLOR

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = ('<script>window.addEventListener("load",()=>{document.title=document.body.scrollHeight+";"+'
         '[...document.images].map(i=>i.complete?i.naturalWidth:-1).join(",")})</script></body></html>')


@pytest.fixture(scope="module")
def comparison_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    ref, preds, images, _ = make_dataset(root / "data", n_cases=6, seed=3)
    return build_report(ref, preds, root / "out", images_dir=images, pdf=True, baseline="netA")


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *HEADLESS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, encoding="utf-8")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)")
def test_html_opens_in_headless_chromium_and_shows_table_plots_overlays(comparison_report, tmp_path):
    page = comparison_report.html.read_text(encoding="utf-8")
    n_images = page.count("<img ")
    assert n_images == 1 + 1 + 6  # box plots, paired Dice plot, one overlay per case
    # 1) every inline picture decodes (naturalWidth > 0) once the page has loaded
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body></html>", PROBE), encoding="utf-8")
    dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path / "profile1").stdout
    title = re.search(r"<title>(\d+);([-\d,]*)</title>", dom)
    assert title, dom[:500]
    height, widths = int(title.group(1)), [int(w) for w in title.group(2).split(",")]
    assert len(widths) == n_images and all(w > 100 for w in widths), widths
    for heading in ("Summary", "Per-label distributions", "Paired per-case differences", "Cases, worst first",
                    "Overlays"):
        assert f">{heading}" in dom
    # 2) a full-page screenshot really shows the overlays: the reference outline colour is on screen
    shot = tmp_path / "report.png"
    _chromium([f"--window-size=1280,{min(height + 50, 16000)}", f"--screenshot={shot}",
               comparison_report.html.as_uri()], tmp_path / "profile2")
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] >= min(height, 16000) - 10
    green = np.all(pixels == np.array([int(REF_COLOR[i:i + 2], 16) for i in (1, 3, 5)]), axis=-1)
    assert green.sum() > 500, "no reference outlines visible in the screenshot"
    top = pixels[: pixels.shape[0] // 4]
    assert (top.min(axis=-1) < 200).mean() > 0.03, "top of the page (tables, box plots) looks empty"


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils not installed (pdftoppm)")
def test_pdf_pages_render(comparison_report, tmp_path):
    info = subprocess.run(["pdfinfo", str(comparison_report.pdf)], capture_output=True, text=True, check=True,
                          encoding="utf-8").stdout
    pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
    # run page, 2 summaries, box plots, mean±std, paired table, paired plot, case table, 2 overlay pages
    assert pages == 10
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(comparison_report.pdf), str(tmp_path / "page")],
                   check=True, timeout=120)
    from PIL import Image

    rendered = sorted(tmp_path.glob("page*.png"))
    assert len(rendered) == pages
    for p in rendered:
        arr = np.asarray(Image.open(p).convert("L"))
        assert arr.std() > 3, f"{p.name} renders blank"
