"""The composition root: builds models once, hands them to indexer, storage search and the agent.

The CLI and the UI both talk to a `Services`; nothing below app/ opens another layer by itself.
"""

from __future__ import annotations

from functools import cached_property

from app.settings import Settings
from storage import Library
from storage.once import OnceCache


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._vlm: OnceCache[tuple] = OnceCache()  # (VideoChat | None, reason), loaded on the first question

    @cached_property
    def library(self) -> Library:
        return Library.open(self.settings.library_path, self.settings.database_url or None)

    def check_library(self) -> None:
        """SQLite's quick check of the library database (a damaged one raises SightlineError naming `sightline
        repair`). ~0.3 s at 100k moments, so status, index and the UI's start run it, not every search."""
        self.library.check_health()

    # --- models (loaded on first use, once) ---------------------------------------------------------------

    @cached_property
    def text_embedder(self):
        """The text model for indexing (sentence-transformers, torch)."""
        from indexer.models.embedders import load_text_embedder

        return load_text_embedder(self.settings.text_model)

    @cached_property
    def query_embedder(self):
        """The same text model for queries, through ONNX Runtime: searching never imports torch."""
        from indexer.models.embedders import load_query_embedder

        return load_query_embedder(self.settings.text_model)

    # --- commands ------------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 10, modalities=None, video: str | None = None):
        from storage.search import search

        video_ids = [self.library.video_by_ref(video).id] if video else None
        return search(self.library, query, self.query_embedder, k=k, modalities=modalities, video_ids=video_ids)

    # --- indexing ----------------------------------------------------------------------------------------

    def index_context(self, captions: bool | None = None):
        """The indexer's context: options from settings and models as lazy callables (the indexer imports no app)."""
        from indexer.context import IndexContext, IndexOptions, Lazy

        st = self.settings
        ctx = IndexContext(
            self.library,
            IndexOptions(sample_fps=st.sample_fps, ocr_interval=st.ocr_interval),
            text_embedder=Lazy(lambda: self.text_embedder, st.text_model),
            visual_embedder=Lazy(self._visual_embedder if st.visual_model else None, st.visual_model),
            transcriber=Lazy(self._transcriber, st.whisper_model),
            ocr=Lazy(self._ocr, "rapidocr"),
        )
        if captions if captions is not None else st.captions:
            chat, reason = self.vlm()
            if chat is None:
                ctx.captions_note = f"captions off: {reason}"
            else:
                from engine.captioner import Captioner

                ctx.captioner = Captioner(chat).caption_fn()
        return ctx

    def _visual_embedder(self):
        from indexer.models.embedders import load_visual_embedder

        return load_visual_embedder(self.settings.visual_model)

    def _transcriber(self):
        from indexer.models.speech import load_transcriber

        return load_transcriber(self.settings.whisper_model, self.settings.whisper_language or None)

    def _ocr(self):
        from indexer.models.ocr import load_ocr

        return load_ocr()

    def index(self, paths, captions: bool | None = None, show_progress: bool = False, on_progress=None):
        """Index files/folders (incremental, resumable); returns an IndexSummary (.describe(), .done, .failed)."""
        from indexer.runner import index_paths

        return index_paths(self.library, paths, self.index_context(captions), on_progress=on_progress,
                           show_progress=show_progress)

    def status(self) -> dict:
        """The library at a glance: counts by status, moments, and every video with its error, notes and stages."""
        from storage.catalog import status_report

        return status_report(self.library)

    # --- the answering agent --------------------------------------------------------------------------------

    def vlm(self):
        """(VideoChat, "") or (None, why no model is loaded), per settings; loaded once, on the first question."""
        from engine.loading import load_vlm_or_reason

        return self._vlm.get("vlm", lambda: load_vlm_or_reason(**vlm_options(self.settings)))

    def loaded_vlm(self):
        """What `vlm()` returned if it has run, else None; never loads (the UI's model status)."""
        return self._vlm.peek("vlm")

    def agent_tools(self):
        """The agent's tools over this library (the agent never opens the database itself). The query embedder
        loads here, before any search runs: a search's deadline covers searching, never model loading."""
        from engine.agent.library_tools import LibraryTools

        return LibraryTools(self.library, self.query_embedder)

    def ask(self, question: str, video: str | int | None = None, on_step=None):
        """Answer a question over the library or one video; evidence-only (with the reason) when no model loads."""
        from engine.agent import answer, check_library, check_question

        question = check_question(question)  # a bad question or an empty library fails before any model loads
        from engine.agent.library_tools import LibraryTools

        video_id = self.library.video_by_ref(video).id if video not in (None, "") else None
        check_library(LibraryTools(self.library, None))  # an empty library fails before any model loads
        tools = self.agent_tools()
        chat, reason = self.vlm()
        return answer(question, tools, chat, video_id=video_id, on_step=on_step,
                      max_steps=self.settings.agent_steps, no_model_reason=reason)


def vlm_options(settings: Settings) -> dict:
    """The settings the answering model loads with, as `engine.loading.load_vlm_or_reason` takes them."""
    return dict(model=settings.vlm_model, quantization=settings.quantization, cache_bytes=settings.cache_bytes,
                cache_disk_bytes=settings.cache_disk_bytes, library=settings.library, revision=settings.vlm_revision)
