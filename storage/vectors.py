"""FAISS vector stores, one per embedding space, derived from the `embeddings` table.

A vector's FAISS id is its moment's row id (`add_with_ids`), so a result maps back through one lookup. SQLite is
the truth: `vectors/<space>.faiss` has a sidecar `<space>.json` holding the id checksum (count, sum, min, max of
the moment ids, the model) and the byte size and CRC32 of the .faiss file it describes (storage/vector_files.py
reads and writes the pair). On open the store is rebuilt from SQLite when the file is missing, unreadable,
corrupt (size/CRC differ), or stale (the checksum disagrees with SQLite: a run killed between its commit and the
FAISS save). `rebuild()` streams the embeddings table in chunks, so its peak memory is the index plus one chunk.

One writer: only a process that holds the library's indexing lock (`Library.holds_indexing_lock`: an indexing
run, `sightline repair`) writes these files. Any other process (the web UI searching, a CLI search) is a reader:
it reloads a file when its sidecar changes; when the file is missing, stale or corrupt it keeps its last index if
that still matches SQLite, else rebuilds one in memory from SQLite, never saves it, and logs once per change that
the file is rebuilt by the next indexing run (`Library.indexing_lock` calls `reconcile()` when it is taken).
While it reloads, searches in other threads keep using the last index it had.

Index type (measured by benchmarks/search_latency.py on 1,000,000 384-d MiniLM-like vectors, 2 shared cores):

- up to EXACT_LIMIT (100k) vectors: `IndexIDMap2(IndexFlatIP)`, exact. 100k x 384 floats is 150 MB and one
  query scans it in a few ms; no training, so a small library is exact and its results never change with the
  index build.
- above: `IndexIVFScalarQuantizer` (inverted file, 8-bit scalar-quantized codes, inner product), nlist ~
  sqrt(n) rounded to a power of two (1024 at 1M), nprobe = IVF_PROBE_SHARE (3/8) of the lists (384 at 1M;
  `ivf_nprobe`), k-means on a 100k sample with 10 iterations. Why this one (benchmarks/README.md has the table):
  * Recall first. At 1M (benchmarks/search_latency.py: sentence-like vectors built from real MiniLM word
    vectors, 200-250 real MiniLM queries) the neighbours of a 2-4 word query are near-ties (median cosine gap
    between the 10th and 11th 0.0015) spread over the many videos sharing its words, so every partitioning
    structure needs a wide search: IVF-SQ8 recall@10 at nprobe 32/64/128/256/320/384 was
    0.79/0.85/0.90/0.935/0.949/0.960 (0.962 inside a 25% modality subset at 384). Re-ranking the top 100 by
    the float vectors added under 0.01 (the misses are lists not visited, not code rounding); HNSW-SQ8
    (M=32, efConstruction 40) reached 0.85/0.89/0.91 at efSearch 128/256/512 on 200k vectors and took 272 s
    to build those 200k on the shared cores (remove_ids unsupported as well).
  * Cost: a query scans 3/8 of the SQ8 codes (~144 MB at 1M) on one core, the price of 0.95: tens of ms
    (see the README for the measured figures). Memory stays 384 MB at 1M (SQ8 codes are 4x smaller than
    float32; flat float32 would be 1.5 GB, the whole search-process budget).
  * Old files keep working: nprobe is a search setting applied on load, not part of the saved file.
  * IVF supports `remove_ids`, which re-indexing a changed video needs.
  * nlist ~ sqrt(n) rather than the textbook 4-16 sqrt(n): k-means and the assignment of every vector cost
    nlist x n x d, and a library is rebuilt on a user's two cores.
  A flat store that grows past EXACT_LIMIT through `add` is rebuilt as IVF from SQLite at that point, and an
  IVF store is rebuilt once it holds REBUILD_GROWTH (4) times the vectors it was trained on, so nlist keeps
  up with the library.

Filtered search (by modality or video) passes the allowed ids to FAISS as an `IDSelectorBitmap` inside the
search parameters, so FAISS only ever ranks allowed vectors: no oversample-then-filter that can come back short.
For IVF:
- a subset under EXACT_SUBSET_FRACTION of the index (e.g. one video in a big library) is searched exactly:
  nprobe = nlist, every list scanned, distances computed only for its members;
- a bigger subset keeps nprobe, raised only when the visited lists would hold fewer than
  MIN_SUBSET_CANDIDATES allowed vectors on average: recall inside a subset follows the unfiltered figure
  (1M, 25% modality subset: 0.794 at nprobe 32, 0.943 at 256, 0.962 at 384, against 0.79/0.935/0.960
  unfiltered; one video, scanned exactly: 0.995);
- when the visited lists still held fewer than k allowed vectors (a subset far from the query), the search is
  repeated over every list, so a filtered search never comes back short while the subset has k members.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import numpy as np
from sqlalchemy import select, text

from storage import vector_files as files
from storage.errors import SightlineError
from storage.models import Embedding

EXACT_LIMIT = 100_000  # up to this many vectors: exact flat index
IVF_PROBE_SHARE = 0.375  # share of the lists visited per query (384 of 1024 at 1M); see the module docstring
IVF_NPROBE: int | None = None  # a fixed number of lists per query instead of the share (None: the share)
EXACT_SUBSET_FRACTION = 0.05  # a filtered search over less than this share of the index scans every list
MIN_SUBSET_CANDIDATES = 1_000  # allowed vectors a filtered IVF search should meet in the lists it visits
TRAIN_SAMPLE = 100_000  # vectors used to train the IVF quantizer (k-means)
KMEANS_ITERATIONS = 10  # FAISS's default 25 triples training time for no measurable recall here
CHUNK = 50_000  # rows per read while rebuilding
REBUILD_GROWTH = 4  # an IVF index is rebuilt (re-trained, nlist ~ sqrt(n)) once it holds 4x what it was built for

log = logging.getLogger("sightline")


def ivf_nlist(count: int) -> int:
    """Inverted lists for `count` vectors: ~sqrt(n), a power of two, at most count / 39 (k-means needs data)."""
    target = max(1.0, min(math.sqrt(count), count / 39))
    return int(2 ** round(math.log2(target)))


def ivf_nprobe(nlist: int) -> int:
    """Lists an IVF index of `nlist` lists visits per query: IVF_NPROBE if set, else IVF_PROBE_SHARE of them."""
    if IVF_NPROBE is not None:
        return max(1, min(IVF_NPROBE, nlist))
    return max(1, min(nlist, math.ceil(nlist * IVF_PROBE_SHARE)))


def make_index(dim: int, count: int, kind: str = "auto"):
    """An empty (untrained) index for `count` vectors. kind: auto | flat | ivf_flat | ivf_sq8."""
    import faiss

    if kind == "auto":
        kind = "flat" if count <= EXACT_LIMIT else "ivf_sq8"
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    nlist = ivf_nlist(count)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf_sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.cp.niter = KMEANS_ITERATIONS
    index.own_fields = True
    quantizer.this.disown()  # the IVF index owns its quantizer now (kept alive past this function)
    index.nprobe = ivf_nprobe(nlist)
    return index


def is_ivf(index) -> bool:
    return hasattr(index, "nlist") and hasattr(index, "invlists")


def decode_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def subset_nprobe(nprobe: int, nlist: int, ntotal: int, allowed: int) -> int:
    """Lists to visit for a filtered IVF search over `allowed` of `ntotal` vectors (see the module docstring)."""
    fraction = allowed / max(1, ntotal)
    if fraction < EXACT_SUBSET_FRACTION:
        return nlist
    per_list = ntotal / nlist * fraction  # allowed vectors in an average list
    return min(nlist, max(nprobe, math.ceil(MIN_SUBSET_CANDIDATES / per_list)))


def id_mask(ids: np.ndarray) -> np.ndarray:
    """A bool array indexed by id, True for the given ids (length max id + 1)."""
    ids = np.asarray(ids, dtype=np.int64)
    mask = np.zeros(int(ids.max()) + 1 if len(ids) else 1, dtype=bool)
    mask[ids] = True
    return mask


def id_selector(ids: np.ndarray):
    """(selector, bitmap) for FAISS search parameters; keep the bitmap alive while the selector is used."""
    import faiss

    bitmap = np.packbits(id_mask(ids), bitorder="little")
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


class VectorStore:
    """The FAISS index of one space. Thread-safe; `search` never blocks on SQLite."""

    def __init__(self, library, space: str, index=None, meta: dict | None = None):
        self.library = library
        self.space = space
        self.index = index
        self.meta = meta or {}
        self._lock = threading.RLock()
        self._reload_lock = threading.Lock()  # one reload (or reconcile) at a time; taken before _lock, never after
        self._loaded_mtime = self._mtime()  # the sidecar's mtime when its change was last taken in
        self.rebuilt_on_open: str | None = None  # why open() rebuilt, for logs and tests
        self.unsaved: str | None = None  # why the files do not hold this index (a reader may not save it)

    @property
    def path(self) -> Path:
        return self.library.folder / "vectors" / f"{self.space}.faiss"

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    def _mtime(self) -> int:
        return files.sidecar_mtime(self.meta_path)

    # --- open / rebuild ------------------------------------------------------------------------------------

    @classmethod
    def open(cls, library, space: str) -> VectorStore:
        """Load the saved index when it matches SQLite; otherwise rebuild it from SQLite (saved only by the
        indexing lock's holder)."""
        store = cls(library, space)
        reason = store._try_load()
        if reason:
            store.rebuild(reason=reason)
            store.rebuilt_on_open = reason
        return store

    def _try_load(self) -> str | None:
        """Load the saved pair; return None on success or why it cannot be used. Either way the sidecar's
        mtime seen before reading is taken as loaded: a later save changes it and is taken in then."""
        self._loaded_mtime = self._mtime()  # before reading: a save landing meanwhile is reloaded later
        with self.library.read() as s:
            expected = files.checksum(s, self.space)
        loaded = files.read_pair(self.path, self.meta_path, expected)
        if isinstance(loaded, str):
            return loaded
        index, meta = loaded
        if is_ivf(index):
            index.nprobe = ivf_nprobe(index.nlist)  # the setting of this version, not of the saved file
        self.index, self.meta = index, meta
        return None

    def rebuild(self, kind: str = "auto", reason: str = "rebuilt from the database") -> None:
        """Rebuild the index from what SQLite holds (streamed in chunks), then save it (the lock holder) or
        keep it in memory only (a reader; `reason` is logged)."""
        with self.library.read() as s:
            meta = files.checksum(s, self.space)
        index = None
        if meta["count"]:
            first = self._read_chunk(-1, 1)[1]
            index = make_index(first.shape[1], meta["count"], kind)
            if not index.is_trained:
                index.train(self._train_sample(meta["count"]))
            last = -1
            while True:
                ids, vecs = self._read_chunk(last, CHUNK)
                if not len(ids):
                    break
                index.add_with_ids(vecs, ids)
                last = int(ids[-1])
        with self._lock:
            self.index = index
            self.meta = {**meta, "dim": int(index.d) if index is not None else None, "built_count": meta["count"]}
            self._save_locked(reason)

    def _read_chunk(self, after_id: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        with self.library.read() as s:
            rows = s.execute(
                select(Embedding.moment_id, Embedding.vector)
                .where(Embedding.space == self.space, Embedding.moment_id > after_id)
                .order_by(Embedding.moment_id).limit(n)
            ).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, 0), np.float32)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, np.ascontiguousarray(vecs)

    def _train_sample(self, count: int) -> np.ndarray:
        """An evenly spread sample of the space's vectors for k-means."""
        step = max(1, count // TRAIN_SAMPLE)
        with self.library.read() as s:
            # A multiplicative hash of the id picks a deterministic, evenly spread sample.
            rows = s.execute(text(
                "SELECT vector FROM embeddings WHERE space = :space "
                "AND ((moment_id * 2654435761) % 4294967296) % :step = 0 LIMIT :n"),
                {"space": self.space, "step": step, "n": TRAIN_SAMPLE}).all()
        return np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), -1).copy()

    # --- changes (the rows are already committed to SQLite) --------------------------------------------------

    def add(self, ids, vectors: np.ndarray) -> None:
        """Add vectors (already committed to SQLite) under their moment ids, and save (the lock holder)."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not len(ids):
            return
        with self._lock:
            if self.index is not None and vectors.shape[1] != self.index.d:
                raise SightlineError(
                    f"The {self.space} vectors are {self.index.d}-d but new ones are {vectors.shape[1]}-d: "
                    "the embedding model changed.",
                    hint="Re-index the library with one model (or delete its vectors folder).")
            if self.index is not None:
                self.index.remove_ids(ids)  # adding an id twice would leave two copies; re-adds replace
            if self.index is None or self._outgrown(self.index.ntotal + len(ids)):
                self.rebuild()  # first vectors, or an index outgrowing its layout: build the right one
                return
            self.index.add_with_ids(vectors, ids)
            self._refresh_meta_locked()
            self._save_locked("vectors added")

    def _outgrown(self, count: int) -> bool:
        """A flat index past EXACT_LIMIT, or an IVF index at REBUILD_GROWTH x the size it was trained for."""
        if not is_ivf(self.index):
            return count > EXACT_LIMIT
        return count > REBUILD_GROWTH * max(1, self.meta.get("built_count") or self.index.ntotal)

    def remove(self, ids) -> None:
        """Remove the vectors of these moment ids (already deleted from SQLite), and save (the lock holder)."""
        ids = np.asarray(list(ids), dtype=np.int64)
        if not len(ids):
            return
        with self._lock:
            if self.index is not None:
                self.index.remove_ids(ids)
            self._refresh_meta_locked()
            self._save_locked("vectors removed")

    # --- search ----------------------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, subset: np.ndarray | None = None,
               nprobe: int | None = None) -> list[tuple[int, float]]:
        """Top-k (moment id, inner product) for one L2-normalised query vector, best first.

        `subset`: only these moment ids may be returned (FAISS skips the others while scanning).
        """
        import faiss

        self._reload_if_changed()
        with self._lock:
            index = self.index
            if index is None or index.ntotal == 0:
                return []
            q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
            if q.shape[1] != index.d:
                raise SightlineError(
                    f"The query vector is {q.shape[1]}-d but the {self.space} index holds {index.d}-d vectors.",
                    hint="The embedding model changed since indexing: set it back or re-index the library.")
            bitmap = None  # keeps the selector's memory alive through the search
            params = None
            if is_ivf(index):
                params = faiss.SearchParametersIVF(nprobe=min(nprobe or index.nprobe, index.nlist))
            if subset is not None:
                subset = np.asarray(subset, dtype=np.int64)
                if not len(subset):
                    return []
                selector, bitmap = id_selector(subset)
                if params is None:
                    params = faiss.SearchParameters(sel=selector)
                else:
                    params.sel = selector
                    params.nprobe = subset_nprobe(params.nprobe, index.nlist, index.ntotal, len(subset))
                k = min(k, len(subset))
            scores, ids = index.search(q, min(k, index.ntotal), params=params)
            if subset is not None and is_ivf(index) and params.nprobe < index.nlist and (ids[0] < 0).any():
                params.nprobe = index.nlist  # the visited lists held fewer than k allowed vectors: every list
                scores, ids = index.search(q, min(k, index.ntotal), params=params)
            del bitmap
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    @property
    def count(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """All ids in the index, sorted (for consistency checks)."""
        import faiss

        with self._lock:
            if self.index is None:
                return np.zeros(0, dtype=np.int64)
            if not is_ivf(self.index):
                return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
            inv = self.index.invlists
            out = [faiss.rev_swig_ptr(inv.get_ids(c), inv.list_size(c)).copy()
                   for c in range(self.index.nlist) if inv.list_size(c)]
            return np.sort(np.concatenate(out).astype(np.int64)) if out else np.zeros(0, np.int64)

    # --- files -----------------------------------------------------------------------------------------------

    def _refresh_meta_locked(self) -> None:
        with self.library.read() as s:
            self.meta = {**self.meta, **files.checksum(s, self.space),
                         "dim": int(self.index.d) if self.index is not None else None}

    def _save_locked(self, reason: str) -> None:
        """Write the index and its sidecar, if this process holds the indexing lock; otherwise keep the index
        in memory only and say (once per change) that the file waits for the lock holder."""
        if not self.library.holds_indexing_lock:
            self._note_unsaved(reason)
            return
        self.meta = files.write_pair(self.index, self.meta, self.path, self.meta_path)
        self._loaded_mtime = self._mtime()
        self.unsaved = None

    def _note_unsaved(self, reason: str) -> None:
        if reason == self.unsaved:
            return
        self.unsaved = reason
        if self.count == 0 and not self.meta_path.exists():
            return  # an empty space that never had a file: nothing is out of date
        log.warning("%s: %s; this process does not hold the indexing lock, so it searches the index it holds in "
                    "memory (matching the database) and the file is rebuilt by the next indexing run.",
                    self.path, reason)

    def _holds_what_sqlite_holds(self) -> bool:
        with self.library.read() as s:
            expected = files.checksum(s, self.space)
        with self._lock:
            return self.count == expected["count"] and files.same_checksum(self.meta, expected)

    def _files_match_locked(self) -> bool:
        """The saved pair is this index (its sidecar as loaded or saved, the file as the sidecar says)."""
        return (self._mtime() == self._loaded_mtime and not self.unsaved
                and files.pair_matches(self.index, self.meta, self.path, self.meta_path))

    def refresh(self) -> None:
        """Load the saved index again if another process (the indexer beside a running UI) saved a newer one."""
        self._reload_if_changed()

    def reconcile(self) -> None:
        """For the indexing lock's holder: make the saved files match SQLite again where a reader found them
        missing, stale or corrupt (rebuilding only when the index in memory does not match SQLite either)."""
        with self._reload_lock:
            if self._mtime() != self._loaded_mtime:
                self._reload()
            if not self._holds_what_sqlite_holds():
                self.rebuild(reason="stale: SQLite holds other vectors")
                return
            with self._lock:
                if not self._files_match_locked():
                    self._save_locked(self.unsaved or "the saved files differ from the index")

    def _reload_if_changed(self) -> None:
        """Another process (the CLI indexer beside a running UI) may have saved a newer index."""
        if self._mtime() == self._loaded_mtime:
            return
        # One reload at a time; meanwhile other searches keep the last index (a store without one waits).
        if not self._reload_lock.acquire(blocking=self.index is None):
            return
        try:
            if self._mtime() != self._loaded_mtime:
                self._reload()
        finally:
            self._reload_lock.release()

    def _reload(self) -> None:
        """Take in the files as they are now (the caller holds _reload_lock)."""
        before = self._loaded_mtime
        fresh = VectorStore(self.library, self.space)
        reason = fresh._try_load()
        if reason is None:
            with self._lock:
                if self._loaded_mtime != before:  # this process saved meanwhile (an add while we read): ours is newer
                    return
                self.index, self.meta, self._loaded_mtime, self.unsaved = fresh.index, fresh.meta, \
                    fresh._loaded_mtime, None
            return
        self._loaded_mtime = fresh._loaded_mtime  # this change is taken in: the next save is the next reload
        if self._holds_what_sqlite_holds():  # the last index is still right: keep it (and, holding the lock, save)
            with self._lock:
                self._save_locked(reason)
            return
        self.rebuild(reason=reason)

    def close(self) -> None:
        pass
