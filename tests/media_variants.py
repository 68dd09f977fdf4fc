"""Files made the way users' files are made, from one packaged source clip: remuxes with a start offset, an edit
list, a delayed audio track, variable frame rate, phone rotations, AVI.

The source (`make_source`) is gradio's a.mp4 end card ("THANKS FOR WATCHING" from about 2.1 s to 4.9 s) scaled
to 640x360, with heath_ledger.mp3 ("If you're good at something, never do it for free.") muxed in at
`SPEECH_AT` seconds, GOP 2 s so that cuts can fall between keyframes. Only ffmpeg muxes, cuts, re-encodes and
rotates; nothing is synthesised. Used by tests/test_media_clock.py and by the grounding benchmark:

    v = make_variant(source, "rot90", out_dir)  # Variant(path, kind, video_shift, audio_shift, rotation)

A variant's shifts say how its content times relate to the source's: an event at source content time t is at
t + video_shift (pictures) and t + audio_shift (sound) in the variant. Content time 0 is the first frame a
player shows, so a pure remux with a start offset has shifts 0.0.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SPEECH_AT = 2.5  # seconds into the source where heath_ledger.mp3 starts (its audio track starts at 0)
SOURCE_SIZE = (640, 360)
SOURCE_GOP = 60  # frames (2 s at 30 fps): EDIT_CUT falls between two keyframes
EDIT_CUT = 1.0  # seconds: mp4_editlist starts here (not a keyframe), so the muxer writes an edit list
AUDIO_DELAY = 0.5  # seconds: audio_delay's audio track starts this late
OFFSET = 7.0  # seconds: mp4_offset / mkv_offset start here

VARIANTS = ("mpegts", "mp4_offset", "mkv_offset", "mp4_copyts", "mp4_editlist", "audio_delay", "vfr",
            "rot90", "rot180", "rot270", "avi")


@dataclass(frozen=True)
class Variant:
    path: Path
    kind: str
    video_shift: float = 0.0  # content time of a picture event here minus its content time in the source
    audio_shift: float = 0.0  # the same for a sound event
    rotation: int = 0  # degrees clockwise a player turns the stored pixels (0/90/180/270)


def ffmpeg(*args: str) -> None:
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.strip()[-800:]}")


def ffprobe_json(path: Path, *entries: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *entries, str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def packaged_media() -> tuple[Path, Path]:
    """(gradio's a.mp4, gradio's heath_ledger.mp3)."""
    import gradio

    root = Path(gradio.__file__).parent / "media_assets"
    return root / "videos" / "a.mp4", root / "audio" / "heath_ledger.mp3"


def make_source(out_dir: Path) -> Path:
    """The plain MP4 every variant is made from (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "source.mp4"
    if path.exists():
        return path
    card, speech = packaged_media()
    w, h = SOURCE_SIZE
    delay_ms = int(SPEECH_AT * 1000)
    tmp = out_dir / "source.tmp.mp4"
    ffmpeg("-i", str(card), "-i", str(speech),
           "-filter_complex", f"[0:v]scale={w}:{h}[v];[1:a]adelay={delay_ms}:all=1,apad[a]",
           "-map", "[v]", "-map", "[a]", "-t", "6.9",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-g", str(SOURCE_GOP),
           "-keyint_min", str(SOURCE_GOP), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-ar", "44100", "-ac", "1", str(tmp))
    tmp.replace(path)
    return path


@lru_cache(maxsize=1)
def _has_display_rotation() -> bool:
    """ffmpeg >= 6.1 sets display matrices with `-display_rotation`; 5.x (Debian 12) through the rotate tag."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-h", "full"], capture_output=True, text=True).stdout
    return "-display_rotation" in out


def stream_rotation(path: Path) -> int:
    """Degrees clockwise a player turns the pixels, from ffprobe's display matrix (which counts counter-clockwise)."""
    data = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "stream_side_data=rotation")
    for stream in data.get("streams", []):
        for side in stream.get("side_data_list", []):
            if "rotation" in side:
                return int(round(-float(side["rotation"]))) % 360
    return 0


def set_rotation(src: Path, rotation: int, out: Path, *extra: str) -> Path:
    """A stream copy of src whose display matrix tells players to turn the pixels `rotation` degrees clockwise
    (extra: more output options, e.g. "-output_ts_offset", "5"). Checked with ffprobe."""
    ccw = (360 - rotation) % 360  # both ffmpeg spellings count counter-clockwise
    if _has_display_rotation():
        ffmpeg("-display_rotation", str(ccw), "-i", str(src), "-c", "copy", *extra, str(out))
    else:
        ffmpeg("-i", str(src), "-c", "copy", "-metadata:s:v:0", f"rotate={ccw}", *extra, str(out))
    got = stream_rotation(out)
    if got != rotation:
        raise RuntimeError(f"{out.name}: wanted a display matrix turning {rotation} deg clockwise, ffprobe says {got}")
    return out


def _rotated(src: Path, rotation: int, out: Path) -> None:
    """Pixels stored turned `rotation` degrees counter-clockwise, with a display matrix that turns them back."""
    turn = {90: "transpose=cclock", 180: "hflip,vflip", 270: "transpose=clock"}[rotation]
    stored = out.with_suffix(".stored.mp4")
    ffmpeg("-i", str(src), "-vf", turn, "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
           "-g", str(SOURCE_GOP), "-pix_fmt", "yuv420p", "-c:a", "copy", str(stored))
    set_rotation(stored, rotation, out)
    stored.unlink()


def _first_video_pts(path: Path) -> float:
    data = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "stream=start_time")
    return float(data["streams"][0]["start_time"])


