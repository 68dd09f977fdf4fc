"""Search latency on a synthetic library of N moments (default 1,000,000): FAISS index types, FTS5, end to end.

The library is built straight through SQLite (executemany in one transaction) with realistic text: words from
MiniLM's own vocabulary, Zipf-distributed, stop words in most rows, each video on its own topic. A moment's
vector is the normalised sum of the real MiniLM vectors of its content words plus noise, so vectors cluster the
way sentence embeddings do and a real MiniLM query lands near the moments sharing its words. The built library
is cached (default ~/.cache/sightline-bench/) so reruns only measure.

Measured (queries are embedded by the real MiniLM):
- recall@10 of each FAISS candidate (IVF-Flat, IVF-SQ8 at several nprobe) against exact search, and its
  latency per query; exact flat search as the baseline;
- FTS5: bm25 `ORDER BY ... LIMIT` over a common word (the unbounded baseline) vs our bounded keyword ranking;
- end to end: storage.search.search (embedding + FTS5 + FAISS + fusion + loading rows) p50/p95 over the
  queries, the MiniLM embedding time on its own, and the same with a modality filter and a video filter;
- filtered vector search (the modality filter's subset) through `VectorStore.search`: recall@10 against the
  exact top-10 inside the subset, and its latency;
- peak RSS of the measuring process (the build runs in a child process and is reported apart).

Prints a table, then one JSON line (only the JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STOP_WORDS = ("the a and to of in is it that you for on with this we was as are be at have but not they so "
              "what all there can just about he she one an my from your like up out if do by or").split()
MODALITY_MIX = (("speech", 0.6), ("text", 0.25), ("visual", 0.1), ("caption", 0.05))
MOMENTS_PER_VIDEO = 500
CACHE_VERSION = 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vocabulary(limit: int = 6000) -> list[str]:
    """Whole English words from MiniLM's WordPiece vocabulary."""
    from indexer.models.embedders import packaged_minilm_path

    words = (packaged_minilm_path() / "vocab.txt").read_text().split()
    stop = set(STOP_WORDS)
    good = [w for w in words if re.fullmatch(r"[a-z]{3,12}", w) and w not in stop]
    return good[:limit]


def zipf_probs(n: int, s: float = 1.05) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


# --- build (in a child process) ----------------------------------------------------------------------------


