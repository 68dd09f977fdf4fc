"""The library's catalogue: videos and their state, indexing progress with ETA, a video's moments, removal.

The UI, `sightline status` and the agent's tools read through here; the UI polls `progress()` with a gr.Timer, so
every function is cheap. Writes go through `Library.write`; `wipe_video_rows` is shared with the indexer's
re-index path (storage/jobs.py), and `time_left` is the one ETA, the runner's progress events' and the UI's.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select

from storage.errors import SightlineError
from storage.models import FAILED, INDEXED, INDEXING, Embedding, Job, Moment, StageRun, Video

if TYPE_CHECKING:  # imported where used: `sightline status` needs neither storage.search nor numpy
    from storage.search import MomentHit


@dataclass
class VideoRow:
    id: int
    path: str
    status: str
    duration: float | None
    moments: int
    error: str | None
    notes: str | None
    stages: list[tuple[str, str]] = field(default_factory=list)  # (stage, status) in the order they finished
    proxy: Path | None = None  # the browser-playable copy the player loads instead of the file, when there is one

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass
class Progress:
    """The latest index job, as the job and stage tables describe it."""

    running: bool
    job_id: int | None = None
    files_total: int = 0
    files_done: int = 0
    media_total: float = 0.0
    media_done: float = 0.0
    elapsed: float = 0.0
    status: str = "idle"  # the job's: running | done | interrupted | aborted (a running job whose process is gone: interrupted)
    ended_at: float | None = None  # when it finished, or (interrupted) its last sign of life
    holder: str | None = None  # the live run holding the indexing lock ("process 123, started ...")

    @property
    def fraction(self) -> float:
        if self.media_total > 0:
            return min(1.0, self.media_done / self.media_total)
        return self.files_done / self.files_total if self.files_total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Remaining media seconds at the speed measured so far; None until there is a speed."""
        if not self.running or self.media_total <= 0:
            return None
        return time_left(self.media_total, self.media_done, self.elapsed)


def time_left(media_total: float, media_done: float, elapsed: float,
              wall_per_media: float | None = None) -> float | None:
    """Seconds an index run still needs: the media left at the speed measured so far (media done in `elapsed`
    wall seconds), else at the library's past speed (`wall_per_media`, wall s per media s); None without either."""
    remaining = max(0.0, media_total - media_done)
    if media_done > 0 and elapsed > 0:
        return remaining * elapsed / media_done
    if wall_per_media:
        return remaining * wall_per_media
    return None


INTERRUPTED = "interrupted"  # a video whose run stopped part way (Ctrl-C, or its process is gone); it resumes
INTERRUPTED_TEXT = "interrupted — will resume"


def shown_status(status: str, alive: bool) -> str:
    """A video's status as readers show it: "indexing" with no live run behind it is "interrupted"."""
    return INTERRUPTED if status == INDEXING and not alive else status


def last_sign_of_life(s, job) -> float:
    """A killed job's last committed work: its latest stage mark, else its start."""
    last = s.scalar(select(func.max(StageRun.finished_at)).where(StageRun.finished_at >= job.created_at))
    return max(job.created_at, last or 0.0)


def videos(library) -> list[VideoRow]:
    """Every video with its state, error, moment count and finished stages."""
    alive = library.indexing_holder() is not None
    with library.read() as s:
        counts = dict(s.execute(select(Moment.video_id, func.count(Moment.id)).group_by(Moment.video_id)).all())
        stages: dict[int, list[tuple[str, str]]] = {}
        for run in s.scalars(select(StageRun).order_by(StageRun.finished_at)).all():
            stages.setdefault(run.video_id, []).append((run.stage, run.status))
        return [VideoRow(v.id, v.path, shown_status(v.status, alive), v.duration, int(counts.get(v.id, 0)), v.error, v.notes,
                         stages.get(v.id, []), library.path_of(v.proxy) if v.proxy else None)
                for v in s.scalars(select(Video).order_by(Video.id)).all()]


def progress(library, now: float | None = None) -> Progress:
    """The most recent index job: how far it is and how long is left."""
    now = time.time() if now is None else now
    with library.read() as s:
        job = s.scalars(select(Job).order_by(Job.id.desc()).limit(1)).first()
        if job is None:
            return Progress(running=False)
        status, ended = job.status, job.finished_at
        holder = library.indexing_holder() if status == "running" else None
        if status == "running" and holder is None:  # killed (-9, a crash, power): nothing will finish it
            status, ended = INTERRUPTED, last_sign_of_life(s, job)
        end = ended or now
        return Progress(running=status == "running", job_id=job.id, files_total=job.files_total, files_done=job.files_done,
                        media_total=job.media_seconds_total, media_done=job.media_seconds_done,
                        elapsed=max(0.0, end - job.created_at), status=status, ended_at=ended, holder=holder)


def counts(rows: list[VideoRow]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.status] = out.get(r.status, 0) + 1
    return out


