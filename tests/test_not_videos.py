"""Files that are not videos: a folder walk leaves them out (reported once), a named one fails, failed videos'
moments stay out of search, media roots refuse folders outside them. Real files, a real library; fast."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from storage import Library, SightlineError
from storage.models import FAILED, Video
from tests.library_builder import add_video, fake_embed

TYPESCRIPT = 'export const config = { apiKey: "sk-SECRET-123" };\n' * 20


def _context(library):
    from indexer.context import IndexContext, Lazy

    def never():
        raise AssertionError("no model is needed for files that are not videos")

    return IndexContext(library, text_embedder=Lazy(never, "text"), visual_embedder=Lazy(None, ""),
                        transcriber=Lazy(never, "speech"), ocr=Lazy(never, "ocr"))


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "proj"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "config.ts").write_text(TYPESCRIPT)
    (folder / "src" / "types.mts").write_text("export type A = number;\n")
    (folder / "notes.mp4").write_text("root:x:0:0:root:/root:/bin/bash\n" * 10)
    return folder


def test_transport_stream_sniff_tells_mpeg_ts_from_typescript(tmp_path, project):
    from indexer.files import looks_like_transport_stream

    real = tmp_path / "real.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=0.5:s=64x48", "-c:v", "mpeg2video",
                    "-f", "mpegts", str(real)], check=True)
    m2ts = tmp_path / "real.m2ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(real), "-c", "copy", "-mpegts_m2ts_mode", "1",
                    "-f", "mpegts", str(m2ts)], check=True)
    assert looks_like_transport_stream(real) and looks_like_transport_stream(m2ts)
    assert not looks_like_transport_stream(project / "src" / "config.ts")
    assert not looks_like_transport_stream(project / "src" / "types.mts")


def test_a_folder_walk_keeps_no_row_for_files_that_are_not_videos(library, project):
    from indexer.runner import index_paths

    # an older run registered the TypeScript file as a failed "video": it goes too
    stale = str(project / "src" / "config.ts")
    library.write(lambda s: s.add(Video(path=stale, status=FAILED, error="not a video")))
    summary = index_paths(library, [project], _context(library))
    skipped = {Path(p).name: why for p, why in summary.not_videos}
    assert set(skipped) == {"config.ts", "types.mts", "notes.mp4"}, summary.describe()
    assert "not a video file" in skipped["notes.mp4"] and "sync bytes" in skipped["config.ts"]
    assert summary.failed == [] and summary.done == []
    text = summary.describe()
    assert text.count("skipped 3 file(s)") == 1 and "config.ts" in text, text
    assert summary.to_dict()["not_videos"]
    with library.read() as s:
        assert s.scalars(select(Video.path)).all() == []


def test_a_file_named_explicitly_fails_with_the_probes_message(library, project, tmp_path):
    from indexer.runner import index_paths

    passwd = tmp_path / "passwd"
    shutil.copyfile(project / "notes.mp4", passwd)
    summary = index_paths(library, [passwd, project / "notes.mp4"], _context(library))
    assert [Path(p).name for p, _ in summary.failed] == ["passwd", "notes.mp4"], summary.describe()
    assert all("not a video file" in why for _, why in summary.failed)
    assert summary.not_videos == []
    with library.read() as s:
        assert sorted(s.scalars(select(Video.status)).all()) == [FAILED, FAILED]


def test_moments_of_failed_videos_are_hidden_from_search(tmp_path):
    from storage.search import search

    lib = Library.open(tmp_path / "lib")
    try:
        good, _ = add_video(lib, "/v/good.mp4", 30.0, [(1.0, 3.0, "speech", "the red car stops at the bridge")])
        bad, _ = add_video(lib, "/v/bad.mp4", 30.0, [(1.0, 3.0, "speech", "the red car stops at the bridge"),
                                                    (4.0, 6.0, "speech", "a red car again")])
        assert {h.video_id for h in search(lib, "red car", fake_embed, k=5)} == {good, bad}

        def fail(s):
            s.get(Video, bad).status = FAILED

        lib.write(fail)
        hits = search(lib, "red car", fake_embed, k=5)
        assert hits and {h.video_id for h in hits} == {good}
        hits = search(lib, "red car", fake_embed, k=5, modalities=["speech"])  # the filtered path too
        assert {h.video_id for h in hits} == {good}
        assert search(lib, "red car", fake_embed, k=5, video_ids=[bad]) == []
    finally:
        lib.close()


def test_failed_moments_above_the_deepen_limit_are_filtered_by_id(tmp_path, monkeypatch):
    import storage.search as search_mod

    monkeypatch.setattr(search_mod, "HIDDEN_DEEPEN_MAX", 0)  # force the id-set path on a small library
    lib = Library.open(tmp_path / "lib")
    try:
        good, _ = add_video(lib, "/v/good.mp4", 30.0, [(1.0, 3.0, "speech", "a blue boat")])
        bad, _ = add_video(lib, "/v/bad.mp4", 30.0, [(1.0, 3.0, "speech", "a blue boat on the lake")])
        lib.write(lambda s: setattr(s.get(Video, bad), "status", FAILED))
        assert {h.video_id for h in search_mod.search(lib, "blue boat", fake_embed, k=5)} == {good}
    finally:
        lib.close()


def test_media_roots(tmp_path):
    from app.guard import check_media_root, media_roots

    assert media_roots("", "127.0.0.1") is None  # localhost: any folder
    assert media_roots("", "0.0.0.0") == [] and media_roots("", "127.0.0.1", share=True) == []
    inside = tmp_path / "media"
    (inside / "trip").mkdir(parents=True)
    roots = media_roots(str(inside), "0.0.0.0")
    assert roots == [inside.resolve()]
    check_media_root((inside / "trip").resolve(), roots)
    check_media_root(inside.resolve(), roots)
    with pytest.raises(SightlineError, match="outside the folders this server may index"):
        check_media_root(Path("/etc"), roots)
    with pytest.raises(SightlineError, match="outside"):
        check_media_root((tmp_path / "media-other").resolve(), roots)  # a prefix is not a parent
    with pytest.raises(SightlineError, match="only uploaded videos") as err:
        check_media_root(Path("/srv/videos"), [])
    assert "SIGHTLINE_MEDIA_ROOTS" in err.value.user_text()
