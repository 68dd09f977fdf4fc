"""Generation through the latent cache with per-video prefix reuse.

`generate_with_prefix(model, batch, prefix_cache, key)` splits a one-conversation prompt at its last
`<|vision_end|>`: the prefix (system prompt, "Video 1: ", the frames) is prefilled once and kept in the
PrefixCache with its rope_deltas; a follow-up question about the same video restores a copy of that cache,
restores rope_deltas (positions of text after a video continue from the video's M-RoPE positions, not from the
token index), and only runs the question tokens. The tokens equal a fresh run's (tests/test_prefix_cache.py).

`make_generator(chat)` is what engine/chat.py's VideoChat calls: it returns a callable
`(batch, clips, max_new_tokens=..., **gen) -> new token ids` with `.stats()` for the UI.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from engine.prefix_cache import PrefixCache, PrefixEntry, PrefixKey

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    tokens: Any  # LongTensor [N] new token ids
    prefix_len: int  # tokens served by (or stored into) the prefix cache; 0 without a video
    prefix_hit: bool
    prefill_s: float  # time spent before generate() started (prefix prefill or cache restore)
    total_s: float


def _vision_end_id(model) -> int | None:
    cfg = model.config
    return getattr(cfg, "vision_end_token_id", None) or getattr(getattr(cfg, "text_config", None), "vision_end_token_id", None)


def prefix_length(input_ids, vision_end_id: int | None) -> int:
    """Tokens up to and including the last <|vision_end|> (0 when there is none); always < len(input_ids)."""
    if vision_end_id is None:
        return 0
    hits = (input_ids == vision_end_id).nonzero()
    if hits.numel() == 0:
        return 0
    return min(int(hits[-1]) + 1, int(input_ids.shape[0]) - 1)


def _core(model):
    """The module holding rope_deltas (Qwen3VLModel) or None for text-only models."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "rope_deltas") else None


def cache_kind(model) -> str:
    from engine.latent_attention import uses_latent_cache

    return "latent" if uses_latent_cache(model) else "dynamic"


def new_cache(model, tokens: int = 0):
    """An empty cache for this model: a LatentCache sized for `tokens` when it runs the latent path."""
    if cache_kind(model) == "latent":
        from engine.latent_cache import LatentCache

        return LatentCache(config=model.config, capacity=tokens)
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def to_host(entry: PrefixEntry) -> PrefixEntry:
    """The entry's tensors in CPU memory (pinned when CUDA is there, for fast copies back).

    Cached prefixes live on the host and are copied to the GPU only for the call that uses them (`to_cache`), so
    the prefix-cache budget never takes GPU memory: the memory plan (engine/loading.py runtime_bytes) counts one
    working copy, not the budget."""
    import torch

    def host(t):
        if t is None or t.device.type == "cpu":
            return t
        t = t.to("cpu")
        return t.pin_memory() if torch.cuda.is_available() else t

    entry.layers = [(host(k), host(v)) for k, v in entry.layers]
    entry.rope_deltas = host(entry.rope_deltas)
    return entry


def _gen_defaults(model, gen: dict) -> dict:
    gen = dict(gen)
    gen.setdefault("do_sample", False)
    if not gen["do_sample"]:
        gen.update(temperature=None, top_p=None, top_k=None)
    return gen


