"""The runner's contracts through its Python API: visual embeddings (tiny SigLIP), captions handed in as a
callable, progress events with an ETA, stage signatures (a new model re-runs only its stage)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

pytestmark = pytest.mark.slow


def _context(library, visual_path: str | None = None, captioner=None):
    from indexer.context import IndexContext, Lazy
    from indexer.models.embedders import load_text_embedder, load_visual_embedder
    from indexer.models.ocr import load_ocr
    from indexer.models.speech import load_transcriber

    ctx = IndexContext(
        library,
        text_embedder=Lazy(load_text_embedder, "all-MiniLM-L6-v2"),
        visual_embedder=Lazy((lambda: load_visual_embedder(visual_path)) if visual_path else None, visual_path or ""),
        transcriber=Lazy(load_transcriber, "tiny.en"),
        ocr=Lazy(load_ocr, "rapidocr"),
    )
    ctx.captioner = captioner
    return ctx


class FakeCaptioner:
    """Stands in for engine/captioner.py's caption_fn(): records what it was shown."""

    model_name = "fake-vlm"

    def __init__(self):
        self.calls = []

    def many(self, segments):
        out = []
        for frames, times in segments:
            assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8
            assert len(times) == len(frames) and list(times) == sorted(times)
            self.calls.append(list(times))
            out.append(f"a street scene from {times[0]:.2f} s with cyclists and a taxi")
        return out


def test_visual_embeddings_captions_and_progress(library, bikes_mp4, tmp_path):
    from tests.tiny_siglip import build_tiny_siglip
    from indexer.runner import index_paths
    from storage.models import Embedding, Moment, StageRun, Video

    siglip = build_tiny_siglip(tmp_path / "siglip")
    captioner = FakeCaptioner()
    events = []
    summary = index_paths(library, [bikes_mp4], _context(library, siglip, captioner), on_progress=events.append)
    assert summary.done == [str(bikes_mp4.resolve())], summary.describe()

    with library.read() as s:
        visual = s.scalars(select(Moment).where(Moment.modality == "visual").order_by(Moment.start)).all()
        captions = s.scalars(select(Moment).where(Moment.modality == "caption").order_by(Moment.start)).all()
        spaces = dict(s.execute(select(Embedding.space, func.count()).group_by(Embedding.space)).all())
        notes = s.scalar(select(Video.notes))
    assert len(visual) == 6 and spaces["visual"] == 6  # one image vector per shot
    assert library.vectors("visual").count == 6
    assert [c.start for c in captions] == [v.start for v in visual] and len(captioner.calls) == 6
    assert all(c.thumbnail and "taxi" in c.text for c in captions)
    assert spaces["text"] == len(captions)  # captions carry text; bikes has no speech and no on-screen text
    assert "visual search off" not in (notes or "") and "captions off" not in (notes or "")
    from storage.search import search

    hits = search(library, "taxi", None, k=3, modalities=["caption"])
    assert hits and hits[0].modality == "caption"

    # Progress: every stage reported, the ETA known once work is done, the run ends at 100 %.
    stages = {e.stage for e in events if e.state in ("done", "skipped")}
    assert {"probe", "shots", "speech", "screen_text", "visual", "captions"} <= stages
    assert any(e.eta_s is not None for e in events[1:])
    # On-screen text follows the decode pass instead of waiting for it: it starts before shots is done.
    order = [(e.stage, e.state) for e in events]
    assert order.index(("screen_text", "started")) < order.index(("shots", "done")), order
    last = events[-1]
    assert last.state == "done" and last.media_done == pytest.approx(last.media_total) and last.fraction == 1.0

    # A different visual model re-runs the visual stage only; the others stay done.
    with library.read() as s:
        before = {r.stage: r.finished_at for r in s.scalars(select(StageRun)).all()}
    other = build_tiny_siglip(tmp_path / "siglip2")
    again = index_paths(library, [bikes_mp4], _context(library, other, captioner))
    assert again.done
    with library.read() as s:
        after = {r.stage: r.finished_at for r in s.scalars(select(StageRun)).all()}
        assert s.scalar(select(func.count()).select_from(Embedding).where(Embedding.space == "visual")) == 6
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"visual"}, changed
    assert sorted(library.vectors("visual").ids().tolist()) == sorted(m.id for m in _visual_moments(library))


def _visual_moments(library):
    from storage.models import Moment

    with library.read() as s:
        return s.scalars(select(Moment).where(Moment.modality == "visual")).all()


def test_without_models_the_notes_say_what_is_off(library, bikes_mp4):
    from indexer.runner import index_paths
    from storage.models import Video

    index_paths(library, [bikes_mp4], _context(library))
    with library.read() as s:
        notes = s.scalar(select(Video.notes))
    assert "visual search off: no visual model configured" in notes
    assert "captions off" in notes and "no audio track" in notes


def test_a_missing_path_is_a_clear_error(library, tmp_path):
    from indexer.runner import index_paths
    from storage.errors import SightlineError

    with pytest.raises(SightlineError, match="No such file or folder"):
        index_paths(library, [tmp_path / "nope.mp4"], _context(library))


def test_a_second_indexing_run_is_refused_until_the_first_ends(library, bikes_mp4):
    import signal
    import subprocess
    import sys

    from indexer.runner import index_paths
    from storage.errors import SightlineError

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from storage.library import Library\n"
         "with Library.open(sys.argv[1]).indexing_lock():\n    print('held', flush=True); time.sleep(120)",
         str(library.folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SightlineError, match=f"Another indexing run .*process {holder.pid}, started"):
            index_paths(library, [bikes_mp4], _context(library))
        with library.read() as s:
            from storage.models import Video

            assert s.scalar(select(func.count()).select_from(Video)) == 0  # refused before touching anything
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed run leaves no lock behind
        holder.wait()
    assert index_paths(library, [bikes_mp4], _context(library)).done


@pytest.mark.slow
def test_progress_moves_inside_long_stages(tmp_path, monkeypatch):
    """The bar moves while the decode pass, speech and a proxy transcode run, not only when a stage ends."""
    import indexer.progress
    from app.services import Services
    from app.settings import load_settings
    from tests.conftest import gradio_media

    monkeypatch.setattr(indexer.progress, "PROGRESS_EVERY_S", 0.0)
    events = []
    services = Services(load_settings({}, library=str(tmp_path / "lib")))
    try:
        summary = services.index([str(gradio_media("videos", "b.avi"))], on_progress=events.append)
    finally:
        services.library.close()
    assert summary.done, summary.describe()
    within = [e for e in events if e.state == "progress"]
    assert {"shots", "proxy"} <= {e.stage for e in within}, {(e.stage, e.state) for e in events}
    done = [e.media_done for e in events]
    assert all(b >= a - 1e-9 for a, b in zip(done, done[1:])), [(e.stage, e.state, round(e.media_done, 3)) for e in events]  # never backwards
    assert 0 < within[0].fraction < 1
