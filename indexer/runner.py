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

The runner walks the files and schedules the stages; every row it writes goes through `storage.jobs`, and its
progress events (with the ETA) come from `indexer.progress`. A file that cannot be indexed raises `FileFailed`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from indexer.context import IndexContext, StageOutput, UpstreamFailed, VideoJob
from indexer.faults import RESOURCE_MESSAGES, FileFailed, ResourceFailure, resource_failure, unreadable
from indexer.files import collect, keep_videos
from indexer.frames import drop_frames, start_feed
from indexer.media import fingerprint
from indexer.progress import ProgressEvent, RunProgress
from indexer.stages import DEFAULT_STAGES, WORKERS
from storage import jobs
from storage.errors import SightlineError
from storage.models import FAILED, INDEXED, INDEXING

log = logging.getLogger("sightline.indexer")

STAGE_ORDER = tuple(st.NAME for st in DEFAULT_STAGES)  # a video's notes list its stages' messages in this order


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


# --- planning ---------------------------------------------------------------------------------------------------


def _stage_key(fp: str, stage, ctx: IndexContext) -> str:
    return f"{fp}|{stage.signature(ctx)}"


def _prepare(library, path: Path, ctx: IndexContext, info=None) -> tuple[VideoJob, list]:
    """Register the file and work out which stages still need to run; raises FileFailed when it cannot be read.
    `info`: the file's MediaInfo when it was probed already."""
    try:
        fp, size, error = fingerprint(path), path.stat().st_size, None
    except OSError as err:
        fp, size, error = None, None, unreadable(path, err)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = None
    marks = {st.NAME: _stage_key(fp or "", st, ctx) for st in DEFAULT_STAGES}
    video_id, pending = jobs.register(library, str(path), fp, size, mtime, error, marks)
    if error:
        raise FileFailed(error)
    job = VideoJob(video_id, str(path), fp)
    job.info = info
    return job, [st for st in DEFAULT_STAGES if st.NAME in pending]


def _commit(library, ctx: IndexContext, video: VideoJob, stage, out: StageOutput, wall_s: float) -> None:
    """The stage's moments, their vectors and its done mark in one transaction; then FAISS."""
    texts = [m.text for m in out.moments if m.text.strip()]
    text_vecs, text_model = None, ""
    if texts:
        embed = ctx.text_embedder.get()
        text_vecs = embed(texts)
        text_model = getattr(embed, "model_name", ctx.text_embedder.what)
    jobs.commit_stage(library, video.id, stage.NAME, mark=_stage_key(video.fingerprint, stage, ctx),
                      status=out.status, moments=out.moments, text_vectors=text_vecs, text_model=text_model,
                      visual_model=ctx.visual_embedder.what, media_s=out.media_s, wall_s=wall_s,
                      message=out.message, video_columns=out.video, stage_order=STAGE_ORDER)


# --- the run ----------------------------------------------------------------------------------------------------


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
        # We hold the lock: whatever is "running" or "indexing" is dead. Disk-full failures are taken up again.
        leftovers = jobs.repair_stale(library, RESOURCE_MESSAGES)
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
    summary.missing = jobs.mark_missing(library, roots, {str(f) for f in files})
    job_id = jobs.start_job(library, len(files))
    plans: list[tuple[Path, VideoJob | None, list]] = []
    progress: RunProgress | None = None
    status = "done"
    abort: list[ResourceFailure] = []  # set once the library cannot take more writes: the run stops
    i = 0
    try:
        for path in files:
            try:
                video, pending = _prepare(library, path, ctx, probed.get(str(path)))
            except FileFailed as err:
                summary.failed.append((str(path), err.user_text()))
                continue
            if not pending:
                summary.unchanged.append(str(path))
                continue
            plans.append((path, video, pending))
        media_total = sum(jobs.known_duration(library, v.id) or _quick_duration(v) for _, v, _ in plans)
        jobs.set_job_totals(library, job_id, len(plans), media_total)
        progress = RunProgress(library, job_id, len(plans), media_total, on_progress, show_progress)
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="sightline-stage") as pool:
            for i, (path, video, pending) in enumerate(plans, start=1):
                try:
                    _index_one(library, ctx, video, pending, pool, progress, i, abort)
                    error = None
                except FileFailed as err:
                    error = err.user_text()
                except Exception as err:  # noqa: BLE001 - a write of the runner's own failed: full disk?
                    problem = resource_failure(err, library)
                    if problem is None:
                        raise
                    abort.append(problem)
                    error = problem.user_text()
                    jobs.try_set_status(library, video.id, FAILED, error)
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
                jobs.job_progress(library, job_id, i, progress.media_done)
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
            jobs.finish_job(library, job_id, status)
        except Exception as err:  # noqa: BLE001 - a full disk may refuse even this; readers see no live holder
            log.warning("could not mark job %s %s: %s", job_id, status, err)
    if status == "interrupted":
        raise IndexInterrupted(summary)
    try:
        summary.notes = jobs.notes_of(library, summary.done)
    except Exception as err:  # noqa: BLE001 - notes are a nicety
        log.warning("could not read notes: %s", err)
    return summary


def _index_one(library, ctx: IndexContext, video: VideoJob, pending: list, pool, progress: RunProgress,
               i: int, abort: list | None = None) -> None:
    """Run a video's pending stages; raises FileFailed with the file's error when one failed. A disk-full (or
    read-only) failure goes into `abort`: no further stage starts and the file's error is that message."""
    abort = [] if abort is None else abort
    jobs.set_status(library, video.id, INDEXING)
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
        jobs.set_status(library, video.id, FAILED, err.user_text())
        raise FileFailed(err.user_text()) from err
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
        jobs.try_set_status(library, video.id, FAILED, message)
        raise FileFailed(message)
    drop_frames(video, ctx)  # failed too: the cache is large, and a re-run decodes again (frames.ensure_frames)
    if errors:
        message = "; ".join(errors)
        jobs.set_status(library, video.id, FAILED, message)
        raise FileFailed(message)
    jobs.set_status(library, video.id, INDEXED)


def _cancel_feed(video: VideoJob) -> None:
    """Ctrl-C: followers of the decode pass stop at their next sample, even when the pass itself had finished."""
    if video.feed is not None:
        video.feed.cancel("indexing interrupted")


def _end_frames(video: VideoJob, why: str) -> None:
    """The decode pass is over, one way or another: wake whoever waits for its frames."""
    video.frames_ready.set()
    if video.feed is not None:
        video.feed.fail(why)  # a no-op when the pass finished its feed


def _quick_duration(video: VideoJob) -> float:
    try:
        return video.media().duration
    except SightlineError:
        return 0.0
