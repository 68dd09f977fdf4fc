"""Sightline's web UI entry point: `python app.py` (also the Hugging Face Space app_file).

Settings come from SIGHTLINE_* environment variables (see README); `sightline serve` is the same app with flags.
"""

from app.settings import load_settings
from app.server import launch

if __name__ == "__main__":
    launch(load_settings())
