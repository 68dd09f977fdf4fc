"""The player on files a browser cannot play: an MPEG-TS remux and an AVI (MPEG-4 + MP3) of the same end card
(tests/media_variants.py: gradio's a.mp4 card, "THANKS FOR WATCHING" from about 2 s). Both are indexed by the real
indexer; clicking an on-screen-text search result loads the video's proxy, plays it and stands at the moment.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.browser.conftest import SCREENSHOTS, running_app, wait_for_index, yellow_fraction
from tests.media_variants import make_source, make_variant

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def proxy_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("proxy-clips")
    source = make_source(folder / "made")
    clips = [make_variant(source, kind, folder).path for kind in ("mpegts", "avi")]
    with running_app(tmp_path_factory.mktemp("proxy-lib")) as (url, services, demo):
        services.index_worker.submit([str(c) for c in clips])
        wait_for_index(services, timeout=300)
        yield url, services, {c.suffix: c for c in clips}


def _wait_playing_at(page, proxy: Path, start: float, timeout: float = 20.0) -> dict:
    deadline, state = time.time() + timeout, None
    while time.time() < deadline:
        state = page.evaluate("""() => { const v = document.querySelector('#player video');
            return v ? {src: decodeURIComponent(v.currentSrc || v.src), t: v.currentTime, ready: v.readyState,
                        seeking: v.seeking, error: v.error ? v.error.code : null, width: v.videoWidth} : null; }""")
        if (state and state["src"].endswith(str(proxy)) and state["ready"] >= 2 and not state["seeking"]
                and state["error"] is None and abs(state["t"] - start) <= 1.0):
            return state
        time.sleep(0.1)
    raise AssertionError(f"the player did not stand at {start:.2f} s of {proxy.name}: last state {state}")


@pytest.mark.parametrize("suffix", [".ts", ".avi"])
def test_a_search_result_of_a_file_the_browser_cannot_play_plays_its_proxy(proxy_app, page, suffix):
    url, services, clips = proxy_app
    from storage import catalog

    row = next(r for r in catalog.videos(services.library) if r.path == str(clips[suffix]))
    assert row.proxy is not None and row.proxy.is_file(), f"{row.name} has no proxy: {row.stages}"
    page.goto(url)
    page.get_by_role("tab", name="Search").click()
    page.fill("#search-box textarea", "thanks for watching")
    page.click("#search-button")
    page.locator("#filmstrip .moment").first.wait_for()
    hit = page.locator(f'#filmstrip .moment[data-video="{clips[suffix]}"]').first
    start = float(hit.get_attribute("data-start"))
    assert "THANKS" in hit.inner_text().upper() and start >= 1.0, hit.inner_text()
    hit.click()
    state = _wait_playing_at(page, row.proxy, start)
    assert state["width"] == 640
    # the frame shown is the card itself (its yellow letters), not the slate before it
    assert yellow_fraction(page) > 0.001, "the player's frame does not show the THANKS FOR WATCHING card"
    # scrub away, click the result again: the player holds this video (through its proxy) and seeks in place
    page.evaluate("() => { document.querySelector('#player video').currentTime = 6.0; }")
    _wait_playing_at(page, row.proxy, 6.0)
    hit.click()
    _wait_playing_at(page, row.proxy, start)
    if suffix == ".ts":
        page.wait_for_timeout(300)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.locator("#player").screenshot(path=str(SCREENSHOTS / "player-ts.png"))  # for a person to look at


def test_the_proxies_are_served_and_nothing_else_of_the_cache(proxy_app):
    import httpx
    from urllib.parse import quote

    url, services, _clips = proxy_app
    from storage import catalog

    proxies = [r.proxy for r in catalog.videos(services.library) if r.proxy is not None]
    assert len(proxies) == 2
    for p in proxies:
        r = httpx.get(f"{url}gradio_api/file={quote(str(p))}", headers={"Range": "bytes=0-99"})
        assert r.status_code in (200, 206) and len(r.content) == 100, r.status_code
    stray = proxies[0].parent / "000999-0000000000.mp4"  # in the proxies folder, but no video's proxy
    stray.write_bytes(proxies[0].read_bytes())
    for path in (stray, services.library.folder / "library.db"):
        r = httpx.get(f"{url}gradio_api/file={quote(str(path))}")
        assert r.status_code in (403, 404), f"{path} was served: {r.status_code}"
    stray.unlink()
