"""Moment search: query -> text embedding -> FAISS + FTS5 -> reciprocal-rank fusion -> moments.

Retrievers, each giving a ranked list of moment ids:
- `keyword`: SQLite FTS5 bm25 over moments.text (porter stemming); LIKE word counts on other databases.
  Bounded on big libraries, because bm25 is computed for every matching row before ORDER BY can pick the top
  (over "the" in 1M moments that takes seconds): each query word's match count is probed with
  `LIMIT FTS_TERM_CAP + 1`; words that match more rows than that are "common" (their bm25 weight is small
  anyway) and are left out of the ranked query when rarer words exist, so bm25 runs over at most
  (rare words x FTS_TERM_CAP) rows. A query made only of common words requires all of them (AND) and
  returns the newest matches unranked: even bm25's IDF scans each word's whole doclist (~20 ms at 1M), and
  such words carry little keyword signal; the vector retriever carries these queries. With a filter whose
  moments lie in a narrow id range (one video: its rows are written together) the FTS5 query also gets
  `rowid BETWEEN lo AND hi`, which FTS5 seeks to instead of walking the whole doclist (250 ms -> 15 ms for a
  common word at 1M). Other filters are checked against a bitmap of the allowed ids as FTS5's rows stream
  out, not by a join to `moments`, whose pages a join reads at random (cold, that was the 70 ms tail of
  modality-filtered searches at 1M). benchmarks/search_latency.py measures the naive ORDER BY bm25 beside this.
- `text`: MiniLM query vector -> FAISS inner product over the `text` space (cosine; below
  MIN_TEXT_SIMILARITY a vector hit is noise and is dropped).
- `visual`: the same for the `visual` space (CLIP/SigLIP text tower), when the library has one.

Filters (modalities, video ids) are applied inside each retriever (an SQL join for FTS5, an id selector for
FAISS, see storage/vectors.py), never by cutting a short list afterwards, so a filter cannot empty the results
while matching moments exist. Moments of failed videos (partial results) never show: `hidden_ids`.

Score scale: reciprocal-rank fusion, score = sum over retrievers r of 1 / (RRF_K + rank_r), divided by its
maximum R / (RRF_K + 1) where R is the number of retrievers that ran. So scores lie in [0, 1]; 1.0 means
"first in every retriever". Ranks come from one ranking of the whole library (or of the filtered subset), not
per video, so within one query two videos' scores compare directly. Scores of different queries are not
calibrated against each other. Each hit's `sources` says which retriever ranked it where (and the raw cosine
or bm25), for explanations.

Overlapping hits of the same video and modality (the same on-screen text seen by two stages, neighbouring
speech segments) are merged: the best one stays; when their texts agree its span becomes the union; the others'
ids are listed in `sources["merged"]`. Thumbnails are returned as absolute paths.

Every SQL statement of a search runs under one deadline (`deadline_s`); past it SightlineError is raised.
The keyword ranking runs on a helper thread while the query is embedded and FAISS is searched.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
from sqlalchemy import case, func, literal, or_, select

from storage import validate
from storage.errors import SightlineError
from storage.models import FAILED, MODALITIES, Moment, Video
from storage.vectors import id_mask

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> (n, dim) float32, L2-normalised

RRF_K = 60  # the usual constant: damps the head of each list so one list cannot dominate
MAX_QUERY_CHARS = 2000
MAX_QUERY_WORDS = 16
FTS_TERM_CAP = 5_000  # a word matching more moments than this is "common" (see the module docstring)
MIN_TEXT_SIMILARITY = 0.1  # MiniLM cosine below this is unrelated text
MIN_KNOWN_SHARE = 0.5  # below this share of the query known to the text embedder, its vector is skipped
MAX_K = 1000  # most moments one search returns
SEARCH_DEADLINE_S = 5.0
MERGE_GAP_S = 0.5  # same text within this gap counts as one moment
HIDDEN_DEEPEN_MAX = 5_000  # up to this many moments of failed videos, retrievers read deeper instead of filtering


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
    sources: dict = field(default_factory=dict)  # rank (and raw score) per retriever, for explanation

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["verified"] is None:
            d.pop("verified")
        return d


# --- query checks ------------------------------------------------------------------------------------------


def _check_query(query: str) -> str:
    """The query as searched: valid UTF-8 text (storage/validate.py), not empty, not too long, and holding a
    letter or digit of some script: punctuation, emoji or zero-width characters alone are nothing to search for
    (every retriever would return arbitrary moments for them)."""
    query = validate.query_text(query, max_chars=MAX_QUERY_CHARS)
    if not query:
        raise SightlineError("The search query is empty.", hint="Type a few words describing the moment.")
    return validate.without_invisible(validate.require_searchable(query))


def _check_filters(modalities, video_ids, k) -> tuple[list[str] | None, list[int] | None, int]:
    modalities = validate.modalities(modalities, MODALITIES)
    video_ids = [validate.video_id(v) for v in video_ids] if video_ids else None
    return modalities, video_ids, validate.count(k, "k", 1, MAX_K)


def embedder_knows(query: str, embed: EmbedFn) -> bool:
    """False when the text embedder's tokenizer knows under half of the query's letters (a script it was not
    trained on: see validate.known_share); its vector for such a query is noise, so the text space is skipped
    and only keyword matches are returned. True for an embedder without a tokenizer (nothing to check)."""
    tokenizer = validate.tokenizer_of(embed)
    return tokenizer is None or validate.known_share(query, tokenizer) >= MIN_KNOWN_SHARE


def query_words(query: str) -> list[str]:
    """Distinct lower-case words of the query, in order, at most MAX_QUERY_WORDS."""
    seen: dict[str, None] = {}
    for w in re.findall(r"\w+", query.lower()):
        seen.setdefault(w, None)
    return list(seen)[:MAX_QUERY_WORDS]


_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sightline-search")


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.stop_at = time.monotonic() + seconds

    def left(self) -> float:
        left = self.stop_at - time.monotonic()
        if left <= 0:
            raise SightlineError(f"The search took longer than {self.seconds:g} s and was stopped.",
                                 hint="Use more specific words, or filter by video or modality.")
        return left


# --- retrievers --------------------------------------------------------------------------------------------


def keyword_ranking(library, query: str, n: int, modalities: Sequence[str] | None = None,
                    video_ids: Sequence[int] | None = None, deadline_s: float | None = None,
                    subset: np.ndarray | None = None) -> list[tuple[int, float | None]]:
    """(moment id, keyword score or None when unranked) matching the words of the query, best first.

    `subset`: the allowed moment ids when the caller already has them (`allowed_ids` of the same filters)."""
    words = query_words(query)
    if not words:
        return []
    if not library.has_fts:
        return _like_ranking(library, words, n, modalities, video_ids, deadline_s)
    if subset is None:
        subset = allowed_ids(library, modalities, video_ids, deadline_s)
    allowed, narrow, params = None, "", {}
    if subset is not None:
        if not len(subset):
            return []
        allowed = id_mask(subset)
        lo, hi = int(subset.min()), int(subset.max())
        if hi - lo < 4 * len(subset):  # e.g. one video: its moments were written together
            narrow = " AND moments_fts.rowid BETWEEN :lo AND :hi"
            params.update(lo=lo, hi=hi)
    with library.read(deadline_s) as s:
        conn = s.connection()
        counts = {}
        for w in words:
            counts[w] = conn.exec_driver_sql(
                "SELECT count(*) FROM (SELECT rowid FROM moments_fts WHERE moments_fts MATCH ? LIMIT ?)",
                (f'"{w}"', FTS_TERM_CAP + 1)).scalar()
        rare = [w for w in words if 0 < counts[w] <= FTS_TERM_CAP]
        common = [w for w in words if counts[w] > FTS_TERM_CAP]
        if rare:  # every match is ranked: at most len(rare) * FTS_TERM_CAP rows
            sql = (f"SELECT moments_fts.rowid, bm25(moments_fts) FROM moments_fts "
                   f"WHERE moments_fts MATCH :q{narrow} ORDER BY bm25(moments_fts)")
            match = " OR ".join(f'"{w}"' for w in rare)
        elif common:  # only common words: all of them must match; the newest rows, unranked
            sql = (f"SELECT moments_fts.rowid, NULL FROM moments_fts "
                   f"WHERE moments_fts MATCH :q{narrow} ORDER BY moments_fts.rowid DESC")
            match = " AND ".join(f'"{w}"' for w in common)
        else:
            return []
        if allowed is None:
            sql += " LIMIT :n"
        cursor = conn.exec_driver_sql(_named_to_qmark(sql), _qmark_params(sql, {**params, "q": match, "n": n}))
        rows = []
        for rowid, score in cursor:  # best first; with a filter, read on until n allowed rows
            if allowed is None or (rowid < len(allowed) and allowed[rowid]):
                rows.append((int(rowid), None if score is None else -float(score)))  # bm25: lower is better
                if len(rows) >= n:
                    break
        cursor.close()
    return rows


def _named_to_qmark(sql: str) -> str:
    return re.sub(r":(\w+)", "?", sql)


def _qmark_params(sql: str, params: dict) -> tuple:
    return tuple(params[name] for name in re.findall(r":(\w+)", sql))


def _like_ranking(library, words: list[str], n: int, modalities, video_ids,
                  deadline_s: float | None) -> list[tuple[int, float]]:
    """Databases without FTS5: moments containing the most query words first (case-insensitive LIKE)."""
    likes = [Moment.text.ilike(f"%{_escape_like(w)}%", escape="\\") for w in words[:8]]
    hits = sum((case((like, 1), else_=0) for like in likes), literal(0)).label("hits")
    q = select(Moment.id, hits).where(or_(*likes))
    if modalities:
        q = q.where(Moment.modality.in_(list(modalities)))
    if video_ids:
        q = q.where(Moment.video_id.in_([int(v) for v in video_ids]))
    with library.read(deadline_s) as s:
        rows = s.execute(q.order_by(hits.desc(), Moment.id).limit(n)).all()
    return [(int(r[0]), float(r[1])) for r in rows]


def _escape_like(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_allowed_cache: dict[tuple, np.ndarray] = {}


def allowed_ids(library, modalities: Sequence[str] | None, video_ids: Sequence[int] | None,
                deadline_s: float | None = None) -> np.ndarray | None:
    """Moment ids passing the filters (None when there are no filters).

    Cached per (library, filters, max moment id): a moment never changes modality or video (re-indexing
    replaces rows with new, larger ids), so a new max id is the only change that can add members, and a
    deleted id left in the set is harmless (FAISS no longer holds it)."""
    if not modalities and not video_ids:
        return None
    with library.read(deadline_s) as s:
        newest = s.scalar(select(func.max(Moment.id)))
    key = (id(library), library.url, tuple(sorted(modalities or ())), tuple(sorted(int(v) for v in video_ids or ())),
           newest)
    if key not in _allowed_cache:
        if len(_allowed_cache) > 32:
            _allowed_cache.clear()
        _allowed_cache[key] = _query_allowed_ids(library, modalities, video_ids, deadline_s)
    return _allowed_cache[key]


def _query_allowed_ids(library, modalities, video_ids, deadline_s) -> np.ndarray:
    q = select(Moment.id)
    if modalities:
        q = q.where(Moment.modality.in_(list(modalities)))
    if video_ids:
        q = q.where(Moment.video_id.in_([int(v) for v in video_ids]))
    with library.read(deadline_s) as s:
        if library.is_sqlite:  # the raw cursor: ~5x faster than ORM rows for 100k+ ids
            compiled = q.compile(dialect=library.engine.dialect, compile_kwargs={"literal_binds": True})
            cursor = s.connection().connection.dbapi_connection.execute(str(compiled))
            return np.fromiter((r[0] for r in cursor), dtype=np.int64)
        return np.asarray(s.scalars(q).all(), dtype=np.int64)


def hidden_ids(library, deadline_s: float | None = None) -> np.ndarray:
    """Moment ids of failed videos: a run that did not finish leaves partial moments, which are not evidence.
    Two small queries (failed videos are few; moments are found through their video_id index)."""
    with library.read(deadline_s) as s:
        failed = s.scalars(select(Video.id).where(Video.status == FAILED)).all()
        if not failed:
            return np.empty(0, dtype=np.int64)
        return np.asarray(s.scalars(select(Moment.id).where(Moment.video_id.in_(failed))).all(), dtype=np.int64)


def _without_hidden(library, subset: np.ndarray | None, hidden: np.ndarray, deadline_s: float | None
                    ) -> np.ndarray | None:
    """The allowed ids less the hidden ones; None (no filter) stays None while the hidden ones are few enough
    for the retrievers to read past them (`search` deepens each list by their number and drops them)."""
    if not len(hidden):
        return subset
    if subset is None:
        if len(hidden) <= HIDDEN_DEEPEN_MAX:
            return None
        with library.read(deadline_s) as s:
            subset = np.asarray(s.scalars(select(Moment.id)).all(), dtype=np.int64)
    return np.setdiff1d(subset, hidden, assume_unique=True)


def vector_ranking(library, space: str, query_vector: np.ndarray, n: int,
                   subset: np.ndarray | None = None, min_similarity: float | None = None) -> list[tuple[int, float]]:
    """(moment id, cosine) from the FAISS index of `space`, best first, only ids in `subset` when given."""
    hits = library.vectors(space).search(query_vector, n, subset=subset)
    if min_similarity is not None:
        hits = [(i, s) for i, s in hits if s >= min_similarity]
    return hits


# --- fusion and results ------------------------------------------------------------------------------------


def fuse(rankings: dict[str, list], k: int = RRF_K) -> list[tuple[int, float, dict]]:
    """Reciprocal-rank fusion of named rankings -> (id, score in [0, 1], {name: rank}) best first.

    A ranking is a list of ids or of (id, raw score) pairs, best first."""
    scores: dict[int, float] = {}
    sources: dict[int, dict] = {}
    for name, items in rankings.items():
        for rank, item in enumerate(items, start=1):
            mid, raw = item if isinstance(item, tuple) else (item, None)
            scores[mid] = scores.get(mid, 0.0) + 1.0 / (k + rank)
            sources.setdefault(mid, {})[name] = rank
            if raw is not None:
                sources[mid][f"{name}_score"] = round(float(raw), 4)
    best = max(len(rankings), 1) / (k + 1)
    return sorted(((m, s / best, sources[m]) for m, s in scores.items()), key=lambda t: (-t[1], t[0]))


# --- the cited words of a speech hit -----------------------------------------------------------------------

LEAD_IN_S = 0.2  # a speech hit starts this much before its first cited word (never before the word before it)
_SUFFIXES = ("ing", "ed", "es", "s")
_STOP_WORDS_TEXT = ("a an and are as at be but by do for from had has have he her his i if in is it its of on "
                    "or our she so that the their them then there they this to was we were what when where "
                    "which who will with you your")


def _stem(word: str) -> str:
    """A light suffix stripper, so "failing" finds "failed" as FTS5's porter stemmer lets it."""
    word = "".join(re.findall(r"\w+", word.lower()))
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) >= 4 else word  # "decide" and "decided" alike


