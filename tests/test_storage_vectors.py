"""storage.vectors: FAISS derived from SQLite — reconcile on open, rebuild equality, IVF, filtered search."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

import storage.vectors as vectors
from storage import Library, SightlineError
from storage.models import Embedding, Moment
from storage.vectors import encode_vector
from tests.library_builder import add_video, fake_embed

WORDS = "red car blue sky river bridge station train dog cat music crowd stage light night rain".split()


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=4)) + f" w{i % 97}" for i in range(n)]


def _fill(lib: Library, videos: int, per_video: int) -> list[int]:
    ids = []
    for v in range(videos):
        texts = _texts(per_video, v)
        _, got = add_video(lib, f"/videos/v{v}.mp4", per_video * 2.0,
                           [(2.0 * j, 2.0 * j + 1, "speech" if j % 3 else "text", t) for j, t in enumerate(texts)])
        ids += got
    return ids


def _sqlite_ids(lib: Library, space: str = "text") -> np.ndarray:
    with lib.read() as s:
        return np.sort(np.asarray(s.scalars(select(Embedding.moment_id).where(Embedding.space == space)).all()))


def _results(store, queries) -> list[list[int]]:
    return [[i for i, _ in store.search(q, 10)] for q in queries]


QUERIES = fake_embed(["red car", "night train music", "dog river", "w5 stage"])


@pytest.fixture
def filled(tmp_path):
    lib = Library.open(tmp_path / "lib")
    _fill(lib, 3, 40)
    yield lib
    lib.close()


def _reopen(lib: Library) -> tuple[Library, vectors.VectorStore]:
    lib.close()
    fresh = Library.open(lib.folder)
    return fresh, fresh.vectors("text")


def test_live_index_equals_rebuild_and_sqlite(filled):
    store = filled.vectors("text")
    # remove one video's vectors the way the indexer does: delete rows, then remove ids from FAISS
    gone = filled.write(lambda s: [m.id for m in s.scalars(select(Moment).where(Moment.video_id == 2))])
    filled.write(lambda s: [s.delete(s.get(Moment, i)) for i in gone])
    store.remove(gone)
    live_ids, live = store.ids(), _results(store, QUERIES)
    np.testing.assert_array_equal(live_ids, _sqlite_ids(filled))
    assert filled.rebuild_vectors() == {"text": len(live_ids)}
    np.testing.assert_array_equal(store.ids(), live_ids)
    assert _results(store, QUERIES) == live


@pytest.mark.parametrize("damage", ["delete", "corrupt", "truncate", "stale", "sidecar"])
def test_reopen_repairs_a_damaged_or_stale_index(filled, damage):
    store = filled.vectors("text")
    before = _results(store, QUERIES)
    if damage == "delete":
        store.path.unlink()
    elif damage == "corrupt":  # same size, flipped bytes in the middle (the vector data)
        data = bytearray(store.path.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(64)
        store.path.write_bytes(bytes(data))
    elif damage == "truncate":
        store.path.write_bytes(store.path.read_bytes()[:100])
    elif damage == "sidecar":
        store.meta_path.write_text("{not json")
    elif damage == "stale":  # a run killed after its SQLite commit, before the FAISS save
        _, new_ids = add_video(filled, "/videos/late.mp4", 4.0, [(0, 1, "speech", "red car late")], embed=None)
        filled.write(lambda s: s.add(Embedding(moment_id=new_ids[0], space="text", model="fake-bow",
                                               vector=encode_vector(fake_embed(["red car late"])[0]))))
    damaged = _files(filled)
    lib, store = _reopen(filled)  # a reader: rebuilt in memory, the files left to the indexing lock's holder
    try:
        assert store.rebuilt_on_open, "the damaged index was loaded as if it were fine"
        np.testing.assert_array_equal(store.ids(), _sqlite_ids(lib))
        after = _results(store, QUERIES)
        if damage != "stale":
            assert after == before
        store2 = vectors.VectorStore(lib, "text")  # the same as an explicit rebuild
        store2.rebuild()
        assert _results(store2, QUERIES) == after
        assert _files(lib) == damaged, "a process without the indexing lock wrote the vector files"
        with lib.indexing_lock():  # the next indexing run rebuilds the files when it takes the lock
            pass
        meta = json.loads(store.meta_path.read_text())
        assert meta["count"] == len(_sqlite_ids(lib)) and meta["bytes"] == store.path.stat().st_size
        assert _results(store, QUERIES) == after
    finally:
        lib.close()
    lib, store = _reopen(lib)
    try:
        assert store.rebuilt_on_open is None and _results(store, QUERIES) == after  # the saved files are good
    finally:
        lib.close()


def _files(lib: Library) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (lib.folder / "vectors").iterdir()}


def test_a_good_index_is_loaded_not_rebuilt(filled):
    lib, store = _reopen(filled)
    try:
        assert store.rebuilt_on_open is None and store.count == 120
    finally:
        lib.close()


def test_adding_the_same_ids_again_replaces_them(filled):
    store = filled.vectors("text")
    ids = store.ids()[:5]
    store.add(ids, fake_embed(["replacement"] * 5))
    assert store.count == 120
    assert {i for i, _ in store.search(fake_embed(["replacement"])[0], 5)} == set(ids.tolist())


def test_wrong_dimension_is_a_clear_error(filled):
    store = filled.vectors("text")
    with pytest.raises(SightlineError, match="384-d"):
        store.search(np.ones(512, np.float32), 5)
    with pytest.raises(SightlineError, match="embedding model changed"):
        store.add([999_999], np.ones((1, 512), np.float32))


@pytest.fixture
def ivf_library(tmp_path, monkeypatch):
    """A library big enough (for a lowered EXACT_LIMIT) that the store is IVF, as on a 1M-moment library."""
    monkeypatch.setattr(vectors, "EXACT_LIMIT", 300)
    monkeypatch.setattr(vectors, "IVF_NPROBE", 2)
    lib = Library.open(tmp_path / "lib")
    _fill(lib, 8, 250)
    yield lib
    lib.close()


def test_growing_past_the_exact_limit_switches_to_ivf(ivf_library):
    store = ivf_library.vectors("text")
    assert vectors.is_ivf(store.index)
    built = store.meta["built_count"]  # grown by adds since, but never past 4x what it was trained for
    assert store.index.nlist == vectors.ivf_nlist(built) and built <= 2000 <= 4 * built, store.meta
    np.testing.assert_array_equal(store.ids(), _sqlite_ids(ivf_library))
    lib, store = _reopen(ivf_library)  # saved and reloaded as IVF
    try:
        assert store.rebuilt_on_open is None and vectors.is_ivf(store.index)

        def exhaustive():  # every list: IVF layouts trained on other samples then agree up to SQ8 rounding
            return [[i for i, _ in store.search(q, 10, nprobe=store.index.nlist)] for q in QUERIES]

        live, live_ids = exhaustive(), store.ids()
        store.rebuild()
        np.testing.assert_array_equal(store.ids(), live_ids)
        for a, b in zip(exhaustive(), live):
            assert len(set(a) & set(b)) >= 9, (a, b)
    finally:
        lib.close()


def test_filtered_ivf_search_never_comes_back_short(ivf_library):
    """Oversampling the global top-n and filtering would return nothing here: the subset is far from the query."""
    store = ivf_library.vectors("text")
    query = fake_embed(["red car"])[0]
    with ivf_library.read() as s:
        rows = s.execute(select(Embedding.moment_id, Embedding.vector)).all()
    sims = {mid: float(np.frombuffer(v, np.float32) @ query) for mid, v in rows}
    far = sorted(sims, key=lambda i: sims[i])[:30]  # the 30 moments least like the query
    global_top = {i for i, _ in store.search(query, 200)}
    assert not global_top & set(far), "oversampling 20x then filtering would have found these"
    got = store.search(query, 10, subset=np.asarray(far))
    assert len(got) == 10 and {i for i, _ in got} <= set(far)
    exact = sorted(far, key=lambda i: -sims[i])[:10]  # exact top-10 inside the subset
    assert len({i for i, _ in got} & set(exact)) >= 9, (got, exact)  # SQ8 codes: ties may swap at the edge
    assert store.search(query, 10, subset=np.asarray([], np.int64)) == []


def test_filtered_nprobe_meets_enough_allowed_vectors():
    # 1M vectors, 1024 lists, a given nprobe of 32: a 25% subset still meets ~7,800 allowed vectors, so nprobe stays.
    assert vectors.subset_nprobe(32, 1024, 1_000_000, 250_000) == 32
    # A 6% subset of a 100k index meets ~190 in 32 lists: nprobe rises to meet MIN_SUBSET_CANDIDATES.
    assert vectors.subset_nprobe(32, 256, 100_000, 6_000) == 43
    # Under EXACT_SUBSET_FRACTION: every list.
    assert vectors.subset_nprobe(32, 1024, 1_000_000, 500) == 1024


def test_a_filtered_search_short_of_k_looks_at_every_list(ivf_library, monkeypatch):
    store = ivf_library.vectors("text")
    seen = []
    real = store.index.search

    def spy(q, k, params=None):
        seen.append(params.nprobe)
        return real(q, k, params=params)

    monkeypatch.setattr(store.index, "search", spy, raising=False)
    monkeypatch.setattr(vectors, "MIN_SUBSET_CANDIDATES", 1)  # keep nprobe at 2 for a big subset
    half = store.ids()[::2]
    got = store.search(QUERIES[0], 10, subset=half)
    assert seen == [2] and len(got) == 10  # two lists held ten allowed vectors: one search
    seen.clear()
    got = store.search(QUERIES[0], 500, subset=half)  # more than two lists hold: searched again over every list
    assert seen == [2, store.index.nlist] and len(got) == 500
    seen.clear()
    store.search(QUERIES[0], 10, subset=half[:20])  # 1% of the index: every list, an exact scan of the subset
    assert seen == [store.index.nlist]


def test_a_reload_never_puts_back_an_older_index_than_this_process_saved(tmp_path, monkeypatch):
    """A search thread reloading the files while this process (the indexing lock's holder) adds and saves must not
    swap in the older index it read: that would lose the new vectors, and the next save would write them lost."""
    from tests.library_builder import as_indexer

    with Library.open(tmp_path / "lib") as lib, as_indexer(lib):
        _fill(lib, videos=1, per_video=5)
        store = lib.vectors("text")
        load = vectors.VectorStore._try_load
        added = []

        def load_then_add(fresh):
            reason = load(fresh)  # the files as they were: 5 vectors
            if not added:  # meanwhile this process indexes another video and saves (once)
                added.append(add_video(lib, "/videos/late.mp4", 10.0, [(1.0, 2.0, "speech", t) for t in _texts(5, 9)]))
            return reason

        monkeypatch.setattr(vectors.VectorStore, "_try_load", load_then_add)
        store._loaded_mtime = -1.0  # the saved files look changed: the next search reloads them
        store.refresh()
        assert added and store.count == 10 and np.array_equal(store.ids(), _sqlite_ids(lib))
        monkeypatch.undo()
        assert Library.open(tmp_path / "lib").vectors("text").count == 10  # the saved file holds all ten as well
