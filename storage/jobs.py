"""The indexer's bookkeeping in the library: index jobs, videos' status, stage done marks, a stage's moments
committed with their vectors, and the figures the runner's ETA reads.

The runner (indexer/runner.py) walks the files and schedules the stages; every row it writes goes through a
function here, one `Library.write` each. SQLite is the truth: FAISS is updated after the commit that wrote (or
removed) the rows, and `storage.vectors` rebuilds from SQLite when a kill fell between the two.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select

from storage.catalog import FINISHED_MARKS, INTERRUPTED, last_sign_of_life, remove_vectors, wipe_video_rows
from storage.models import FAILED, INDEXED, INDEXING, MISSING, PENDING, Embedding, Job, Moment, StageRun, Video
from storage.vectors import encode_vector

# The runner's log: these writes are its bookkeeping, and a refused one is worth a line beside its own.
log = logging.getLogger("sightline.indexer")


# --- jobs -------------------------------------------------------------------------------------------------------


def start_job(library, files_total: int) -> int:
    """A new "running" job row; returns its id."""

    def fn(s):
        job = Job(files_total=files_total)
        s.add(job)
        s.flush()
        return job.id

    return library.write(fn)


def set_job_totals(library, job_id: int, files_total: int, media_total: float) -> None:
    """What the run will do, once the files needing work are known."""

    def fn(s):
        job = s.get(Job, job_id)
        job.files_total, job.media_seconds_total = files_total, media_total

    library.write(fn)


def job_progress(library, job_id: int, files_done: int, media_done: float) -> None:
    def fn(s):
        job = s.get(Job, job_id)
        job.files_done, job.media_seconds_done = files_done, media_done

    library.write(fn)


def finish_job(library, job_id: int, status: str) -> None:
    """End the job with `status`; a run cut off part way leaves no video "indexing" (the caller holds the
    indexing lock, so every such video is its own)."""

    def fn(s):
        job = s.get(Job, job_id)
        job.status, job.finished_at = status, time.time()
        if status != "done":
            for v in s.scalars(select(Video).where(Video.status == INDEXING)).all():
                v.status = INTERRUPTED

    library.write(fn)


def repair_stale(library, resume_errors: tuple[str, ...] = ()) -> list[str]:
    """Under the indexing lock, before a run: jobs still "running" were killed (mark them interrupted, with when)
    and videos still "indexing" were cut off (mark them interrupted). Returns the files (still on disk) an earlier
    run left unfinished: interrupted, pending, or failed with an error starting with one of `resume_errors`."""

    def fn(s):
        for job in s.scalars(select(Job).where(Job.status == "running")).all():
            job.status, job.finished_at = INTERRUPTED, last_sign_of_life(s, job)
        for v in s.scalars(select(Video).where(Video.status == INDEXING)).all():
            v.status = INTERRUPTED
        rows = s.execute(select(Video.path, Video.status, Video.error).where(
            Video.status.in_((INTERRUPTED, PENDING, FAILED))).order_by(Video.id)).all()
        return [p for p, st, err in rows if st != FAILED or (err or "").startswith(resume_errors)]

    return [p for p in library.write(fn) if Path(p).is_file()]


# --- videos -----------------------------------------------------------------------------------------------------


def mark_missing(library, roots: Sequence[Path], present: set[str]) -> list[str]:
    """Videos under an indexed folder (`roots`) that are gone from disk become `missing`; returns their paths."""
    if not roots:
        return []

    def fn(s):
        gone = []
        for v in s.scalars(select(Video).where(Video.status != MISSING)).all():
            if any(v.path.startswith(str(r) + os.sep) for r in roots) and v.path not in present \
                    and not Path(v.path).exists():
                v.status = MISSING
                v.error = "the file is no longer there"
                gone.append(v.path)
        return gone

    return library.write(fn)


def register(library, path: str, fingerprint: str | None, size: int | None, mtime: float | None,
             error: str | None, marks: Mapping[str, str]) -> tuple[int, list[str]]:
    """Add or update a file's video row and return its id and the stages still to run: those (of `marks`, stage ->
    the done mark this run would write, in run order) whose stored done mark differs. A changed fingerprint
    drops the old moments and vectors first; `error` (the file cannot be read) marks the video failed."""

    def fn(s):
        video = s.scalar(select(Video).where(Video.path == path))
        if video is None:
            video = Video(path=path, status=PENDING)
            s.add(video)
            s.flush()
        removed: dict[str, list[int]] = {}
        if fingerprint is not None and video.fingerprint not in (None, fingerprint):
            removed = wipe_video_rows(s, video.id)  # the file changed: old moments and vectors go
        video.fingerprint, video.size = fingerprint, size
        if mtime is not None:
            video.mtime = mtime
        if error:
            video.status, video.error = FAILED, error
        done = {r.stage: r.fingerprint for r in s.scalars(select(StageRun).where(
            StageRun.video_id == video.id, StageRun.status.in_(FINISHED_MARKS))).all()}
        pending = [stage for stage, mark in marks.items() if done.get(stage) != mark]
        if not pending and video.status != INDEXED:
            video.status, video.error = INDEXED, None
        return video.id, pending, removed

    video_id, pending, removed = library.write(fn)
    remove_vectors(library, removed)
    return video_id, pending


def set_status(library, video_id: int, status: str, error: str | None = None) -> None:
    def fn(s):
        v = s.get(Video, video_id)
        v.status, v.error = status, error
        if status == INDEXED:
            v.indexed_at = time.time()

    library.write(fn)


def try_set_status(library, video_id: int, status: str, error: str | None = None) -> None:
    """`set_status`, logging instead of raising: a full disk may refuse even this small write."""
    try:
        set_status(library, video_id, status, error)
    except Exception as err:  # noqa: BLE001 - the run is stopping for that reason already
        log.warning("could not mark video %s %s: %s", video_id, status, err)


# --- a stage's results ------------------------------------------------------------------------------------------


def commit_stage(library, video_id: int, stage: str, *, mark: str, status: str, moments: Sequence,
                 text_vectors: Sequence[np.ndarray] | None, text_model: str, visual_model: str,
                 media_s: float, wall_s: float, message: str | None, video_columns: Mapping[str, object],
                 stage_order: Sequence[str]) -> None:
    """A stage's moments, their vectors and its done mark in one transaction, replacing what the stage wrote
    before; then FAISS. `moments` have start, end, modality, text, thumbnail, words and visual_vector
    (indexer.context.MomentIn); `text_vectors` holds one vector per moment with text, in order.
    `video_columns` updates the video row (probe); its notes are rebuilt from every stage's message."""

    def fn(s):
        of_stage = (Moment.video_id == video_id, Moment.stage == stage)
        old = s.execute(select(Embedding.space, Embedding.moment_id).join(Moment, Moment.id == Embedding.moment_id)
                        .where(*of_stage)).all()
        s.execute(delete(Embedding).where(Embedding.moment_id.in_(select(Moment.id).where(*of_stage))))
        s.execute(delete(Moment).where(*of_stage))
        rows = [Moment(video_id=video_id, start=float(m.start), end=float(m.end), modality=m.modality,
                       text=m.text, thumbnail=m.thumbnail, stage=stage,
                       words=json.dumps([[round(a, 3), round(b, 3), w] for a, b, w in m.words]) if m.words else None)
                for m in moments]
        s.add_all(rows)
        s.flush()
        added: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        ti = 0
        for row, m in zip(rows, moments):
            if m.text.strip():
                vec = text_vectors[ti]
                ti += 1
                s.add(Embedding(moment_id=row.id, space="text", model=text_model, vector=encode_vector(vec)))
                added.setdefault("text", ([], []))
                added["text"][0].append(row.id)
                added["text"][1].append(vec)
            if m.visual_vector is not None:
                s.add(Embedding(moment_id=row.id, space="visual", model=visual_model,
                                vector=encode_vector(m.visual_vector)))
                added.setdefault("visual", ([], []))
                added["visual"][0].append(row.id)
                added["visual"][1].append(m.visual_vector)
        run = s.scalar(select(StageRun).where(StageRun.video_id == video_id, StageRun.stage == stage))
        if run is None:
            run = StageRun(video_id=video_id, stage=stage)
            s.add(run)
        run.status, run.fingerprint, run.wall_s, run.media_s = status, mark, wall_s, media_s
        run.message, run.finished_at = message, time.time()
        v = s.get(Video, video_id)
        for col, value in video_columns.items():
            setattr(v, col, value)
        s.flush()
        v.notes = _notes(s, video_id, stage_order)
        removed: dict[str, list[int]] = {}
        for space, mid in old:
            removed.setdefault(space, []).append(mid)
        return removed, added

    removed, added = library.write(fn)
    remove_vectors(library, removed)
    for space, (ids, vecs) in added.items():
        library.vectors(space).add(ids, np.stack(vecs))