_STOP_WORDS = frozenset(_stem(w) for w in _STOP_WORDS_TEXT.split())


def _tokens(text: str) -> list[str]:
    """Words with their apostrophes ("you're" is one word, as Whisper writes it), stemmed."""
    return [_stem(w) for w in re.findall(r"\w+(?:['’]\w+)*", text)]


def cited_span(words: Sequence[Sequence], query: str) -> tuple[float, float, str] | None:
    """(start, end, cited text) of the query's words inside a phrase's words [[start, end, word], ...].

    The cited place is the longest run of consecutive phrase words that are query words (earliest on a tie;
    stop words count only inside a run, or just before it when the query has them too): for "fail better" in
    "Fail again, fail better." that is the second "fail", not the first. Start is that run's first word (with
    LEAD_IN_S), end the phrase's end. None when no query word is in the phrase."""
    asked = set(_tokens(query)) - {""}
    wanted = asked - _STOP_WORDS if asked - _STOP_WORDS else asked  # "the" says nothing about where to look
    if not words or not wanted:
        return None
    stems = ["".join(_tokens(str(w[2]))) for w in words]
    best_at, best_end, best_len, run_at, run_len = None, 0, 0, 0, 0
    for i, stem in enumerate(stems):
        if stem in wanted:
            run_at, run_len = (run_at, run_len + 1) if run_len else (i, 1)
            if run_len > best_len:
                best_at, best_end, best_len = run_at, i, run_len
        elif not (run_len and stem in _STOP_WORDS):  # "fail *the* test" stays one run
            run_len = 0
    if best_at is None:
        return None
    while best_at > 0 and stems[best_at - 1] in asked:  # "*I* sleep with a dagger": the query's own first words
        best_at -= 1
    first = float(words[best_at][0])
    floor = float(words[best_at - 1][1]) if best_at > 0 else first - LEAD_IN_S
    start = max(0.0, min(first, max(first - LEAD_IN_S, floor)))
    cited = " ".join(str(w[2]) for w in words[best_at:best_end + 1])
    return round(start, 3), float(words[-1][1]), cited


