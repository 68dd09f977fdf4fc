"""Storage: SQLAlchemy models and sessions, FAISS vector stores, library files, search. Imports nothing else."""

from storage.errors import SightlineError
from storage.library import Library

__all__ = ["Library", "SightlineError"]
