"""Per-video prefix cache: a follow-up question reuses the video prefix and gives a fresh run's tokens (MRoPE
positions and rope_deltas restored), disk round trip, refusals, the LRU byte budget, and the VideoChat adapter."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.generate import generate_with_prefix, make_generator, prefix_length  # noqa: E402
from engine.latent_cache import LatentCache  # noqa: E402
from engine.models.internvideo3 import InternVideo3ForConditionalGeneration, latent_bytes_per_token  # noqa: E402
from engine.tiny import randomize_, synthetic_video_inputs, tiny_internvideo3_config  # noqa: E402
from engine.prefix_cache import PrefixCache, PrefixEntry, PrefixKey  # noqa: E402

GEN = {"max_new_tokens": 8, "do_sample": False, "eos_token_id": None}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    cfg = tiny_internvideo3_config()
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return randomize_(InternVideo3ForConditionalGeneration(cfg, latent=True).eval(), std=0.15)


def _ask(batch, question):
    ids = torch.cat([batch["input_ids"][:, :-4], torch.tensor([list(question)])], 1)
    return dict(batch, input_ids=ids, attention_mask=torch.ones_like(ids))


def _fresh(model, batch):
    with torch.no_grad():
        return model.generate(**batch, **GEN)[0, batch["input_ids"].shape[1] :].tolist()


def _key(name="video-a", **over):
    fields = dict(video_fingerprint=name, sampling="fps=2", template_hash="t", model_revision="tiny", quantization="fp32")
    fields.update(over)
    return PrefixKey(**fields)


def test_follow_ups_reuse_the_prefix_and_equal_fresh_runs_across_two_videos(model, tmp_path):
    cfg = model.config
    video_a = synthetic_video_inputs(cfg, frames=3, height=4, width=8, seed=1)  # 3 x 8 tokens
    video_b = synthetic_video_inputs(cfg, frames=2, height=8, width=8, seed=2)  # 2 x 16 tokens, other deltas
    cache = PrefixCache(tmp_path / "cache", byte_budget=2**22)
    key_a, key_b = _key("video-a"), _key("video-b")
    runs = [
        (video_a, key_a, False),
        (video_b, key_b, False),
        (_ask(video_a, (40, 41, 42)), key_a, True),  # rope_deltas of a restored although b ran last
        (_ask(video_b, (43, 44)), key_b, True),
        (_ask(video_a, (45,)), key_a, True),
    ]
    for batch, key, hit in runs:
        result = generate_with_prefix(model, batch, cache, key, **GEN)
        assert result.prefix_hit == hit
        assert result.prefix_len == prefix_length(batch["input_ids"][0], cfg.vision_end_token_id)
        assert result.tokens.tolist() == _fresh(model, batch), f"reuse differs from a fresh run ({key.video_fingerprint})"
    stats = cache.stats()
    assert (stats["entries"], stats["hits"], stats["misses"]) == (2, 3, 2)
    entry = cache.get(key_a)
    p = entry.length
    assert p == 3 + 3 * (2 + 8 + 1)  # text before + per frame pair: stamp, start, 8 pads, end
    assert entry.rope_deltas.item() < 0  # video tokens share positions: text after the video starts earlier
    assert entry.nbytes() == latent_bytes_per_token(cfg.text_config, torch.float32) * p


def test_wrong_rope_deltas_would_change_the_answer(model):
    """Negative control: the equality above depends on restoring rope_deltas."""
    cfg = model.config
    batch = synthetic_video_inputs(cfg, frames=3, height=4, width=8, seed=1)
    p = prefix_length(batch["input_ids"][0], cfg.vision_end_token_id)
    with torch.no_grad():
        cache = LatentCache(config=cfg)
        model(**{k: v[:, :p] if k in ("input_ids", "attention_mask") else v for k, v in batch.items()},
              past_key_values=cache, use_cache=True, cache_position=torch.arange(p))
        right = model.model.rope_deltas.clone()
        model.model.rope_deltas = torch.zeros_like(right)  # positions from the token index: wrong
        logits_wrong = model(input_ids=batch["input_ids"][:, p:], past_key_values=cache, use_cache=True,
                             cache_position=torch.arange(p, batch["input_ids"].shape[1])).logits
        cache.crop(p)
        model.model.rope_deltas = right
        logits_right = model(input_ids=batch["input_ids"][:, p:], past_key_values=cache, use_cache=True,
                             cache_position=torch.arange(p, batch["input_ids"].shape[1])).logits
        full = model(**batch, use_cache=False).logits[:, p:]
    assert (logits_right - full).abs().max() < 1e-4
    assert (logits_wrong - full).abs().max() > 1e-3


def test_disk_round_trip_is_bit_identical(model, tmp_path):
    cfg = model.config
    batch = synthetic_video_inputs(cfg, frames=2, height=4, width=8, seed=3)
    folder = tmp_path / "cache"
    memory = PrefixCache(folder, byte_budget=2**22)
    key = _key("video-c")
    generate_with_prefix(model, batch, memory, key, **GEN)
    follow = _ask(batch, (50, 51))
    in_memory = generate_with_prefix(model, follow, memory, key, **GEN)
    assert memory.flush() == 1 and memory.stats()["disk_entries"] == 1
    reopened = PrefixCache(folder, byte_budget=2**22)  # a new process: nothing in memory
    assert reopened.stats()["entries"] == 0
    loaded = reopened.get(key, batch["input_ids"][0, : memory.get(key).length])
    original = memory.get(key)
    assert all(torch.equal(a, b) for pa, pb in zip(original.layers, loaded.layers) for a, b in zip(pa, pb))
    assert torch.equal(original.rope_deltas, loaded.rope_deltas) and torch.equal(original.prefix_ids, loaded.prefix_ids)
    from_disk = generate_with_prefix(model, follow, PrefixCache(folder, byte_budget=2**22), key, **GEN)
    assert from_disk.prefix_hit and from_disk.tokens.tolist() == in_memory.tokens.tolist()


def test_entries_with_another_key_or_other_prefix_tokens_are_refused(model, tmp_path):
    cfg = model.config
    batch = synthetic_video_inputs(cfg, frames=2, height=4, width=8, seed=4)
    folder = tmp_path / "cache"
    cache = PrefixCache(folder, byte_budget=2**22)
    key = _key("video-d")
    generate_with_prefix(model, batch, cache, key, **GEN)
    cache.flush()
    other = _key("video-d", quantization="nf4")  # same video, another quantization
    (folder / f"{key.digest()}.safetensors").rename(folder / f"{other.digest()}.safetensors")  # a forged name
    fresh = PrefixCache(folder, byte_budget=2**22)
    assert fresh.get(other) is None and fresh.stats()["refused"] == 1
    # same key, different prefix tokens (e.g. another system prompt hashed wrongly): refused, then recomputed
    p = prefix_length(batch["input_ids"][0], cfg.vision_end_token_id)
    changed = batch["input_ids"].clone()
    changed[0, 0] = 99
    assert cache.get(key, changed[0, :p]) is None and cache.stats()["refused"] == 1
    result = generate_with_prefix(model, dict(batch, input_ids=changed), cache, key, **GEN)
    assert not result.prefix_hit and result.tokens.tolist() == _fresh(model, dict(batch, input_ids=changed))
    # a corrupt file is dropped, never fatal
    bad = _key("video-e")
    (folder / f"{bad.digest()}.safetensors").write_bytes(b"not a safetensors file")
    assert fresh.get(bad) is None and not (folder / f"{bad.digest()}.safetensors").exists()


def test_lru_byte_budget_spills_to_disk_and_loads_back(tmp_path):
    def entry(n, fill):
        layers = [(torch.full((1, 1, n, 4), float(fill)), torch.full((1, 1, n, 2), float(fill)))]
        return PrefixEntry(layers, torch.arange(n), torch.tensor([[-fill]]))

    one = entry(10, 1).nbytes()  # 10 tokens x 6 values x 4 bytes
    assert one == 240
    cache = PrefixCache(tmp_path / "c", byte_budget=2 * one + 10)
    for i in range(1, 4):
        cache.put(_key(f"v{i}"), entry(10, i))
    stats = cache.stats()
    assert (stats["entries"], stats["bytes"], stats["spills"], stats["disk_entries"]) == (2, 2 * one, 1, 1)
    assert cache.get(_key("v2")) is not None  # v2 now most recent; v3 next to go
    back = cache.get(_key("v1"))  # from disk: v3 is spilled to make room
    assert back is not None and back.layers[0][0][0, 0, 0, 0].item() == 1.0 and back.rope_deltas.item() == -1
    stats = cache.stats()
    assert (stats["disk_hits"], stats["entries"], stats["disk_entries"]) == (1, 2, 2)
    assert cache.get(_key("v4")) is None and cache.stats()["misses"] == 1
    big = PrefixCache(tmp_path / "d", byte_budget=100)  # an entry over the budget goes straight to disk
    big.put(_key("huge"), entry(10, 5))
    assert big.stats()["entries"] == 0 and big.stats()["disk_entries"] == 1 and big.get(_key("huge")) is not None


def test_make_generator_serves_videochat_and_reports_stats(model, tmp_path):
    cfg = model.config
    from engine.video_inputs import Clip
    from tests.chat_builders import bare_chat, cpu_plan

    gen = make_generator(bare_chat(model, plan=cpu_plan("tiny-iv3", "internvideo3"), cache_bytes=2**22, library=tmp_path))
    clip = Clip(None, "/videos/a.mp4", torch.zeros(4, 8, 8, 3, dtype=torch.uint8).numpy(), [0.0, 0.5, 1.0, 1.5])
    batch = synthetic_video_inputs(cfg, frames=2, height=4, width=8, seed=5)
    first = gen(batch, [clip], max_new_tokens=5, eos_token_id=None)
    assert not gen.last.prefix_hit
    second = gen(_ask(batch, (60, 61)), [clip], max_new_tokens=5, eos_token_id=None)
    assert gen.last.prefix_hit
    assert first.tolist() == _fresh(model, batch)[:5]
    assert second.tolist() == _fresh(model, _ask(batch, (60, 61)))[:5]
    stats = gen.stats()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["cache_kind"] == "latent"
    assert stats["bytes_per_token"] == latent_bytes_per_token(cfg.text_config, torch.float32)
    other_clip = Clip(None, "/videos/a.mp4", clip.frames, [0.0, 0.5, 1.0, 2.0])
    gen(batch, [other_clip], max_new_tokens=2)  # other frame times: another video fingerprint, a miss
    assert gen.stats()["misses"] == 2
    assert (tmp_path / "cache" / "prefix-kv").is_dir()