def _point_at_words(hit: MomentHit, words_json: str | None, query: str) -> None:
    if not words_json or not query:
        return
    try:
        words = json.loads(words_json)
    except ValueError:
        return  # a damaged row: the phrase's own start is still right to the phrase
    span = cited_span(words, query)
    if span is not None:
        hit.sources["phrase"] = [hit.start, hit.end]
        hit.start, hit.end = span[0], max(span[1], span[0])
        hit.sources["cited"] = span[2]


def hits_for(library, fused: list[tuple[int, float, dict]], deadline_s: float | None = None,
             query: str = "") -> list[MomentHit]:
    """Load moments for fused (id, score, sources) triples, keeping their order. With the query, a speech hit
    that contains its words starts at the first cited word (`cited_span`), its phrase kept in sources."""
    ids = [m for m, _, _ in fused]
    if not ids:
        return []
    columns = (Moment.id, Moment.video_id, Video.path, Moment.start, Moment.end, Moment.modality, Moment.text,
               Moment.thumbnail, Moment.words)
    with library.read(deadline_s) as s:  # plain rows, not ORM objects: this runs on every search
        rows = {r[0]: r for r in s.execute(
            select(*columns).join(Video, Moment.video_id == Video.id).where(Moment.id.in_(ids))).all()}
    out = []
    for mid, score, src in fused:
        if mid not in rows:
            continue  # deleted since the index was read
        _, video_id, path, start, end, modality, text_, thumbnail, words = rows[mid]
        # library.folder is already absolute and resolved: a join, not Path.resolve() (8 ms per search at k=50)
        thumb = os.path.normpath(os.path.join(library.folder, thumbnail)) if thumbnail else None
        hit = MomentHit(mid, video_id, path, start, end, modality, text_, round(score, 4), thumb, sources=dict(src))
        _point_at_words(hit, words, query)
        out.append(hit)
    return out