def _notes(s, video_id: int, stage_order: Sequence[str]) -> str | None:
    """The video's notes: its stages' messages, in run order."""
    order = {stage: i for i, stage in enumerate(stage_order)}
    runs = s.scalars(select(StageRun).where(StageRun.video_id == video_id)).all()
    notes = [r.message for r in sorted(runs, key=lambda r: order.get(r.stage, 99)) if r.message]
    return "; ".join(notes) or None


# --- what the runner reads --------------------------------------------------------------------------------------


def known_duration(library, video_id: int) -> float | None:
    """The duration a probe stored for the video, if any."""
    with library.read() as s:
        return s.scalar(select(Video.duration).where(Video.id == video_id))


def notes_of(library, paths: Iterable[str]) -> dict[str, str]:
    """{path: notes} of those videos with notes."""
    paths = list(paths)
    if not paths:
        return {}
    with library.read() as s:
        rows = s.execute(select(Video.path, Video.notes).where(Video.path.in_(paths))).all()
    return {p: n for p, n in rows if n}


def stage_shares(library, defaults: Mapping[str, float]) -> dict[str, float]:
    """Each stage's share of a video's indexing time, from the wall time of the library's stage runs; `defaults`
    (normalised) until there are any."""
    with library.read() as s:
        rows = s.execute(select(StageRun.stage, func.sum(StageRun.wall_s)).group_by(StageRun.stage)).all()
    total = sum(w or 0 for _, w in rows)
    if total <= 0:
        norm = sum(defaults.values())
        return {stage: w / norm for stage, w in defaults.items()}
    return {stage: (w or 0) / total for stage, w in rows}


def wall_per_media_second(library) -> float | None:
    """The library's past indexing speed: wall seconds of every stage per media second probed; None without
    history."""
    with library.read() as s:
        row = s.execute(select(func.sum(StageRun.wall_s), func.sum(StageRun.media_s))
                        .where(StageRun.stage == "probe")).one()
        wall = s.scalar(select(func.sum(StageRun.wall_s))) or 0.0
    media = row[1] or 0.0
    return wall / media if media > 0 and wall > 0 else None
