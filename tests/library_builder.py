"""Build libraries directly through storage (no video decoding): videos, moments, vectors.

`fake_embed` is a deterministic bag-of-words embedder (each word a fixed random unit vector, a text the
normalised sum), for tests where semantics do not matter; texts that share words are close.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from storage.models import INDEXED, Embedding, Moment, Video
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


def add_video(lib, path: str, duration: float, moments: Sequence[tuple], embed: Callable | None = fake_embed,
              space: str = "text", model: str = "fake-bow") -> tuple[int, list[int]]:
    """Add one indexed video with moments [(start, end, modality, text[, thumbnail]), ...] and their vectors.

    Returns (video id, moment ids in the given order)."""
    def write(s):
        video = Video(path=path, duration=duration, fps=25.0, status=INDEXED, size=1, fingerprint=path)
        s.add(video)
        s.flush()
        rows = []
        for m in moments:
            start, end, modality, text = m[:4]
            rows.append(Moment(video_id=video.id, start=start, end=end, modality=modality, text=text,
                               thumbnail=m[4] if len(m) > 4 else None, stage="test"))
        s.add_all(rows)
        s.flush()
        return video.id, [r.id for r in rows]

    video_id, ids = lib.write(write)
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
