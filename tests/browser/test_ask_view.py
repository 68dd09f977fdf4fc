"""Ask view: an evidence-only answer (no model loaded) cites moments; clicking a chip loads and seeks that video."""

from __future__ import annotations

import pytest

from tests.browser.conftest import screenshot, yellow_fraction, video_state, wait_for_seek

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_clicking_an_evidence_chip_loads_its_video_and_seeks(indexed_app, page):
    url, _services, _demo = indexed_app
    page.goto(url)
    # put the other video in the player first, so the chip has to switch videos
    page.locator("#videos .moment", has_text="bikes.mp4").click()
    wait_for_seek(page, "bikes.mp4", 0.0)
    page.get_by_role("tab", name="Ask").click()
    page.fill("#question textarea", "when does the screen say thanks for watching?")
    page.click("#ask-button")
    chip = page.locator("#evidence .moment").first
    chip.wait_for(timeout=60_000)
    chat = page.inner_text("#chat")
    assert "search" in chat, f"the agent's search step is not in the chat:\n{chat}"
    assert "no answering model" in chat.lower() or "evidence" in chat.lower(), chat
    start, video = float(chip.get_attribute("data-start")), chip.get_attribute("data-video")
    assert video.endswith("a.mp4") and start >= 1.0, (video, start)
    text = chip.inner_text()
    assert "0:00:0" in text and "text" in text  # H:MM:SS and modality on the chip
    chip.click()
    state = wait_for_seek(page, video, start)
    assert abs(state["t"] - start) <= 1.0
    # and what the player shows is the card itself (its yellow letters), not the slate before it
    assert yellow_fraction(page) > 0.001, "the player's frame does not show the THANKS FOR WATCHING card"
    screenshot(page, "ask")


def test_empty_and_overlong_questions_are_refused_with_a_message(indexed_app, page):
    url, _services, _demo = indexed_app
    page.goto(url)
    page.get_by_role("tab", name="Ask").click()
    page.click("#ask-button")
    page.get_by_text("The question is empty").first.wait_for()
    page.fill("#question textarea", "why " * 1000)
    page.click("#ask-button")
    page.get_by_text("characters long; the limit is").first.wait_for()
    assert video_state(page) is None  # nothing was loaded by a refused question
