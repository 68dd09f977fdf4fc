"""The built-in stages, registered the way an extra stage would be (STYLE rules 17-18).

Each stage is a module with `NAME`, `NEEDS` (names of stages it runs after), `signature(ctx) -> str` and
`run(video, ctx) -> StageOutput`; optionally `FOLLOWS` (stages whose output it reads while they run: it starts
once they have started). The runner runs every stage of DEFAULT_STAGES alike, up to WORKERS at a time, each as
soon as it may: shots' decode pass, speech beside it and on-screen text following the pass sample by sample, then
visual moments and captions over the cached frames, and a browser-playable proxy where the player needs one
(indexer/stages/proxy.py). It commits each stage's moments, vectors and done mark in one
write. A stage whose done mark carries the same file fingerprint and signature (the models it used) is skipped;
change a model and the stage runs again.
"""

from indexer.stages import captions, probe, proxy, screen_text, shots, speech, visual

# Order is priority when two stages are ready at once: the long ones first. The browser proxy (an ffmpeg remux or
# transcode, niced) comes last so that it never takes a worker the decode pass could use.
DEFAULT_STAGES = (probe, shots, speech, screen_text, visual, captions, proxy)
# Stages of one video in parallel: the decode pass, speech and on-screen text together. Their heavy work (libav,
# CTranslate2, ONNX Runtime) runs outside the GIL, so three threads keep the two cores we target busy.
WORKERS = 3
