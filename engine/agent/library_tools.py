"""The agent's tool backend over a library: storage's read-only queries (storage/catalog.py, storage/search.py)
and frames of a window.

The app builds one (`LibraryTools(library, embed_text)`) and hands it to `answer`; the agent itself never
opens the database. Frames come from engine/video_inputs.sample_clip (PTS timestamps, pixel budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from engine.agent.context import VideoInfo
from storage import catalog
from storage.errors import SightlineError
from storage.search import MomentHit, search

# Frames per inspect/verify window are capped by the agent's budget; pixels per frame here. 256*32*32 per frame
# (about 256 visual tokens per frame pair) is what InternVideo3's evaluation uses for long videos.
MAX_PIXELS = 256 * 32 * 32


class LibraryTools:
    """search / moments / clip over one open Library; `embed_text` and `embed_visual_text` are handed in."""

    def __init__(self, library, embed_text: Callable | None, embed_visual_text: Callable | None = None,
                 max_pixels: int = MAX_PIXELS, sample_clip: Callable | None = None):
        self.library = library
        self.embed_text = embed_text
        self.embed_visual_text = embed_visual_text
        self.max_pixels = max_pixels
        self._sample_clip = sample_clip

    def videos(self) -> list[VideoInfo]:
        """Videos the agent can answer from: indexed, or being indexed (their finished stages are searchable)."""
        return [VideoInfo(*row) for row in catalog.answerable_videos(self.library)]

    def video(self, ref: int | str) -> VideoInfo:
        v = self.library.video_by_ref(ref)
        return VideoInfo(v.id, v.path, v.duration)

    def search(self, query: str, k: int = 8, modalities: Sequence[str] | None = None,
               video_ids: Sequence[int] | None = None) -> list[MomentHit]:
        return search(self.library, query, self.embed_text, k=k, modalities=modalities, video_ids=video_ids,
                      embed_visual_text=self.embed_visual_text)

    def moments(self, video_id: int, start: float, end: float,
                modalities: Sequence[str] | None = None) -> list[MomentHit]:
        """Moments of one video overlapping [start, end], by start time (score 0: they were not ranked)."""
        return catalog.moments_between(self.library, video_id, start, end, modalities)

    def clip(self, video_id: int, start: float, end: float, fps: float, max_frames: int):
        """Frames of [start, end] at fps (PTS timestamps), within the pixel budget."""
        sample = self._sample_clip
        if sample is None:
            from engine.video_inputs import sample_clip as sample
        info = self.video(video_id)
        if not Path(info.path).is_file():
            raise SightlineError(f"Video {video_id} ({info.path}) is no longer on disk.",
                                 hint="Restore the file or re-index the library.")
        return sample(info.path, start, end, fps, max_frames=max_frames, max_pixels=self.max_pixels,
                      video_id=info.id)
