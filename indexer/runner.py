"""The job runner: index many files and folders, incrementally and resumably, with progress and ETA.

- Incremental: a file whose fingerprint and stage signatures match what is stored is skipped; a changed file
  loses its old moments and vectors first; files gone from an indexed folder are marked `missing`.
- Resumable: each stage's moments, embeddings and done mark commit in ONE `Library.write`; FAISS is updated
  after the commit (and `storage.vectors` rebuilds from SQLite when a kill fell between the two). A killed run
  resumes at the first stage without a done mark: no duplicate and no missing moments.
- Per-file errors land in `videos.error`; a bad file never stops the others or touches what is indexed.
- One run per library at a time (`Library.indexing_lock`): a second is refused, saying which run holds it.
  The lock also tells readers whether a "running" job is alive; a run starts by marking dead jobs and their
  "indexing" videos interrupted and takes up every file they left unfinished. Ctrl-C stops the running stages
  at their next progress report and ends the job "interrupted" (`IndexInterrupted`); a full disk or read-only
  library fails the file at hand and stops the run (`summary.aborted`), the rest left to resume.
- Speed: a video's stages run at once, each as soon as what it needs is done: the one decode pass of `shots`,
  `speech` beside it, and on-screen text following the pass sample by sample (`FOLLOWS`); then visual moments
  over the cached frames. Wall time and media seconds per (video, stage) go to `stage_runs`; the ETA reads the
  same figures.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select

from indexer.context import IndexContext, StageOutput, UpstreamFailed, VideoJob
from indexer.faults import RESOURCE_MESSAGES, ResourceFailure, resource_failure, unreadable
from indexer.files import collect, keep_videos
from indexer.frames import drop_frames, start_feed
from indexer.media import fingerprint
from storage.catalog import remove_vectors, wipe_video_rows
from indexer.stages import DEFAULT_STAGES, WORKERS
from storage.errors import SightlineError
from storage.models import FAILED, INDEXED, INDEXING, MISSING, PENDING, Embedding, Job, Moment, StageRun, Video
from storage.vectors import encode_vector

log = logging.getLogger("sightline.indexer")

# Share of a video's indexing time per stage, used for the ETA until the library has its own figures.
DEFAULT_WEIGHTS = {"probe": 0.01, "shots": 0.35, "visual": 0.05, "screen_text": 0.25, "speech": 0.3,
                   "captions": 0.04, "proxy": 0.1}
PROGRESS_EVERY_S = 1.0  # progress inside a stage (decode position, audio transcribed, proxy written) at most this often


@dataclass
class ProgressEvent:
    """What the CLI's tqdm bar and the UI show: where the run is and how long it will take."""

    job_id: int
    file_index: int  # 1-based position of the current file
    files_total: int
    path: str
    stage: str
    state: str  # started | progress | done | skipped | failed | unchanged | finished
    media_done: float  # seconds of media indexed so far in this run (whole files plus finished stages)
    media_total: float
    elapsed_s: float
    eta_s: float | None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.media_done / self.media_total if self.media_total else 0.0


