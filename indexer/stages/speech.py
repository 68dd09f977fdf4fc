"""Speech: 16 kHz mono audio streamed in chunks -> VAD + faster-whisper -> phrases -> `speech` moments.

Runs in the audio lane, beside the frame stages. A video without an audio track gets a note, not an error.
Each moment is a phrase (a sentence or clause, indexer/phrases.py) with its words' times, not a Whisper segment.
Thumbnails come from the frame cache once the frame lane has scanned the video.
"""

from __future__ import annotations

from indexer.context import IndexContext, MomentIn, StageOutput, VideoJob
from indexer.frames import cache_folder, load_index, nearest_sample
from indexer.audio import SAMPLE_RATE, iter_audio
from indexer.phrases import Phrase, split_phrases
from indexer.thumbnails import moment_thumbnail

NAME = "speech"
NEEDS = ("probe",)  # stages whose results this one reads; the runner starts it after them
NO_AUDIO = "no audio track: nothing to transcribe"
FRAMES_WAIT_S = 3600.0


def signature(ctx: IndexContext) -> str:
    return f"v2 phrases model={ctx.transcriber.what}"


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    info = video.media()
    if not info.has_audio:
        return StageOutput(media_s=info.duration, message=NO_AUDIO, status="skipped")
    transcriber = ctx.transcriber.get()
    segments = []
    for offset, chunk in iter_audio(info, ctx.options.audio_chunk_s):
        segments.extend(transcriber.transcribe(chunk, offset=offset))
        if video.on_audio is not None:
            video.on_audio(offset + len(chunk) / SAMPLE_RATE)
    moments = [MomentIn(max(0.0, p.start), min(max(p.end, p.start), info.duration), "speech", p.text,
                        words=[(w.start, w.end, w.text) for w in p.words] or None)
               for p in phrases_of(segments) if p.text.strip() and p.start < info.duration]
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


def phrases_of(segments) -> list[Phrase]:
    """Whisper segments -> phrases. Words run on across segment bounds; a segment without word times (a model
    that gives none) stays one phrase."""
    out: list[Phrase] = []
    words: list = []
    for seg in segments:
        if seg.words:
            words.extend(seg.words)
            continue
        out.extend(split_phrases(words))
        words = []
        out.append(Phrase(seg.start, seg.end, seg.text))
    out.extend(split_phrases(words))
    return out
