"""Search a phrase from the middle of a long run of speech, click the first result: the player stands at the
phrase's first word (within 1 s), not at the start of the run around it.

The reading is spoken by espeak-ng piece by piece (tests/speech_clips.py): the true time of each piece's first
word is known by construction. Whisper hears the pieces as one run of sentences.
"""

from __future__ import annotations

import pytest

from tests import speech_clips
from tests.browser.conftest import running_app, screenshot, wait_for_seek

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PIECES = ["Every morning the crew checks the harbour cranes before the ships come in,",
          "and on the third day of the inspection", "they found a crack in the northern crane's arm,",
          "which is why the whole dock was closed for a week."]
QUERY = "found a crack in the northern crane"


@pytest.fixture(scope="module")
def reading_app(tmp_path_factory, bikes_mp4):
    from app.services import Services
    from app.settings import load_settings

    if not speech_clips.have_espeak():
        pytest.fail("espeak-ng is missing: `make test` installs it (Debian package espeak-ng).")
    folder = tmp_path_factory.mktemp("reading_ui")
    audio, truth = speech_clips.lay_out(PIECES, folder, lead_s=3.0, gap_s=0.1)
    clip = speech_clips.mux(bikes_mp4, audio, folder / "harbour.mp4", size="640:272", fps=25)
    lib = folder / "lib"
    services = Services(load_settings({}, library=str(lib)))
    assert services.index([str(clip)]).done
    services.library.close()
    with running_app(lib) as server:
        yield server, clip, truth


def test_clicking_a_phrase_from_the_middle_of_a_run_seeks_to_its_first_word(reading_app, page):
    (url, _services, _demo), clip, truth = reading_app
    target = truth[2]  # "they found a crack ...": the middle of the run
    run_start = truth[0].onset
    assert target.onset - run_start > 5.0  # the run's start is far from the phrase
    page.goto(url)
    page.get_by_role("tab", name="Search").click()
    page.fill("#search-box textarea", QUERY)
    page.click("#search-button")
    first = page.locator("#filmstrip .moment").first
    first.wait_for()
    start, video = float(first.get_attribute("data-start")), first.get_attribute("data-video")
    assert abs(start - target.onset) <= 1.0, (start, target.onset, first.inner_text())
    first.click()
    state = wait_for_seek(page, video, start)
    assert abs(state["t"] - target.onset) <= 1.0, (state, target.onset)
    screenshot(page, "search-phrase")
