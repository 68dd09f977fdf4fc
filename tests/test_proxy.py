"""Browser proxies (indexer/stages/proxy.py): the decision from codec, container and start time; the stage on real
files made from packaged media (MPEG-TS remux, gradio's b.avi, offset and edit-list MP4s, a rotated phone clip);
and a real indexing through the CLI whose proxies are H.264 MP4s on the index's timeline (frames compared at the
same content time, from PTS), replaced when the file changes and deleted with the video.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from indexer.context import IndexContext, VideoJob
from indexer.media import fingerprint, probe
from indexer.stages import DEFAULT_STAGES, proxy
from indexer.stages.proxy import Plan, make_proxy, plan, plan_for
from storage.errors import SightlineError
from tests.conftest import gradio_media
from tests.media_variants import ffprobe_json, make_source, make_variant, stream_rotation

MP4 = "mov,mp4,m4a,3gp,3g2,mj2"


# --- the decision ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, kind, copy_video, copy_audio", [
    ((MP4, "h264", "aac", 0.0, ".mp4"), None, True, True),
    ((MP4, "av1", "opus", 0.0, ".mp4"), None, True, True),
    (("matroska,webm", "vp9", "opus", 0.0, ".webm"), None, True, True),
    (("matroska,webm", "vp8", "vorbis", 0.0, ".webm"), None, False, False),
    ((MP4, "h264", "", 0.02, ".mp4"), None, True, True),  # a start under two frames: nothing to fix
    # a browser-playable MP4/WebM whose timestamps start late: Chromium's currentTime would be off by the start
    ((MP4, "h264", "aac", 7.0, ".mp4"), "remux", True, True),
    ((MP4, "h264", "aac", 1.4, ".mp4"), "remux", True, True),
    (("matroska,webm", "vp9", "opus", 3.0, ".webm"), "transcode", False, True),  # the proxy is an MP4
    # containers the browser does not open: a remux when the codecs are fine
    (("mpegts", "h264", "aac", 1.4, ".ts"), "remux", True, True),
    (("matroska,webm", "h264", "aac", 0.0, ".mkv"), "remux", True, True),
    ((MP4, "h264", "aac", 0.0, ".mov"), "remux", True, True),  # gr.Video would convert a .mov beside it
    ((MP4, "h264", "flac", 0.0, ".m4v"), "transcode", True, False),
    # codecs it does not play: a transcode, copying what can be copied
    (("avi", "mpeg4", "mp3", 0.0, ".avi"), "transcode", False, True),
    ((MP4, "hevc", "aac", 0.0, ".mp4"), "transcode", False, True),
    ((MP4, "prores", "pcm_s16le", 0.0, ".mov"), "transcode", False, False),
    ((MP4, "vp9", "opus", 0.0, ".mp4"), "transcode", False, True),  # plays, but gr.Video would convert it
    ((MP4, "h264", "aac", 0.0, ".mp4", "yuv420p10le"), "transcode", False, True),  # 10-bit H.264
    ((MP4, "h264", "aac", 0.0, ".mp4", "yuv422p"), "transcode", False, True),
    (("matroska,webm", "vp9", "opus", 0.0, ".webm", "yuv420p10le"), None, False, True),  # VP9 profile 2 plays
])
def test_plan(args, kind, copy_video, copy_audio):
    p = plan(*args)
    got = (p.kind, p.copy_video, p.copy_audio) if p.kind else (None, copy_video, copy_audio)  # nothing is copied
    assert got == (kind, copy_video, copy_audio), p
    assert p.reason


def test_the_proxy_stage_is_registered_last_after_probe():
    assert DEFAULT_STAGES[-1] is proxy and proxy.NEEDS == ("probe",)


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("proxy-variants")
    source = make_source(folder)
    out = {"source": source, "b.avi": shutil.copyfile(gradio_media("videos", "b.avi"), folder / "b.avi")}
    for kind in ("mpegts", "mp4_offset", "mp4_copyts", "mp4_editlist", "mkv_offset", "rot90"):
        out[kind] = make_variant(source, kind, folder).path
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name, kind", [("source", None), ("mp4_editlist", None), ("rot90", None),
                                        ("mpegts", "remux"), ("mp4_offset", "remux"), ("mp4_copyts", "remux"),
                                        ("mkv_offset", "remux"), ("b.avi", "transcode")])
def test_plan_on_real_files(variants, name, kind):
    """Probed files get the plan the table says; whatever is played as is, gr.Video also leaves alone."""
    from gradio.processing_utils import video_is_playable

    p = plan_for(probe(variants[name]))
    assert p.kind == kind, p
    if kind is None:  # else gr.Video would write a converted copy beside (or over) the user's file
        assert video_is_playable(str(variants[name]))


# --- making one -------------------------------------------------------------------------------------------------


def _frames(path: Path, start: float) -> list[tuple[float, np.ndarray]]:
    """Every frame of the file as (content time from PTS, gray image), upright as stored in a proxy."""
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            t = f.time - start
            if t >= -1e-6:
                out.append((round(t, 4), f.to_ndarray(format="gray").astype(np.int16)))
    return out


def assert_same_timeline(original: Path, made: Path, exact: bool) -> None:
    """The proxy's frames carry the original's content times, and at each time show the same picture."""
    info, pinfo = probe(original), probe(made)
    assert pinfo.video_codec == "h264" and pinfo.container.startswith("mov,mp4"), pinfo
    frame = 1 / max(info.fps, 1)
    assert abs(pinfo.video_duration - info.video_duration) <= frame, (info.video_duration, pinfo.video_duration)
    assert abs(pinfo.duration - info.duration) <= 0.1, (info.duration, pinfo.duration)  # the sound may end later
    a, b = _frames(original, info.start_time), _frames(made, pinfo.start_time)
    assert [t for t, _ in a] == [t for t, _ in b], "the proxy's frame times differ from the index's"
    step = max(1, int(round(info.fps)))  # compare a frame a second, and against the frame a second later
    for i in range(0, len(a) - step, step):
        (t, x), (_, y), (_, later) = a[i], b[i], b[i + step]
        if x.shape != y.shape:  # a transcode scaled down: compare at the proxy's size
            import cv2

            x = cv2.resize(x.astype(np.uint8), y.shape[::-1], interpolation=cv2.INTER_AREA).astype(np.int16)
        same, other = np.abs(x - y).mean(), np.abs(x - later).mean()
        if exact:
            assert same == 0, f"frame at {t} s differs in a stream copy ({same:.2f})"
        else:
            assert same < 4 and same < other, f"frame at {t} s: {same:.2f} vs {other:.2f} for the next second"


@pytest.mark.slow
def test_remux_of_a_ts_is_a_stream_copy_on_the_same_timeline(variants, tmp_path):
    info = probe(variants["mpegts"])
    assert info.start_time > 1.0  # the MPEG-TS clock starts at about 1.4 s; content time starts at 0
    seen: list[float] = []
    out = tmp_path / "p.mp4"
    make_proxy(info, plan_for(info), out, seen.append)
    assert_same_timeline(variants["mpegts"], out, exact=True)
    assert seen and seen == sorted(seen) and seen[-1] == pytest.approx(info.duration, abs=0.2)
    assert not list(tmp_path.glob(".*")), "the temporary file was left behind"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mp4_offset", "mkv_offset"])
def test_remux_takes_off_the_start_offset(variants, tmp_path, name):
    out = tmp_path / "p.mp4"
    info = probe(variants[name])
    make_proxy(info, plan_for(info), out)
    assert_same_timeline(variants[name], out, exact=True)


@pytest.mark.slow
def test_transcode_of_gradios_avi(variants, tmp_path):
    out = tmp_path / "p.mp4"
    info = probe(variants["b.avi"])
    make_proxy(info, plan_for(info), out)
    assert_same_timeline(variants["b.avi"], out, exact=False)
    assert probe(out).audio_codec == "mp3"  # copied: it plays in MP4


@pytest.mark.slow
def test_a_transcode_is_upright(variants, tmp_path):
    """A phone clip (pixels stored turned, a display matrix turning them back) comes out upright, no matrix."""
    src = variants["rot90"]
    info = probe(src)
    out = tmp_path / "p.mp4"
    make_proxy(info, Plan("transcode", "test", copy_video=False, copy_audio=True), out)
    made = probe(out)
    stored = ffprobe_json(src, "-select_streams", "v:0", "-show_entries", "stream=width,height")["streams"][0]
    assert (stored["width"], stored["height"], info.rotation) == (360, 640, 90)  # stored portrait, shown landscape
    assert stream_rotation(out) == 0 and (made.width, made.height) == (640, 360), (made.width, made.height)
    # the proxy's pixels are what a player shows of the phone clip: the landscape source it was made from
    a = _frames(variants["source"], probe(variants["source"]).start_time)
    b = _frames(out, made.start_time)
    assert np.abs(a[90][1] - b[90][1]).mean() < 4
    copy = tmp_path / "copy.mp4"  # a stream copy keeps the display matrix instead: the browser turns it
    make_proxy(info, Plan("remux", "test"), copy)
    assert stream_rotation(copy) == 90


@pytest.mark.slow
def test_transcodes_fit_in_720p(tmp_path):
    card = gradio_media("videos", "a.mp4")  # 1920x1080
    out = tmp_path / "p.mp4"
    make_proxy(probe(card), Plan("transcode", "test", copy_video=False, copy_audio=False), out)
    made = probe(out)
    assert (made.width, made.height, made.video_codec, made.audio_codec) == (1280, 720, "h264", "aac")


def test_a_failed_ffmpeg_is_a_sightline_error_and_leaves_no_file(tmp_path):
    src = tmp_path / "clip.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(gradio_media("videos", "b.mp4")), "-c", "copy", "-f", "mpegts",
                    str(src)], check=True)
    info = probe(src)
    src.unlink()  # gone between probing and the proxy (an unplugged drive)
    out = tmp_path / "proxies" / "p.mp4"
    with pytest.raises(SightlineError) as err:
        make_proxy(info, plan_for(info), out)
    assert "clip.ts" in str(err.value) and "No such file" in str(err.value) and err.value.hint
    assert not list(out.parent.iterdir())


def test_without_ffmpeg_the_error_says_to_install_it(tmp_path, monkeypatch):
    info = probe(gradio_media("videos", "b.avi"))
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without ffmpeg
    with pytest.raises(SightlineError) as err:
        make_proxy(info, plan_for(info), tmp_path / "p.mp4")
    assert "ffmpeg is not installed" in str(err.value) and "apt-get install ffmpeg" in err.value.hint


# --- the stage ----------------------------------------------------------------------------------------------------


def _job(path: Path, video_id: int = 7) -> VideoJob:
    return VideoJob(video_id, str(path), fingerprint(path))


@pytest.mark.slow
def test_stage_makes_the_proxy_once_and_cleans_old_ones(variants, library):
    ctx = IndexContext(library)  # the real context: the stage writes under its library's folder
    folder = library.folder
    stale = folder / "cache" / "proxies" / "000007-0000000000.mp4"  # an earlier version of the file's proxy
    half = folder / "cache" / "proxies" / ".000007-1111111111.part.mp4"  # a killed run's
    other = folder / "cache" / "proxies" / "000008-0000000000.mp4"  # another video's
    for f in (stale, half, other):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    video = _job(variants["mpegts"])
    out = proxy.run(video, ctx)
    rel = out.video["proxy"]
    assert rel.startswith("cache/proxies/000007-") and (folder / rel).is_file()
    assert out.status == "done" and out.message == "browser proxy: remux" and out.detail["proxy"] == "remux"
    assert not stale.exists() and not half.exists() and other.exists()
    made = (folder / rel).stat().st_mtime_ns
    assert proxy.run(_job(variants["mpegts"]), ctx).video["proxy"] == rel  # resumed: made once
    assert (folder / rel).stat().st_mtime_ns == made
    # the same video id, now a file the browser plays as is: no proxy, and the old one goes
    plain = proxy.run(_job(variants["source"]), ctx)
    assert plain.status == "skipped" and plain.video == {"proxy": None}
    assert not (folder / rel).exists() and other.exists()


# --- a real indexing ----------------------------------------------------------------------------------------------


def _cli(*args: str):
    from click.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _proxies(lib: Path) -> dict[str, str | None]:
    import sqlite3

    with sqlite3.connect(lib / "library.db") as db:
        return {Path(p).name: x for p, x in db.execute("SELECT path, proxy FROM videos")}


@pytest.mark.slow
def test_indexing_makes_proxies_on_the_index_timeline(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    b_mp4 = gradio_media("videos", "b.mp4")
    ts = folder / "b.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(b_mp4), "-c", "copy", "-f", "mpegts", str(ts)], check=True)
    avi = shutil.copyfile(gradio_media("videos", "b.avi"), folder / "b.avi")
    plain = shutil.copyfile(b_mp4, folder / "b.mp4")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    lib = tmp_path / "lib"
    _cli("--library", str(lib), "index", str(folder))

    proxies = _proxies(lib)
    assert proxies["b.mp4"] is None, "a browser-playable MP4 needs no proxy"
    for name, kind in (("b.ts", "remux"), ("b.avi", "transcode")):
        made = lib / proxies[name]
        assert made.is_file() and made.parent == lib / "cache" / "proxies", proxies
        assert_same_timeline(folder / name, made, exact=kind == "remux")
    report = json.loads(_cli("--library", str(lib), "status", "--json").output)
    stages = {Path(v["path"]).name: v["stages"]["proxy"] for v in report["videos"]}
    assert stages["b.ts"]["message"] == "browser proxy: remux" and stages["b.mp4"]["status"] == "skipped"
    assert stages["b.avi"]["message"] == "browser proxy: transcode"
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before, "the original files were touched"
    assert not list((lib / "cache" / "proxies").glob(".*")), "a temporary proxy was left behind"

    # the .ts changes: re-indexed, it gets a new proxy and the old one goes
    old = lib / proxies["b.ts"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(gradio_media("videos", "a.mp4")), "-c", "copy",
                    "-f", "mpegts", str(ts)], check=True)
    _cli("--library", str(lib), "index", str(ts))
    new = lib / _proxies(lib)["b.ts"]
    assert new != old and new.is_file() and not old.exists()
    assert_same_timeline(ts, new, exact=True)

    # removed from the library: its proxy goes too, the other video's stays
    from storage import Library, catalog

    library = Library.open(lib)
    try:
        ids = {Path(r.path).name: r.id for r in catalog.videos(library)}
        catalog.remove(library, ids["b.ts"])
    finally:
        library.close()
    assert not new.exists() and (lib / proxies["b.avi"]).is_file()
    assert sorted(p.name for p in (lib / "cache" / "proxies").iterdir()) == [Path(proxies["b.avi"]).name]
    assert plain.is_file() and avi.is_file()