def generate_with_prefix(
    model,
    batch: dict,
    prefix_cache: PrefixCache | None = None,
    key: PrefixKey | None = None,
    max_new_tokens: int = 512,
    **gen: Any,
) -> GenerationResult:
    """Generate for one conversation (batch size 1), reusing the cached video prefix where key matches.

    batch: the processor's tensors (input_ids [1, L], attention_mask, pixel_values_videos, video_grid_thw, ...).
    Without prefix_cache/key the prefix is still prefilled separately (same result, nothing kept).
    """
    import torch

    t0 = time.perf_counter()
    device = next(model.parameters()).device
    batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in dict(batch).items()}
    ids = batch["input_ids"]
    assert ids.shape[0] == 1, f"generate_with_prefix takes one conversation, got a batch of {ids.shape[0]}"
    mask = batch.get("attention_mask")
    if mask is not None:
        assert bool(mask.all()), "generate_with_prefix takes an unpadded conversation"
    length = ids.shape[1]
    p = prefix_length(ids[0], _vision_end_id(model))
    kind = cache_kind(model)
    if key is not None:
        assert key.cache_kind == kind, f"key is for a {key.cache_kind} cache, the model runs a {kind} cache"
    room = length - p + max_new_tokens
    core = _core(model)
    gen = _gen_defaults(model, gen)

    if p == 0:  # no video: nothing to reuse
        cache = new_cache(model, length + max_new_tokens)
        with torch.inference_mode():
            out = model.generate(**batch, past_key_values=cache, max_new_tokens=max_new_tokens, **gen)
        return GenerationResult(out[0, length:], 0, False, 0.0, time.perf_counter() - t0)

    entry = prefix_cache.get(key, ids[0, :p]) if prefix_cache is not None and key is not None else None
    hit = entry is not None
    with torch.inference_mode():
        if hit:
            cache = entry.to_cache(kind, extra_tokens=room, device=device)
            deltas = entry.rope_deltas
        else:
            cache = new_cache(model, p + room)
            prefix_inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
            model(
                input_ids=ids[:, :p],
                attention_mask=None if mask is None else mask[:, :p],
                past_key_values=cache,
                use_cache=True,
                cache_position=torch.arange(p, device=device),
                logits_to_keep=1,
                **prefix_inputs,
            )
            deltas = core.rope_deltas if core is not None else None
            if prefix_cache is not None and key is not None:
                prefix_cache.put(key, to_host(PrefixEntry.from_cache(cache, ids[0, :p], deltas)))
        if core is not None:
            # §2.2 gotcha 1: positions after the prefix are cache_position + rope_deltas of *this* video.
            core.rope_deltas = None if deltas is None else deltas.to(device)
        prefill_s = time.perf_counter() - t0
        rest = {"input_ids": ids}
        if mask is not None:
            rest["attention_mask"] = mask
        out = model.generate(**rest, past_key_values=cache, max_new_tokens=max_new_tokens, **gen)
    return GenerationResult(out[0, length:], p, hit, prefill_s, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ VideoChat adapter


def fingerprint_clips(clips: Sequence[Any]) -> str:
    """Content hash of the clips shown (frames, their PTS and the source path): the 'video fingerprint'."""
    h = hashlib.blake2b(digest_size=16)
    for clip in clips:
        h.update(str(getattr(clip, "path", "")).encode())
        h.update(repr([round(float(t), 4) for t in getattr(clip, "timestamps", [])]).encode())
        frames = getattr(clip, "frames", None)
        if frames is not None:
            h.update(repr(tuple(frames.shape)).encode())
            h.update(memoryview(frames).cast("B") if frames.flags["C_CONTIGUOUS"] else frames.tobytes())
    return h.hexdigest()


def sampling_spec(clips: Sequence[Any], batch: dict) -> str:
    """The sampling and resize that produced the model inputs: frame counts, times, and the processor's grid."""
    grid = batch.get("video_grid_thw")
    parts = [f"{len(getattr(c, 'timestamps', []))}f@{getattr(c, 'timestamps', [0])[:1]}" for c in clips]
    return ";".join(parts) + f"|grid={grid.tolist() if grid is not None else None}"


def _ids_hash(ids) -> str:
    return hashlib.blake2b(ids.detach().cpu().numpy().tobytes(), digest_size=16).hexdigest()


class LatentGenerator:
    """Callable VideoChat uses: (batch, clips, max_new_tokens=..., **gen) -> new token ids, with a prefix cache."""

    def __init__(self, model, prefix_cache: PrefixCache, revision: str, quantization: str):
        self.model = model
        self.prefix_cache = prefix_cache
        self.revision = revision
        self.quantization = quantization
        self.kind = cache_kind(model)
        self.last: GenerationResult | None = None

    def key_for(self, batch: dict, clips: Sequence[Any]) -> PrefixKey | None:
        ids = batch["input_ids"]
        p = prefix_length(ids[0], _vision_end_id(self.model))
        if p == 0 or not clips:
            return None
        return PrefixKey(
            video_fingerprint=fingerprint_clips(clips),
            sampling=sampling_spec(clips, batch),
            template_hash=_ids_hash(ids[0, :p]),
            model_revision=self.revision,
            quantization=self.quantization,
            cache_kind=self.kind,
        )

    def __call__(self, batch, clips: Sequence[Any] = (), max_new_tokens: int = 512, **gen):
        key = self.key_for(batch, clips)
        self.last = generate_with_prefix(self.model, batch, self.prefix_cache, key, max_new_tokens, **gen)
        return self.last.tokens

    def stats(self) -> dict:
        out = self.prefix_cache.stats()
        out["cache_kind"] = self.kind
        cfg = self.model.config.get_text_config(decoder=True)
        if self.kind == "latent":
            from engine.models.internvideo3 import latent_bytes_per_token

            out["bytes_per_token"] = latent_bytes_per_token(cfg, self.model.dtype)
        return out


def make_generator(chat) -> LatentGenerator:
    """The latent-cache generator for a VideoChat: installs the latent path where the model has M²LA attention
    (verified against the model's own forward), else keeps the model's own cache; prefix cache in
    <library>/cache/prefix-kv with the chat's byte budget."""
    from engine.latent_attention import find_m2la_modules, install_latent_attention, uses_latent_cache

    model = chat.model
    if find_m2la_modules(model) and not uses_latent_cache(model):
        install_latent_attention(model)
    folder = Path(chat.library) / "cache" / "prefix-kv" if chat.library else None
    cache = PrefixCache(folder, byte_budget=int(chat.cache_bytes), disk_bytes=int(chat.cache_disk_bytes or 0))
    cfg = model.config
    revision = "|".join(
        str(x)
        for x in (
            getattr(chat, "name", ""),
            getattr(getattr(getattr(chat, "plan", None), "spec", None), "revision", None) or "",  # resolved commit
            getattr(cfg, "_name_or_path", ""),
            getattr(cfg, "_commit_hash", None) or "",
            getattr(cfg, "transformers_version", ""),
        )
    )
    plan = getattr(chat, "plan", None)
    quant = f"{getattr(plan, 'quantization', '?')}|{model.dtype}"
    return LatentGenerator(model, cache, revision, quant)
