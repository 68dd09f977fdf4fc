"""Visual moments: one per shot (long shots cut into spans), each with a thumbnail that is not a black frame,
and an image embedding in the 'visual' space when a CLIP/SigLIP model is configured."""

from __future__ import annotations

from indexer.context import IndexContext, MomentIn, StageOutput, VideoJob
from indexer.frames import ensure_frames, samples_by_preference, spans
from indexer.thumbnails import best_frame, frame_quality, moment_thumbnail

NAME = "visual"
NEEDS = ("shots",)  # stages whose results this one reads; the runner starts it after them
BATCH = 16
NO_MODEL = "visual search off: no visual model configured (set SIGHTLINE_VISUAL_MODEL to a CLIP/SigLIP model)"


def signature(ctx: IndexContext) -> str:
    model = ctx.visual_embedder.what if ctx.visual_embedder.configured else "none"
    return f"v1 span={ctx.options.visual_span} model={model}"


def _embedder(ctx: IndexContext):
    """(embedder or None, note)."""
    if not ctx.visual_embedder.configured:
        return None, NO_MODEL
    try:
        return ctx.visual_embedder.get(), None
    except Exception as err:  # noqa: BLE001 - a model that cannot load turns visual search off, saying why
        return None, f"visual search off: {err.user_text() if hasattr(err, 'user_text') else err}"


def run(video: VideoJob, ctx: IndexContext) -> StageOutput:
    info = video.media()
    index = ensure_frames(video, ctx)
    embedder, message = _embedder(ctx)
    moments: list[MomentIn] = []
    pending: list[tuple[MomentIn, object]] = []  # embedded in batches so images never pile up

    def flush():
        if embedder is not None and pending:
            for (m, _), v in zip(pending, embedder.embed_images([img for _, img in pending])):
                m.visual_vector = v
        pending.clear()

    for start, end in spans(index, info.duration, ctx.options.visual_span):
        seen: dict = {}

        def quality(sample):
            seen[sample] = index.image(sample)
            return frame_quality(seen[sample])

        chosen = best_frame(samples_by_preference(index, start, end), quality)
        image = seen[chosen]
        thumb = moment_thumbnail(ctx.library, video.id, image, "visual", chosen.t, ctx.options.thumb_side)
        moment = MomentIn(start, end, "visual", "", thumb)
        moments.append(moment)
        pending.append((moment, image))
        if len(pending) >= BATCH:
            flush()
    flush()
    return StageOutput(moments=moments, media_s=info.duration, message=message, detail={"moments": len(moments)})