@dataclass
class IndexSummary:
    done: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    missing: list[str] = field(default_factory=list)
    media_s: float = 0.0
    wall_s: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)
    aborted: str = ""  # why the run stopped before its end (disk full, read-only library, Ctrl-C); "" when it did not
    left: list[str] = field(default_factory=list)  # files not finished when it stopped: the next run resumes them
    resumed: int = 0  # files an earlier run left unfinished (killed, interrupted, aborted) that this run took up
    not_videos: list[tuple[str, str]] = field(default_factory=list)  # (path, why) found in a folder, not indexed

    @property
    def realtime_factor(self) -> float:
        return self.media_s / self.wall_s if self.wall_s > 0 else 0.0

    def describe(self) -> str:
        lines = [f"Indexed {len(self.done)} file(s), {self.media_s / 60:.1f} min of media in {self.wall_s:.1f} s"
                 + (f" ({self.realtime_factor:.1f}x realtime)" if self.done and self.wall_s > 0 else "")
                 + f"; {len(self.unchanged)} unchanged; {len(self.failed)} failed; {len(self.missing)} missing."]
        for path, note in self.notes.items():
            lines.append(f"  note: {Path(path).name}: {note}")
        for path, error in self.failed:
            lines.append(f"  failed: {path}: {error}")
        for path in self.missing:
            lines.append(f"  missing: {path}")
        if self.not_videos:
            names = ", ".join(Path(p).name for p, _ in self.not_videos[:5])
            more = f" and {len(self.not_videos) - 5} more" if len(self.not_videos) > 5 else ""
            lines.append(f"  skipped {len(self.not_videos)} file(s) with a video extension that are not videos: "
                         f"{names}{more}.")
        if self.resumed:
            lines.append(f"  resumed {self.resumed} file(s) an earlier run left unfinished.")
        if self.aborted:
            lines.append(f"Stopped: {self.aborted}")
            if self.left:
                lines.append(f"  {len(self.left)} file(s) not finished; the next `sightline index` resumes them.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"done": self.done, "unchanged": self.unchanged, "failed": [list(f) for f in self.failed],
                "missing": self.missing, "media_s": self.media_s, "wall_s": self.wall_s, "notes": self.notes,
                "aborted": self.aborted, "left": self.left, "resumed": self.resumed,
                "not_videos": [list(f) for f in self.not_videos]}


class IndexInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; it ended cleanly (job "interrupted", videos true) and `summary` says how far it got."""

    def __init__(self, summary: IndexSummary):
        super().__init__("indexing interrupted")
        self.summary = summary


class _Cancelled(Exception):
    """Raised inside a running stage (through its progress callback) once Ctrl-C stopped the run."""


# --- planning ---------------------------------------------------------------------------------------------------


def _stage_key(fp: str, stage, ctx: IndexContext) -> str:
    return f"{fp}|{stage.signature(ctx)}"


def _mark_missing(library, roots: list[Path], present: set[str]) -> list[str]:
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


def _prepare(library, path: Path, ctx: IndexContext, info=None) -> tuple[VideoJob, list] | str:
    """Register the file and work out which stages still need to run; a string is an error message. `info`: the
    file's MediaInfo when it was probed already."""
    try:
        fp = fingerprint(path)
        size = path.stat().st_size
    except OSError as err:
        fp, size = None, None
        error = unreadable(path, err)
    else:
        error = None

    def fn(s):
        video = s.scalar(select(Video).where(Video.path == str(path)))
        if video is None:
            video = Video(path=str(path), status=PENDING)
            s.add(video)
            s.flush()
        removed: dict[str, list[int]] = {}
        if fp is not None and video.fingerprint not in (None, fp):
            removed = wipe_video_rows(s, video.id)  # the file changed: old moments and vectors go
        video.fingerprint, video.size = fp, size
        try:
            video.mtime = path.stat().st_mtime
        except OSError:
            pass
        if error:
            video.status, video.error = FAILED, error
        done = {r.stage: r.fingerprint for r in s.scalars(select(StageRun).where(
            StageRun.video_id == video.id, StageRun.status.in_(("done", "skipped")))).all()}
        pending = [st for st in DEFAULT_STAGES if done.get(st.NAME) != _stage_key(fp or "", st, ctx)]
        if not pending and video.status != INDEXED:
            video.status, video.error = INDEXED, None
        return video.id, pending, removed

    video_id, pending, removed = library.write(fn)
    remove_vectors(library, removed)
    if error:
        return error
    job = VideoJob(video_id, str(path), fp)
    job.info = info
    return job, pending


# --- committing a stage -----------------------------------------------------------------------------------------


