"""The web server serves probed videos only: a TypeScript `.ts`, a text `.mp4`, an indexed passwd-like file and
an uploaded text `.mp4` are refused (403/404) while a real video is served; with a login, Gradio's reset/cancel
routes need it, wrong logins are throttled per client, and folders outside SIGHTLINE_MEDIA_ROOTS are refused.
Real HTTP against the running app (tests/browser/conftest.py running_app)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from storage import catalog as lv
from tests.browser.conftest import copy_clips, running_app, wait_for_index
from tests.conftest import gradio_media

pytestmark = pytest.mark.slow

SECRET = "sk-SECRET-123"
PASSWD = f"root:x:0:0:root:/root:/bin/bash\nanalyst:{SECRET}:1000:1000::/home/analyst:/bin/sh\n" * 8


def call(client: httpx.Client, url: str, api_name: str, *data) -> tuple[str, str]:
    r = client.post(f"{url}gradio_api/call/{api_name}", json={"data": list(data)}, timeout=30)
    r.raise_for_status()
    body = client.get(f"{url}gradio_api/call/{api_name}/{r.json()['event_id']}", timeout=60).text
    kinds = [line.split(":", 1)[1].strip() for line in body.splitlines() if line.startswith("event:")]
    return kinds[-1], "\n".join(line.split(":", 1)[1].strip() for line in body.splitlines()
                               if line.startswith("data:"))


def refused(client: httpx.Client, url: str, path: str) -> None:
    r = client.get(f"{url}gradio_api/file={path}", follow_redirects=False)
    assert r.status_code in (403, 404), f"{path!r} was served: {r.status_code} {r.text[:80]!r}"
    assert SECRET not in r.text and "root:" not in r.text


def test_only_probed_videos_are_served(tmp_path):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "config.ts").write_text(f'export const config = {{ apiKey: "{SECRET}" }};\n')
    (proj / "notes.mp4").write_text(PASSWD)
    (video,) = copy_clips(proj, gradio_media("videos", "a.mp4"))
    passwd = tmp_path / "etc" / "passwd"
    passwd.parent.mkdir()
    passwd.write_text(PASSWD)
    upload = tmp_path / "up" / "clip.mp4"
    upload.parent.mkdir()
    upload.write_text(PASSWD)

    with running_app(tmp_path / "lib") as (url, services, _demo), httpx.Client(timeout=30) as client:
        summary = services.index([str(proj), str(passwd)])  # what `sightline index proj /etc/passwd` runs
        assert [Path(p).name for p in summary.done] == ["a.mp4"], summary.describe()
        assert sorted(Path(p).name for p, _ in summary.not_videos) == ["config.ts", "notes.mp4"]
        assert [Path(p).name for p, _ in summary.failed] == ["passwd"]
        with open(upload, "rb") as f:  # the browser's upload, then the Upload button's event
            r = client.post(f"{url}gradio_api/upload", files={"files": ("clip.mp4", f, "video/mp4")})
        r.raise_for_status()
        tmp_copy = r.json()[0]
        kind, payload = call(client, url, "upload", [{"path": tmp_copy, "meta": {"_type": "gradio.FileData"}}])
        assert kind == "complete", payload
        wait_for_index(services)
        rows = {r.name: r for r in lv.videos(services.library)}
        assert set(rows) == {"a.mp4", "passwd", "clip.mp4"}, rows  # no row for the walk's non-videos
        assert rows["passwd"].status == rows["clip.mp4"].status == lv.FAILED

        for path in [proj / "src" / "config.ts", proj / "notes.mp4", passwd, rows["clip.mp4"].path, tmp_copy]:
            refused(client, url, str(path))
            refused(client, url, quote(str(path), safe=""))
        refused(client, url, f"/proc/self/root{passwd}")
        refused(client, url, f"{video.parent}/../etc/passwd")
        refused(client, url, "http://example.com/x.mp4")  # was a 302 to anywhere
        refused(client, url, str(services.library.folder / "library.db"))

        # the real video is served, whole and by range, as the player asks for it
        r = client.get(f"{url}gradio_api/file={quote(str(video))}")
        assert r.status_code == 200 and r.content[4:8] == b"ftyp" and len(r.content) == video.stat().st_size
        r = client.get(f"{url}gradio_api/file={quote(str(video))}", headers={"Range": "bytes=0-99"})
        assert r.status_code == 206 and len(r.content) == 100
        thumb = next((services.library.folder / "thumbnails").rglob("*.jpg"))
        assert client.get(f"{url}gradio_api/file={quote(str(thumb))}").status_code == 200

        # the player refuses a failed row with its reason (Gradio would copy the file into its served cache)
        kind, payload = call(client, url, "load_moment", json.dumps({"video": rows["passwd"].id, "start": 0}))
        assert kind == "error" and "cannot be played: it failed to index" in payload, payload
        kind, payload = call(client, url, "load_moment", json.dumps({"video": rows["a.mp4"].id, "start": 1}))
        assert kind == "complete" and "a.mp4" in payload, payload


def test_login_is_throttled_and_framework_routes_need_it(tmp_path):
    from app import guard

    media = tmp_path / "media"
    media.mkdir()
    with running_app(tmp_path / "lib", auth="analyst:secret", media_roots=str(media)) as (url, _s, _d):
        with httpx.Client(timeout=60) as client:
            for route in ("gradio_api/reset", "gradio_api/cancel"):
                r = client.post(f"{url}{route}", json={"event_id": "x", "session_hash": "x", "fn_index": 0})
                assert r.status_code == 401, (route, r.status_code, r.text[:200])
            assert client.get(f"{url}gradio_api/file=http://example.com/").status_code in (401, 403)

            took = []
            for _ in range(4):
                t0 = time.monotonic()
                r = client.post(f"{url}login", data={"username": "analyst", "password": "wrong"})
                took.append(time.monotonic() - t0)
                assert r.status_code == 400
            first, *later = took
            assert first < guard.LOGIN_DELAY_S, took
            for k, t in enumerate(later):  # 0.5 s, 1 s, 2 s: a delay growing with the failures
                assert t >= guard.LOGIN_DELAY_S * 2 ** k - 0.05, took
            r = client.post(f"{url}login", data={"username": "analyst", "password": "secret"})
            assert r.status_code == 200, r.text
            t0 = time.monotonic()
            assert client.post(f"{url}login", data={"username": "analyst", "password": "no"}).status_code == 400
            assert time.monotonic() - t0 < guard.LOGIN_DELAY_S  # a success starts the count again

            # logged in: the routes answer, and a folder outside the media roots is refused with a message
            r = client.post(f"{url}gradio_api/reset", json={"event_id": "x"})
            assert r.status_code == 200, r.text[:200]
            kind, payload = call(client, url, "add_path", str(tmp_path / "lib"))
            assert kind == "error" and "outside the folders this server may index" in payload, payload
