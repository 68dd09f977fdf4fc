"""`OnceCache`: values built once per key under a lock, the one way Sightline loads a model once per process.

The indexer's small models (indexer/models/), the engine's answering model (engine/loading.py), the tiny test
model folders (engine/tiny.py), the models handed to the indexer (`indexer.context.Lazy`) and the app's VLM
(app/services.py) all go through it. It lives in storage/ only because storage is the base layer every other
package may import (DESIGN.md's arrows); it knows nothing of storage.

One lock per cache: a caller asking while another builds waits for that build and then gets its value, and two
keys of one cache are built one after the other (two models are never loaded into memory side by side). A build
that raises is not kept as a value: the next caller builds again, unless the cache was made with
`remember_failures=True`, in which case the first error is raised again to every later caller without building.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class OnceCache(Generic[V]):
    """Values built once per key, under one lock; see the module docstring for what happens on failure."""

    def __init__(self, remember_failures: bool = False):
        self._remember_failures = remember_failures
        self._lock = threading.Lock()
        self._values: dict[Hashable, V] = {}
        self._failures: dict[Hashable, Exception] = {}

    def get(self, key: Hashable, build: Callable[[], V], keep: bool = True) -> V:
        """The value for key, built by `build()` on the first call; later and concurrent callers get the same one.

        keep=False builds a private value under the same lock (so it never loads beside another build) without
        reading or storing the cache: for callers that change what they get, like engine/selfcheck.py.
        """
        with self._lock:
            if keep:
                if key in self._values:
                    return self._values[key]
                if key in self._failures:
                    raise self._failures[key]
            try:
                value = build()
            except Exception as err:
                if keep and self._remember_failures:
                    self._failures[key] = err
                raise
            if keep:
                self._values[key] = value
            return value

    def peek(self, key: Hashable) -> V | None:
        """The value built for key so far, or None; never builds and never waits for a build in progress."""
        return self._values.get(key)

    def clear(self) -> None:
        """Forget every value and remembered failure (tests; switching models), waiting for a build in progress."""
        with self._lock:
            self._values.clear()
            self._failures.clear()
