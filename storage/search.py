"""Moment search: query -> text embedding -> FAISS + FTS5 -> reciprocal-rank fusion -> moments.

The text embedder is handed in as a callable (storage imports nothing else of the project).
Scores are RRF sums divided by their maximum possible value, so they lie in [0, 1] and compare across videos.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sqlalchemy import select, text

from storage.errors import SightlineError
from storage.models import MODALITIES, Moment, Video

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> (n, dim) float32, L2-normalised

RRF_K = 60  # the usual constant: damps the head of each list so one list cannot dominate
MAX_QUERY_CHARS = 2000


@dataclass
class MomentHit:
    """A moment as every interface shows it (DESIGN.md 'moment / evidence item')."""

    moment_id: int
    video_id: int
    video: str  # path
    start: float
    end: float
    modality: str
    text: str
    score: float
    thumbnail: str | None = None  # absolute path, or None
    verified: bool | None = None  # set for answer evidence only
    sources: dict = field(default_factory=dict)  # rank per retriever, for explanation

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["verified"] is None:
            d.pop("verified")
        return d


def _fts_query(query: str) -> str:
    """User text -> a safe FTS5 query: each word quoted, OR-ed (ranking does the rest)."""
    words = re.findall(r"\w+", query.lower())
    return " OR ".join(f'"{w}"' for w in words)


def _check_query(query: str) -> str:
    query = (query or "").strip()
    if not query:
        raise SightlineError("The search query is empty.", hint="Type a few words describing the moment.")
    if len(query) > MAX_QUERY_CHARS:
        raise SightlineError(f"The search query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}.",
                             hint="Shorten it to the words that matter.")
    return query


def keyword_ranking(library, query: str, n: int, allowed: set[int] | None) -> list[int]:
    """Moment ids matching the words of the query, best first (FTS5 bm25; LIKE on other databases)."""
    with library.read() as s:
        if library.is_sqlite:
            fts = _fts_query(query)
            if not fts:
                return []
            limit = n if allowed is None else n * 20
            rows = s.execute(
                text("SELECT rowid FROM moments_fts WHERE moments_fts MATCH :q ORDER BY bm25(moments_fts) LIMIT :n"),
                {"q": fts, "n": limit},
            ).all()
            ids = [r[0] for r in rows]
        else:
            words = re.findall(r"\w+", query.lower())[:8]
            if not words:
                return []
            q = select(Moment.id)
            for w in words:
                q = q.where(Moment.text.ilike(f"%{w}%"))
            ids = list(s.scalars(q.limit(n)).all())
    if allowed is not None:
        ids = [i for i in ids if i in allowed]
    return ids[:n]


def vector_ranking(library, space: str, query_vector: np.ndarray, n: int, allowed: set[int] | None) -> list[int]:
    store = library.vectors(space)
    want = n if allowed is None else max(n * 20, 1000)
    hits = store.search(query_vector, want)
    ids = [i for i, _ in hits]
    if allowed is not None:
        ids = [i for i in ids if i in allowed]
    return ids[:n]


def _allowed_ids(library, modalities: Sequence[str] | None, video_ids: Sequence[int] | None) -> set[int] | None:
    if not modalities and not video_ids:
        return None
    with library.read() as s:
        q = select(Moment.id)
        if modalities:
            q = q.where(Moment.modality.in_(list(modalities)))
        if video_ids:
            q = q.where(Moment.video_id.in_(list(video_ids)))
        return set(s.scalars(q).all())


def fuse(rankings: dict[str, list[int]], k: int = RRF_K) -> list[tuple[int, float, dict]]:
    """Reciprocal-rank fusion of named rankings -> (id, score in [0, 1], {name: rank}) best first."""
    scores: dict[int, float] = {}
    sources: dict[int, dict] = {}
    for name, ids in rankings.items():
        for rank, mid in enumerate(ids, start=1):
            scores[mid] = scores.get(mid, 0.0) + 1.0 / (k + rank)
            sources.setdefault(mid, {})[name] = rank
    best = max(len(rankings), 1) / (k + 1)
    return sorted(((m, s / best, sources[m]) for m, s in scores.items()), key=lambda t: -t[1])


def hits_for(library, fused: list[tuple[int, float, dict]]) -> list[MomentHit]:
    """Load moments for fused (id, score, sources) triples, keeping their order."""
    ids = [m for m, _, _ in fused]
    with library.read() as s:
        rows = {m.id: (m, v) for m, v in s.execute(
            select(Moment, Video).join(Video, Moment.video_id == Video.id).where(Moment.id.in_(ids))).all()}
    out = []
    for mid, score, src in fused:
        if mid not in rows:
            continue  # deleted since the index was read
        m, v = rows[mid]
        thumb = str(library.path_of(m.thumbnail)) if m.thumbnail else None
        out.append(MomentHit(m.id, v.id, v.path, m.start, m.end, m.modality, m.text, round(score, 4), thumb,
                             sources=src))
    return out


def search(
    library,
    query: str,
    embed_text: EmbedFn | None,
    k: int = 10,
    modalities: Sequence[str] | None = None,
    video_ids: Sequence[int] | None = None,
    embed_visual_text: EmbedFn | None = None,
) -> list[MomentHit]:
    """Best k moments for a free-text query, fused across keyword and vector retrieval."""
    query = _check_query(query)
    unknown = set(modalities or ()) - set(MODALITIES)
    if unknown:
        raise SightlineError(f"Unknown modality {sorted(unknown)}.", hint=f"Use one of {', '.join(MODALITIES)}.")
    if k < 1:
        raise SightlineError(f"k must be at least 1, got {k}.")
    allowed = _allowed_ids(library, modalities, video_ids)
    n = max(50, 5 * k)
    rankings: dict[str, list[int]] = {"keyword": keyword_ranking(library, query, n, allowed)}
    spaces = set(library.vector_spaces())
    if embed_text is not None and "text" in spaces:
        rankings["text"] = vector_ranking(library, "text", embed_text([query])[0], n, allowed)
    if embed_visual_text is not None and "visual" in spaces:
        rankings["visual"] = vector_ranking(library, "visual", embed_visual_text([query])[0], n, allowed)
    return hits_for(library, fuse(rankings)[:k])
