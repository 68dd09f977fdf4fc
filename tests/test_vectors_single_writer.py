"""One writer of the FAISS files: a reader process beside the indexing process never writes under vectors/.

Two real processes work on one library folder. The writer holds the indexing lock (as an indexing run does) and
adds, removes and rebuilds vectors, and at the end lets the lock go and takes it again (the next run); the reader
holds no lock and searches, both through a store it keeps open (the web UI) and through a library it opens afresh
each time (a CLI search), and once removes a video (the UI's remove button). Between steps the test damages the
files the way a crash or a disk does (flipped bytes, a garbage sidecar, a deleted index, rows committed without
their FAISS save). An audit hook (`sys.addaudithook`) in each process records every open for
writing, rename, replace and removal under vectors/: the reader's list must stay empty while its results equal an
exact brute-force ranking over the vectors SQLite holds; the writer's must not.

The workers run this module (`python -m tests.test_vectors_single_writer reader|writer FOLDER`) and answer one
JSON line per command on stdout.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 32
K = 10
QUERIES = 8  # searches per check: the "stale" log must come once per change, not once per query
ROOT = Path(__file__).resolve().parents[1]
STALE_WORDS = "rebuilt by the next indexing run"

# --- the worker processes ------------------------------------------------------------------------------------


def _writes_under(folder: Path) -> list:
    """Install an audit hook recording file writes under `folder`; return the (live) list of records."""
    root = os.path.realpath(folder) + os.sep
    writes: list = []
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path) -> bool:
        if isinstance(path, int) or path is None:
            return False
        path = os.fsdecode(os.fspath(path))
        return os.path.realpath(path).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
            if writing and inside(path):
                writes.append([event, os.fsdecode(os.fspath(path)), str(mode)])
        elif event in ("os.rename", "os.remove", "os.truncate", "os.mkdir", "os.rmdir"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if any(inside(p) for p in paths):
                writes.append([event] + [os.fsdecode(os.fspath(p)) for p in paths])

    sys.addaudithook(hook)
    return writes


def _random_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _brute_force(lib, query: np.ndarray) -> list[tuple[int, float]]:
    from sqlalchemy import select

    from storage.models import Embedding

    with lib.read() as s:
        rows = s.execute(select(Embedding.moment_id, Embedding.vector).where(Embedding.space == "text")).all()
    if not rows:
        return []
    ids = np.asarray([r[0] for r in rows])
    scores = np.stack([np.frombuffer(r[1], np.float32) for r in rows]) @ query
    order = np.argsort(-scores, kind="stable")[:K]
    return [(int(ids[i]), float(scores[i])) for i in order]


def _agrees(got: list[tuple[int, float]], exact: list[tuple[int, float]]) -> bool:
    """Same ids and scores as the exact ranking (ids whose scores tie may swap places)."""
    return (len(got) == len(exact) and np.allclose([s for _, s in got], [s for _, s in exact], atol=1e-5)
            and {i for i, s in got if s > exact[-1][1] + 1e-5} <= {i for i, _ in exact}
            and set(i for i, _ in got) == set(i for i, _ in exact))


def _reader(folder: Path) -> None:
    import logging

    writes = _writes_under(folder / "vectors")
    from storage import Library

    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            notes.append(record.getMessage())

    logging.getLogger("sightline").addHandler(Collect())
    logging.getLogger("sightline").addHandler(logging.StreamHandler())  # stderr: the test's reader.log
    logging.getLogger("sightline").setLevel(logging.INFO)
    queries = _random_vectors(QUERIES, 999)
    lib = Library.open(folder)  # kept open, like the web UI's
    for line in sys.stdin:
        cmd, *args = line.split()
        reply: dict = {}
        if cmd == "check":
            before = len(notes)
            bad = []
            store = lib.vectors("text")
            for q in queries:
                got = store.search(q, K)
                if args != ["fresh-only"] and not _agrees(got, _brute_force(lib, q)):
                    bad.append(["kept", got, _brute_force(lib, q)])
            with Library.open(folder) as fresh:  # a CLI search opens the library afresh
                fresh_store = fresh.vectors("text")
                for q in queries:
                    if not _agrees(fresh_store.search(q, K), _brute_force(fresh, q)):
                        bad.append(["fresh", fresh_store.search(q, K), _brute_force(fresh, q)])
                reply = {"bad": bad, "fresh_reason": fresh_store.rebuilt_on_open,
                         "notes": notes[before:], "count": store.count}
        elif cmd == "spin":  # search without pause for a while, while the writer works
            stop, n = time.monotonic() + float(args[0]), 0
            store = lib.vectors("text")
            while time.monotonic() < stop:
                store.search(queries[n % QUERIES], K)
                if n % 10 == 0:
                    with Library.open(folder) as fresh:
                        fresh.vectors("text").search(queries[0], K)
                n += 1
            reply = {"searches": n}
        elif cmd == "remove":  # the UI's remove button: rows deleted, vectors removed in this process
            from sqlalchemy import select

            from storage import catalog
            from storage.models import Video

            with lib.read() as s:
                catalog.remove(lib, s.scalars(select(Video.id).order_by(Video.id.desc())).first())
        elif cmd == "quit":
            reply = {"writes": list(writes)}
        print(json.dumps(reply), flush=True)
        if cmd == "quit":
            break
    lib.close()


def _writer(folder: Path) -> None:
    writes = _writes_under(folder / "vectors")
    from storage import Library, catalog
    from storage.models import Embedding
    from storage.vectors import encode_vector
    from tests.library_builder import add_video

    from contextlib import ExitStack

    lib = Library.open(folder)
    videos: list[int] = []
    with ExitStack() as held:
        held.enter_context(lib.indexing_lock())
        print(json.dumps({"held": True}), flush=True)
        for line in sys.stdin:
            cmd, *args = line.split()
            if cmd == "add":  # moments and vectors committed, then added to FAISS (as the indexer does)
                n, seed = int(args[0]), int(args[1])
                vecs = _random_vectors(n, seed)
                vid, _ = add_video(lib, f"/videos/{seed}.mp4", n * 2.0,
                                   [(2.0 * j, 2.0 * j + 1, "speech", f"s{seed} m{j}") for j in range(n)],
                                   embed=lambda texts, vecs=vecs: vecs)
                videos.append(vid)
            elif cmd == "stale":  # committed to SQLite, never saved to FAISS: a run killed in between
                n, seed = int(args[0]), int(args[1])
                vecs = _random_vectors(n, seed)
                vid, ids = add_video(lib, f"/videos/{seed}.mp4", n * 2.0,
                                     [(2.0 * j, 2.0 * j + 1, "speech", f"s{seed} m{j}") for j in range(n)],
                                     embed=None)
                lib.write(lambda s, ids=ids, vecs=vecs: s.add_all(
                    Embedding(moment_id=i, space="text", model="random", vector=encode_vector(v))
                    for i, v in zip(ids, vecs)))
                videos.append(vid)
            elif cmd == "burst":  # many small adds, each saved
                for b in range(int(args[0])):
                    vecs = _random_vectors(5, 10_000 + b)
                    vid, _ = add_video(lib, f"/videos/burst{b}.mp4", 10.0,
                                       [(2.0 * j, 2.0 * j + 1, "speech", f"b{b} m{j}") for j in range(5)],
                                       embed=lambda texts, vecs=vecs: vecs)
                    videos.append(vid)
            elif cmd == "remove":
                catalog.remove(lib, videos.pop(0))
            elif cmd == "rebuild":
                lib.rebuild_vectors()
            elif cmd == "relock":  # the run ends and the next one takes the lock
                held.close()
                held.enter_context(lib.indexing_lock())
            print(json.dumps({"writes": list(writes)} if cmd == "quit" else {"done": cmd}), flush=True)
            if cmd == "quit":
                break
    lib.close()


# --- the test --------------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, role: str, folder: Path, log: Path):
        self.role = role
        self.log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.test_vectors_single_writer", role, str(folder)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 300) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"the {self.role} gave no answer; its stderr:\n{Path(self.log.name).read_text()}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.send(command)
        return self.answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def test_only_the_lock_holder_writes_vectors_and_readers_stay_correct(tmp_path):
    from storage import Library

    folder = tmp_path / "lib"
    Library.open(folder).close()
    vectors = folder / "vectors"
    writer = Worker("writer", folder, tmp_path / "writer.log")
    reader = None
    try:
        assert writer.answer() == {"held": True}
        writer.ask("add 60 1")
        reader = Worker("reader", folder, tmp_path / "reader.log")

        def check(expect_fresh_reason: bool, step: str, only: str = "") -> dict:
            got = reader.ask(f"check {only}")
            assert not got["bad"], (step, got["bad"][:2])
            assert bool(got["fresh_reason"]) == expect_fresh_reason, (step, got)
            # Each store reports a stale file once, however many searches it served.
            assert sum(STALE_WORDS in n for n in got["notes"]) <= 2, (step, got["notes"])
            return got

        check(False, "a saved index is loaded")
        writer.ask("add 60 2")
        assert check(False, "the writer's save is reloaded")["count"] == 120

        faiss_file = vectors / "text.faiss"
        data = bytearray(faiss_file.read_bytes())  # flipped bytes, same size: only the CRC tells
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        faiss_file.write_bytes(bytes(data))
        got = check(True, "corrupt index file")
        assert any(STALE_WORDS in n for n in got["notes"]), got["notes"]
        assert faiss_file.read_bytes() == data, "a reader rewrote the corrupt file"

        writer.ask("stale 30 3")  # rows committed, FAISS never saved
        # The kept store has no sign of the change until a save lands (no SQLite count per query): fresh only.
        check(True, "stale: SQLite holds more", "fresh-only")
        writer.ask("add 10 4")  # the writer's save now holds fewer vectors than SQLite: the reader must see it
        check(True, "saved index short of SQLite")
        writer.ask("rebuild")  # the lock holder makes the file whole again
        assert check(False, "rebuilt by the lock holder")["count"] == 160

        sidecar = vectors / "text.json"
        sidecar.write_text("{not json")
        check(True, "garbage sidecar")
        assert sidecar.read_text() == "{not json"
        writer.ask("rebuild")
        check(False, "rebuilt again")
        faiss_file.unlink()
        check(True, "deleted index file")
        assert not faiss_file.exists()

        reader.send("spin 4")  # searches while the writer adds and saves twenty times
        writer.send("burst 20")
        assert reader.answer()["searches"] > 0 and writer.answer() == {"done": "burst"}
        check(False, "after the burst")
        writer.ask("remove")
        assert check(False, "after a removal")["count"] == 160 + 100 - 60
        reader.ask("remove")  # the UI removes a video (5 moments): its index changes in memory, the file waits
        assert check(True, "removed by a reader")["count"] == 195
        writer.ask("relock")  # the next indexing run rebuilds the file when it takes the lock
        assert check(False, "the next run saved it")["count"] == 195

        reader_writes = reader.ask("quit")["writes"]
        writer_writes = writer.ask("quit")["writes"]
    finally:
        for worker in (reader, writer):
            if worker is not None:
                worker.close()
    assert reader_writes == [], f"the reader process wrote under vectors/: {reader_writes[:5]}"
    assert any(w[0] == "os.rename" and w[-1].endswith("text.faiss") for w in writer_writes), writer_writes[:5]
    assert any(w[0] == "os.rename" and w[-1].endswith("text.json") for w in writer_writes), writer_writes[:5]


if __name__ == "__main__":
    {"reader": _reader, "writer": _writer}[sys.argv[1]](Path(sys.argv[2]))