def make_variant(src: Path, kind: str, out_dir: Path) -> Variant:
    """Make (or reuse) the `kind` variant of src in out_dir; see VARIANTS and the module docstring."""
    if kind not in VARIANTS:
        raise ValueError(f"unknown variant {kind!r}; known: {', '.join(VARIANTS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = {"mpegts": ".ts", "mkv_offset": ".mkv", "avi": ".avi"}.get(kind, ".mp4")
    out = out_dir / f"{kind}{ext}"
    video_shift = audio_shift = 0.0
    rotation = 0
    if kind == "mp4_editlist":
        video_shift = audio_shift = -EDIT_CUT  # the variant starts EDIT_CUT s into the source
    elif kind == "audio_delay":
        audio_shift = AUDIO_DELAY
    elif kind.startswith("rot"):
        rotation = int(kind[3:])
    if out.exists():
        return Variant(out, kind, video_shift, audio_shift, rotation)
    tmp = out.with_name(f"tmp-{out.name}")
    if kind == "mpegts":  # ffmpeg's MPEG-TS muxer starts the clock at about 1.4 s
        ffmpeg("-i", str(src), "-c", "copy", "-f", "mpegts", str(tmp))
    elif kind in ("mp4_offset", "mkv_offset"):
        ffmpeg("-i", str(src), "-c", "copy", "-output_ts_offset", str(OFFSET), str(tmp))
    elif kind == "mp4_copyts":  # a TS capture remuxed keeping its timestamps: the MP4 starts at ~1.4 s
        ts = make_variant(src, "mpegts", out_dir).path
        ffmpeg("-copyts", "-i", str(ts), "-c", "copy", str(tmp))
        if _first_video_pts(tmp) < 1.0:
            raise RuntimeError(f"{out.name}: -copyts did not keep the start offset")
    elif kind == "mp4_editlist":  # stream copy from a non-keyframe: the frames before it are kept but edited out
        ffmpeg("-ss", str(EDIT_CUT), "-i", str(src), "-c", "copy", str(tmp))
    elif kind == "audio_delay":
        ffmpeg("-i", str(src), "-itsoffset", str(AUDIO_DELAY), "-i", str(src), "-map", "0:v", "-map", "1:a",
               "-c", "copy", str(tmp))
    elif kind == "vfr":  # 10 frames of every 30 dropped, the others keep their times: 20-30 fps at once
        ffmpeg("-i", str(src), "-vf", "select='not(between(mod(n\\,30)\\,10\\,19))'", "-fps_mode", "vfr",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "copy",
               str(tmp))
    elif kind.startswith("rot"):
        _rotated(src, rotation, tmp)
    elif kind == "avi":
        # By default ffmpeg shifts every stream by the MP3 encoder delay (25 ms) so no timestamp is negative,
        # and AVI's frame-numbered video then skips its second frame slot: every picture lands a frame late
        # (a true property of such files, but not what this variant is for).
        ffmpeg("-i", str(src), "-c:v", "mpeg4", "-q:v", "3", "-c:a", "libmp3lame", "-q:a", "4",
               "-avoid_negative_ts", "disabled", str(tmp))
    tmp.replace(out)
    return Variant(out, kind, video_shift, audio_shift, rotation)


def make_all(out_dir: Path) -> tuple[Path, dict[str, Variant]]:
    """The source and every variant, made once in out_dir."""
    src = make_source(out_dir)
    return src, {kind: make_variant(src, kind, out_dir) for kind in VARIANTS}