def _commit(library, ctx: IndexContext, video: VideoJob, stage, out: StageOutput, wall_s: float) -> None:
    """The stage's moments, their vectors and its done mark in one transaction; then FAISS."""
    texts = [m.text for m in out.moments if m.text.strip()]
    text_vecs = None
    text_model = ""
    if texts:
        embed = ctx.text_embedder.get()
        text_vecs = embed(texts)
        text_model = getattr(embed, "model_name", ctx.text_embedder.what)
    visual_model = ctx.visual_embedder.what
    key = _stage_key(video.fingerprint, stage, ctx)

    def fn(s):
        old = s.execute(select(Embedding.space, Embedding.moment_id).join(Moment, Moment.id == Embedding.moment_id)
                        .where(Moment.video_id == video.id, Moment.stage == stage.NAME)).all()
        s.execute(delete(Embedding).where(Embedding.moment_id.in_(
            select(Moment.id).where(Moment.video_id == video.id, Moment.stage == stage.NAME))))
        s.execute(delete(Moment).where(Moment.video_id == video.id, Moment.stage == stage.NAME))
        rows = [Moment(video_id=video.id, start=float(m.start), end=float(m.end), modality=m.modality,
                       text=m.text, thumbnail=m.thumbnail, stage=stage.NAME,
                       words=json.dumps([[round(a, 3), round(b, 3), w] for a, b, w in m.words]) if m.words else None)
                for m in out.moments]
        s.add_all(rows)
        s.flush()
        added: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        ti = 0
        for row, m in zip(rows, out.moments):
            if m.text.strip():
                vec = text_vecs[ti]
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
        run = s.scalar(select(StageRun).where(StageRun.video_id == video.id, StageRun.stage == stage.NAME))
        if run is None:
            run = StageRun(video_id=video.id, stage=stage.NAME)
            s.add(run)
        run.status, run.fingerprint, run.wall_s, run.media_s = out.status, key, wall_s, out.media_s
        run.message, run.finished_at = out.message, time.time()
        v = s.get(Video, video.id)
        for col, value in out.video.items():
            setattr(v, col, value)
        s.flush()
        v.notes = _notes(s, video.id)
        removed: dict[str, list[int]] = {}
        for space, mid in old:
            removed.setdefault(space, []).append(mid)
        return removed, added

    removed, added = library.write(fn)
    remove_vectors(library, removed)
    for space, (ids, vecs) in added.items():
        library.vectors(space).add(ids, np.stack(vecs))


def _notes(s, video_id: int) -> str | None:
    order = {st.NAME: i for i, st in enumerate(DEFAULT_STAGES)}
    runs = s.scalars(select(StageRun).where(StageRun.video_id == video_id)).all()
    notes = [r.message for r in sorted(runs, key=lambda r: order.get(r.stage, 99)) if r.message]
    return "; ".join(notes) or None


def _set_status(library, video_id: int, status: str, error: str | None = None) -> None:
    def fn(s):
        v = s.get(Video, video_id)
        v.status, v.error = status, error
        if status == INDEXED:
            v.indexed_at = time.time()

    library.write(fn)


# --- the run ----------------------------------------------------------------------------------------------------


