"""Storage: SQLAlchemy models and sessions, FAISS vector stores, library files, search. Imports nothing else.

`Library` is imported on first use (PEP 562), so a module that needs only `storage.errors` or `storage.validate`
(the CLI's --help, argument checks) does not pay for SQLAlchemy.
"""

from storage.errors import SightlineError

__all__ = ["Library", "SightlineError"]


def __getattr__(name: str):
    if name == "Library":
        from storage.library import Library

        return Library
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
