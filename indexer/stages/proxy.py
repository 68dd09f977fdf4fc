"""Proxy: a browser-playable MP4 of a file the player cannot show as is, on the same timeline as the index.

Chromium plays H.264, VP9 and AV1 video (AAC, Opus, MP3, Vorbis, FLAC audio) in MP4 and WebM. Anything else
(MPEG-TS, AVI, MKV/MOV, HEVC, ProRes, MPEG-4 Part 2, 10-bit H.264...) gets a copy in the library's cache, made
once: a remux (`-c copy`) when the codecs are fine, else a transcode (libx264 + AAC, at most 720p, upright).

Same timeline: content time t in the index is `currentTime` t in the proxy. The index takes the video's first
frame's PTS (`MediaInfo.start_time`) off every PTS; the proxy is written with `-copyts -output_ts_offset -start`,
so its frames carry exactly those content times (ffmpeg's default shift, by the earliest stream's start, would be
off by the lead of an audio track that starts before the picture).
A browser-playable MP4/WebM whose timestamps do not start at 0 also gets a (remux) proxy, because Chromium's
`currentTime` is the file's own PTS, start offset included (measured with Playwright on Debian's chromium:
`-output_ts_offset 7` -> currentTime 7.0 on the first frame; a `-copyts` remux of an MPEG-TS -> 1.48; an edit
list that starts at 0 -> 0.0, which needs no proxy).

What the player is handed must also be what gr.Video leaves alone: it converts any file outside its list
((.mp4, h264|av1), (.webm, vp8|vp9|av1), (.ogg, theora)) on every load by writing `<name>.mp4` beside it -- over
the original itself for an HEVC or VP9 `.mp4`. So such files get a proxy too, and a proxy copies only the video
codecs that list allows in .mp4 (H.264, AV1); the user's folder is never written to.

The proxy is written to a temporary name and renamed when ffmpeg succeeds: a killed run leaves no half proxy
under the final name, and the next run simply makes it again. ffmpeg runs niced, decoding on one thread, so that
it does not starve the decode pass beside it (the x264 encoder may use a few threads: niced, they take only idle
CPU); its `-progress` output moves `video.on_proxy`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from indexer.context import IndexContext, StageOutput, VideoJob
from indexer.media import MediaInfo
from storage.catalog import PROXY_DIR, remove_proxies
from storage.errors import SightlineError

NAME = "proxy"
NEEDS = ("probe",)  # stages whose results this one reads; the runner starts it after them

VERSION = "v1"  # bump when the proxy's making changes: a new name, so old proxies are never reused

# What Chromium's <video src> plays (its FFmpeg demuxer: "mov,mp4,..." and "matroska,webm") and gr.Video serves
# without converting (gradio.processing_utils.video_is_playable): VP9 in MP4 plays, but Gradio would convert it.
BROWSER_VIDEO = {"mp4": {"h264", "av1"}, "webm": {"vp8", "vp9", "av1"}}
BROWSER_AUDIO = {"mp4": {"aac", "mp3", "opus", "flac"}, "webm": {"opus", "vorbis"}}
# 8-bit 4:2:0 is what every Chromium build decodes for H.264; VP9/AV1 software decoders take 10-bit too.
BROWSER_PIX_FMTS = {"h264": {"yuv420p", "yuvj420p"}, "vp8": {"yuv420p"},
                    "vp9": {"yuv420p", "yuv420p10le"}, "av1": {"yuv420p", "yuv420p10le"}}
# gr.Video judges by file name: these suffixes per family, any other is converted (see the module docstring).
SERVED_AS_IS = {"mp4": {".mp4"}, "webm": {".webm"}}
# Audio that may be copied into the proxy's MP4 without ffmpeg's experimental flags.
COPY_AUDIO_INTO_MP4 = {"aac", "mp3", "opus"}
START_TOLERANCE_S = 0.05  # a start time below this (under two frames at 30 fps) puts the player off by nothing visible
MAX_LONG, MAX_SHORT = 1280, 720  # transcodes fit in 720p (1280x720 landscape, 720x1280 portrait)
CRF, PRESET = 26, "veryfast"
# The encoder may use the idle cores once the decode pass is done: it runs niced, so while the other stages run
# it gets mostly the CPU they leave. 5-min 720p AVI, 2 cores: proxy 164 s on 1 thread, 101 s on these; the
# other stages 24-26 s without it, 24-26 s beside 1 thread, 28-30 s beside these (identical runs vary by ~10 s).
ENCODER_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Plan:
    """What the player needs for one file: nothing, a remux or a transcode (and why)."""

    kind: str | None  # None | "remux" | "transcode"
    reason: str
    copy_video: bool = True
    copy_audio: bool = True


def _family(container: str) -> str | None:
    """ffprobe's format_name -> the browser container family it belongs to (None: no browser plays it)."""
    names = set(container.split(","))
    if "mp4" in names or "mov" in names:
        return "mp4"
    if "webm" in names:  # "matroska,webm": the demuxer is shared; the extension tells WebM from MKV
        return "webm"
    return None