def video_path(library, ref: str | int) -> Path:
    """The file of a library video, given its id; anything else (a path, '../..') is refused."""
    text = str(ref if ref is not None else "").strip()
    if not text:
        raise SightlineError("No video was given.", hint="Pick a video of the library.")
    with library.read() as s:
        video = s.get(Video, int(text)) if text.isdigit() and len(text) < 12 else None
    if video is None:
        raise SightlineError(f"{text!r} is not a video of this library.",
                             hint="Only videos listed in the Library tab can be opened.")
    path = Path(video.path)
    if not path.is_file():
        raise SightlineError(f"{path.name} is no longer on disk at {path}.",
                             hint="Put the file back, or remove the video from the library.")
    return path


def player_path(library, ref: str | int) -> Path:
    """The file the player loads for a library video: its browser proxy when one is made, else the file itself
    (checked as `video_path` does). A proxy plays even while the original is off line (an unplugged drive)."""
    text = str(ref if ref is not None else "").strip()
    if text.isdigit() and len(text) < 12:
        with library.read() as s:
            video = s.get(Video, int(text))
            proxy = library.path_of(video.proxy) if video is not None and video.proxy else None
        if proxy is not None and proxy.is_file():
            return proxy
    return video_path(library, ref)


PROXY_DIR = Path("cache") / "proxies"  # browser proxies, relative to the library folder (indexer/stages/proxy.py)


def remove_proxies(folder: Path, video_id: int, keep: str | None = None) -> list[Path]:
    """Delete a video's proxy files, half-written ones included, except `keep` (relative); return what went."""
    where = Path(folder) / PROXY_DIR
    if not where.is_dir():
        return []
    gone = []
    for f in [*where.glob(f"{int(video_id):06d}-*"), *where.glob(f".{int(video_id):06d}-*")]:
        if keep is None or f != Path(folder) / keep:
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone


def wipe_video_rows(session, video_id: int) -> dict[str, list[int]]:
    """Delete a video's moments, embeddings and stage marks in `session`; return {space: moment ids} whose
    vectors must leave FAISS once the transaction has committed (SQLite is the truth, FAISS follows).
    The proxy is forgotten too (it shows the old content); its file goes when the proxy stage runs again, or
    with `remove`."""
    removed: dict[str, list[int]] = {}
    for space, mid in session.execute(select(Embedding.space, Embedding.moment_id)
                                      .join(Moment, Moment.id == Embedding.moment_id)
                                      .where(Moment.video_id == video_id)).all():
        removed.setdefault(space, []).append(mid)
    of_video = select(Moment.id).where(Moment.video_id == video_id)
    session.execute(delete(Embedding).where(Embedding.moment_id.in_(of_video)))
    session.execute(delete(Moment).where(Moment.video_id == video_id))
    session.execute(delete(StageRun).where(StageRun.video_id == video_id))
    video = session.get(Video, video_id)
    if video is not None:
        video.proxy = None
    return removed


def remove_vectors(library, removed: dict[str, list[int]]) -> None:
    for space, ids in removed.items():
        if ids:
            library.vectors(space).remove(ids)


def remove(library, video_id: int) -> str:
    """Delete a video's rows, vectors, thumbnails and proxy (the video file itself is left alone); return its path."""

    def _delete(session):
        video = session.get(Video, int(video_id))
        if video is None:
            raise SightlineError(f"No video {video_id} in this library.", hint="Refresh the Library tab.")
        removed = wipe_video_rows(session, video.id)
        path = video.path
        session.delete(video)
        return path, removed

    path, removed = library.write(_delete)
    remove_vectors(library, removed)
    shutil.rmtree(library.folder / "thumbnails" / f"{int(video_id):06d}", ignore_errors=True)
    remove_proxies(library.folder, int(video_id))
    return path


STATUS_ORDER = (INDEXING, INTERRUPTED, "pending", INDEXED, FAILED, "missing")


def moments_of(library, video_id: int, limit: int = 300) -> list[dict]:
    """The moments of one video in time order, as DESIGN moment dicts (score 1: not a search result)."""
    with library.read() as s:
        video = s.get(Video, int(video_id))
        if video is None:
            return []
        rows = s.scalars(select(Moment).where(Moment.video_id == video.id)
                         .order_by(Moment.start, Moment.modality).limit(limit)).all()
        return [{"video_id": video.id, "video": video.path, "start": m.start, "end": m.end, "modality": m.modality,
                 "text": m.text, "score": 1.0,
                 "thumbnail": str(library.path_of(m.thumbnail)) if m.thumbnail else None} for m in rows]


def answerable_videos(library) -> list[tuple[int, str, float | None]]:
    """(id, path, duration) of the videos an answer can come from: indexed, or being indexed (their finished
    stages are searchable)."""
    with library.read() as s:
        return [tuple(row) for row in s.execute(select(Video.id, Video.path, Video.duration)
                                                .where(Video.status.in_([INDEXED, INDEXING])).order_by(Video.id))]


