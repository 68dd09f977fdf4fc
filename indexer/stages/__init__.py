"""The built-in stages, registered the way an extra stage would be (STYLE rules 17-18).

Each stage is a module with `NAME`, `NEEDS` (names of stages it runs after), `signature(ctx) -> str` and
`run(video, ctx) -> StageOutput`. The runner runs every stage of DEFAULT_STAGES alike, two at a time, each as
soon as the stages it needs are done (shots' decode pass and speech in parallel, then visual, on-screen text and
captions over the cached frames), and commits each stage's moments, vectors and done mark in one write. A stage whose done mark carries the same file fingerprint
and signature (the models it used) is skipped; change a model and the stage runs again.
"""

from indexer.stages import captions, probe, screen_text, shots, speech, visual

# Order is priority when two stages are ready at once: the long ones first.
DEFAULT_STAGES = (probe, shots, speech, screen_text, visual, captions)
WORKERS = 2  # stages of one video in parallel: the machine we target has two cores
