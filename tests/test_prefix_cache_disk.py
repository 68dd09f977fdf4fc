"""The prefix cache's disk spill: a byte cap with least-recently-used files deleted (also across a restart),
writes on one background thread, a read of an entry still being written waiting for it, the default cap."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

torch = pytest.importorskip("torch")

from engine.prefix_cache import DISK_DEFAULT_MAX, PrefixCache, PrefixEntry, PrefixKey, default_disk_bytes  # noqa: E402


def _key(name: str) -> PrefixKey:
    return PrefixKey(video_fingerprint=name, sampling="s", template_hash="t", model_revision="r", quantization="q")


def _entry(fill: int, n: int = 256) -> PrefixEntry:
    layers = [(torch.full((1, 1, n, 8), float(fill)), torch.full((1, 1, n, 4), float(fill)))]
    return PrefixEntry(layers, torch.arange(n), torch.tensor([[-fill]]))


def _files(folder) -> set[str]:
    return {p.stem for p in folder.glob("*.safetensors")}


def test_disk_cap_deletes_least_recently_used_files(tmp_path):
    folder = tmp_path / "kv"
    one = _entry(0).nbytes() + 4096  # 256 x 12 x 4 bytes of tensors; a file adds a header of under 4 KiB
    cache = PrefixCache(folder, byte_budget=0, disk_bytes=int(3.5 * one))  # every put spills at once
    for i in range(3):
        cache.put(_key(f"v{i}"), _entry(i))
    cache.wait_writes()
    assert _files(folder) == {_key(f"v{i}").digest() for i in range(3)}
    assert cache.get(_key("v0")).layers[0][0][0, 0, 0, 0].item() == 0.0  # a disk hit: v0 is now the most recent
    cache.put(_key("v3"), _entry(3))
    cache.wait_writes()
    stats = cache.stats()
    assert _files(folder) == {_key(k).digest() for k in ("v0", "v2", "v3")}  # v1 was least recently used
    assert stats["disk_bytes"] <= stats["disk_cap"] and stats["disk_entries"] == 3 and stats["disk_evictions"] >= 1
    assert stats["disk_bytes"] == sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert cache.get(_key("v1")) is None
    # a restart with a smaller cap trims the folder, oldest use first (file times keep the order)
    small = PrefixCache(folder, byte_budget=0, disk_bytes=int(1.5 * one))
    assert _files(folder) == {_key("v3").digest()} and small.stats()["disk_entries"] == 1
    assert small.get(_key("v3")).rope_deltas.item() == -3
    # an entry larger than the whole cap is not written at all
    tiny = PrefixCache(tmp_path / "tiny", byte_budget=0, disk_bytes=_entry(0).nbytes() // 2)
    tiny.put(_key("big"), _entry(9))
    tiny.wait_writes()
    assert tiny.stats()["disk_skipped"] == 1 and not _files(tmp_path / "tiny")


def test_writes_run_on_a_background_thread_and_readers_wait_for_them(tmp_path):
    folder = tmp_path / "kv"
    cache = PrefixCache(folder, byte_budget=0, disk_bytes=2**30)
    gate, threads = threading.Event(), []
    save = cache._save

    def slow_save(*args):
        threads.append(threading.current_thread().name)
        assert gate.wait(10)
        return save(*args)

    cache._save = slow_save
    started = time.perf_counter()
    cache.put(_key("a"), _entry(7))  # evicted at once: the write is queued, put() does not wait for it
    assert time.perf_counter() - started < 1.0 and not _files(folder)
    assert cache.stats()["disk_pending"] == 1 and _key("a") in cache
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("entry", cache.get(_key("a"))))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and not got  # waiting for the write, not reading half a file or missing
    gate.set()
    reader.join(10)
    assert got["entry"].layers[0][1][0, 0, 5, 0].item() == 7.0 and got["entry"].rope_deltas.item() == -7
    assert threads and all(name.startswith("prefix-spill") for name in threads)
    assert cache.stats()["disk_pending"] == 0 and cache.stats()["disk_hits"] == 1


def test_default_cap_is_a_tenth_of_free_disk_at_most_20_gib(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    cap = default_disk_bytes(tmp_path / "not" / "made" / "yet")
    assert cap <= DISK_DEFAULT_MAX
    assert abs(cap - min(DISK_DEFAULT_MAX, free // 10)) <= max(2**20, free // 1000)
    assert abs(PrefixCache(tmp_path / "kv").stats()["disk_cap"] - cap) <= max(2**20, free // 1000)  # 0: default
    assert PrefixCache(tmp_path / "kv2", disk_bytes=12345).stats()["disk_cap"] == 12345
