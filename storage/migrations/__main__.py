"""`python -m storage.migrations revision -m MESSAGE`: autogenerate the next revision from storage/models.py.

The models are compared with a scratch SQLite library upgraded to the newest revision; the new file lands in
versions/ as NNNN_<message>.py. Read it, add data steps, then set HEAD in storage/migrations/__init__.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    from storage import Library
    from storage.migrations import alembic_config

    parser = argparse.ArgumentParser(prog="python -m storage.migrations")
    parser.add_argument("command", choices=["revision"])
    parser.add_argument("-m", "--message", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        lib = Library.open(Path(scratch) / "lib")
        try:
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            with lib.engine.connect() as conn:
                cfg = alembic_config(conn, lib.has_fts)
                command.revision(cfg, args.message, autogenerate=True, rev_id=f"{int(head) + 1:04d}")
        finally:
            lib.close()


if __name__ == "__main__":
    main()
