"""bitsandbytes quantization: the choices, the modules left dense, the load-time config, and dense weights back.

`bnb_config(quantization, device, skip_modules)` is what engine/loading.py hands `from_pretrained`;
`dense_weight(linear)` turns a quantized Linear's weight back into a dense tensor, for the code that reads
weights directly (the absorbed M²LA decode's kv_b_proj, the GQA -> M²LA converter). torch and bitsandbytes are
imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

QUANTIZATIONS = ("auto", "nf4", "int8", "bf16")

# Modules bitsandbytes must leave alone. "model.visual" is the dotted name that works in 4.57 and 5.x
# (offline-stack.md section 4: plain "visual" stops matching in 5.x); lm_head stays in bf16 for quality;
# kv_b_proj because the absorbed M2LA decode reads its weight as [H, d_n + d_v, r] (internvideo3.md 2.3).
SKIP_MODULES = {
    "qwen3_vl": ["model.visual", "visual", "lm_head"],
    "tiny": ["model.visual", "visual", "lm_head"],
    "internvideo3": ["model.visual", "visual", "lm_head", "kv_b_proj"],
}


def bnb_config(quantization: str, device: str, skip_modules: list[str]):
    """The BitsAndBytesConfig for nf4 / int8, or None for bf16 (no quantization)."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if device == "cuda" else torch.float32
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=skip_modules,  # replaces the default list: name lm_head ourselves
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    return None


def dense_weight(linear: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A Linear's weight as a dense tensor (in `dtype` when given), dequantizing bitsandbytes 4-bit / 8-bit
    weights (§5 item 9)."""
    weight = linear.weight
    if getattr(weight, "quant_state", None) is not None:  # bnb Params4bit
        import bitsandbytes.functional as bnbf

        weight = bnbf.dequantize_4bit(weight.data, weight.quant_state)
    elif getattr(weight, "SCB", None) is not None or getattr(getattr(linear, "state", None), "SCB", None) is not None:
        scb = weight.SCB if getattr(weight, "SCB", None) is not None else linear.state.SCB
        weight = weight.data.float() * (scb.float()[:, None] / 127.0)  # bnb Int8Params: row-wise absmax
    return weight if dtype is None else weight.to(dtype)