class _Progress:
    """Turns stage completions into ProgressEvents with an ETA, and drives an optional tqdm bar."""

    def __init__(self, library, job_id: int, files_total: int, media_total: float,
                 on_progress: Callable[[ProgressEvent], None] | None, show: bool):
        self.job_id, self.files_total, self.media_total = job_id, files_total, media_total
        self.on_progress = on_progress
        self.started = time.time()
        self.media_done = 0.0
        self.partial = 0.0  # fraction of the current file done, in media seconds
        self.running: dict[str, float] = {}  # stages under way: their share of the file done so far (media s)
        self.shown = 0.0  # the largest share of the current file reported so far
        self.last_within = 0.0
        self.lock = threading.Lock()
        self.cancelled = threading.Event()  # Ctrl-C: running stages stop at their next progress report
        self.weights = _stage_weights(library)
        self.history_rate = _history_rate(library)  # wall seconds per media second, from earlier runs
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=round(media_total, 1), unit="s", desc="indexing", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} media s [{elapsed}<{remaining}]")

    def eta(self) -> float | None:
        done = self.media_done + self._file_part()
        elapsed = time.time() - self.started
        remaining = max(0.0, self.media_total - done)
        if done > 0 and elapsed > 0:
            return remaining * elapsed / done
        if self.history_rate:
            return remaining * self.history_rate
        return None

    def emit(self, index: int, path: str, stage: str, state: str, message: str = "") -> None:
        with self.lock:
            event = ProgressEvent(self.job_id, index, self.files_total, path, stage, state,
                                  self.media_done + self._file_part(), self.media_total, time.time() - self.started,
                                  self.eta(), message)
            if self.bar is not None:
                self.bar.n = round(min(event.media_done, self.media_total), 1)
                self.bar.set_postfix_str(f"{Path(path).name}: {stage} {state}"[:60], refresh=True)
            if self.on_progress is not None:  # under the lock: stage threads' events arrive in order
                try:
                    self.on_progress(event)
                except Exception:  # noqa: BLE001 - a broken progress consumer must not stop indexing
                    log.exception("progress callback failed")

    def _file_part(self) -> float:
        # Never backwards: stages overlap, and one ending can take back less than the others' running shares.
        self.shown = max(self.shown, self.partial + sum(self.running.values()))
        return self.shown

    def within(self, index: int, path: str, stage: str, t: float, duration: float) -> None:
        """A running stage has reached media time t (of duration): move the bar, at most every PROGRESS_EVERY_S.
        After Ctrl-C it raises instead: the stage's decode, transcription or ffmpeg stops there."""
        if self.cancelled.is_set():
            raise _Cancelled("indexing interrupted")
        if duration <= 0:
            return
        with self.lock:
            self.running[stage] = min(1.0, max(0.0, t / duration)) * duration * self.weights.get(stage, 0.05)
            now = time.time()
            if now - self.last_within < PROGRESS_EVERY_S:
                return
            self.last_within = now
        self.emit(index, path, stage, "progress")

    def stage_done(self, stage: str, duration: float) -> None:
        with self.lock:
            self.running.pop(stage, None)
            self.partial = min(duration, self.partial + duration * self.weights.get(stage, 0.05))

    def file_done(self, duration: float) -> None:
        with self.lock:
            self.media_done += duration
            self.partial = self.shown = 0.0
            self.running.clear()

    def close(self, complete: bool = True) -> None:
        """End the bar: at 100% only when the run finished (an interrupted or aborted run shows where it stopped)."""
        if self.bar is not None:
            if complete:
                self.bar.n = round(self.media_total, 1)
            self.bar.refresh()
            self.bar.close()


def _stage_weights(library) -> dict[str, float]:
    with library.read() as s:
        rows = s.execute(select(StageRun.stage, func.sum(StageRun.wall_s)).group_by(StageRun.stage)).all()
    total = sum(w or 0 for _, w in rows)
    if total <= 0:
        norm = sum(DEFAULT_WEIGHTS.values())
        return {stage: w / norm for stage, w in DEFAULT_WEIGHTS.items()}
    return {stage: (w or 0) / total for stage, w in rows}


def _history_rate(library) -> float | None:
    with library.read() as s:
        row = s.execute(select(func.sum(StageRun.wall_s), func.sum(StageRun.media_s))
                        .where(StageRun.stage == "probe")).one()
        wall = s.scalar(select(func.sum(StageRun.wall_s))) or 0.0
    media = row[1] or 0.0
    return wall / media if media > 0 and wall > 0 else None


def index_paths(library, paths: Iterable[str | Path], ctx: IndexContext,
                on_progress: Callable[[ProgressEvent], None] | None = None,
                show_progress: bool = False) -> IndexSummary:
    """Index files and folders into the library; see the module docstring for the guarantees.

    One run at a time per library: a second one (another process, or the UI beside the CLI) is refused with a
    SightlineError naming the run in progress."""
    with library.indexing_lock():
        return _index_paths(library, paths, ctx, on_progress, show_progress)


