"""Dense captions of video segments from a loaded VideoChat, batched; and the callable the indexer is handed.

`Captioner(chat).caption(clips)` returns one caption per clip: what is seen, who is there, on-screen text, the
actions in order. The indexer must not import engine (DESIGN.md), so the app hands it `captioner.caption_fn()`:
a plain callable `(frames (T,H,W,3) uint8, timestamps [s]) -> str` with a `.many([(frames, timestamps), ...])
-> list[str]` method for batches. Frames of any size are fitted into the captioner's pixel budget first.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from engine.video_inputs import DEFAULT_MAX_PIXELS, FACTOR, MIN_FRAME_PIXELS, Clip, frame_size

CAPTION_PROMPT = (
    "Describe this video segment for a search index, in 2 to 4 plain sentences: what is seen (place, objects), "
    "who is there and what they look like, any on-screen text quoted exactly, and the actions in the order they "
    "happen. Say only what is visible."
)
CAPTION_SYSTEM = "You write dense, factual captions of video segments."
# Frames per segment and pixels: captions need the gist, not every frame.
CAPTION_MAX_FRAMES = 16
CAPTION_TOTAL_PIXELS = 8 * 256 * 32 * 32  # ~2K video tokens per segment


def fit_frames(
    frames: np.ndarray,
    timestamps: Sequence[float],
    max_frames: int = CAPTION_MAX_FRAMES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    total_pixels: int = CAPTION_TOTAL_PIXELS,
) -> tuple[np.ndarray, list[float]]:
    """Keep at most max_frames (evenly spread) and resize so h, w are multiples of 32 within both budgets."""
    frames = np.asarray(frames)
    assert frames.ndim == 4 and frames.shape[-1] == 3, f"frames must be (T,H,W,3), got {frames.shape}"
    assert len(frames) == len(timestamps), f"frames {len(frames)} vs timestamps {len(timestamps)}"
    cap = max(1, min(max_frames, total_pixels // MIN_FRAME_PIXELS))
    keep = np.unique(np.linspace(0, len(frames) - 1, min(cap, len(frames))).round().astype(int))
    frames, times = frames[keep], [float(timestamps[i]) for i in keep]
    h, w = frame_size(frames.shape[1], frames.shape[2], int(min(max_pixels, total_pixels // len(frames))), FACTOR)
    if (h, w) != frames.shape[1:3]:
        from PIL import Image

        frames = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])
    return frames.astype(np.uint8, copy=False), times


def clean_caption(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class Captioner:
    """Captions clips with a VideoChat, `batch_size` segments per generate call."""

    def __init__(self, chat, batch_size: int = 4, max_new_tokens: int = 160, prompt: str = CAPTION_PROMPT):
        self.chat = chat
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt

    def _messages(self) -> list[dict]:
        return [{"role": "system", "content": CAPTION_SYSTEM}, {"role": "user", "content": self.prompt}]

    def caption(self, clips: Sequence[Clip]) -> list[str]:
        """One caption per clip, in order."""
        out: list[str] = []
        for i in range(0, len(clips), self.batch_size):
            group = clips[i : i + self.batch_size]
            replies = self.chat.chat_batch([(self._messages(), [c]) for c in group], self.max_new_tokens)
            out.extend(clean_caption(r) for r in replies)
        assert len(out) == len(clips), f"captions {len(out)} vs clips {len(clips)}"
        return out

    def caption_fn(self) -> "CaptionFn":
        return CaptionFn(self)


class CaptionFn:
    """What the indexer is handed: `fn(frames, timestamps) -> str` and `fn.many(segments) -> list[str]`."""

    def __init__(self, captioner: Captioner):
        self._captioner = captioner
        self.model_name = captioner.chat.name

    def _clip(self, frames, timestamps) -> Clip:
        frames, times = fit_frames(frames, timestamps)
        return Clip(None, "", frames, times, start=times[0], end=times[-1])

    def __call__(self, frames: np.ndarray, timestamps: Sequence[float]) -> str:
        return self.many([(frames, timestamps)])[0]

    def many(self, segments: Sequence[tuple[np.ndarray, Sequence[float]]]) -> list[str]:
        return self._captioner.caption([self._clip(f, t) for f, t in segments])
