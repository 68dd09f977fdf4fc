"""Search view: a query finds the end card of gradio's a.mp4; clicking the moment seeks the player there."""

from __future__ import annotations

import pytest

from tests.browser.conftest import screenshot, yellow_fraction, wait_for_seek

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_clicking_a_search_result_seeks_the_player_to_its_start(indexed_app, page):
    url, _services, _demo = indexed_app
    page.goto(url)
    page.get_by_role("tab", name="Search").click()
    page.fill("#search-box textarea", "thanks for watching")
    page.click("#search-button")
    first = page.locator("#filmstrip .moment").first
    first.wait_for()
    start, video = float(first.get_attribute("data-start")), first.get_attribute("data-video")
    assert video.endswith("a.mp4"), f"first result is {video}"
    assert "THANKS" in first.inner_text().upper()
    assert start >= 1.0, f"the card appears about 2 s in; a start of {start} would not show the seek"
    # the result shows a real thumbnail served from the library
    assert first.locator("img").count() == 1
    page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=first.locator("img").element_handle(),
                           timeout=10_000)
    first.click()
    state = wait_for_seek(page, video, start)
    assert abs(state["t"] - start) <= 1.0
    # and what the player shows is the card itself (its yellow letters), not the slate before it
    assert yellow_fraction(page) > 0.001, "the player's frame does not show the THANKS FOR WATCHING card"
    # the relevance timeline of the query over that video is drawn
    page.locator("#timeline canvas, #timeline svg").first.wait_for()
    screenshot(page, "search")