def _index_paths(library, paths, ctx: IndexContext, on_progress, show_progress: bool) -> IndexSummary:
    started = time.time()
    files, roots = collect(paths)
    summary = IndexSummary()
    try:
        leftovers = _repair_stale(library)  # we hold the lock: whatever is "running" or "indexing" is dead
    except Exception as err:  # noqa: BLE001 - a full or read-only library: say so, as a run that stopped
        problem = resource_failure(err, library)
        if problem is None:
            raise
        summary.aborted, summary.left = problem.user_text(), [str(f) for f in files]
        return summary
    files, probed, summary.not_videos = keep_videos(library, paths, files)
    given = set(files)
    resumed = [Path(p) for p in leftovers if Path(p) not in given]
    files += resumed
    summary.resumed = len([p for p in leftovers if Path(p) in given]) + len(resumed)
    summary.missing = _mark_missing(library, roots, {str(f) for f in files})
    job_id = library.write(lambda s: _new_job(s, len(files)))
    plans: list[tuple[Path, VideoJob | None, list]] = []
    progress: _Progress | None = None
    status = "done"
    abort: list[ResourceFailure] = []  # set once the library cannot take more writes: the run stops
    i = 0
    try:
        for path in files:
            prepared = _prepare(library, path, ctx, probed.get(str(path)))
            if isinstance(prepared, str):
                summary.failed.append((str(path), prepared))
                continue
            video, pending = prepared
            if not pending:
                summary.unchanged.append(str(path))
                continue
            plans.append((path, video, pending))
        media_total = sum(_known_duration(library, v.id) or _quick_duration(v) for _, v, _ in plans)

        def set_totals(s):
            job = s.get(Job, job_id)
            job.files_total, job.media_seconds_total = len(plans), media_total

        library.write(set_totals)
        progress = _Progress(library, job_id, len(plans), media_total, on_progress, show_progress)
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="sightline-stage") as pool:
            for i, (path, video, pending) in enumerate(plans, start=1):
                try:
                    error = _index_one(library, ctx, video, pending, pool, progress, i, abort)
                except Exception as err:  # noqa: BLE001 - a write of the runner's own failed: full disk?
                    problem = resource_failure(err, library)
                    if problem is None:
                        raise
                    abort.append(problem)
                    error = problem.user_text()
                    _try_set_status(library, video.id, FAILED, error)
                duration = video.info.duration if video.info else 0.0
                progress.file_done(duration)
                if error:
                    summary.failed.append((str(path), error))
                    progress.emit(i, str(path), "", "failed", error)
                else:
                    summary.done.append(str(path))
                    summary.media_s += duration
                    progress.emit(i, str(path), "", "done")
                if abort:  # the next files would fail the same way: they stay as they are, to resume later
                    status = "aborted"
                    summary.aborted = abort[0].user_text()
                    summary.left = [str(p) for p, _, _ in plans[i:]]
                    break
                _job_progress(library, job_id, i, progress.media_done)
    except KeyboardInterrupt:
        status = "interrupted"
        summary.aborted = "interrupted (Ctrl-C)."
        summary.left = [str(p) for p, _, _ in plans[max(0, i - 1):]
                        if str(p) not in summary.done and str(p) not in dict(summary.failed)]
    except BaseException as err:
        status = "interrupted"
        problem = resource_failure(err, library) if isinstance(err, Exception) else None
        if problem is None:
            raise
        status, summary.aborted = "aborted", problem.user_text()  # registering the files filled the disk
        summary.left = [str(p) for p, _, _ in plans]
    finally:
        if progress is not None:
            progress.close(complete=status == "done")
        summary.wall_s = time.time() - started
        try:
            library.write(lambda s: _finish_job(s, job_id, status))
        except Exception as err:  # noqa: BLE001 - a full disk may refuse even this; readers see no live holder
            log.warning("could not mark job %s %s: %s", job_id, status, err)
    if status == "interrupted":
        raise IndexInterrupted(summary)
    try:
        summary.notes = _collect_notes(library, summary.done)
    except Exception as err:  # noqa: BLE001 - notes are a nicety
        log.warning("could not read notes: %s", err)
    return summary


