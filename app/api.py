"""The web UI's API for scripts (`gradio_client`): the endpoints `Client(url).view_api()` lists, each named for
what it does and returning data a script can use (moments as dicts, the `ask --json` object, the status report)
rather than the HTML the UI shows. The README's "Scripting the web UI" documents them.

    /search(query, modalities=None, video="", k=10) -> [moment, ...]       as `sightline search --json`
    /ask(question, video="")            -> {"answer", "evidence", "mode"}  as `sightline ask --json`
    /status()                           -> the `sightline status --json` report + the UI's background indexing
    /add_path(path) /upload(files) /reindex(video) /remove(video) -> the message the Library tab shows
    /load_model()                       -> the answering model, or why there is none

The UI's own events (app/ui.py) are private: Gradio lists none of them. Each endpoint here is a function built
inside `add_endpoints`, bound to this app's objects, because `gr.api` reads the parameters and their types from
the function's own signature (a functools.partial has no type hints it can read). Errors reach the caller as
the one-line message the UI shows (`shown_in_ui`); the checks are those of the handlers and services called.
"""

# No `from __future__ import annotations` here: gr.api reads the endpoints' return types from their signatures
# as objects, and string annotations would leave the API without them.
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from app import handlers, render
from app.handlers import shown_in_ui
from app.space import answerer
from storage import validate

if TYPE_CHECKING:
    from app.index_worker import IndexWorker
    from app.served_files import ServedFiles
    from app.services import Services

SEARCH_K = 10  # moments /search returns by default, as `sightline search`


def add_endpoints(services: "Services", worker: "IndexWorker", served: "ServedFiles", roots: list[Path] | None,
                  allow_server_paths: bool, uploads: gr.File, message: gr.Markdown) -> None:
    """Register the scripted endpoints in the Blocks being built. `uploads` and `message` are the Library tab's
    file input and message: /upload takes files as that component does (uploaded first, then checked by Gradio)
    and answers as the message does; no UI event triggers it."""
    library = services.library
    answer = answerer(services)

    @shown_in_ui
    def search(query: str, modalities: list[str] | None = None, video: str = "", k: int = SEARCH_K) -> list[dict]:
        """Moments for a query, best first: each {video_id, video, start, end, modality, text, score, ...}.
        `modalities`: some of speech, text, visual, caption; `video`: an id, path or file name of the library."""
        hits = services.search(query, k=k, modalities=modalities or None, video=video or None)
        return [h.to_dict() for h in hits]

    @shown_in_ui
    def ask(question: str, video: str = "") -> dict:
        """An answer citing moments: {answer, evidence: [moment + verified], mode: agent | evidence-only}.
        `video`: ask about this video only (id, path or file name)."""
        question = validate.require_searchable(validate.query_text(question, "question"), "question")  # as the CLI
        return answer(question, video or None, lambda _step: None).to_dict()

    @shown_in_ui
    def status() -> dict:
        """The library (every video, its state, errors and moments), as `sightline status --json` prints it but
        with each video's file as `video`, and `indexing`: whether the web UI is indexing now, requests queued,
        the latest progress, the last result."""
        report = services.status()
        # Each video's file is `video` here, as in a moment: gradio_client takes any dict holding a "path" string
        # for a file of the server and tries to download it (refused: only videos the UI plays are served).
        report["videos"] = [{("video" if k == "path" else k): v for k, v in row.items()} for row in report["videos"]]
        report["indexing"] = {"running": worker.busy or worker.pending() > 0, "queued": worker.pending(),
                              "progress": worker.last_event, "last_result": worker.last_message}
        return report

    def add_path(path: str) -> str:
        """Index a folder or video file of the server's machine in the background; the message says what was
        queued (poll /status for the progress)."""
        return handlers.add_path(library, worker, roots, allow_server_paths, path)[0]

    def upload(files: list[str]) -> str:
        return handlers.add_uploads(services, worker, files)[0]

    def reindex(video: str) -> str:
        """Index a video of the library again from its file (by id), in the background."""
        return handlers.reindex(library, worker, video)

    def remove(video: str) -> str:
        """Remove a video (by id) from the library: its moments, vectors and thumbnails; the file stays."""
        return handlers.remove(library, served, video)

    @shown_in_ui
    def load_model() -> dict:
        """Load the answering model now (else the first question loads it): {model, reason, device, ...}."""
        services.vlm()
        return render.model_status(services)

    gr.api(search, api_name="search")
    gr.api(ask, api_name="ask")
    gr.api(status, api_name="status")
    gr.api(add_path, api_name="add_path")
    gr.on([], upload, uploads, message, api_name="upload", api_description=(
        "Upload video files (gradio_client.handle_file) and index them in the background; the message says "
        "what was queued and what was refused."))
    gr.api(reindex, api_name="reindex")
    gr.api(remove, api_name="remove")
    gr.api(load_model, api_name="load_model")
