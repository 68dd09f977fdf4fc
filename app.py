"""Sightline's web UI entry point: `python app.py` (also the Hugging Face Space app_file).

Settings come from SIGHTLINE_* environment variables (see README); `sightline serve` is the same app with flags.
"""

import sys

from app.errors import user_message
from app.settings import load_settings
from storage.errors import SightlineError

if __name__ == "__main__":
    try:
        settings = load_settings()
    except SightlineError as err:  # a bad SIGHTLINE_* value: one line, as `sightline serve` says it
        sys.exit(f"Error: {user_message(err)}")
    from app.server import launch  # after the settings: a bad value is said before Gradio loads

    launch(settings)
