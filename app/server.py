"""Starting the web UI: services for the settings, the Blocks (app/ui.py), the files it may serve, the request
guard in front of Gradio (app/guard.py), the login, the CSS and seek script, and `launch`.

`create_app` also does what a start does by itself: the demo library of a Hugging Face Space is seeded
(app/space.py) and stages an upgrade marked to re-run are queued.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gradio as gr

from app.served_files import ServedFiles
from app.services import Services
from app.settings import Settings
from app.space import on_space, seed_demo_library
from app.ui import build_ui
from storage import catalog as lv
from storage.errors import SightlineError

log = logging.getLogger("sightline.ui")

STATIC = Path(__file__).parent / "static"


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


def assets() -> dict:
    """The CSS and the seek script, for Blocks.launch (Gradio 6 takes them at launch)."""
    return {"css": (STATIC / "sightline.css").read_text(), "js": (STATIC / "seek.js").read_text()}


def create_app(settings: Settings, share: bool = False) -> tuple[Services, gr.Blocks, ServedFiles]:
    """Services, the Blocks and the served-files guard for these settings (the Space demo library seeded)."""
    services = Services(settings)
    services.check_library()  # a damaged database is named (with `sightline repair`) before the UI starts
    space = on_space()
    served = ServedFiles(services.library)
    demo = build_ui(services, served, allow_server_paths=not space, share=share)
    if space:
        seed_demo_library(services, services.index_worker)
    resume_reruns(services)
    return services, demo, served


def resume_reruns(services: Services) -> list[str]:
    """Stages an upgrade marked to re-run (storage/migrations) run by themselves: queued in the background when
    the UI starts, with the Library view's progress, as if the user had pressed re-index."""
    paths = lv.videos_to_rerun(services.library)
    if paths:
        log.info("re-running the stages an upgrade changed for %d video(s)", len(paths))
        services.index_worker.submit(paths)
    return paths


def launch(settings: Settings, share: bool = False, block: bool = True) -> gr.Blocks:
    """Start the web UI (127.0.0.1 by default; 0.0.0.0 inside a Hugging Face Space)."""
    services, demo, served = create_app(settings, share=share)
    host = settings.host
    if on_space():
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