def _norm_text(t: str) -> str:
    return " ".join(re.findall(r"\w+", t.lower()))


def merge_overlapping(hits: list[MomentHit]) -> list[MomentHit]:
    """Fold each hit into a better one of the same video and modality whose span it overlaps (best first in,
    best first out). Same text: the kept span grows to the union (also across a gap up to MERGE_GAP_S)."""
    kept: list[MomentHit] = []
    norm = {id(h): _norm_text(h.text) for h in hits}  # once per hit, not once per pair compared
    for h in hits:
        for g in kept:
            if g.video_id != h.video_id or g.modality != h.modality:
                continue
            same = norm[id(g)] == norm[id(h)]
            gap = MERGE_GAP_S if same else 0.0
            if h.start < g.end + gap and g.start < h.end + gap or (h.start == g.start and h.end == g.end):
                if same:
                    g.start, g.end = min(g.start, h.start), max(g.end, h.end)
                g.sources.setdefault("merged", []).append(h.moment_id)
                break
        else:
            kept.append(h)
    return kept


def _has_vectors(library, space: str) -> bool:
    store = library.vectors(space)  # opened once per library, reconciled with SQLite on open
    store.refresh()  # another process (the indexer) may have saved a newer index
    return store.count > 0


def search(
    library,
    query: str,
    embed_text: EmbedFn | None,
    k: int = 10,
    modalities: Sequence[str] | None = None,
    video_ids: Sequence[int] | None = None,
    embed_visual_text: EmbedFn | None = None,
    deadline_s: float = SEARCH_DEADLINE_S,
) -> list[MomentHit]:
    """Best k moments for a free-text query, fused across keyword and vector retrieval."""
    query = _check_query(query)
    modalities, video_ids, k = _check_filters(modalities, video_ids, k)
    # Opening a vector store (the first search of a process reads, and may rebuild, its FAISS file) is loading,
    # not searching: it happens before the deadline starts, as the embedders' loading does (app/services.py).
    spaces = [(space, fn) for space, fn in (("text", embed_text), ("visual", embed_visual_text))
              if fn is not None and _has_vectors(library, space)]
    spaces = [(space, fn) for space, fn in spaces if space != "text" or embedder_knows(query, fn)]
    deadline = _Deadline(deadline_s)
    n = max(50, 5 * k)  # each retriever's list: deep enough for fusion to matter
    subset = allowed_ids(library, modalities, video_ids, deadline.left())  # cached; None without filters
    hidden = hidden_ids(library, deadline.left())  # moments of failed videos never show
    subset = _without_hidden(library, subset, hidden, deadline.left())
    if subset is None and len(hidden):
        n += len(hidden)  # read past them: each list still holds n visible moments when there are that many
    # The keyword ranking (SQLite) runs on a helper thread while this one embeds the query (torch) and asks
    # FAISS: both release the GIL, so on two cores the slower of the two sets the latency, not their sum.
    keyword = _POOL.submit(keyword_ranking, library, query, n, modalities, video_ids, deadline.left(), subset)
    rankings: dict[str, list] = {}
    try:
        for space, fn in spaces:
            vector = np.asarray(fn([query]), dtype=np.float32)[0]
            floor = MIN_TEXT_SIMILARITY if space == "text" else None
            rankings[space] = vector_ranking(library, space, vector, n, subset, floor)
    finally:
        keyword_hits = keyword.result()  # waits even when embedding failed: no query left running behind
    rankings = {"keyword": keyword_hits, **rankings}
    if len(hidden):
        gone = set(hidden.tolist())
        rankings = {name: [r for r in ranks if r[0] not in gone] for name, ranks in rankings.items()}
    fused = fuse(rankings)[: 4 * k + 10]  # extra candidates: merging overlaps removes some
    hits = merge_overlapping(hits_for(library, fused, deadline.left(), query))
    return hits[:k]
