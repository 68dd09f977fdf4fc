"""Per-video prefix cache: the KV cache of a prompt's video prefix, reused across questions about that video.

An entry holds, per layer, the cache tensors of the prefix (up to and including the last `<|vision_end|>`),
the prefix token ids, and the rope position state (`rope_deltas`, §2.2 gotcha 1) needed to continue it. Entries
are keyed by a PrefixKey (video fingerprint, sampling, template hash, model revision, quantization). In memory
they live in an LRU bounded by a byte budget; evicted entries are spilled to `<folder>/<digest>.safetensors` and
loaded back on a later hit. A file whose stored key, digest or prefix ids differ from the request is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "sightline-prefix-v1"


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

    def __init__(self, folder: str | Path | None, byte_budget: int = 4 * 2**30, device: Any = None):
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.byte_budget = int(byte_budget)
        self.device = device  # where in-memory entries live; None keeps them where they were computed
        self._mem: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = self.misses = self.disk_hits = self.refused = self.spills = 0

    # -- lookups ------------------------------------------------------------------------------------------------

    def get(self, key: PrefixKey, prefix_ids=None) -> PrefixEntry | None:
        """The entry for key (memory, else disk), or None. prefix_ids, when given, must match the entry's."""
        digest = key.digest()
        with self._lock:
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
            return key.digest() in self._mem or (path is not None and path.exists())

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
        self._save(digest, entry.key, entry)
        self.spills += 1

    def flush(self) -> int:
        """Write every in-memory entry that has no file yet; return how many were written."""
        written = 0
        with self._lock:
            for digest, entry in self._mem.items():
                if not entry.on_disk and self.folder is not None and entry.key is not None:
                    self._save(digest, entry.key, entry)
                    written += 1
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
        with self._lock:
            files = list(self.folder.glob("*.safetensors")) if self.folder is not None else []
            return {
                "bytes": self.memory_bytes(),
                "entries": len(self._mem),
                "byte_budget": self.byte_budget,
                "hits": self.hits,
                "misses": self.misses,
                "disk_hits": self.disk_hits,
                "refused": self.refused,
                "spills": self.spills,
                "disk_entries": len(files),
                "disk_bytes": sum(p.stat().st_size for p in files),
            }


def _same_ids(a, b) -> bool:
    a = a.reshape(-1).cpu()
    b = b.reshape(-1).cpu()
    return a.shape == b.shape and bool((a == b).all())
