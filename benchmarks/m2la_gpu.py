"""Decode throughput and peak GPU memory, InternVideo3-8B shape (M²LA absorbed) vs Qwen3-VL-8B (GQA), bf16.

Random weights with the real widths and depth (36 layers, hidden 4096, vocabulary 151,936; the vision tower is
shrunk: decoding never runs it). For each context length the cache is filled with random tensors of the right
shape (decode speed does not depend on their values; prefilling 128K tokens would only cost time), then greedy
steps of one token are timed through the model's own forward:
- gqa_dynamic: Qwen3-VL's GQA attention with transformers' DynamicCache (what stock `generate` uses; it grows
  by torch.cat every step);
- gqa_static: the same with transformers' StaticCache, preallocated to the final length;
- m2la_absorbed: InternVideo3's M²LA with our LatentCache (c 896 + rotated k_pe 128 per token per layer, one
  preallocated buffer) and the absorbed decode path (engine/models/internvideo3.py), which on CUDA runs as one
  MQA scaled_dot_product_attention call (query rows = heads, key [c ; k_pe], value c: a fused kernel streams each
  latent block once);
- m2la_absorbed_bmm: the same with the two-matmul kernel (reads every latent twice per step), for comparison.
The paper's 1.84x at 32K was presumably measured with FlashMLA, a kernel written for exactly this layout.

Needs a CUDA GPU: without one it says so and exits with status 2. `--cpu-smoke` runs the same code on a tiny
shape on the CPU (for tests; its numbers mean nothing). Prints a table, then one JSON line (only it with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NO_GPU = (
    "benchmarks/m2la_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here). "
    "Run it on a machine with an 80 GB GPU; benchmarks/m2la_cache.py measures cache bytes on the CPU."
)
VARIANTS = ("gqa_dynamic", "gqa_static", "m2la_absorbed", "m2la_absorbed_bmm")


def _configs(layers: int, smoke: bool):
    from transformers import Qwen3VLConfig

    from engine.models.internvideo3 import InternVideo3Config
    from engine.tiny import tiny_internvideo3_config

    if smoke:
        iv3 = tiny_internvideo3_config(num_hidden_layers=layers)
    else:
        iv3 = InternVideo3Config(text_config={"num_hidden_layers": layers})
    v = iv3.vision_config
    v.depth, v.hidden_size, v.intermediate_size, v.num_heads, v.deepstack_visual_indexes = 1, 64, 128, 2, [0]
    t = iv3.text_config
    gqa = Qwen3VLConfig(
        text_config=dict(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            head_dim=t.head_dim,
            rope_theta=t.rope_theta,
            rope_scaling=t.rope_scaling,
            max_position_embeddings=t.max_position_embeddings,
        ),
        vision_config=v.to_dict(),
    )
    for cfg in (iv3, gqa):
        cfg._attn_implementation = "sdpa"
    return gqa, iv3


def _build(kind: str, cfg, device, dtype):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from engine.models.internvideo3 import InternVideo3ForConditionalGeneration

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if kind == "gqa":
                model = Qwen3VLForConditionalGeneration(cfg)
            else:
                model = InternVideo3ForConditionalGeneration(cfg, latent=True)
    finally:
        torch.set_default_dtype(prev)
    return model.eval().to(device=device, dtype=dtype)


def _fill(variant: str, model, context: int, extra: int):
    """A cache holding `context` random tokens, with room for `extra` more."""
    import torch
    from transformers import DynamicCache, StaticCache

    from engine.latent_cache import LatentCache

    cfg = model.config.text_config
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    n, g, d = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    if variant == "gqa_dynamic":
        cache = DynamicCache()
        for i in range(n):
            cache.update(
                torch.randn(1, g, context, d, device=device, dtype=dtype),
                torch.randn(1, g, context, d, device=device, dtype=dtype),
                i,
            )
        return cache
    if variant == "gqa_static":
        cache = StaticCache(config=model.config, max_cache_len=context + extra)
        cache.early_initialization(1, g, d, dtype, device)
        for layer in cache.layers:
            layer.keys[:, :, :context].normal_()
            layer.values[:, :, :context].normal_()
        return cache
    cache = LatentCache(num_layers=n, capacity=context + extra)
    for layer in cache.layers:
        r = cfg.kv_lora_rank
        layer.update(
            torch.randn(1, 1, context, r, device=device, dtype=dtype),
            torch.randn(1, 1, context, cfg.qk_rope_head_dim, device=device, dtype=dtype),
        )
    return cache


def _cache_bytes(cache) -> int:
    from engine.latent_cache import LatentCache, cache_nbytes

    if isinstance(cache, LatentCache):
        return cache.allocated_bytes()
    return cache_nbytes(cache)


def _decode(model, cache, context: int, steps: int, warmup: int, sync) -> float:
    """Seconds per token over `steps` greedy single-token forwards after `warmup` ones."""
    import torch

    device = next(model.parameters()).device
    model.model.rope_deltas = torch.zeros(1, 1, dtype=torch.long, device=device)  # text continues at its index
    tok = torch.ones(1, 1, dtype=torch.long, device=device)
    elapsed = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        pos = torch.tensor([context + i], device=device)
        logits = model(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=pos, logits_to_keep=1).logits
        tok = logits[:, -1:].argmax(-1)
    sync()
    elapsed = time.perf_counter() - t0
    return elapsed / steps


def run(contexts, steps: int, warmup: int, layers: int, smoke: bool, variants=VARIANTS) -> dict:
    import torch

    if smoke:
        device, dtype = torch.device("cpu"), torch.float32

        def sync():
            return None

        def reset_peak():
            return None

        def peak():
            return 0

        name = "cpu (smoke test, numbers meaningless)"
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
        sync = torch.cuda.synchronize
        reset_peak = torch.cuda.reset_peak_memory_stats

        def peak():
            return torch.cuda.max_memory_allocated()

        name = torch.cuda.get_device_name()
    gqa_cfg, iv3_cfg = _configs(layers, smoke)
    rows = []
    torch.manual_seed(0)
    from engine.models.internvideo3 import force_attention

    m2la_variants = ("m2la_absorbed", "m2la_absorbed_bmm")
    for kind, cfg, kinds in (("gqa", gqa_cfg, ("gqa_dynamic", "gqa_static")), ("m2la", iv3_cfg, m2la_variants)):
        todo = [v for v in kinds if v in variants]
        if not todo:
            continue
        model = _build(kind, cfg, device, dtype)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        with torch.inference_mode():
            for context in contexts:
                for variant in todo:
                    row = {"variant": variant, "context": context, "weights_bytes": weights}
                    cache = None
                    try:
                        sync()
                        if not smoke:
                            torch.cuda.empty_cache()
                        reset_peak()
                        cache = _fill(variant, model, context, warmup + steps + 1)
                        row["cache_bytes"] = _cache_bytes(cache)
                        with force_attention(kernel="bmm" if variant.endswith("_bmm") else None):
                            sec = _decode(model, cache, context, steps, warmup, sync)
                        row.update(tokens_per_s=round(1.0 / sec, 2), ms_per_token=round(sec * 1e3, 3),
                                   peak_bytes=peak(), oom=False)
                    except torch.OutOfMemoryError as err:
                        row.update(oom=True, error=str(err).splitlines()[0])
                    finally:
                        del cache
                    rows.append(row)
                    if not smoke:
                        print(f"# {variant} {context}: {row.get('tokens_per_s', 'OOM')} tok/s", file=sys.stderr)
        del model
        if not smoke:
            torch.cuda.empty_cache()

    def tps(variant, context):
        for r in rows:
            if r["variant"] == variant and r["context"] == context and not r["oom"]:
                return r["tokens_per_s"]
        return None

    speedups = {}
    for context in contexts:
        m = tps("m2la_absorbed", context)
        for base in ("gqa_dynamic", "gqa_static"):
            b = tps(base, context)
            if m and b:
                speedups[f"{base}@{context}"] = round(m / b, 3)
    return {
        "benchmark": "m2la_gpu",
        "device": name,
        "dtype": str(dtype).replace("torch.", ""),
        "layers": layers,
        "steps": steps,
        "rows": rows,
        "speedup_m2la_over": speedups,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--contexts", default="8192,32768,131072", help="comma-separated context lengths")
    ap.add_argument("--steps", type=int, default=32, help="timed decode steps per point")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--layers", type=int, default=36, help="decoder layers (36 = the real depth)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU, to test this script")
    args = ap.parse_args(argv)

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    contexts = [int(x) for x in args.contexts.split(",") if x]
    result = run(contexts, args.steps, args.warmup, args.layers, args.cpu_smoke, tuple(args.variants.split(",")))
    if not args.json:
        gib = 2**30
        print(f"Decode, {result['device']}, {result['dtype']}, {result['layers']} layers, {result['steps']} steps")
        print(f"  {'context':>8} {'variant':<15}{'tok/s':>9}{'ms/tok':>9}{'cache GiB':>11}{'peak GiB':>10}")
        for r in result["rows"]:
            if r["oom"]:
                print(f"  {r['context']:>8} {r['variant']:<15}{'OOM':>9}")
                continue
            print(f"  {r['context']:>8} {r['variant']:<15}{r['tokens_per_s']:>9.1f}{r['ms_per_token']:>9.2f}"
                  f"{r['cache_bytes'] / gib:>11.2f}{r['peak_bytes'] / gib:>10.2f}")
        for k, v in result["speedup_m2la_over"].items():
            print(f"  M²LA absorbed / {k}: {v}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