def _repair_stale(library) -> list[str]:
    """Under the lock, before a run: jobs still "running" were killed (mark them interrupted, with when) and
    videos still "indexing" were cut off (mark them interrupted). Returns the files (still on disk) that an
    earlier run left unfinished (interrupted or pending): this run resumes them."""
    from storage.catalog import INTERRUPTED, _last_sign_of_life

    def fn(s):
        for job in s.scalars(select(Job).where(Job.status == "running")).all():
            job.status, job.finished_at = "interrupted", _last_sign_of_life(s, job)
        for v in s.scalars(select(Video).where(Video.status == INDEXING)).all():
            v.status = INTERRUPTED
        rows = s.execute(select(Video.path, Video.status, Video.error).where(
            Video.status.in_((INTERRUPTED, PENDING, FAILED))).order_by(Video.id)).all()
        return [p for p, st, err in rows if st != FAILED or (err or "").startswith(RESOURCE_MESSAGES)]

    return [p for p in library.write(fn) if Path(p).is_file()]


def _try_set_status(library, video_id: int, status: str, error: str | None = None) -> None:
    try:
        _set_status(library, video_id, status, error)
    except Exception as err:  # noqa: BLE001 - a full disk may refuse even this small write
        log.warning("could not mark video %s %s: %s", video_id, status, err)


def _index_one(library, ctx: IndexContext, video: VideoJob, pending: list, pool, progress: _Progress,
               i: int, abort: list | None = None) -> str | None:
    """Run a video's pending stages; return the error message or None. A disk-full (or read-only) failure goes
    into `abort`: no further stage starts and the file's error is that message."""
    abort = [] if abort is None else abort
    _set_status(library, video.id, INDEXING)
    errors: list[str] = []
    errors_lock = threading.Lock()

    def run_stage(stage) -> bool:
        progress.emit(i, video.path, stage.NAME, "started")
        t0 = time.time()
        try:
            out = stage.run(video, ctx)
            _commit(library, ctx, video, stage, out, time.time() - t0)
        except UpstreamFailed as err:  # the stage it follows failed and reports the error itself
            progress.emit(i, video.path, stage.NAME, "failed", err.user_text())
            return False
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the library; the log has the trace
            if progress.cancelled.is_set():  # stopped by Ctrl-C, not failed: the next run redoes this stage
                return False
            problem = resource_failure(err, library)
            if problem is not None:  # the library's disk, not the file: stop the run after this file
                log.info("stage %s on %s stopped: %s", stage.NAME, video.path, getattr(err, "orig", None) or err)
                with errors_lock:
                    abort.append(problem)
                progress.emit(i, video.path, stage.NAME, "failed", problem.user_text())
                return False
            if isinstance(err, SightlineError):
                with errors_lock:
                    errors.append(err.user_text() if stage.NAME == "probe" else f"{stage.NAME}: {err.user_text()}")
                progress.emit(i, video.path, stage.NAME, "failed", err.user_text())
                return False
            log.exception("stage %s failed on %s", stage.NAME, video.path)
            with errors_lock:
                errors.append(f"{stage.NAME}: internal error: {type(err).__name__}: {err}")
            progress.emit(i, video.path, stage.NAME, "failed", str(err))
            return False
        log.info("%s %s: %.2f s %s", Path(video.path).name, stage.NAME, time.time() - t0, out.detail)
        progress.stage_done(stage.NAME, video.info.duration if video.info else 0.0)
        progress.emit(i, video.path, stage.NAME, out.status, out.message or "")
        return True

    # Probing gates the rest: nothing else makes sense on a file that does not probe.
    try:
        video.media()
    except SightlineError as err:
        _set_status(library, video.id, FAILED, err.user_text())
        return err.user_text()
    duration = video.info.duration
    video.on_time = lambda t: progress.within(i, video.path, "shots", t, duration)
    video.on_audio = lambda t: progress.within(i, video.path, "speech", t, duration)
    video.on_proxy = lambda t: progress.within(i, video.path, "proxy", t, duration)
    names = {st.NAME for st in pending}
    finished: set[str] = {st.NAME for st in DEFAULT_STAGES if st.NAME not in names}  # done in an earlier run
    started: set[str] = set(finished)
    failed: set[str] = set()
    if "shots" in finished:
        video.frames_ready.set()  # scanned in an earlier run: stages load the cached frames themselves
    else:
        start_feed(video, ctx)  # followers of the decode pass read its samples as they are written
    waiting = list(pending)
    running: dict = {}
    try:
        while waiting or running:
            if abort:  # the library cannot take more writes: start nothing more
                for st in waiting:
                    failed.add(st.NAME)
                    if st.NAME == "shots":
                        _end_frames(video, "the library's disk is full")
                waiting.clear()
            for st in list(waiting):
                needs, follows = st.NEEDS, getattr(st, "FOLLOWS", ())
                if any(n in failed for n in (*needs, *follows)):
                    waiting.remove(st)  # what it needs failed; that failure is the error shown
                    failed.add(st.NAME)
                    if st.NAME == "shots":
                        _end_frames(video, "the decode pass could not start")
                elif (all(n in finished for n in needs) and all(n in started for n in follows)
                      and len(running) < WORKERS):
                    waiting.remove(st)
                    started.add(st.NAME)
                    running[pool.submit(run_stage, st)] = st
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                st = running.pop(fut)
                (finished if fut.result() else failed).add(st.NAME)
                if st.NAME == "shots":
                    _end_frames(video, "the decode pass stopped")
    except KeyboardInterrupt:
        progress.cancelled.set()  # running stages stop at their next progress report (what finished commits)
        _cancel_feed(video)
        raise
    finally:
        _end_frames(video, "indexing stopped")  # never leave speech or a follower of the pass waiting
        for fut in running:
            fut.result()
    if abort:
        message = abort[0].user_text()
        try:
            drop_frames(video, ctx)  # frees the space the frame cache took; the next run decodes again
        except Exception:  # noqa: BLE001
            log.warning("could not drop the frame cache of %s", video.path)
        _try_set_status(library, video.id, FAILED, message)
        return message
    drop_frames(video, ctx)  # failed too: the cache is large, and a re-run decodes again (frames.ensure_frames)
    if errors:
        message = "; ".join(errors)
        _set_status(library, video.id, FAILED, message)
        return message
    _set_status(library, video.id, INDEXED)
    return None


