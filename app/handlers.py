"""The web UI's event handlers, one function per UI event, in the order of the tabs: Library, player, Search, Ask,
Settings. The scripted endpoints of app/api.py call some of them too.

Each takes what it works on first (the library, the index worker, the served files, services), then the values
of the Gradio components it is wired to; app/ui.py binds the first ones with functools.partial. Handlers are thin:
they check the input, call storage or services, and return component values (HTML from app/render.py). Every
handler a user triggers is wrapped by `shown_in_ui`: a SightlineError becomes gr.Error with its message, anything
else is logged and shown as one line (app/errors.py). Every handler that takes a video refuses anything that is
not a video of the library.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from app import render
from app.errors import shown_as
from app.guard import check_media_root
from indexer.media import VIDEO_EXTENSIONS
from storage import catalog as lv
from storage import validate
from storage.errors import SightlineError

if TYPE_CHECKING:
    from app.index_worker import IndexWorker
    from app.served_files import ServedFiles
    from app.services import Services
    from storage import Library

SEARCH_K = 24  # moments in the filmstrip
FOLDER_CHECK_S = 0.5  # how long adding a folder may look for a first video before handing the walk to the worker

shown_in_ui = shown_as(gr.Error, keep=(gr.Error,))


# --- Library tab ---------------------------------------------------------------------------------------------------


def refresh_library(library: Library, served: ServedFiles, worker: IndexWorker, last_sig: str):
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
    if served.out_of_step(rows):
        served.sync()
    choices = render.video_choices(rows)
    return (render.progress_html(p, rows, worker), render.library_html(rows), gr.update(choices=choices),
            gr.update(choices=[("Whole library", "")] + choices), gr.update(choices=[("All videos", "")] + choices),
            sig)


def is_video_file(path: Path) -> bool:
    """Whether the file name has one of the video extensions the indexer takes."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def holds_a_video(folder: Path, budget_s: float = FOLDER_CHECK_S) -> bool | None:
    """True at the first video file, False when the folder holds none, None when the look ran out of time (a
    home folder: the background run walks it and reports what it found, the request does not wait for it).
    Hidden folders are skipped, as the indexer's own walk skips them."""
    stop = time.monotonic() + budget_s
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(not n.startswith(".") and is_video_file(Path(n)) for n in filenames):
            return True
        if time.monotonic() > stop:
            return None
    return False


@shown_in_ui
def add_path(library: Library, worker: IndexWorker, roots: list[Path] | None, allow_server_paths: bool,
             text: str) -> tuple[str, str]:
    """A folder or video file of this machine typed in the Library tab -> queued for indexing."""
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
        if not is_video_file(path):
            raise SightlineError(f"{path.name} is not a supported video file.",
                                 hint=f"Supported: {', '.join(sorted(VIDEO_EXTENSIONS))}.")
    else:
        found = holds_a_video(path, FOLDER_CHECK_S)
        if found is False:
            raise SightlineError(f"No video files in {path}.",
                                 hint=f"Sightline indexes {', '.join(sorted(VIDEO_EXTENSIONS))} files.")
        if found is None:
            worker.submit([str(path)])
            return (f"{path} is large: looking for its videos and indexing them in the background; the "
                    "progress below shows what was found.", "")
    worker.submit([str(path)])
    return f"Indexing the videos of {path} in the background.", ""


@shown_in_ui
def add_uploads(services: Services, worker: IndexWorker, files: list | None) -> tuple[str, None]:
    """Uploaded files -> copied into the library's uploads folder and queued; other types and big files refused."""
    if not files:
        raise SightlineError("No files were uploaded.")
    target = services.library.folder / "uploads"
    target.mkdir(exist_ok=True)
    limit = services.settings.max_upload_mb * 2**20
    accepted, refused = [], []
    for f in files:
        src = Path(f if isinstance(f, str) else f.name)
        if not is_video_file(src):
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


@shown_in_ui
def reindex(library: Library, worker: IndexWorker, video: str) -> str:
    """A video id of the library -> its rows removed and its file queued to index again."""
    video = validate.video_id(video, hint="Pick a video of the library to re-index.")
    path = lv.video_path(library, video)  # refuses anything that is not a video of the library
    lv.remove(library, video)
    worker.submit([str(path)])
    return f"Re-indexing {path.name} in the background."


