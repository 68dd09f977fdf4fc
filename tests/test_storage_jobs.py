"""The indexer's bookkeeping in storage (storage/jobs.py) and the one ETA (storage.catalog.time_left) that the
runner's progress events and the UI's status both show."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from storage import catalog, jobs
from storage.models import FAILED, INDEXED, INDEXING, PENDING, Job, Moment, StageRun, Video

MARKS = {"probe": "fp|p1", "shots": "fp|s1", "speech": "fp|w1"}


def test_time_left_at_the_measured_speed_else_the_past_one():
    assert catalog.time_left(400.0, 100.0, 50.0) == pytest.approx(150.0)  # 100 media s in 50 s: 300 left at 2x
    assert catalog.time_left(400.0, 100.0, 50.0, wall_per_media=9.0) == pytest.approx(150.0)  # measured wins
    assert catalog.time_left(400.0, 0.0, 5.0, wall_per_media=0.5) == pytest.approx(200.0)  # nothing done yet
    assert catalog.time_left(400.0, 0.0, 5.0) is None  # no speed known at all
    assert catalog.time_left(400.0, 450.0, 50.0) == 0.0  # never negative


def test_the_runner_and_the_status_show_the_same_eta(library):
    """One job, seen by the runner's RunProgress and by catalog.progress: the same seconds left."""
    from indexer.progress import RunProgress

    job_id = jobs.start_job(library, 4)
    jobs.set_job_totals(library, job_id, 4, 400.0)
    jobs.job_progress(library, job_id, 1, 100.0)
    with library.read() as s:
        created = s.get(Job, job_id).created_at
    with library.indexing_lock():  # a live run holds the lock
        status = catalog.progress(library, now=created + 50.0)
    runner = RunProgress(library, job_id, 4, 400.0, None, show=False)
    runner.started, runner.media_done = time.time() - 50.0, 100.0
    assert status.eta_seconds == pytest.approx(150.0)
    assert runner.eta() == pytest.approx(status.eta_seconds, rel=0.01)


def test_register_lists_the_stages_whose_mark_differs_in_run_order(library, tmp_path):
    path = str(tmp_path / "a.mp4")
    video_id, pending = jobs.register(library, path, "fp", 10, 1.0, None, MARKS)
    assert pending == ["probe", "shots", "speech"]
    jobs.commit_stage(library, video_id, "shots", mark="fp|s1", status="done", moments=[], text_vectors=None,
                      text_model="", visual_model="", media_s=1.0, wall_s=0.5, message="no cuts",
                      video_columns={}, stage_order=list(MARKS))
    assert jobs.register(library, path, "fp", 10, 1.0, None, MARKS) == (video_id, ["probe", "speech"])
    changed = {**MARKS, "shots": "fp|s2"}  # a new model for shots
    assert jobs.register(library, path, "fp", 10, 1.0, None, changed)[1] == ["probe", "shots", "speech"]
    unreadable = jobs.register(library, str(tmp_path / "b.mp4"), None, None, None, "b.mp4: cannot read", MARKS)
    with library.read() as s:
        v = s.get(Video, unreadable[0])
        assert (v.status, v.error) == (FAILED, "b.mp4: cannot read")


def test_commit_stage_replaces_the_stages_moments_and_orders_the_notes(library, tmp_path):
    from indexer.context import MomentIn

    video_id, _ = jobs.register(library, str(tmp_path / "a.mp4"), "fp", 10, 1.0, None, MARKS)

    def commit(stage, moments, message, columns=None):
        jobs.commit_stage(library, video_id, stage, mark=MARKS[stage], status="done", moments=moments,
                          text_vectors=None, text_model="", visual_model="", media_s=2.0, wall_s=1.0,
                          message=message, video_columns=columns or {}, stage_order=list(MARKS))

    commit("speech", [], "no audio track")
    commit("shots", [MomentIn(0.0, 1.0, "visual"), MomentIn(1.0, 2.0, "visual")], "one shot", {"duration": 2.0})
    commit("shots", [MomentIn(0.5, 2.0, "visual", words=[(0.5, 0.75, "hi")])], "one shot")  # a re-run replaces
    with library.read() as s:
        rows = s.scalars(select(Moment).where(Moment.video_id == video_id)).all()
        video = s.get(Video, video_id)
        marks = {r.stage: r.fingerprint for r in s.scalars(select(StageRun)).all()}
    assert [(m.start, m.stage, m.words) for m in rows] == [(0.5, "shots", "[[0.5, 0.75, \"hi\"]]")]
    assert video.notes == "one shot; no audio track" and video.duration == 2.0  # stage order, not commit order
    assert marks == {"shots": "fp|s1", "speech": "fp|w1"}


def test_repair_stale_interrupts_dead_work_and_lists_what_to_resume(library, tmp_path):
    files = {name: tmp_path / name for name in ("cut.mp4", "full.mp4", "bad.mp4", "new.mp4", "gone.mp4")}
    for name, f in files.items():
        if name != "gone.mp4":
            f.write_bytes(b"x")
    library.write(lambda s: s.add_all([
        Job(status="running"),
        Video(path=str(files["cut.mp4"]), status=INDEXING),
        Video(path=str(files["full.mp4"]), status=FAILED, error="The disk holding the library is full."),
        Video(path=str(files["bad.mp4"]), status=FAILED, error="bad.mp4: not a video"),
        Video(path=str(files["new.mp4"]), status=PENDING),
        Video(path=str(files["gone.mp4"]), status=PENDING),
        Video(path=str(tmp_path / "done.mp4"), status=INDEXED),
    ]))
    leftovers = jobs.repair_stale(library, ("The disk holding the library",))
    assert leftovers == [str(files[n]) for n in ("cut.mp4", "full.mp4", "new.mp4")]
    with library.read() as s:
        job = s.scalars(select(Job)).one()
        assert job.status == catalog.INTERRUPTED and job.finished_at is not None
        assert s.scalar(select(Video.status).where(Video.path == str(files["cut.mp4"]))) == catalog.INTERRUPTED
