"""M²LA latent cache: bytes per token from allocated tensors (InternVideo3-8B widths) and per-video prefix reuse.

1. Bytes per token. Three random models with the 8B's real attention and MLP widths but truncated depth (2 layers;
   vocabulary and vision tower shrunk, they hold no cache) each prefill the same tokens in bf16:
   - the original Qwen3-VL-8B GQA attention (8 KV heads x 128) into its DynamicCache,
   - InternVideo3's M²LA attention on the stock path (expanded per-head K/V into a DynamicCache, what the
     remote code most likely does),
   - the same M²LA model on our latent path (LatentCache: c 896 + rotated k_pe 128).
   Bytes are summed over the cache tensors actually allocated, divided by tokens, scaled by 36 / 2 layers.
2. Time to first token with and without a prefix-cache hit on a tiny-but-long CPU run: a small InternVideo3 with
   a video of >= 4,096 visual tokens. cold = first question (vision encoder + prefix prefill + question);
   warm = a follow-up that restores the cached prefix (memory), warm_disk = the same from the safetensors file.
   Medians of --repeats runs, one torch thread by default (see --threads).

Prints a table, then one JSON line (only the JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEPTH = 2  # truncated depth of the 8B-width models
REAL_LAYERS = 36


def _shrink_8b(cfg):
    cfg.text_config.num_hidden_layers = DEPTH
    cfg.text_config.vocab_size = 1024  # the embedding holds no cache
    v = cfg.vision_config
    v.depth, v.hidden_size, v.intermediate_size, v.num_heads = 1, 64, 128, 2
    v.deepstack_visual_indexes = [0]
    cfg._attn_implementation = "sdpa"
    return cfg


def measure_8b_bytes(tokens: int = 32) -> dict:
    import torch
    from transformers import DynamicCache, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from engine.latent_cache import LatentCache, cache_nbytes
    from engine.latent_attention import install_latent_attention
    from engine.models.internvideo3 import InternVideo3Config, InternVideo3ForConditionalGeneration

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, tokens))
    iv3 = _shrink_8b(InternVideo3Config())
    # Qwen3-VL-8B's text model: same trunk, GQA attention with 8 KV heads and q/k norms.
    t = iv3.text_config
    qwen = Qwen3VLConfig(
        text_config=dict(
            vocab_size=1024, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=DEPTH, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
            rope_theta=t.rope_theta, rope_scaling=t.rope_scaling, max_position_embeddings=t.max_position_embeddings,
        ),
        vision_config=iv3.vision_config.to_dict(),
    )
    qwen._attn_implementation = "sdpa"
    out = {}
    with torch.no_grad():
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            gqa_model = Qwen3VLForConditionalGeneration(qwen).eval()
            cache = DynamicCache()
            gqa_model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            out["gqa"] = cache_nbytes(cache)
            del gqa_model, cache
            model = InternVideo3ForConditionalGeneration(iv3).eval()
        finally:
            torch.set_default_dtype(prev)
        model = model.to(torch.bfloat16)
        cache = DynamicCache()
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        out["expanded"] = cache_nbytes(cache)
        out["expanded_shape"] = list(cache.layers[0].keys.shape), list(cache.layers[0].values.shape)
        install_latent_attention(model)
        cache = LatentCache(config=model.config, capacity=tokens)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        out["latent"] = cache.allocated_bytes()
        out["latent_shape"] = list(cache.layers[0].keys.shape), list(cache.layers[0].values.shape)
        out["accounting"] = {
            "latent": model.latent_bytes_per_token(torch.bfloat16) * REAL_LAYERS // DEPTH,
            "expanded": model.expanded_bytes_per_token(torch.bfloat16) * REAL_LAYERS // DEPTH,
            "gqa": model.gqa_bytes_per_token(torch.bfloat16) * REAL_LAYERS // DEPTH,
        }
    scale = REAL_LAYERS / DEPTH / tokens
    return {
        "tokens": tokens,
        "latent_bytes_per_token": int(out["latent"] * scale),
        "gqa_bytes_per_token": int(out["gqa"] * scale),
        "expanded_mla_bytes_per_token": int(out["expanded"] * scale),
        "latent_layer_shapes": out["latent_shape"],
        "expanded_layer_shapes": out["expanded_shape"],
        "accounting": out["accounting"],
    }


def long_video_ttft(frames: int, grid: int, repeats: int = 3) -> dict:
    import torch

    from engine.generate import generate_with_prefix
    from engine.models.internvideo3 import InternVideo3ForConditionalGeneration
    from engine.tiny import randomize_, synthetic_video_inputs, tiny_internvideo3_config
    from engine.prefix_cache import PrefixCache, PrefixKey

    cfg = tiny_internvideo3_config(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=32, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32,
        kv_lora_rank=96, rope_scaling={"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
    )
    cfg.vision_config.hidden_size, cfg.vision_config.intermediate_size = 64, 128
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = randomize_(InternVideo3ForConditionalGeneration(cfg, latent=True).eval(), std=0.05)
    batch = synthetic_video_inputs(cfg, frames=frames, height=grid, width=grid, seed=1)
    video_tokens = int((batch["input_ids"] == cfg.video_token_id).sum())
    questions = [(5, 6, 7, 8), (9, 10, 11), (12, 13, 14, 15, 16), (17, 18)]

    def ask(q):
        ids = torch.cat([batch["input_ids"][:, :-4], torch.tensor([list(q)])], 1)
        return dict(batch, input_ids=ids, attention_mask=torch.ones_like(ids))

    key = PrefixKey("bench-video", f"{frames}x{grid}x{grid}", "bench", "bench-tiny", "fp32")
    gen = {"max_new_tokens": 1, "do_sample": False}
    with torch.inference_mode():
        generate_with_prefix(model, ask(questions[0]), None, None, **gen)  # warm up kernels and allocator
        cold, warm, warm_disk, same = [], [], [], True
        for i in range(repeats):
            folder = Path(tempfile.mkdtemp(prefix="m2la-bench-"))
            cache = PrefixCache(folder, byte_budget=2**31)
            t0 = time.perf_counter()
            first = generate_with_prefix(model, ask(questions[0]), cache, key, **gen)
            cold.append(time.perf_counter() - t0)
            assert not first.prefix_hit
            t0 = time.perf_counter()
            hit = generate_with_prefix(model, ask(questions[1 + i % 3]), cache, key, **gen)
            warm.append(time.perf_counter() - t0)
            assert hit.prefix_hit
            cache.flush()
            disk = PrefixCache(folder, byte_budget=2**31)
            t0 = time.perf_counter()
            from_disk = generate_with_prefix(model, ask(questions[1 + i % 3]), disk, key, **gen)
            warm_disk.append(time.perf_counter() - t0)
            assert from_disk.prefix_hit
            same &= from_disk.tokens.tolist() == hit.tokens.tolist()
            fresh = model.generate(**ask(questions[1 + i % 3]), **gen)[0, -1:].tolist()
            same &= fresh == hit.tokens.tolist()
        entry = cache.get(key)
    cold_s, warm_s, disk_s = (statistics.median(x) for x in (cold, warm, warm_disk))
    return {
        "video_tokens": video_tokens,
        "prefix_tokens": entry.length,
        "prefix_cache_bytes": entry.nbytes(),
        "model": f"InternVideo3 layout, hidden {cfg.text_config.hidden_size}, {cfg.text_config.num_hidden_layers} "
        f"layers, r {cfg.text_config.kv_lora_rank}, fp32 CPU",
        "cold_ttft_s": round(cold_s, 4),
        "warm_ttft_s": round(warm_s, 4),
        "warm_disk_ttft_s": round(disk_s, 4),
        "warm_over_cold": round(warm_s / cold_s, 4),
        "warm_tokens_equal_fresh": bool(same),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--tokens", type=int, default=32, help="tokens prefilled in the 8B-width bytes measurement")
    ap.add_argument("--frames", type=int, default=16, help="temporal patches of the long video (tokens = f*g*g/4)")
    ap.add_argument("--grid", type=int, default=32, help="patches per side of each frame")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared 2-core machine, 2 threads stall on each other)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    sizes = measure_8b_bytes(args.tokens)
    ttft = long_video_ttft(args.frames, args.grid, args.repeats)
    result = {
        "benchmark": "m2la_cache",
        "shape": "InternVideo3-8B (36 layers, 32 heads, r 896, d_n = d_r = d_v = 128) vs Qwen3-VL-8B GQA (8 KV heads)",
        "dtype": "bfloat16",
        "latent_bytes_per_token": sizes["latent_bytes_per_token"],
        "gqa_bytes_per_token": sizes["gqa_bytes_per_token"],
        "expanded_mla_bytes_per_token": sizes["expanded_mla_bytes_per_token"],
        "latent_over_gqa": round(sizes["latent_bytes_per_token"] / sizes["gqa_bytes_per_token"], 4),
        "latent_over_expanded": round(sizes["latent_bytes_per_token"] / sizes["expanded_mla_bytes_per_token"], 4),
        "accounting_matches": sizes["accounting"]
        == {
            "latent": sizes["latent_bytes_per_token"],
            "expanded": sizes["expanded_mla_bytes_per_token"],
            "gqa": sizes["gqa_bytes_per_token"],
        },
        "measured_layers": DEPTH,
        "threads": args.threads,
        "latent_layer_shapes": sizes["latent_layer_shapes"],
        "expanded_layer_shapes": sizes["expanded_layer_shapes"],
        **ttft,
    }
    if not args.json:
        kib = 1024
        print("Cache bytes per token, InternVideo3-8B shape (bf16, measured on 2 layers, x18)")
        print(f"  {'layout':<34}{'bytes/token':>12}{'KiB':>8}{'vs latent':>11}")
        for name, key in (
            ("Qwen3-VL-8B GQA (K,V 8x128)", "gqa_bytes_per_token"),
            ("M²LA stock HF (expanded K/V)", "expanded_mla_bytes_per_token"),
            ("M²LA latent [c ; k_pe]", "latent_bytes_per_token"),
        ):
            v = result[key]
            print(f"  {name:<34}{v:>12,}{v / kib:>8.0f}{v / result['latent_bytes_per_token']:>10.1f}x")
        print(f"  latent/GQA = {result['latent_over_gqa']}, latent/expanded = {result['latent_over_expanded']}")
        print()
        print(f"Prefix reuse, {result['model']}, {result['video_tokens']} video tokens "
              f"({result['prefix_tokens']} prefix tokens, {result['prefix_cache_bytes'] / 2**20:.1f} MiB cached)")
        print(f"  cold TTFT       {result['cold_ttft_s']:.3f} s")
        print(f"  warm TTFT       {result['warm_ttft_s']:.3f} s   (x{result['warm_over_cold']})")
        print(f"  warm from disk  {result['warm_disk_ttft_s']:.3f} s")
        print(f"  warm tokens == fresh run: {result['warm_tokens_equal_fresh']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
