"""Library view: adding a folder indexes it in the background with progress that advances and finishes."""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_indexing_a_folder_shows_progress_that_advances_and_finishes(indexing_run):
    snaps = indexing_run.snapshots
    texts = [t for _s, _p, t in snaps]
    running = [(s, p, t) for s, p, t in snaps if p is not None and "Last indexing run" not in t]
    assert running, "the progress bar never showed a running job:\n" + "\n---\n".join(texts[:5])
    percents = [p for _s, p, _t in running]
    assert len(set(percents)) >= 2, f"progress never advanced: {percents}"
    assert percents == sorted(percents), f"progress went backwards: {percents}"
    # per-file progress and an ETA were shown while it ran
    assert any(re.search(r"File \d of 2: \S+\.mp4", t) for _s, _p, t in running), texts
    assert any("left" in t for _s, _p, t in running), texts
    # and it finished: the last run is done, every video is indexed with its moments
    assert "Last indexing run: done, 2 of 2 files" in texts[-1], texts[-1]
    assert indexing_run.final_table.count("indexed") == 2, indexing_run.final_table


def test_library_lists_each_video_with_status_and_refuses_bad_input(indexed_app, page):
    url, services, _demo = indexed_app
    page.goto(url)
    page.wait_for_selector("#videos table")
    rows = page.locator("#videos tbody tr")
    assert rows.count() == 2
    assert "bikes.mp4" in page.inner_text("#videos") and "a.mp4" in page.inner_text("#videos")
    # a path that is not there, and a file that is not a video: one clear message each, nothing indexed
    page.fill("#add-path textarea", "/no/such/folder")
    page.click("#add-button")
    page.get_by_text("/no/such/folder does not exist").first.wait_for()
    page.fill("#add-path textarea", "/etc/hostname")
    page.click("#add-button")
    page.get_by_text("is not a supported video file").first.wait_for()
    assert rows.count() == 2


def test_uploading_a_file_that_is_not_a_video_is_refused_with_a_message(indexed_app, page, tmp_path):
    url, services, _demo = indexed_app
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    page.goto(url)
    page.wait_for_selector("#videos table")
    page.set_input_files("#upload input[type=file]", str(notes))
    page.get_by_text(re.compile("not a supported video|Invalid file type")).first.wait_for()
    assert page.locator("#videos tbody tr").count() == 2
    assert not (services.library.folder / "uploads" / "notes.txt").exists()
