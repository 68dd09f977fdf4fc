"""The M²LA latent KV cache: per layer the latent c and the rotated shared RoPE key, nothing per head.

`LatentLayer` is one layer (a transformers CacheLayerMixin); `LatentCache` is the container (a transformers
Cache), so `generate(past_key_values=LatentCache(...))`, the causal-mask builders, `get_seq_length` and `crop`
keep working. Buffers are preallocated and grow geometrically; `reserve(n)` sizes them exactly when the final
length is known (then allocated bytes == latent bytes per token x tokens).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

MIN_GROWTH = 256  # tokens added at least when a buffer grows


class LatentLayer(CacheLayerMixin):
    """One layer's M²LA cache: c [B, 1, S, r] and rotated k_pe [B, 1, S, d_r] (post-RoPE, §5 item 4).

    Both live side by side in one buffer [B, 1, capacity, r + d_r] (the layout xtuner and FlashMLA use), so a
    fused kernel can read [c ; k_pe] as one key. `keys` / `values` are views of the filled part: keys = c,
    values = k_rot; `joint` is the filled [c ; k_rot].
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int = 0):
        # CacheLayerMixin.__init__ would assign keys/values, which are read-only views here.
        self._buf: torch.Tensor | None = None  # [B, 1, capacity, r + d_r]
        self.rank = 0
        self.length = 0
        self.capacity_hint = int(capacity)
        self.is_initialized = False

    def __repr__(self) -> str:
        return f"LatentLayer(length={self.length}, capacity={self.capacity})"

    # -- views --------------------------------------------------------------------------------------------------

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._buf is None else self._buf[:, :, : self.length, : self.rank]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._buf is None else self._buf[:, :, : self.length, self.rank :]

    @property
    def joint(self) -> torch.Tensor | None:
        return None if self._buf is None else self._buf[:, :, : self.length]

    @property
    def capacity(self) -> int:
        return 0 if self._buf is None else self._buf.shape[2]

    # -- storage ------------------------------------------------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        b, one, t, r = key_states.shape
        d_r = value_states.shape[-1] if value_states is not None else 0
        self.dtype, self.device = key_states.dtype, key_states.device
        cap = max(self.capacity_hint, t)
        self.rank = r
        self._buf = torch.empty(b, one, cap, r + d_r, dtype=self.dtype, device=self.device)
        self.is_initialized = True

    def reserve(self, tokens: int) -> None:
        """Make room for `tokens` in total without regrowing (exact size when called before the first update)."""
        if self._buf is None:
            self.capacity_hint = max(self.capacity_hint, int(tokens))
            return
        if tokens > self.capacity:
            self._grow_to(int(tokens))

    def _grow_to(self, cap: int) -> None:
        b, one, _, width = self._buf.shape
        buf = torch.empty(b, one, cap, width, dtype=self._buf.dtype, device=self._buf.device)
        buf[:, :, : self.length] = self._buf[:, :, : self.length]
        self._buf = buf

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, cache_kwargs: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append c [B, 1, T, r] and k_rot [B, 1, T, d_r]; return the filled views [B, 1, S, r], [B, 1, S, d_r]."""
        c, k_rot = key_states, value_states
        assert c.dim() == 4 and c.shape[1] == 1, f"latent c must be [B, 1, T, r], got {tuple(c.shape)}"
        assert k_rot.shape[:3] == c.shape[:3], f"k_rot {tuple(k_rot.shape)} does not match c {tuple(c.shape)}"
        if not self.is_initialized:
            self.lazy_initialization(c, k_rot)
        assert c.shape[-1] == self.rank and c.shape[-1] + k_rot.shape[-1] == self._buf.shape[-1], (
            f"latent widths {c.shape[-1]}+{k_rot.shape[-1]} differ from the cache's "
            f"{self.rank}+{self._buf.shape[-1] - self.rank}"
        )
        t = c.shape[2]
        need = self.length + t
        if need > self.capacity:
            self._grow_to(max(need, self.capacity + max(self.capacity // 2, MIN_GROWTH)))
        self._buf[:, :, self.length : need, : self.rank] = c
        self._buf[:, :, self.length : need, self.rank :] = k_rot
        self.length = need
        return self.keys, self.values

    # -- the stock verbs ----------------------------------------------------------------------------------------

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        return self.length + cache_position.shape[0], 0

    def get_max_cache_shape(self) -> int:
        return -1

    def crop(self, max_length: int) -> None:
        """Keep the first max_length tokens (negative: drop that many from the end)."""
        if max_length < 0:
            max_length = self.length - abs(max_length)
        self.length = max(0, min(self.length, max_length))

    def reset(self) -> None:
        self.length = 0

    def offload(self) -> None:
        if self.is_initialized:
            self._buf = self._buf.to("cpu", non_blocking=True)

    def prefetch(self) -> None:
        if self.is_initialized and self._buf.device != self.device:
            self._buf = self._buf.to(self.device, non_blocking=True)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self._buf = self._buf.index_select(0, beam_idx.to(self._buf.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._buf = self._buf.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._buf = self._buf[indices, ...]

    # -- accounting ---------------------------------------------------------------------------------------------

    def nbytes(self) -> int:
        """Bytes of the filled part."""
        if not self.is_initialized:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def allocated_bytes(self) -> int:
        """Bytes of the buffers as allocated (>= nbytes)."""
        if not self.is_initialized:
            return 0
        return self._buf.numel() * self._buf.element_size()


class LatentCache(Cache):
    """A transformers Cache of LatentLayer, one per decoder layer (lazy when the layer count is not given)."""

    def __init__(self, num_layers: int | None = None, capacity: int = 0, config: Any = None):
        if num_layers is None and config is not None:
            num_layers = config.get_text_config(decoder=True).num_hidden_layers
        if num_layers:
            super().__init__(layers=[LatentLayer(capacity) for _ in range(num_layers)])
        else:
            super().__init__(layer_class_to_replicate=LatentLayer)
        self.capacity = int(capacity)

    def reserve(self, tokens: int) -> None:
        """Size every layer for `tokens` in total."""
        for layer in self.layers:
            layer.reserve(tokens)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def allocated_bytes(self) -> int:
        return sum(layer.allocated_bytes() for layer in self.layers)

    def tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Filled (c, k_rot) views per layer."""
        return [(layer.keys, layer.values) for layer in self.layers]

    @classmethod
    def from_tensors(
        cls, layers: Iterable[tuple[torch.Tensor, torch.Tensor]], extra_capacity: int = 0, device=None
    ) -> "LatentCache":
        """A fresh cache holding copies of the given per-layer (c, k_rot), with room for extra_capacity more."""
        pairs = list(layers)
        cache = cls(num_layers=len(pairs))
        for layer, (c, k) in zip(cache.layers, pairs):
            if device is not None:
                c, k = c.to(device), k.to(device)
            layer.capacity_hint = c.shape[2] + int(extra_capacity)
            layer.update(c, k)
        return cache


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by any transformers Cache's filled keys and values (latent or expanded)."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is not None:
                total += t.numel() * t.element_size()
    return total
