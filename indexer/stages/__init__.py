"""The built-in stages, registered the way an extra stage would be (STYLE rules 17-18).

Each stage is a module with `NAME`, `LANE`, `signature(ctx) -> str` and `run(video, ctx) -> StageOutput`.
The runner runs every stage of DEFAULT_STAGES alike: the `first` lane before the others, the `frames` lane
(one decode pass shared through indexer/frames.py) and the `audio` lane in parallel threads, and commits each
stage's moments, vectors and done mark in one write. A stage whose done mark carries the same file fingerprint
and signature (the models it used) is skipped; change a model and the stage runs again.
"""

from indexer.stages import captions, probe, screen_text, shots, speech, visual

DEFAULT_STAGES = (probe, shots, visual, screen_text, speech, captions)
LANES = ("first", "frames", "audio")
