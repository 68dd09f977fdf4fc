"""The Sightline web UI: a player that jumps to cited moments, and the Library, Ask, Search and Settings tabs.

`build_ui(services)` reads top to bottom: the components in screen order, then the wiring of their events to
the handlers of app/handlers.py, bound here to this app's library, index worker and served files. Those events
are the UI's own (private: no API lists them); the endpoints scripts call are added from app/api.py. What the
handlers show is rendered in app/render.py; indexing runs in app/index_worker.py; which files the server may
serve is app/served_files.py; starting the server is app/server.py.

Security: the web server serves only the library's thumbnails, probed and indexed video files and their proxies
(app/guard.py checks every file request against ServedFiles; Gradio's allowed_paths and static paths are kept in
step too), and every handler that takes a video refuses anything that is not a video of the library.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import gradio as gr

from app import api, handlers
from app.guard import media_roots
from app.index_worker import IndexWorker
from app.served_files import ServedFiles
from app.space import answerer
from indexer.media import VIDEO_EXTENSIONS
from storage.models import MODALITIES

if TYPE_CHECKING:
    from app.services import Services

MODALITY_CHOICES = [("on-screen text" if m == "text" else m, m) for m in MODALITIES]  # (label, value)


def build_ui(services: Services, served: ServedFiles | None = None, allow_server_paths: bool = True,
             share: bool = False) -> gr.Blocks:
    """The whole app. `served` keeps the allowed files in step; `share`: a public link is published too (folders
    are then added only inside SIGHTLINE_MEDIA_ROOTS). The index worker is left on `services.index_worker`."""
    library = services.library
    roots = media_roots(services.settings.media_roots, services.settings.host, share)
    served = served or ServedFiles(library)
    worker = IndexWorker(services, on_done=served.sync)
    services.index_worker = worker  # the Space demo seeding, the upgrade re-runs and tests reach the same worker

    # layout, in screen order ----------------------------------------------------------------------------------

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

        # wiring: each event -> its handler, bound to this app's objects ---------------------------------------

        # Every event here is the UI's own (api_visibility="private": no API lists it); what scripts call are
        # the endpoints of app/api.py. The private names only keep the config readable.
        ui_only = {"api_visibility": "private"}
        refresh_library = partial(handlers.refresh_library, library, served, worker)
        library_outputs = [progress, videos_table, video_pick, ask_scope, search_scope, library_sig]
        demo.load(refresh_library, library_sig, library_outputs, queue=False, api_name="ui_library_load", **ui_only)
        timer.tick(refresh_library, library_sig, library_outputs, queue=False, show_progress="hidden",
                   api_name="ui_library_tick", **ui_only)

        add_path = partial(handlers.add_path, library, worker, roots, allow_server_paths)
        add_button.click(add_path, add_box, [library_message, add_box], api_name="ui_add_path", **ui_only)
        add_box.submit(add_path, add_box, [library_message, add_box], api_name="ui_add_path_submit", **ui_only)
        add_uploads = partial(handlers.add_uploads, services, worker)
        uploads.upload(add_uploads, uploads, [library_message, uploads], api_name="ui_upload", **ui_only)
        reindex = partial(handlers.reindex, library, worker)
        reindex_button.click(reindex, video_pick, library_message, api_name="ui_reindex", **ui_only)
        remove = partial(handlers.remove, library, served)
        remove_button.click(remove, video_pick, library_message, api_name="ui_remove", **ui_only)

        load_moment = partial(handlers.load_moment, library, served)
        seek_button.click(load_moment, seek_request, [player, now_playing, playing], api_name="load_moment",
                          js="(r) => window.sightline ? window.sightline.request() : r", **ui_only)

        run_search = partial(handlers.run_search, services)
        search_inputs = [search_box, modalities, search_scope, playing]
        search_outputs = [filmstrip, timeline, search_summary]
        search_button.click(run_search, search_inputs, search_outputs, api_name="ui_search", **ui_only)
        search_box.submit(run_search, search_inputs, search_outputs, api_name="ui_search_submit", **ui_only)

        ask = partial(handlers.ask, library, answerer(services))
        ask_button.click(ask, [question, ask_scope, chat], [chat, question, evidence], api_name="ui_ask", **ui_only)
        question.submit(ask, [question, ask_scope, chat], [chat, question, evidence], api_name="ui_ask_submit",
                        **ui_only)

        show_status = partial(handlers.show_status, services)
        settings_tab.select(show_status, None, status, api_name="ui_status_tab", **ui_only)
        refresh_status.click(show_status, None, status, api_name="ui_status", **ui_only)
        load_model_now = partial(handlers.load_model, services)
        load_model.click(load_model_now, None, status, api_name="ui_load_model", **ui_only)

        api.add_endpoints(services, worker, served, roots, allow_server_paths, uploads, library_message)

    served.demo = demo
    served.sync()
    return demo