def build(folder: Path, n: int, seed: int = 0) -> dict:
    from indexer.models.embedders import load_text_embedder
    from storage import Library

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    words_cache = folder.parent / f"word-vectors-{len(vocab)}.npy"  # shared by every library size
    if words_cache.exists():
        word_vecs = np.load(words_cache)
    else:
        word_vecs = load_text_embedder("all-MiniLM-L6-v2")(vocab)  # (V, 384), the real MiniLM
        folder.parent.mkdir(parents=True, exist_ok=True)
        np.save(words_cache, word_vecs)
    log(f"  {len(vocab)} word vectors ready ({time.perf_counter() - t0:.0f} s)")
    dim = word_vecs.shape[1]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    lib = Library.open(folder / "lib")
    lib.close()
    db = sqlite3.connect(folder / "lib" / "library.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("DROP TRIGGER IF EXISTS moments_ai")  # FTS is rebuilt in one pass below; Library.open restores it
    n_videos = max(1, n // MOMENTS_PER_VIDEO)
    content_p = zipf_probs(len(vocab))
    stop_p = zipf_probs(len(STOP_WORDS), 1.2)
    modalities = [m for m, _ in MODALITY_MIX]
    mod_p = np.array([p for _, p in MODALITY_MIX])
    all_words = np.array(vocab + STOP_WORDS)
    db.execute("BEGIN")
    db.executemany("INSERT INTO videos (id, path, fingerprint, size, duration, fps, start_time, status, added_at) "
                   "VALUES (?, ?, ?, 1, ?, 25.0, 0.0, 'indexed', 0)",
                   [(v + 1, f"/library/video_{v + 1:05d}.mp4", f"fp{v}", MOMENTS_PER_VIDEO * 15.0)
                    for v in range(n_videos)])
    mid = 0
    from scipy.sparse import csr_matrix

    for video in range(n_videos):
        count = MOMENTS_PER_VIDEO if video < n_videos - 1 else n - mid
        topic = rng.choice(len(vocab), size=40, replace=False, p=content_p)
        lengths = rng.integers(6, 21, size=count)
        mods = rng.choice(len(modalities), size=count, p=mod_p)
        total = int(lengths.sum())
        kinds = rng.random(total)
        word_ids = np.where(
            kinds < 0.4, len(vocab) + rng.choice(len(STOP_WORDS), size=total, p=stop_p),  # stop words
            np.where(kinds < 0.8, topic[rng.integers(len(topic), size=total)],  # the video's topic
                     rng.choice(len(vocab), size=total, p=content_p)))  # anything
        words = all_words[word_ids]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        moments = []
        for j in range(count):
            mid += 1
            start = j * 15.0 + float(rng.random()) * 5
            moments.append((mid, video + 1, start, start + 2 + float(rng.random()) * 8, modalities[mods[j]],
                            " ".join(words[bounds[j]:bounds[j + 1]]), f"thumbnails/{video + 1:06d}/{mid}.jpg"))
        content = word_ids < len(vocab)
        rows = np.repeat(np.arange(count), lengths)[content]
        cols = word_ids[content]
        counts = csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(count, len(vocab)))
        vecs = np.asarray(counts @ word_vecs, dtype=np.float32)
        vecs += rng.standard_normal(vecs.shape, dtype=np.float32) * 0.05
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        db.executemany('INSERT INTO moments (id, video_id, start, "end", modality, text, thumbnail, stage) '
                       "VALUES (?, ?, ?, ?, ?, ?, ?, 'bench')", moments)
        db.executemany("INSERT INTO embeddings (moment_id, space, model, vector) VALUES (?, 'text', ?, ?)",
                       [(m[0], "all-MiniLM-L6-v2", v.tobytes()) for m, v in zip(moments, vecs)])
        if video % 200 == 0:
            log(f"  built {mid:,} / {n:,} moments ({time.perf_counter() - t0:.0f} s)")
    db.execute("INSERT INTO moments_fts(moments_fts) VALUES ('rebuild')")
    db.execute("COMMIT")
    db.close()
    t_rows = time.perf_counter() - t0
    lib = Library.open(folder / "lib")
    t1 = time.perf_counter()
    with lib.indexing_lock():  # as the indexer: only the lock's holder saves the FAISS files
        store = lib.vectors("text")  # no sidecar yet: rebuilds from SQLite (the production path) and saves
    t_index = time.perf_counter() - t1
    info = {"n": n, "dim": dim, "videos": n_videos, "rows_s": round(t_rows, 1), "faiss_build_s": round(t_index, 1),
            "index": type(store.index).__name__, "version": CACHE_VERSION,
            "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    lib.close()
    (folder / "built.json").write_text(json.dumps(info))
    return info


# --- measure -----------------------------------------------------------------------------------------------


def make_queries(vocab: list[str], count: int, seed: int = 1) -> list[str]:
    """2-4 word queries: mostly content words by frequency, some with stop words, a few single common words."""
    rng = np.random.default_rng(seed)
    p = zipf_probs(len(vocab))
    out = []
    for i in range(count):
        words = [vocab[int(w)] for w in rng.choice(len(vocab), size=int(rng.integers(2, 5)), p=p)]
        if i % 4 == 1:
            words.insert(1, "the")
        if i % 10 == 9:
            words = [vocab[int(rng.integers(0, 20))]]  # one very common word
        out.append(" ".join(words))
    return out


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2)


def all_vectors(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) straight from SQLite, for exact search and candidate indexes."""
    db = sqlite3.connect(folder / "lib" / "library.db")
    rows = db.execute("SELECT moment_id, vector FROM embeddings WHERE space = 'text' ORDER BY moment_id").fetchall()
    db.close()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    return ids, vecs


def exact_topk(vecs: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for lo in range(0, len(vecs), 200_000):
        s = queries @ vecs[lo:lo + 200_000].T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, ids[lo:lo + 200_000][top]], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def measure(folder: Path, n_queries: int, k: int) -> dict:
    import faiss
    import torch

    from indexer.models.embedders import load_text_embedder
    from storage import Library, SightlineError
    from storage.search import FTS_TERM_CAP, keyword_ranking, search

    vocab = json.loads((folder / "vocab.json").read_text())
    queries = make_queries(vocab, n_queries)
    embedder = load_text_embedder("all-MiniLM-L6-v2")
    embedder(["warm up"])
    default_threads = torch.get_num_threads()

    def embed_all() -> tuple[np.ndarray, list[float]]:
        vecs, times = [], []
        for q in queries:
            t = time.perf_counter()
            vecs.append(embedder([q])[0])
            times.append(time.perf_counter() - t)
        return np.stack(vecs), times

    _, embed_times_default = embed_all()
    # One short query gains nothing from a second intra-op thread, and on a busy machine the two spinning
    # threads cost 10x (measured here): the search path embeds with one thread.
    torch.set_num_threads(1)
    qvecs, embed_times = embed_all()
    lib = Library.open(folder / "lib")
    t = time.perf_counter()
    store = lib.vectors("text")
    open_s = time.perf_counter() - t
    index = store.index
    result = {"n_moments": store.count, "queries": n_queries, "k": k, "index": type(index).__name__,
              "nlist": getattr(index, "nlist", None), "nprobe": getattr(index, "nprobe", None),
              "store_open_s": round(open_s, 2), "rebuilt_on_open": store.rebuilt_on_open}

    # end to end through storage.search.search with the real MiniLM
    failures: dict[str, int] = {}

    def end_to_end(name: str, **filters) -> list[float]:
        times = []
        for q in queries:
            t = time.perf_counter()
            try:
                search(lib, q, embedder, k=k, **filters)
            except SightlineError:  # past the deadline: counted, and its time stays in the percentiles
                failures[name] = failures.get(name, 0) + 1
            times.append(time.perf_counter() - t)
        return times

    end_to_end("warm-up")  # the page cache of a 2+ GB database starts cold
    e2e = end_to_end("plain")
    by_modality = end_to_end("modality", modalities=["text"])
    by_video = end_to_end("video", video_ids=[7])
    result["deadline_failures"] = failures
    search_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the benchmark's own copies

    # exact ground truth and the candidates
    ids, vecs = all_vectors(folder)
    truth = exact_topk(vecs, ids, qvecs, k)
    candidates = []

    def run(name: str, idx, nprobe: int | None):
        params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe else None
        times, found = [], []
        for qv in qvecs:
            t = time.perf_counter()
            _, got = idx.search(qv.reshape(1, -1), k, params=params)
            times.append(time.perf_counter() - t)
            found.append(got[0])
        recall = float(np.mean([len(set(f) & set(tr)) / k for f, tr in zip(found, truth)]))
        candidates.append({"index": name, "nprobe": nprobe, "recall_at_10": round(recall, 4),
                           "p50_ms": pct(times, 50), "p95_ms": pct(times, 95)})

    flat = faiss.IndexFlatIP(vecs.shape[1])  # positions, not ids: only its time is used
    flat.add(vecs)
    t = time.perf_counter()
    for qv in qvecs[:20]:
        flat.search(qv.reshape(1, -1), k)
    flat_ms = (time.perf_counter() - t) / 20 * 1000
    candidates.append({"index": "Flat (exact)", "nprobe": None, "recall_at_10": 1.0, "p50_ms": round(flat_ms, 2),
                       "p95_ms": None})
    del flat
    for nprobe in sorted({16, 32, 64, 128, 256, index.nprobe, 384}):
        run(type(index).__name__, index, nprobe)
    # IVF-Flat on the same coarse centroids (no second k-means)
    centroids = index.quantizer.reconstruct_n(0, index.nlist)
    quantizer = faiss.IndexFlatIP(vecs.shape[1])
    quantizer.add(centroids)
    ivf_flat = faiss.IndexIVFFlat(quantizer, vecs.shape[1], index.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf_flat.add_with_ids(vecs, ids)
    for nprobe in (16, 32, 64):
        run("IndexIVFFlat", ivf_flat, nprobe)
    del ivf_flat
    # Filtered vector search as storage.vectors does it (IDSelector, its nprobe rule) against the exact top-k
    # inside the subset, for the modality and video filters the end-to-end figures use.
    from storage.search import allowed_ids

    def filtered(subset: np.ndarray) -> dict:
        inside = np.isin(ids, subset)
        truth_in = exact_topk(vecs[inside], ids[inside], qvecs, k)
        times, recalls = [], []
        for qv, tr in zip(qvecs, truth_in):
            t = time.perf_counter()
            got = [i for i, _ in store.search(qv, k, subset=subset)]
            times.append(time.perf_counter() - t)
            recalls.append(len(set(got) & set(tr)) / k)
        return {"fraction": round(len(subset) / len(ids), 4), "recall_at_10": round(float(np.mean(recalls)), 4),
                "p50_ms": pct(times, 50), "p95_ms": pct(times, 95)}

    result["filtered_vector"] = {"modality": "text", **filtered(allowed_ids(lib, ["text"], None))}
    result["filtered_vector_video"] = {"video": 7, **filtered(allowed_ids(lib, None, [7]))}
    del vecs, ids
    result["candidates"] = candidates
    current = next(c for c in candidates if c["index"] == result["index"] and c["nprobe"] == result["nprobe"])
    result["recall_at_10"] = current["recall_at_10"]

    # FTS5: the unbounded bm25 ORDER BY over a common word vs our bounded keyword ranking
    common = vocab[0]
    db = sqlite3.connect(folder / "lib" / "library.db")
    t = time.perf_counter()
    db.execute("SELECT rowid FROM moments_fts WHERE moments_fts MATCH ? ORDER BY bm25(moments_fts) LIMIT 50",
               ('"the"',)).fetchall()
    naive_the = time.perf_counter() - t
    t = time.perf_counter()
    db.execute("SELECT rowid FROM moments_fts WHERE moments_fts MATCH ? ORDER BY bm25(moments_fts) LIMIT 50",
               (f'"{common}"',)).fetchall()
    naive_common = time.perf_counter() - t
    matches_common = db.execute("SELECT count(*) FROM moments_fts WHERE moments_fts MATCH ?",
                                (f'"{common}"',)).fetchone()[0]
    db.close()
    kw_times = []
    for q in queries:
        t = time.perf_counter()
        keyword_ranking(lib, q, 50)
        kw_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    keyword_ranking(lib, "the", 50)
    bounded_the = time.perf_counter() - t
    result["fts"] = {"naive_orderby_bm25_the_ms": round(naive_the * 1000, 1),
                     "naive_orderby_bm25_common_word_ms": round(naive_common * 1000, 1),
                     "common_word": common, "common_word_matches": matches_common,
                     "bounded_the_ms": round(bounded_the * 1000, 1), "term_cap": FTS_TERM_CAP,
                     "keyword_p50_ms": pct(kw_times, 50), "keyword_p95_ms": pct(kw_times, 95)}

    lib.close()
    result.update({
        "p50_ms": pct(e2e, 50), "p95_ms": pct(e2e, 95), "mean_ms": round(float(np.mean(e2e)) * 1000, 2),
        "embed_p50_ms": pct(embed_times, 50), "embed_p95_ms": pct(embed_times, 95), "torch_threads": 1,
        f"embed_p50_ms_{default_threads}_threads": pct(embed_times_default, 50),
        f"embed_p95_ms_{default_threads}_threads": pct(embed_times_default, 95),
        "search_without_embed_p50_ms": round((np.percentile(e2e, 50) - np.percentile(embed_times, 50)) * 1000, 2),
        "filtered_modality_p50_ms": pct(by_modality, 50), "filtered_modality_p95_ms": pct(by_modality, 95),
        "filtered_video_p50_ms": pct(by_video, 50), "filtered_video_p95_ms": pct(by_video, 95),
        "target_p95_ms": 50, "meets_target": pct(e2e, 95) <= 50,
        "search_peak_rss_mb": round(search_peak_rss),
        "peak_rss_mb_with_ground_truth": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    })
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moments", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=250)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/sightline-bench"))
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    folder = Path(args.cache) / f"search-{args.moments}"
    built = folder / "built.json"
    info = json.loads(built.read_text()) if built.exists() else None
    if info is None or info.get("version") != CACHE_VERSION:
        import multiprocessing as mp
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        log(f"building a {args.moments:,}-moment library in {folder} (cached for reruns)")
        proc = mp.get_context("spawn").Process(target=build, args=(folder, args.moments))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            sys.exit(f"build failed (exit {proc.exitcode})")
        info = json.loads(built.read_text())
    result = {"benchmark": "search_latency", "build": info, **measure(folder, args.queries, args.k)}
    if not args.json:
        print(f"{'index':<28}{'nprobe':>8}{'recall@10':>11}{'p50 ms':>9}{'p95 ms':>9}")
        for c in result["candidates"]:
            print(f"{c['index']:<28}{str(c['nprobe'] or '-'):>8}{c['recall_at_10']:>11}{c['p50_ms']:>9}"
                  f"{str(c['p95_ms'] or '-'):>9}")
        print(f"\nend to end (embed + FTS5 + FAISS + fusion): p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms"
              f" (MiniLM query embedding alone p50 {result['embed_p50_ms']} ms)")
        print(f"filtered by modality p95 {result['filtered_modality_p95_ms']} ms, by video p95 "
              f"{result['filtered_video_p95_ms']} ms; FTS5 {result['fts']}")
        print(f"filtered vector search: {result['filtered_vector']}, {result['filtered_vector_video']}")
        print(f"peak RSS while searching {result['search_peak_rss_mb']} MB (with the exact ground truth "
              f"{result['peak_rss_mb_with_ground_truth']} MB; build: {info.get('build_peak_rss_mb')} MB)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
