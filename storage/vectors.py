"""FAISS vector stores, one per embedding space, derived from the `embeddings` table.

A vector's FAISS id is its moment's row id. The file `vectors/<space>.faiss` has a sidecar
`<space>.json` with the count and id checksum it was built from; when SQLite disagrees (a run killed between
its commit and the FAISS save, a deleted file), the store is rebuilt from SQLite on open.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from storage.models import Embedding

# Below this many vectors an exact flat index is fast enough; above it, see `_make_index`.
EXACT_LIMIT = 200_000


def _make_index(dim: int, count: int):
    import faiss

    if count <= EXACT_LIMIT:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    # IVF: exact search restricted to the nprobe closest cells; supports add_with_ids and remove_ids
    # (HNSW does not support removal, which re-indexing a changed video needs).
    nlist = int(4 * np.sqrt(count))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = 16
    return index


def _checksum(session, space: str) -> dict:
    row = session.execute(
        select(func.count(Embedding.id), func.coalesce(func.sum(Embedding.moment_id), 0), func.min(Embedding.model))
        .where(Embedding.space == space)
    ).one()
    return {"count": int(row[0]), "id_sum": int(row[1]), "model": row[2]}


def decode_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


class VectorStore:
    """The FAISS index of one space. Thread-safe; `search` never blocks on SQLite."""

    def __init__(self, library, space: str, index, meta: dict):
        self.library = library
        self.space = space
        self.index = index
        self.meta = meta
        self._lock = threading.Lock()
        self._loaded_mtime = self._mtime()

    @property
    def path(self) -> Path:
        return self.library.folder / "vectors" / f"{self.space}.faiss"

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    def _mtime(self) -> float:
        try:
            return self.meta_path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    @classmethod
    def open(cls, library, space: str) -> VectorStore:
        import faiss

        store = cls(library, space, None, {})
        with library.read() as s:
            expected = _checksum(s, space)
        if store.path.exists() and store.meta_path.exists():
            try:
                meta = json.loads(store.meta_path.read_text())
                if {k: meta.get(k) for k in ("count", "id_sum")} == {k: expected[k] for k in ("count", "id_sum")}:
                    store.index = faiss.read_index(str(store.path))
                    store.meta = meta
                    store._loaded_mtime = store._mtime()
                    return store
            except (OSError, ValueError, RuntimeError):
                pass  # unreadable or stale: rebuild below
        store.rebuild()
        return store

    def rebuild(self) -> None:
        """Rebuild the index from what SQLite holds, then save it."""
        with self.library.read() as s:
            rows = s.execute(
                select(Embedding.moment_id, Embedding.vector).where(Embedding.space == self.space)
                .order_by(Embedding.moment_id)
            ).all()
            meta = _checksum(s, self.space)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.stack([decode_vector(r[1]) for r in rows]) if rows else np.zeros((0, 0), np.float32)
        with self._lock:
            self.index = None
            if len(rows):
                index = _make_index(vecs.shape[1], len(rows))
                if not index.is_trained:
                    index.train(vecs)
                index.add_with_ids(vecs, ids)
                self.index = index
            self.meta = {**meta, "dim": int(vecs.shape[1]) if len(rows) else None}
            self._save_locked()

    def add(self, ids, vectors: np.ndarray) -> None:
        """Add vectors (already committed to SQLite) under their moment ids, and save."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not len(ids):
            return
        with self._lock:
            if self.index is None:
                self.index = _make_index(vectors.shape[1], len(ids))
            self.index.add_with_ids(vectors, ids)
            self._refresh_meta_locked()
            self._save_locked()

    def remove(self, ids) -> None:
        """Remove the vectors of these moment ids (already deleted from SQLite), and save."""
        ids = np.asarray(list(ids), dtype=np.int64)
        if not len(ids) or self.index is None:
            return
        with self._lock:
            self.index.remove_ids(ids)
            self._refresh_meta_locked()
            self._save_locked()

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Top-k (moment id, inner product) for one L2-normalised query vector."""
        self._reload_if_changed()
        with self._lock:
            if self.index is None or self.index.ntotal == 0:
                return []
            q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
            scores, ids = self.index.search(q, min(k, self.index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    @property
    def count(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """All ids in the index (for consistency checks)."""
        import faiss

        with self._lock:
            if self.index is None:
                return np.zeros(0, dtype=np.int64)
            if isinstance(self.index, faiss.IndexIDMap2) or hasattr(self.index, "id_map"):
                return faiss.vector_to_array(self.index.id_map).astype(np.int64)
            inv = self.index.invlists
            out = [faiss.rev_swig_ptr(inv.get_ids(c), inv.list_size(c)).copy() for c in range(self.index.nlist)]
            return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    def _refresh_meta_locked(self) -> None:
        with self.library.read() as s:
            self.meta = {**_checksum(s, self.space), "dim": int(self.index.d)}

    def _save_locked(self) -> None:
        import faiss

        tmp = self.path.with_suffix(".faiss.tmp")
        if self.index is not None:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, self.path)
        elif self.path.exists():
            self.path.unlink()
        tmp_meta = self.meta_path.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(self.meta))
        os.replace(tmp_meta, self.meta_path)  # written last: the pair is valid once this lands
        self._loaded_mtime = self._mtime()

    def _reload_if_changed(self) -> None:
        """Another process (the CLI indexer beside a running UI) may have saved a newer index."""
        if self._mtime() != self._loaded_mtime:
            fresh = VectorStore.open(self.library, self.space)
            with self._lock:
                self.index, self.meta, self._loaded_mtime = fresh.index, fresh.meta, fresh._loaded_mtime

    def close(self) -> None:
        pass