def plan(container: str, video_codec: str, audio_codec: str = "", start_time: float = 0.0, suffix: str = ".mp4",
         pix_fmt: str = "") -> Plan:
    """Decide from container, codecs and start time whether the player needs a proxy, and which kind.

    `suffix` is the file's extension (gr.Video judges by it); `pix_fmt` the video's pixel format ("" unknown)."""
    family, suffix = _family(container), suffix.lower()
    pix_ok = not pix_fmt or pix_fmt in BROWSER_PIX_FMTS.get(video_codec, set())
    plays = (family is not None and suffix in SERVED_AS_IS[family] and video_codec in BROWSER_VIDEO[family]
             and pix_ok and (not audio_codec or audio_codec in BROWSER_AUDIO[family]))
    # The proxy is an MP4: a stream is copied when it plays there and gr.Video leaves it alone.
    copy_video = video_codec in BROWSER_VIDEO["mp4"] and pix_ok
    copy_audio = not audio_codec or audio_codec in COPY_AUDIO_INTO_MP4
    kind = "remux" if copy_video and copy_audio else "transcode"
    if plays and abs(start_time) <= START_TOLERANCE_S:
        return Plan(None, "the browser plays it as is")
    if plays:
        return Plan(kind, f"its timestamps start at {start_time:.3f} s, so the player would be off by that much",
                    copy_video, copy_audio)
    what = f"{video_codec or '?'}{'/' + audio_codec if audio_codec else ''}{' ' + pix_fmt if not pix_ok else ''}"
    return Plan(kind, f"the player cannot show {what} in {container or '?'} ({suffix or 'no extension'})",
                copy_video, copy_audio)


def plan_for(info: MediaInfo) -> Plan:
    """plan() for a probed file (reads the video's pixel format, which MediaInfo does not carry)."""
    return plan(info.container, info.video_codec, info.audio_codec if info.has_audio else "", info.start_time,
                Path(info.path).suffix, _pix_fmt(info.path) if info.video_codec in BROWSER_PIX_FMTS else "")


def _pix_fmt(path: str) -> str:
    """The first video stream's pixel format per ffprobe ("" where there is no ffprobe)."""
    import json

    exe = shutil.which("ffprobe")
    if not exe:
        return ""
    out = subprocess.run([exe, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=pix_fmt",
                          "-of", "json", path], capture_output=True, text=True)
    try:
        return str(json.loads(out.stdout)["streams"][0].get("pix_fmt") or "")
    except (ValueError, KeyError, IndexError):
        return ""


# --- where proxies live ---------------------------------------------------------------------------------------------


def proxy_name(video_id: int, fingerprint: str) -> str:
    """The proxy's path relative to the library folder: one name per (video, file content, proxy version)."""
    tag = hashlib.blake2b(f"{fingerprint}|{VERSION}".encode(), digest_size=5).hexdigest()
    return str(PROXY_DIR / f"{video_id:06d}-{tag}.mp4")


# --- making one -----------------------------------------------------------------------------------------------------


