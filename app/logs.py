"""Where unexpected errors go: a log file in the user's log folder, so the CLI and UI show one line."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path


def log_path() -> Path:
    from platformdirs import user_log_dir

    folder = Path(user_log_dir("sightline", appauthor=False))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "sightline.log"


def log_exception(err: BaseException) -> None:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    with log_path().open("a") as f:
        f.write(text + "\n")
    logging.getLogger("sightline").debug(text)
