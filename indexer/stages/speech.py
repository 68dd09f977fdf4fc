"""Speech: 16 kHz mono audio streamed in chunks -> VAD + faster-whisper -> `speech` moments.

Runs in the audio lane, beside the frame stages. A video without an audio track gets a note, not an error.
Thumbnails come from the frame cache once the frame lane has scanned the video.
"""

from __future__ import annotations

from indexer.context import IndexContext, MomentIn, StageOutput, VideoJob
from indexer.frames import cache_folder, load_index, nearest_sample
from indexer.media import iter_audio
from indexer.thumbnails import moment_thumbnail

NAME = "speech"
NEEDS = ("probe",)  # stages whose results this one reads; the runner starts it after them
NO_AUDIO = "no audio track: nothing to transcribe"
FRAMES_WAIT_S = 3600.0


def signature(ctx: IndexContext) -> str:
    return f"v1 model={ctx.transcriber.what}"


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    info = video.media()
    if not info.has_audio:
        return StageOutput(media_s=info.duration, message=NO_AUDIO, status="skipped")
    transcriber = ctx.transcriber.get()
    segments = []
    for offset, chunk in iter_audio(info, ctx.options.audio_chunk_s):
        segments.extend(transcriber.transcribe(chunk, offset=offset))
        if video.on_audio is not None:
            video.on_audio(offset + len(chunk) / 16000)
    moments = [MomentIn(max(0.0, s.start), min(max(s.end, s.start), info.duration), "speech", s.text)
               for s in segments if s.text.strip() and s.start < info.duration]
    video.frames_ready.wait(FRAMES_WAIT_S)
    index = video.frame_index or load_index(cache_folder(ctx.cache_dir, video.id, video.fingerprint))
    if index is not None:
        for m in moments:
            sample = nearest_sample(index, m.start + min(0.5, (m.end - m.start) / 2))
            m.thumbnail = moment_thumbnail(ctx.library, video.id, index.image(sample), "speech", m.start,
                                           ctx.options.thumb_side)
    language = getattr(transcriber, "language", None)
    return StageOutput(moments=moments, media_s=info.duration,
                       detail={"segments": len(moments), "language": language})
