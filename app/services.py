"""The composition root: builds models once, hands them to indexer, storage search and the agent.

The CLI and the UI both talk to a `Services`; nothing below app/ opens another layer by itself.
"""

from __future__ import annotations

import threading
from functools import cached_property

from app.settings import Settings
from storage import Library


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()

    @cached_property
    def library(self) -> Library:
        return Library.open(self.settings.library_path, self.settings.database_url or None)

    # --- models (loaded on first use, once) ---------------------------------------------------------------

    @cached_property
    def text_embedder(self):
        from indexer.embedders import load_text_embedder

        return load_text_embedder(self.settings.text_model)

    # --- commands ------------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 10, modalities=None, video: str | None = None):
        from storage.search import search

        video_ids = [self.library.video_by_ref(video).id] if video else None
        return search(self.library, query, self.text_embedder, k=k, modalities=modalities, video_ids=video_ids)