def _cancel_feed(video: VideoJob) -> None:
    """Ctrl-C: followers of the decode pass stop at their next sample, even when the pass itself had finished."""
    if video.feed is not None:
        video.feed.cancel("indexing interrupted")


def _end_frames(video: VideoJob, why: str) -> None:
    """The decode pass is over, one way or another: wake whoever waits for its frames."""
    video.frames_ready.set()
    if video.feed is not None:
        video.feed.fail(why)  # a no-op when the pass finished its feed


def _known_duration(library, video_id: int) -> float | None:
    with library.read() as s:
        return s.scalar(select(Video.duration).where(Video.id == video_id))


def _quick_duration(video: VideoJob) -> float:
    try:
        return video.media().duration
    except SightlineError:
        return 0.0


def _new_job(s, files_total: int) -> int:
    job = Job(files_total=files_total)
    s.add(job)
    s.flush()
    return job.id


def _job_progress(library, job_id: int, files_done: int, media_done: float) -> None:
    def fn(s):
        job = s.get(Job, job_id)
        job.files_done, job.media_seconds_done = files_done, media_done

    library.write(fn)


def _finish_job(s, job_id: int, status: str) -> None:
    job = s.get(Job, job_id)
    job.status, job.finished_at = status, time.time()
    if status != "done":  # cut off part way: no video stays "indexing" (we hold the lock: they are all ours)
        from storage.catalog import INTERRUPTED

        for v in s.scalars(select(Video).where(Video.status == INDEXING)).all():
            v.status = INTERRUPTED


def _collect_notes(library, paths: list[str]) -> dict[str, str]:
    if not paths:
        return {}
    with library.read() as s:
        rows = s.execute(select(Video.path, Video.notes).where(Video.path.in_(paths))).all()
    return {p: n for p, n in rows if n}
