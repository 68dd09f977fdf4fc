"""Only the library's videos and thumbnails are served; every endpoint that takes a path refuses other paths."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import httpx

from storage import catalog as lv
import pytest

from tests.browser.conftest import call_event as call

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OUTSIDE = ["/etc/passwd", "../../etc/passwd", "../../../../../../etc/passwd", "/etc", "~/.ssh/id_rsa"]


def test_file_route_serves_library_videos_and_thumbnails_only(indexed_app):
    url, services, _demo = indexed_app
    lib = services.library.folder
    video = next(v for v in lv.videos(services.library) if v.name == "a.mp4").path
    thumb = next((lib / "thumbnails").rglob("*.jpg"))
    assert httpx.get(f"{url}gradio_api/file={quote(video)}").status_code == 200
    assert httpx.get(f"{url}gradio_api/file={quote(str(thumb))}").status_code == 200
    refused = [
        "/etc/passwd",
        "../../etc/passwd",
        quote("../../etc/passwd", safe=""),
        f"{lib}/thumbnails/../../../../../../etc/passwd",
        quote(f"{lib}/thumbnails/../../../../../../etc/passwd", safe=""),
        f"{lib}/library.db",  # the library folder's database is not a served file
        str(Path(__file__).resolve()),  # the working tree is not served
        f"{Path(video).parent}/../../../etc/passwd",
    ]
    for path in refused:
        r = httpx.get(f"{url}gradio_api/file={path}")
        assert r.status_code in (403, 404), f"{path!r} was served: {r.status_code} {r.text[:80]!r}"
        assert "root:" not in r.text


@pytest.mark.parametrize("path", OUTSIDE)
def test_every_handler_that_takes_a_path_refuses_outside_paths(indexed_app, path):
    url, services, _demo = indexed_app
    before = [(r.id, r.status) for r in lv.videos(services.library)]
    upload = [{"path": path, "meta": {"_type": "gradio.FileData"}}]
    checks = {  # the scripted endpoints (app/api.py) and the UI's own events, which any client can call too
        "load_moment": (json.dumps({"video": path, "start": 0}),),
        "reindex": (path,), "ui_reindex": (path,),
        "remove": (path,), "ui_remove": (path,),
        "add_path": (path,), "ui_add_path": (path,), "ui_add_path_submit": (path,),
        "search": ("thanks", [], path, 10), "ui_search": ("thanks", [], path, None),  # last: the playing video (state)
        "ui_search_submit": ("thanks", [], path, None),
        "ask": (f"what is in {path}?", path), "ui_ask": (f"what is in {path}?", path, []),
        "ui_ask_submit": (f"what is in {path}?", path, []),
        "upload": (upload,), "ui_upload": (upload,),
    }
    for api_name, data in checks.items():
        kind, payload = call(url, api_name, *data)
        assert kind == "error", f"{api_name}({path!r}) was accepted: {payload[:300]}"
        assert "input values" not in payload, f"{api_name}: the call never reached the handler: {payload[:300]}"
        assert "root:" not in payload
    assert [(r.id, r.status) for r in lv.videos(services.library)] == before


def test_handler_messages_say_what_is_wrong(indexed_app):
    url, services, _demo = indexed_app
    # the same endpoints accept what is in the library (so the refusals above are the path checks at work)
    video = next(v for v in lv.videos(services.library) if v.name == "a.mp4")
    kind, payload = call(url, "load_moment", json.dumps({"video": video.id, "start": 2.5}))
    assert kind == "complete" and "a.mp4" in payload, payload
    kind, payload = call(url, "search", "thanks for watching", [], str(video.id), 10)  # raw calls send every input
    assert kind == "complete" and "THANKS" in payload.upper(), payload[:300]
    kind, payload = call(url, "ui_search", "thanks for watching", [], str(video.id), None)
    assert kind == "complete" and "THANKS" in payload.upper(), payload[:300]
    kind, payload = call(url, "load_moment", json.dumps({"video": "../../etc/passwd", "start": 0}))
    assert kind == "error" and "is not a video id" in payload, payload  # the player takes ids only
    kind, payload = call(url, "add_path", "../../etc/passwd")
    assert kind == "error" and "not an absolute path" in payload, payload
    kind, payload = call(url, "add_path", "/etc/passwd")
    assert kind == "error" and "not a supported video file" in payload, payload
    # each names the value it refused, says why, and what to do instead: the scripted endpoints and the UI's events
    refusals = {
        "search": (("thanks", [], "/etc/passwd", 10), "No video '/etc/passwd' in this library.", "Known videos: "),
        "ui_search": (("thanks", [], "/etc/passwd", None), "No video '/etc/passwd' in this library.", "Known videos: "),
        "ask": (("what?", "../../etc/passwd"), "No video '../../etc/passwd' in this library.", "Known videos: "),
        "ui_ask": (("what?", "../../etc/passwd", []), "'../../etc/passwd' is not a video id.",
                   "Pick a video of the library, or the whole library."),
        "reindex": (("/etc/passwd",), "'/etc/passwd' is not a video id.", "Pick a video of the library to re-index."),
        "remove": (("../../etc/passwd",), "'../../etc/passwd' is not a video id.",
                   "Pick a video of the library to remove."),
    }
    for api_name, (data, message, hint) in refusals.items():
        kind, payload = call(url, api_name, *data)
        assert kind == "error" and message in payload and hint in payload, f"{api_name}: {payload}"