def ffmpeg_command(info: MediaInfo, p: Plan, out: Path) -> list[str]:
    """The ffmpeg command that writes the proxy of `info` to `out` (MP4, content time 0 at PTS 0)."""
    exe = shutil.which("ffmpeg")
    if not exe:
        raise SightlineError("ffmpeg is not installed, so no browser copy can be made of "
                             f"{Path(info.path).name} ({p.reason}).",
                             hint="Install ffmpeg (Debian/Ubuntu: apt-get install ffmpeg), then index again.")
    cmd = [exe, "-nostdin", "-hide_banner", "-v", "error", "-nostats", "-progress", "pipe:1", "-y",
           # the file's own timestamps, shifted below by exactly the index's start (the video's first frame):
           # ffmpeg's default shift is the earliest stream's start, off by the lead of audio that starts first
           "-copyts", "-threads", "1", "-i", info.path,
           # first video and audio stream only: subtitles and data streams (MPEG-TS, MKV) do not fit into MP4
           "-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn", "-map_metadata", "-1", "-map_chapters", "-1"]
    if p.copy_video:
        cmd += ["-c:v", "copy"]
    else:
        # ffmpeg turns the pixels upright (autorotate) before this filter and drops the display matrix, so
        # iw/ih are the upright size here; fit inside 1280x720 (720x1280 portrait), never upscale, even sides.
        f = f"min(1,min({MAX_LONG}/max(iw,ih),{MAX_SHORT}/min(iw,ih)))"
        scale = f"scale='trunc(iw*{f}/2)*2':'trunc(ih*{f}/2)*2'"
        cmd += ["-vf", scale, "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF),
                "-pix_fmt", "yuv420p", "-threads", str(ENCODER_THREADS), "-filter_threads", "1",
                # every frame keeps its own PTS: MP4's default (cfr) would duplicate or drop frames of a variable
                # frame rate file. (-vsync: ffmpeg 4 to 7 all take it; -fps_mode only from 5.1.)
                "-vsync", "passthrough"]
    if info.has_audio:
        cmd += ["-c:a", "copy"] if p.copy_audio else ["-c:a", "aac", "-b:a", "128k"]
    # Sound before the first frame gets negative times; the MP4 muxer hides it behind an edit list, as the
    # indexer leaves it out of content time.
    cmd += ["-output_ts_offset", f"{-info.start_time:.6f}", "-movflags", "+faststart", "-f", "mp4", str(out)]
    if shutil.which("nice"):
        cmd = ["nice", "-n", "10", *cmd]  # lower CPU priority: the decode pass beside it comes first
    return cmd


def make_proxy(info: MediaInfo, p: Plan, target: Path, on_time=None) -> None:
    """Run ffmpeg into a temporary name beside `target`, rename on success; raise SightlineError on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.stem}.part.mp4")
    cmd = ffmpeg_command(info, p, part)
    # stderr to a file, not a pipe: a damaged file can make ffmpeg write more than a pipe holds while this
    # loop reads stdout, and both would wait for each other
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            for line in proc.stdout:
                key, _, value = line.strip().partition("=")
                if key == "out_time_us" and on_time is not None and value.lstrip("-").isdigit():
                    on_time(max(0.0, int(value) / 1e6))
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        log.seek(0)
        err = log.read().strip()
    if code != 0 or not part.is_file() or part.stat().st_size == 0:
        part.unlink(missing_ok=True)
        lines = err.splitlines()
        # ffmpeg names the cause first and its consequences after ("Error while processing ...")
        detail = (lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "")) if lines else f"exit status {code}"
        raise SightlineError(f"{Path(info.path).name}: making its browser copy ({p.kind}) failed: {detail[-300:]}",
                             hint="The file itself is indexed and untouched; re-encode it to H.264 MP4 "
                             "(ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4) if the player cannot show it.")
    os.replace(part, target)


# --- the stage ------------------------------------------------------------------------------------------------------


def signature(ctx: IndexContext) -> str:
    return f"{VERSION} crf={CRF} max={MAX_LONG}x{MAX_SHORT}"


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    info = video.media()
    p = plan_for(info)
    folder = Path(ctx.library.folder)
    if p.kind is None:
        remove_proxies(folder, video.id)  # one made for an earlier version of the file is no longer needed
        return StageOutput(media_s=info.duration, status="skipped", video={"proxy": None},
                           detail={"proxy": None, "reason": p.reason})
    rel = proxy_name(video.id, video.fingerprint)
    target = folder / rel
    if not target.is_file():  # an earlier run renamed it into place before it was killed: it is complete
        make_proxy(info, p, target, video.on_proxy)
    remove_proxies(folder, video.id, keep=rel)  # proxies of earlier versions of this file
    return StageOutput(media_s=info.duration, video={"proxy": rel}, message=f"browser proxy: {p.kind}",
                       detail={"proxy": p.kind, "reason": p.reason})
