"""The indexer end to end through the CLI (click's CliRunner) on real packaged media and real small models.

One session-scoped library is indexed once (bikes.mp4, gradio's a.mp4 card, bikes + cate_blanch speech at
3.0 s); the tests read it. A second library mixes good and corrupt files. Resume runs the indexer in a
subprocess, SIGKILLs it mid-run and runs it again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import gradio_media
from tests.contracts import assert_search_output
from tests.test_indexer_media import SPEECH_OFFSET, build_media

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# When gradio's a.mp4 card text can first be read: found by decoding every frame (30 fps) of a.mp4 with PyAV
# and running RapidOCR on each one at full size: 1.967 s reads nothing, 2.000 s reads "THANKS FOR WAICHING"
# (in some runs only "WAICHING": the letters are still animating in) and from 2.067 s on it reads
# "THANKS FOR WATCHING" (frame differences confirm the text moves in from ~1.9 s). test_card_truth re-checks it.
CARD_TEXT_APPEARS = 2.0


def _cli(*args: str, ok: bool = True):
    from app.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _search(library: Path, query: str, *extra: str) -> list[dict]:
    return assert_search_output(_cli("--library", str(library), "search", query, "--json", *extra).output)


def _status(library: Path) -> dict:
    return json.loads(_cli("--library", str(library), "status", "--json").output)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    return build_media(tmp_path_factory.mktemp("indexer_lib_media"))


@pytest.fixture(scope="session")
def indexed_library(tmp_path_factory, media, bikes_mp4, card_mp4) -> Path:
    lib = tmp_path_factory.mktemp("indexed") / "lib"
    result = _cli("--library", str(lib), "index", str(bikes_mp4), str(card_mp4), str(media["speech"]))
    assert "3 file(s)" in result.output and "0 failed" in result.output, result.output
    return lib


@pytest.fixture(scope="session")
def corrupt_library(tmp_path_factory, media) -> tuple[Path, object]:
    lib = tmp_path_factory.mktemp("corrupt") / "lib"
    folder = media["speech"].parent
    result = _cli("--library", str(lib), "index", str(folder), ok=False)
    return lib, result


def _video(report: dict, name: str) -> dict:
    return next(v for v in report["videos"] if Path(v["path"]).name == name)


# --- shots, thumbnails, notes -------------------------------------------------------------------------------------


def test_bikes_shots_become_visual_moments(indexed_library, bikes_mp4):
    from indexer.thumbnails import frame_quality
    from storage import Library

    with Library.open(indexed_library) as lib, lib.read() as s:
        from sqlalchemy import select

        from storage.models import Moment, Video

        vid = s.scalar(select(Video.id).where(Video.path == str(bikes_mp4.resolve())))
        visual = s.scalars(select(Moment).where(Moment.video_id == vid, Moment.modality == "visual")
                           .order_by(Moment.start)).all()
        starts = [m.start for m in visual]
        assert starts == pytest.approx([0.0, 1.2, 3.0, 5.5, 7.5, 9.7], abs=0.25), starts
        assert visual[-1].end == pytest.approx(10.0, abs=0.05)
        import cv2

        for m in visual:
            image = cv2.imread(str(lib.path_of(m.thumbnail)))
            assert image is not None and max(image.shape[:2]) <= 320
            assert frame_quality(image[:, :, ::-1]) > 0, f"black thumbnail for {m.start}"


def test_status_shows_notes_and_stage_figures(indexed_library):
    report = _status(indexed_library)
    assert report["counts"] == {"indexed": 3}
    bikes = _video(report, "bikes.mp4")
    assert "visual search off: no visual model configured" in bikes["notes"]
    assert "no audio track" in bikes["notes"]  # a note, not an error
    assert bikes["error"] is None
    for name in ("probe", "shots", "visual", "screen_text", "speech", "captions"):
        stage = bikes["stages"][name]
        assert stage["status"] in ("done", "skipped") and stage["media_s"] == pytest.approx(10.0, abs=0.05)
    assert bikes["stages"]["shots"]["wall_s"] > 0
    text = _cli("--library", str(indexed_library), "status").output
    assert "3 indexed" in text and "note: visual search off" in text


# --- on-screen text -----------------------------------------------------------------------------------------------


def test_card_truth(card_mp4):
    """The constant CARD_TEXT_APPEARS is what OCR reads frame by frame (see its comment)."""
    import av

    from indexer.models.ocr import load_ocr

    reader = load_ocr()
    with av.open(str(card_mp4)) as c:
        frames = {round(f.time, 3): f.to_ndarray(format="rgb24") for f in c.decode(video=0)
                  if 1.9 < f.time < 2.1}
    import re

    card_word = re.compile(r"THANK|WA[TI]CH")
    assert not any(card_word.search(t) for t, _ in reader.read(frames[1.967]))
    assert any(card_word.search(t) for t, _ in reader.read(frames[2.0]))
    assert any("THANKS FOR WATCHING" in t for t, _ in reader.read(frames[2.067]))


def test_thanks_for_watching_is_a_text_moment_near_the_card(indexed_library, card_mp4):
    hits = _search(indexed_library, "thanks for watching")
    text_hits = [h for h in hits if h["modality"] == "text" and h["video"] == str(card_mp4.resolve())]
    assert text_hits, hits
    top = text_hits[0]
    assert "THANKS FOR WATCHING" in top["text"].upper()
    assert abs(top["start"] - CARD_TEXT_APPEARS) <= 1.0, top
    assert top["end"] <= 7.06 + 1e-6 and top["start"] <= top["end"]
    assert Path(top["thumbnail"]).exists()


# --- speech -------------------------------------------------------------------------------------------------------


def _speech_onset() -> float:
    """When speech starts in cate_blanch.mp3: first 20 ms window louder than 10% of the file's peak RMS."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(gradio_media("audio", "cate_blanch.mp3")),
                          "-ac", "1", "-ar", "16000", "-f", "f32le", "-"], check=True, capture_output=True).stdout
    audio = np.frombuffer(raw, np.float32)
    rms = np.sqrt(np.mean(audio[: len(audio) // 320 * 320].reshape(-1, 320) ** 2, axis=1))
    return float(np.argmax(rms > 0.1 * rms.max()) * 0.02)


def test_spoken_phrase_is_found_at_its_time(indexed_library, media):
    truth = SPEECH_OFFSET + _speech_onset()
    hits = [h for h in _search(indexed_library, "I sleep with a dagger") if h["modality"] == "speech"]
    assert hits, "no speech moment"
    top = hits[0]
    assert Path(top["video"]).name == "speech.mp4" and "dagger" in top["text"].lower(), top
    assert abs(top["start"] - truth) <= 1.0, (top, truth)


def test_semantic_query_without_shared_words_finds_the_speech(indexed_library):
    query = "keeps knives near her bed"  # no word in common with "I sleep with a dagger."
    hits = _search(indexed_library, query, "--k", "3")
    assert hits and "dagger" in hits[0]["text"].lower(), hits
    assert "keyword" not in hits[0]["sources"], hits[0]  # found by meaning, not by words


# --- corrupt files --------------------------------------------------------------------------------------------


def test_bad_files_fail_clearly_and_good_ones_index(corrupt_library):
    lib, result = corrupt_library
    assert "Traceback" not in result.output and "Internal error" not in result.output, result.output
    report = _status(lib)
    expect_error = {
        "empty.mp4": "empty (0 bytes)",
        "truncated.mp4": "truncated",
        "truncated_data.mp4": "truncated",
    }
    # files of the folder whose probe finds no video keep no row: the run's summary names them once
    assert {Path(v["path"]).name for v in report["videos"]}.isdisjoint({"text.mp4", "audio_only.mp4"})
    skipped = [line for line in result.output.splitlines() if "that are not videos" in line]
    assert len(skipped) == 1 and "text.mp4" in skipped[0] and "audio_only.mp4" in skipped[0], result.output
    for name, words in expect_error.items():
        video = _video(report, name)
        assert video["status"] == "failed" and words in (video["error"] or ""), video
    # On-screen text follows the decode pass that failed: the error is said once, by the pass (shots).
    error = _video(report, "truncated_data.mp4")["error"]
    assert error.startswith("shots:") and "screen_text" not in error, error
    for name in ("speech.mp4", "no_audio.mp4"):
        video = _video(report, name)
        assert video["status"] == "indexed" and video["error"] is None and video["moments"] > 0, video
    assert "no audio track" in _video(report, "no_audio.mp4")["notes"]
    assert report["counts"] == {"indexed": 2, "failed": 3}
    # no frame cache stays behind, for the failed files (truncated_data.mp4 failed part way through its decode
    # pass) as for the indexed ones
    frames = lib / "cache" / "frames"
    assert not frames.exists() or not any(frames.iterdir()), sorted(p.name for p in frames.iterdir())


def test_incremental_skips_unchanged_reindexes_changed_and_marks_missing(corrupt_library, tmp_path, media):
    import shutil

    lib, _ = corrupt_library
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(media["no_audio"], folder / "clip.mp4")
    first = _cli("--library", str(lib), "index", str(folder)).output
    assert "Indexed 1 file(s)" in first, first
    again = _cli("--library", str(lib), "index", str(folder)).output
    assert "Indexed 0 file(s)" in again and "1 unchanged" in again, again
    before = _video(_status(lib), "clip.mp4")
    shutil.copy(media["speech"], folder / "clip.mp4")  # same name, new content
    changed = _cli("--library", str(lib), "index", str(folder)).output
    assert "Indexed 1 file(s)" in changed, changed
    after = _video(_status(lib), "clip.mp4")
    assert after["status"] == "indexed" and after["duration"] != before["duration"], after
    # every stage ran again on the new content: each stage row is there, finished, with the new file's length
    stages = after["stages"]
    assert set(stages) == {"probe", "shots", "visual", "screen_text", "speech", "proxy", "captions"}, stages
    for name, stage in stages.items():
        assert stage["status"] in ("done", "skipped") and stage["media_s"] == after["duration"], (name, stage)
    # the old file had no audio track, the new one speaks: speech is done now, where it was skipped before
    assert (before["stages"]["speech"]["status"], stages["speech"]["status"]) == ("skipped", "done"), after
    assert any(h["video"].endswith("clip.mp4") for h in _search(lib, "dagger"))
    _assert_consistent(lib)
    (folder / "clip.mp4").unlink()
    gone = _cli("--library", str(lib), "index", str(folder)).output
    assert "1 missing" in gone, gone
    assert _video(_status(lib), "clip.mp4")["status"] == "missing"


# --- resume after SIGKILL -----------------------------------------------------------------------------------------


def _counts(lib: Path, paths: list[str]) -> dict:
    """Moments per modality and vectors per space of these videos, and duplicated moments."""
    con = sqlite3.connect(lib / "library.db")
    marks = ",".join("?" * len(paths))
    try:
        moments = dict(con.execute(f"select modality, count(*) from moments join videos v on v.id = video_id "
                                   f"where v.path in ({marks}) group by modality", paths).fetchall())
        vectors = dict(con.execute(f"select space, count(*) from embeddings e join moments m on m.id = e.moment_id "
                                   f"join videos v on v.id = m.video_id where v.path in ({marks}) group by space",
                                   paths).fetchall())
        dupes = con.execute("select count(*) from (select video_id, stage, start, end, text, count(*) c "
                            "from moments group by 1, 2, 3, 4, 5 having c > 1)").fetchone()[0]
    finally:
        con.close()
    return {"moments": moments, "vectors": vectors, "duplicates": dupes}


def _assert_consistent(lib: Path) -> None:
    """FAISS ids == SQLite embedding ids, per space (opening the library reconciles FAISS with SQLite)."""
    from sqlalchemy import select

    from storage import Library
    from storage.models import Embedding

    with Library.open(lib) as library:
        for space in library.vector_spaces():
            with library.read() as s:
                ids = sorted(s.scalars(select(Embedding.moment_id).where(Embedding.space == space)).all())
            assert sorted(library.vectors(space).ids().tolist()) == ids, space


def test_resume_after_sigkill_equals_a_clean_run(indexed_library, tmp_path, media, bikes_mp4):
    lib = tmp_path / "lib"
    files = [str(bikes_mp4.resolve()), str(media["speech"].resolve())]  # the clean run: the session library
    cmd = [sys.executable, "-m", "app", "--library", str(lib), "index", *files]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_after = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            db = lib / "library.db"
            if not db.exists():
                continue
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                done = con.execute("select count(*) from stage_runs where stage in ('shots', 'visual')").fetchone()[0]
                con.close()
            except sqlite3.Error:
                continue
            if done >= 1:  # mid-run: some stages committed, most not
                proc.send_signal(signal.SIGKILL)
                killed_after = done
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_after is not None, "the indexer finished before it could be killed"
    partial = _counts(lib, files)
    clean = _counts(indexed_library, files)
    assert partial["moments"] != clean["moments"], "killed too late to test resuming"

    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = _counts(lib, files)
    assert after == clean, (after, clean)
    assert after["duplicates"] == 0
    _assert_consistent(lib)
    report = _status(lib)
    assert report["counts"] == {"indexed": 2}