@shown_in_ui
def remove(library: Library, served: ServedFiles, video: str) -> str:
    """A video id of the library -> its rows, vectors and thumbnails removed (the file itself stays)."""
    video = validate.video_id(video, hint="Pick a video of the library to remove.")
    path = lv.remove(library, video)
    served.sync()
    return f"Removed {Path(path).name} from the library (the file itself is untouched)."


# --- the player ----------------------------------------------------------------------------------------------------


@shown_in_ui
def load_moment(library: Library, served: ServedFiles, request: str):
    """The player's seek request from the browser: {"video": id, "start": s} -> that video at s."""
    from app.served_files import check_plays_as_is

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
        check_plays_as_is(row)
    served.check_served(play, row)  # a failed or unprobed file is never served
    path = Path(row.path) if row else play
    listing = render.now_playing_html(path, lv.moments_of(library, row.id) if row else [],
                                      row.duration if row else None)
    return gr.update(value=str(play), playback_position=max(0.0, start)), listing, (row.id if row else None)


# --- Search tab ----------------------------------------------------------------------------------------------------


@shown_in_ui
def run_search(services: Services, query: str, modalities: list[str] | None, scope: str | None, playing=None):
    """Moments for a query -> the filmstrip, the relevance timeline over one video, and a one-line summary."""
    library = services.library
    # the scope: an id from the dropdown, or (typed, or an API caller's) a path or file name; one video id
    scope = library.video_by_ref(scope).id if scope not in (None, "") else None
    playing = playing if validate.id_number(playing) == playing else None  # a State: an id or None
    hits = [h.to_dict() for h in services.search(query, k=SEARCH_K, modalities=modalities or None,
                                                video=str(scope) if scope else None)]
    film = render.moments_html(hits, "filmstrip", "No moments match. Try other words or fewer filters.")
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
        timeline = gr.update(value=render.relevance_series(scoped, duration),
                             label=f"Relevance of “{query.strip()[:60]}” over {row.name if row else video_id}")
    summary = f"{len(hits)} moment(s)." if hits else "No moments found."
    return film, timeline, summary


# --- Ask tab -------------------------------------------------------------------------------------------------------


def _check_question(library: Library, question: str, scope: str | None) -> str:
    from engine.agent.loop import check_question

    question = validate.require_searchable(validate.query_text(question, "question"), "question")
    q = check_question(question)  # the agent's own rule, checked before the chat shows the question
    if scope:
        lv.video_path(library, validate.video_id(scope, hint="Pick a video of the library, or the whole "
                                                             "library."))
    return q


@shown_in_ui
def ask(library: Library, answer: Callable, question: str, scope: str | None, history: list | None) -> Iterator:
    """A question -> the chat grows step by step (each agent step a titled message), then the answer and the
    evidence chips. `answer(question, video, on_step)` runs the agent (app/space.py's `answerer`)."""
    q = _check_question(library, question, scope)
    history = list(history or []) + [{"role": "user", "content": q}]
    yield history, "", "<div class='empty'>Working…</div>"
    steps: queue.Queue = queue.Queue()
    box: dict = {}

    def work():
        try:
            box["result"] = answer(q, scope or None, steps.put)
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
        message = render.step_message(step)
        if message is not None:
            history.append(message)
        shown += 1
        yield history, "", "<div class='empty'>Working…</div>"
    if "error" in box:
        raise box["error"]
    result = box["result"]  # an engine.agent.loop.AgentResult
    if not shown:  # a GPU worker process (ZeroGPU) cannot stream back: show the steps now
        history.extend(m for m in map(render.step_message, result.steps) if m is not None)
    evidence = [e.to_dict() for e in result.evidence]
    history.append({"role": "assistant", "content": result.answer or "(no answer)"})
    yield history, "", render.moments_html(evidence, "chips", "No evidence was cited.")


# --- Settings tab --------------------------------------------------------------------------------------------------


@shown_in_ui
def show_status(services: Services) -> str:
    """The Settings tab's status table."""
    return render.status_markdown(services)


@shown_in_ui
def load_model(services: Services) -> str:
    """Load the answering model now (else it loads on the first question), then the status table."""
    services.vlm()
    return render.status_markdown(services)
