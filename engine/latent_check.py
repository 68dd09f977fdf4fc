"""The end-to-end check of an installed latent attention path: greedy decode steps against the model's own.

`check_latent_decode(model)` returns "" when decoding through the LatentCache (plain and with the per-video
prefix split of engine/generate.py) agrees with the model's own attention, else one sentence saying where it
does not; engine/chat.py keeps the model's own cache when it does not.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.generate import generate_with_prefix, new_cache
from engine.latent_attention import own_attention
from engine.tiny import synthetic_video_inputs


@torch.no_grad()
def check_latent_decode(model: nn.Module, steps: int = 3) -> str:
    """End-to-end check of an installed latent path: "" when it agrees with the model's own, else why not.

    A short prompt with two frame pairs is decoded greedily for `steps` tokens (a) by the model's own attention
    with no cache at all (one full forward per token: the reference), (b) by model.generate through a LatentCache
    (the decoder's cache keyword, rope_deltas from the prefill) and (c) by engine.generate's prefix split (prefix
    prefilled apart, rope_deltas restored). Every step's logits of (b) must match (a) within the dtype's tolerance
    and (b), (c) must pick (a)'s tokens, a near tie in (a)'s logits excepted.
    """
    cfg = model.config
    merge = cfg.vision_config.spatial_merge_size
    device = next(model.parameters()).device
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    special = set()
    for c in (cfg, text):
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                     "pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(c, name, None)
            special.update(value if isinstance(value, (list, tuple)) else [value])
    plain = [i for i in range(2, 64) if i not in special]  # ordinary token ids for the text around the frames
    # A random (or odd) model may rank a vision token first; decoding one would ask for frames that are not there.
    vision = sorted(i for c in (cfg, text) for i in (getattr(c, n, None) for n in (
        "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")) if isinstance(i, int))
    vision_ids = torch.tensor(vision, dtype=torch.long, device=device)
    batch = synthetic_video_inputs(cfg, frames=2, height=2 * merge, width=2 * merge, seed=7,
                                   before=plain[:3], question=plain[3:7], stamps=plain[7:9])
    batch = {k: v.to(device) for k, v in batch.items()}
    length = batch["input_ids"].shape[1]
    core = getattr(model, "model", None)
    dtype = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), torch.float32)
    tol = {torch.float64: 1e-6, torch.float32: 1e-3}.get(dtype, 5e-2)

    ref_tokens, ref_logits = [], []
    with own_attention(model):
        ids = batch["input_ids"]
        for _ in range(steps):
            if hasattr(core, "rope_deltas"):
                core.rope_deltas = None
            out = model(**dict(batch, input_ids=ids, attention_mask=torch.ones_like(ids)), use_cache=False)
            logits = out.logits[0, -1].float()
            ref_logits.append(logits)
            ref_tokens.append(int(logits.index_fill(0, vision_ids, float("-inf")).argmax()))
            ids = torch.cat([ids, ids.new_tensor([[ref_tokens[-1]]])], dim=1)

    gen = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, temperature=None, top_p=None,
               top_k=None, eos_token_id=None, suppress_tokens=vision or None)
    out = model.generate(**batch, past_key_values=new_cache(model, length + steps), output_scores=True,
                         return_dict_in_generate=True, **gen)
    latent_tokens = out.sequences[0, length:].tolist()
    split_tokens = generate_with_prefix(model, batch, None, None, **gen).tokens.tolist()

    def near_tie(step: int, token: int) -> bool:
        ref = ref_logits[step]
        return float(ref.max() - ref[token]) <= tol * max(1.0, float(ref.abs().max()))

    for step in range(steps):
        if step >= len(latent_tokens):
            return f"the latent path stopped after {len(latent_tokens)} of {steps} decode steps"
        ref = ref_logits[step]
        keep = torch.ones_like(ref, dtype=torch.bool).index_fill(0, vision_ids, False)  # suppressed ids are -inf
        diff = float((out.scores[step][0].float() - ref)[keep].abs().max()) / max(1.0, float(ref.abs().max()))
        if diff > tol:
            return (f"decode step {step + 1}: the latent cache's logits differ from the model's own attention "
                    f"(relative max difference {diff:.2e} > {tol:.0e})")
        for path, tokens in (("latent cache", latent_tokens), ("latent cache with prefix reuse", split_tokens)):
            if tokens[step] != ref_tokens[step]:
                if near_tie(step, tokens[step]):
                    return ""  # a tie decided the other way; the rest of the sequence is not comparable
                return (f"decode step {step + 1}: the {path} picked token {tokens[step]}, the model's own "
                        f"attention {ref_tokens[step]}")
    return ""