def moments_between(library, video_id: int, start: float, end: float,
                    modalities: Sequence[str] | None = None) -> list[MomentHit]:
    """Moments of one video overlapping [start, end], by start time (score 0: they were not ranked)."""
    from storage.search import MomentHit

    with library.read() as s:
        q = (select(Moment, Video).join(Video, Moment.video_id == Video.id)
             .where(Moment.video_id == video_id, Moment.start <= end, Moment.end >= start)
             .order_by(Moment.start, Moment.id))
        if modalities:
            q = q.where(Moment.modality.in_(list(modalities)))
        rows = s.execute(q).all()
    return [MomentHit(m.id, v.id, v.path, m.start, m.end, m.modality, m.text, 0.0,
                      str(library.path_of(m.thumbnail)) if m.thumbnail else None) for m, v in rows]


# The runner redoes every stage whose mark is not one of these (an upgrade marks changed stages `outdated`).
FINISHED_MARKS = ("done", "skipped")


def rerun_command(library) -> str:
    """The command that brings every video of the library up to date."""
    import shlex

    return f"sightline --library {shlex.quote(str(library.folder))} index"


def videos_to_rerun(library) -> list[str]:
    """Paths (still on disk) of the videos with a stage marked for a re-run, as an upgrade leaves them, and of
    the videos a killed or interrupted run left part way (the UI resumes both when it starts)."""
    with library.read() as s:
        paths = s.scalars(select(Video.path).join(StageRun, StageRun.video_id == Video.id)
                          .where(StageRun.status.not_in(FINISHED_MARKS)).distinct().order_by(Video.path)).all()
        if library.indexing_holder() is None:  # and those a killed or interrupted run left part way
            paths = sorted({*paths, *s.scalars(select(Video.path).where(Video.status.in_((INDEXING, INTERRUPTED))))})
    return [p for p in paths if Path(p).is_file()]


def status_report(library) -> dict:
    """Everything `sightline status --json` prints: counts, every video with its stages, the last job, and
    which stages the next `sightline index` re-runs and why (`reruns`, per video and in all)."""
    reruns: dict[int, dict[str, str]] = {}
    holder = library.indexing_holder()
    alive = holder is not None
    with library.read() as s:
        counts: dict[str, int] = {}
        for st, n in s.execute(select(Video.status, func.count(Video.id)).group_by(Video.status)).all():
            counts[shown_status(st, alive)] = counts.get(shown_status(st, alive), 0) + n
        moments = dict(s.execute(select(Moment.modality, func.count(Moment.id)).group_by(Moment.modality)).all())
        per_video = dict(s.execute(select(Moment.video_id, func.count(Moment.id)).group_by(Moment.video_id)).all())
        stages: dict[int, dict] = {}
        for r in s.scalars(select(StageRun).order_by(StageRun.id)).all():
            stages.setdefault(r.video_id, {})[r.stage] = {
                "status": r.status, "wall_s": round(r.wall_s, 3), "media_s": round(r.media_s, 3),
                "message": r.message}
            if r.status not in FINISHED_MARKS:
                reruns.setdefault(r.video_id, {})[r.stage] = r.message or f"its last run is marked {r.status}"
        videos = [{
            "id": v.id, "path": v.path, "status": shown_status(v.status, alive), "duration": v.duration, "fps": v.fps,
            "width": v.width, "height": v.height, "has_audio": v.has_audio, "error": v.error, "notes": v.notes,
            "moments": per_video.get(v.id, 0), "stages": stages.get(v.id, {}), "indexed_at": v.indexed_at,
            "reruns": reruns.get(v.id, {}),
        } for v in s.scalars(select(Video).order_by(Video.id)).all()]
        job = s.scalars(select(Job).order_by(Job.id.desc()).limit(1)).first()
        last_job = None if job is None else {
            "id": job.id, "status": job.status, "files_total": job.files_total, "files_done": job.files_done,
            "media_seconds_total": job.media_seconds_total, "media_seconds_done": job.media_seconds_done,
            "created_at": job.created_at,
            "finished_at": job.finished_at, "holder": holder if job.status == "running" else None}
        if job is not None and job.status == "running" and not alive:  # its process is gone: killed
            last_job.update(status=INTERRUPTED, finished_at=last_sign_of_life(s, job))
    by_stage: dict[str, int] = {}
    for stages_of_video in reruns.values():
        for stage in stages_of_video:
            by_stage[stage] = by_stage.get(stage, 0) + 1
    summary = {"videos": len(reruns), "stages": by_stage, "command": rerun_command(library) if reruns else None}
    return {"library": str(library.folder), "counts": counts, "moments": sum(moments.values()),
            "moments_by_modality": moments, "videos": videos, "last_job": last_job, "reruns": summary}
