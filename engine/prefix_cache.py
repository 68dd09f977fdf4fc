"""Per-video prefix cache: the KV cache of a prompt's video prefix, reused across questions about that video.

An entry holds, per layer, the cache tensors of the prefix (up to and including the last `<|vision_end|>`),
the prefix token ids, and the rope position state (`rope_deltas`, §2.2 gotcha 1) needed to continue it. Entries
are keyed by a PrefixKey (video fingerprint, sampling, template hash, model revision, quantization). In memory
they live in an LRU bounded by a byte budget; evicted entries are spilled to `<folder>/<digest>.safetensors` and
loaded back on a later hit. A file whose stored key, digest or prefix ids differ from the request is refused.

The spill is bounded too: at most `disk_bytes` of files (default min(20 GiB, 10% of the free disk)), the least
recently used deleted first. Files are written by one background thread, off the answer path; the tensors are
copied to the CPU first, so an evicted GPU entry frees its memory at once. A read of an entry still being written
waits for that write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.defaults import DEFAULT_CACHE_BYTES, DISK_DEFAULT_MAX, DISK_DEFAULT_SHARE

log = logging.getLogger(__name__)

FORMAT = "sightline-prefix-v1"


def default_disk_bytes(folder: str | Path) -> int:
    """min(DISK_DEFAULT_MAX, DISK_DEFAULT_SHARE of the free space) of the disk holding folder (or its nearest
    existing parent)."""
    import shutil

    probe = Path(folder).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(min(DISK_DEFAULT_MAX, DISK_DEFAULT_SHARE * shutil.disk_usage(probe).free))


@dataclass(frozen=True)
class PrefixKey:
    """What a cached prefix depends on. Any change upstream must change one of these fields (§2.2 gotcha 3)."""

    video_fingerprint: str
    sampling: str  # fps / windows / frame cap / pixel budget, as a stable string
    template_hash: str  # hash of the prefix token ids or of the chat template + system prompt
    model_revision: str
    quantization: str
    cache_kind: str = "latent"  # "latent" (c, k_rot) or "dynamic" (the model's own K/V)

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class PrefixEntry:
    """One cached prefix: per-layer (keys, values) [B, h, P, w] (latent: c and k_rot), prefix ids [P], rope_deltas."""

    layers: list[tuple[Any, Any]]
    prefix_ids: Any  # LongTensor [P]
    rope_deltas: Any | None  # LongTensor [B, 1] or None
    on_disk: bool = field(default=False, compare=False)
    key: PrefixKey | None = field(default=None, compare=False)  # set by put(); needed to spill

    @property
    def length(self) -> int:
        return int(self.prefix_ids.shape[0])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.layers for t in pair)

    @classmethod
    def from_cache(cls, cache, prefix_ids, rope_deltas) -> "PrefixEntry":
        """Copy the filled part of a transformers Cache (latent or dynamic)."""
        length = int(prefix_ids.shape[0])
        layers = []
        for layer in cache.layers:
            k, v = layer.keys, layer.values
            assert k.shape[-2] == length, f"cache holds {k.shape[-2]} tokens, prefix has {length}"
            layers.append((k.detach().clone().contiguous(), v.detach().clone().contiguous()))
        deltas = None if rope_deltas is None else rope_deltas.detach().clone()
        return cls(layers, prefix_ids.detach().clone().cpu(), deltas)

    def to_cache(self, kind: str, extra_tokens: int = 0, device=None):
        """A fresh Cache holding copies of the prefix, room for extra_tokens more (latent caches preallocate)."""
        if kind == "latent":
            from engine.latent_cache import LatentCache

            return LatentCache.from_tensors(self.layers, extra_capacity=extra_tokens, device=device)
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            k, v = (k.to(device), v.to(device)) if device is not None else (k, v)
            cache.update(k.clone(), v.clone(), i)
        return cache

    def to(self, device) -> "PrefixEntry":
        self.layers = [(k.to(device), v.to(device)) for k, v in self.layers]
        if self.rope_deltas is not None:
            self.rope_deltas = self.rope_deltas.to(device)
        return self


class PrefixCache:
    """LRU of PrefixEntry bounded by byte_budget (bytes of cache tensors), spilling to safetensors in folder."""

    def __init__(
        self, folder: str | Path | None, byte_budget: int = DEFAULT_CACHE_BYTES, device: Any = None, disk_bytes: int = 0
    ):
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.byte_budget = int(byte_budget)
        self.device = device  # where in-memory entries live; None keeps them where they were computed
        self._mem: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = self.misses = self.disk_hits = self.refused = self.spills = 0
        # disk: cap (0 or less: the default from free space), files in LRU order -> bytes, writes in flight
        self.disk_bytes = int(disk_bytes) if disk_bytes and disk_bytes > 0 else (
            default_disk_bytes(self.folder) if self.folder is not None else 0)
        self._disk: OrderedDict[str, int] = OrderedDict()
        self._disk_lock = threading.Lock()
        self._pending: dict[str, Any] = {}  # digest -> Future of its write
        self._writer = None  # one-thread executor, started on the first spill
        self.disk_evictions = self.disk_skipped = 0
        if self.folder is not None:
            for tmp in self.folder.glob("*.tmp"):  # a write cut short by a crash
                tmp.unlink(missing_ok=True)
            files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
            for f in files:
                self._disk[f.stem] = f.stat().st_size
            with self._disk_lock:
                self._trim()

    # -- lookups ------------------------------------------------------------------------------------------------

    def get(self, key: PrefixKey, prefix_ids=None) -> PrefixEntry | None:
        """The entry for key (memory, else disk), or None. prefix_ids, when given, must match the entry's."""
        digest = key.digest()
        with self._lock:
            self._wait_write(digest)
            entry = self._mem.get(digest)
            if entry is not None:
                if prefix_ids is not None and not _same_ids(entry.prefix_ids, prefix_ids):
                    self.refused += 1
                    self.misses += 1
                    return None
                self._mem.move_to_end(digest)
                self.hits += 1
                return entry
            entry = self._load(key, prefix_ids)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self.disk_hits += 1
            self._insert(digest, entry)
            return entry

    def put(self, key: PrefixKey, entry: PrefixEntry) -> None:
        with self._lock:
            if self.device is not None:
                entry.to(self.device)
            self._insert(key.digest(), entry, key)

    def __contains__(self, key: PrefixKey) -> bool:
        with self._lock:
            path = self._path(key.digest())
            digest = key.digest()
            return digest in self._mem or digest in self._pending or (path is not None and path.exists())

    # -- memory and disk ----------------------------------------------------------------------------------------

    def _insert(self, digest: str, entry: PrefixEntry, key: PrefixKey | None = None) -> None:
        if key is not None:
            entry.key = key  # remembered for spilling
        self._mem[digest] = entry
        self._mem.move_to_end(digest)
        while self._mem and self.memory_bytes() > self.byte_budget:
            old_digest, old = self._mem.popitem(last=False)
            self._spill(old_digest, old)

    def _spill(self, digest: str, entry: PrefixEntry) -> None:
        if entry.on_disk or self.folder is None:
            return
        if entry.key is None:
            return
        if self._submit(digest, entry):
            self.spills += 1

    def _submit(self, digest: str, entry: PrefixEntry) -> bool:
        """Queue the entry's file write on the writer thread (CPU copies taken here); False if over the cap."""
        size = entry.nbytes()
        if size > self.disk_bytes:
            log.info("prefix cache: %s (%d bytes) exceeds the disk cap %d; not written", digest, size, self.disk_bytes)
            self.disk_skipped += 1
            return False
        snapshot = PrefixEntry(
            [(k.cpu(), v.cpu()) for k, v in entry.layers],
            entry.prefix_ids.cpu(),
            None if entry.rope_deltas is None else entry.rope_deltas.cpu(),
        )
        key = entry.key
        entry.on_disk = True  # queued: never queued twice
        if self._writer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefix-spill")
        with self._disk_lock:
            self._disk[digest] = size  # an estimate until the file exists
            self._disk.move_to_end(digest)
            self._pending[digest] = self._writer.submit(self._write, digest, key, snapshot)
        return True

    def _write(self, digest: str, key: PrefixKey, entry: PrefixEntry) -> None:
        """On the writer thread: write the file, record its size, delete least recently used files over the cap."""
        try:
            self._save(digest, key, entry)
            size = self._path(digest).stat().st_size
        except Exception as err:  # noqa: BLE001 - a full disk or a vanished folder loses a cache file, nothing else
            log.warning("prefix cache: writing %s failed (%s)", digest, err)
            size = None
        with self._disk_lock:
            self._pending.pop(digest, None)
            if size is None:
                self._disk.pop(digest, None)
            elif digest in self._disk:
                self._disk[digest] = size
            self._trim()

    def _trim(self) -> None:
        """Delete least recently used files (never one still being written) until the total fits the cap.
        Caller holds _disk_lock."""
        total = sum(self._disk.values())
        for digest in list(self._disk):
            if total <= self.disk_bytes:
                break
            if digest in self._pending:
                continue
            total -= self._disk.pop(digest)
            self._path(digest).unlink(missing_ok=True)
            self.disk_evictions += 1

    def _wait_write(self, digest: str) -> None:
        with self._disk_lock:
            future = self._pending.get(digest)
        if future is not None:
            future.result()

    def wait_writes(self) -> None:
        """Block until every queued file write has finished."""
        with self._disk_lock:
            futures = list(self._pending.values())
        for future in futures:
            future.result()

    def flush(self) -> int:
        """Write every in-memory entry that has no file yet and wait for all writes; return how many were queued."""
        written = 0
        with self._lock:
            for digest, entry in self._mem.items():
                if not entry.on_disk and self.folder is not None and entry.key is not None:
                    written += int(self._submit(digest, entry))
        self.wait_writes()
        return written

    def clear_memory(self) -> None:
        """Spill everything and empty the in-memory LRU."""
        with self._lock:
            while self._mem:
                digest, entry = self._mem.popitem(last=False)
                self._spill(digest, entry)

    def _path(self, digest: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{digest}.safetensors"

    def _save(self, digest: str, key: PrefixKey, entry: PrefixEntry) -> None:
        from safetensors.torch import save_file

        tensors = {"prefix_ids": entry.prefix_ids.cpu().contiguous()}
        if entry.rope_deltas is not None:
            tensors["rope_deltas"] = entry.rope_deltas.cpu().contiguous()
        for i, (k, v) in enumerate(entry.layers):
            tensors[f"layers.{i}.keys"] = k.cpu().contiguous()
            tensors[f"layers.{i}.values"] = v.cpu().contiguous()
        meta = {"format": FORMAT, "digest": digest, "key": key.to_json(), "layers": str(len(entry.layers))}
        path = self._path(digest)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)  # atomic: a reader never sees half a file
        entry.on_disk = True

    def _load(self, key: PrefixKey, prefix_ids=None) -> PrefixEntry | None:
        path = self._path(key.digest())
        if path is None or not path.exists():
            return None
        from safetensors import safe_open

        with self._disk_lock:  # a disk hit is a use: most recent in the LRU, and its mtime says so after a restart
            self._disk[key.digest()] = path.stat().st_size
            self._disk.move_to_end(key.digest())
        try:
            os.utime(path)
        except OSError:
            pass

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if (
                    meta.get("format") != FORMAT
                    or meta.get("digest") != key.digest()
                    or meta.get("key") != key.to_json()
                ):
                    log.warning("prefix cache: %s belongs to another key; refused", path.name)
                    self.refused += 1
                    return None
                ids = f.get_tensor("prefix_ids")
                if prefix_ids is not None and not _same_ids(ids, prefix_ids):
                    log.warning("prefix cache: %s holds other prefix tokens; refused", path.name)
                    self.refused += 1
                    return None
                n = int(meta["layers"])
                layers = [(f.get_tensor(f"layers.{i}.keys"), f.get_tensor(f"layers.{i}.values")) for i in range(n)]
                deltas = f.get_tensor("rope_deltas") if "rope_deltas" in f.keys() else None
        except Exception as err:  # noqa: BLE001 - a corrupt cache file is dropped, never fatal
            log.warning("prefix cache: %s unreadable (%s); removed", path.name, err)
            self.refused += 1
            path.unlink(missing_ok=True)
            with self._disk_lock:
                self._disk.pop(key.digest(), None)
            return None
        entry = PrefixEntry(layers, ids, deltas, on_disk=True)
        if self.device is not None:
            entry.to(self.device)
        return entry

    # -- numbers ------------------------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        return sum(e.nbytes() for e in self._mem.values())

    def stats(self) -> dict:
        """bytes / entries in memory, hits, misses, and what is on disk (for the UI and describe())."""
        with self._lock, self._disk_lock:
            disk = dict(self._disk)
            pending = len(self._pending)
            return {
                "bytes": self.memory_bytes(),
                "entries": len(self._mem),
                "byte_budget": self.byte_budget,
                "hits": self.hits,
                "misses": self.misses,
                "disk_hits": self.disk_hits,
                "refused": self.refused,
                "spills": self.spills,
                "disk_entries": len(disk),
                "disk_bytes": sum(disk.values()),
                "disk_cap": self.disk_bytes,
                "disk_pending": pending,
                "disk_evictions": self.disk_evictions,
                "disk_skipped": self.disk_skipped,
            }


def _same_ids(a, b) -> bool:
    a = a.reshape(-1).cpu()
    b = b.reshape(-1).cpu()
    return a.shape == b.shape and bool((a == b).all())
