"""JPEG thumbnails for moments, never of a black or blank frame when a better one is at hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BLACK_MEAN = 20  # mean luma below this reads as black
BLANK_STD = 6  # luma spread below this reads as a flat frame (fades, slates)


def frame_quality(image: np.ndarray) -> float:
    """Higher is a better thumbnail; <= 0 means black or blank."""
    sub = image[::4, ::4]  # every 4th pixel each way is plenty for a mean and a spread, and 16x cheaper
    sub = sub.mean(axis=2) if sub.ndim == 3 else sub
    mean, std = float(sub.mean()), float(sub.std())
    if mean < BLACK_MEAN or std < BLANK_STD:
        return min(mean - BLACK_MEAN, std - BLANK_STD)
    return std


def is_black(image: np.ndarray) -> bool:
    return frame_quality(image) <= 0


def save_thumbnail(image: np.ndarray, folder: Path, name: str, side: int = 320) -> Path:
    """Write image (RGB uint8) as a JPEG whose longer side is at most `side`; returns the path."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    path = Path(folder) / name
    cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return path


def moment_thumbnail(library, video_id: int, image: np.ndarray, modality: str, t: float, side: int = 320) -> str:
    """Save a moment's thumbnail in the library; returns its path relative to the library folder."""
    folder = library.thumbnail_dir(video_id)
    path = save_thumbnail(image, folder, f"{modality}-{int(round(t * 1000)):010d}.jpg", side)
    return str(path.relative_to(library.folder))


def best_frame(candidates, quality_of) -> object:
    """The first candidate that is not black/blank (candidates ordered by preference), else the best scoring."""
    scored = []
    for c in candidates:
        q = quality_of(c)
        if q > 0:
            return c
        scored.append((q, c))
    return max(scored, key=lambda qc: qc[0])[1] if scored else None
