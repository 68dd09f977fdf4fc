"""InternVideo3 (Qwen3-VL with M²LA text attention): config, the latent attention layer, the model class.

M²LA per layer, for a post-norm hidden state x (reference/internvideo3.md §1.2):
    q   = W_q x + b_q              -> per head [q_nope (d_n) ; q_pe (d_r)]
    a   = W_a x + b_a              -> [c (r) ; k_pe (d_r)]   one k_pe shared by all heads
    kv  = W_b c                    -> per head [k_nope = W_UK_h c (d_n) ; v = W_UV_h c (d_v)]
    score_h(t, s) = tau * (q_nope_h(t) . k_nope_h(s) + RoPE(q_pe_h)(t) . RoPE(k_pe)(s)),  tau = (d_n + d_r)^-1/2
RoPE uses Qwen3-VL's interleaved-MRoPE cos/sin; with `rope_interleave` the d_r dims are first de-interleaved
(pairs (2j, 2j+1) rotate together), the DeepSeek-V3 convention the checkpoint uses.

Two paths live side by side (STYLE 11):
- "stock": what the remote code most likely does (HF DeepseekV3Attention): expand per-head K [H, d_n+d_r] and
  V [H, d_v] and put them into a standard Cache, 12,288 values per token per layer for the 8B.
- latent: cache only c (r) and the rotated k_pe (d_r): 1,024 values per token per layer. Long chunks (prefill)
  expand K/V from the cached latents and run the model's attention kernel; short chunks (decode, a follow-up
  question) use the absorbed form: q~_h = W_UK_h^T q_nope_h scores against c directly, and W_UV_h is applied
  after the attention-weighted sum of latents.
`attention_path()` picks the path. The absorbed form runs as two matmuls on the CPU and as one MQA
scaled_dot_product_attention call on CUDA (`absorbed_kernel()`): the query rows are the heads, the key is
[c ; k_pe] read straight from the cache's single buffer, the value is c, a view of the same buffer.
`force_attention(path=..., kernel=...)` overrides either choice inside a block, for tests and benchmarks.

Switching a loaded model (ours, or remote code with the same projections) to the latent path, and checking it,
is engine/latent_attention.py; tiny configs and inputs for tests are in engine/tiny.py.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, Iterator

import torch
from torch import nn
from transformers.models.qwen3_vl.configuration_qwen3_vl import (
    Qwen3VLConfig,
    Qwen3VLTextConfig,
    Qwen3VLVisionConfig,
)
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLForConditionalGeneration

from engine.quantization import dense_weight

# Queries per chunk up to which the latent path uses the absorbed form; longer chunks expand K/V (prefill).
ABSORB_MAX_QUERY = 64
# What force_attention may override, and the values each takes (None: the automatic choice).
_CHOICES = {"path": (None, "expanded", "absorbed"), "kernel": (None, "bmm", "sdpa")}
_overrides: dict[str, str | None] = {"path": None, "kernel": None}


# --------------------------------------------------------------------------------------------------------- config


class InternVideo3TextConfig(Qwen3VLTextConfig):
    """Qwen3-VL text config plus the M²LA fields. Defaults are InternVideo3-8B's text model.

    kv_lora_rank: latent width r (896); kv_lora_rank_list: optional per-layer ranks (overrides kv_lora_rank).
    qk_nope_head_dim / qk_rope_head_dim / v_head_dim: d_n, d_r, d_v (128 each); d_r must equal head_dim, since
    Qwen3-VL's rotary embedding produces head_dim-wide cos/sin.
    q_proj_bias / kv_a_proj_bias: biases on q_proj and kv_a_proj_with_mqa (both on in the checkpoint).
    qk_latent_layernorm: RMSNorm on c before kv_b_proj (off in the checkpoint; DeepSeek-V3 has it).
    rope_interleave: de-interleave the rope dims before rotate_half (DeepSeek-V3 convention; on).
    attention_scale: score scale; None means tau = (d_n + d_r)^-1/2.
    num_key_value_heads stays the original Qwen3-VL's (8) so GQA cache costs can be compared.
    """

    model_type = "internvideo3_text"

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 12288,
        num_hidden_layers: int = 36,
        num_attention_heads: int = 32,
        num_key_value_heads: int = 8,
        head_dim: int = 128,
        max_position_embeddings: int = 262144,
        rope_theta: float = 5_000_000.0,
        rope_scaling: dict | None = None,
        kv_lora_rank: int = 896,
        kv_lora_rank_list: list[int] | None = None,
        qk_nope_head_dim: int = 128,
        qk_rope_head_dim: int = 128,
        v_head_dim: int = 128,
        q_proj_bias: bool = True,
        kv_a_proj_bias: bool = True,
        qk_latent_layernorm: bool = False,
        rope_interleave: bool = True,
        attention_scale: float | None = None,
        **kwargs: Any,
    ):
        if rope_scaling is None:
            rope_scaling = {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True}
        self.kv_lora_rank = kv_lora_rank
        self.kv_lora_rank_list = list(kv_lora_rank_list) if kv_lora_rank_list is not None else None
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.q_proj_bias = q_proj_bias
        self.kv_a_proj_bias = kv_a_proj_bias
        self.qk_latent_layernorm = qk_latent_layernorm
        self.rope_interleave = rope_interleave
        self.attention_scale = attention_scale
        super().__init__(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            head_dim=head_dim,
            max_position_embeddings=max_position_embeddings,
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            **kwargs,
        )
        assert qk_rope_head_dim == head_dim, (
            f"qk_rope_head_dim {qk_rope_head_dim} must equal head_dim {head_dim} (the rotary embedding's width)"
        )
        if self.kv_lora_rank_list is not None:
            assert len(self.kv_lora_rank_list) == num_hidden_layers, (
                f"kv_lora_rank_list has {len(self.kv_lora_rank_list)} entries, model has {num_hidden_layers} layers"
            )

    def latent_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        return latent_bytes_per_token(self, dtype)

    def expanded_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        return expanded_bytes_per_token(self, dtype)

    def gqa_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        return gqa_bytes_per_token(self, dtype)


class InternVideo3Config(Qwen3VLConfig):
    """Qwen3-VL config whose text part is M²LA. Defaults: InternVideo3-8B (vision tower of Qwen3-VL-8B)."""

    model_type = "internvideo3"
    sub_configs = {"vision_config": Qwen3VLVisionConfig, "text_config": InternVideo3TextConfig}

    def __init__(self, text_config=None, vision_config=None, **kwargs: Any):
        if vision_config is None:
            vision_config = {"out_hidden_size": 4096}  # the rest of Qwen3VLVisionConfig's defaults are the 8B's
        super().__init__(text_config=text_config, vision_config=vision_config, **kwargs)


def layer_rank(config: Any, layer_idx: int) -> int:
    """The latent width r of one layer (kv_lora_rank_list wins over kv_lora_rank)."""
    ranks = getattr(config, "kv_lora_rank_list", None)
    return int(ranks[layer_idx]) if ranks else int(config.kv_lora_rank)


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def latent_bytes_per_token(config: Any, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes the latent cache holds per token, all layers: sum over layers of (r_l + d_r) values."""
    n = config.num_hidden_layers
    return sum(layer_rank(config, i) + config.qk_rope_head_dim for i in range(n)) * _dtype_bytes(dtype)


def expanded_bytes_per_token(config: Any, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes per token of the stock DeepseekV3-style cache: per head K (d_n + d_r) and V (d_v), all layers."""
    h = config.num_attention_heads
    per_layer = h * (config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim)
    return config.num_hidden_layers * per_layer * _dtype_bytes(dtype)


def gqa_bytes_per_token(config: Any, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes per token of the original Qwen3-VL GQA cache: K and V for num_key_value_heads x head_dim, all layers."""
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * _dtype_bytes(dtype)


# ---------------------------------------------------------------------------------------------------- path choice


@contextlib.contextmanager
def force_attention(**choices: str | None) -> Iterator[None]:
    """Override the automatic choices inside the block, for tests and benchmarks: path="expanded" | "absorbed"
    for every latent-mode layer, kernel="bmm" (two matmuls) | "sdpa" (one fused pass) for the absorbed form.
    A choice not named keeps its current value; None restores the automatic one."""
    for name, value in choices.items():
        assert name in _CHOICES, f"unknown choice {name!r}; use {' or '.join(k + '=' for k in _CHOICES)}"
        allowed = [v for v in _CHOICES[name] if v]
        assert value in _CHOICES[name], f"unknown {name} {value!r}; use {' or '.join(map(repr, allowed))}"
    previous = dict(_overrides)
    _overrides.update(choices)
    try:
        yield
    finally:
        _overrides.update(previous)


def absorbed_kernel(device: torch.device) -> str:
    """SDPA on CUDA: its fused kernels stream each [c ; k_pe] block once for both the scores and the weighted
    sum. bmm elsewhere: on the CPU SDPA would fall back to the same two matmuls, with extra copies."""
    if _overrides["kernel"] is not None:
        return _overrides["kernel"]
    return "sdpa" if device.type == "cuda" else "bmm"


def attention_path(mode: str, query_len: int) -> str:
    """The one place that picks: 'stock' for stock-mode layers; else absorbed for short chunks, expanded for long."""
    if mode == "stock":
        return "stock"
    if _overrides["path"] is not None:
        return _overrides["path"]
    return "absorbed" if query_len <= ABSORB_MAX_QUERY else "expanded"


# ----------------------------------------------------------------------------------------------------------- rope


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_m2la_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate x [B, h, T, d_r] with cos/sin [B, T, d_r] (Qwen3-VL's, cat(freqs, freqs)).

    With interleave, pairs (2j, 2j+1) of x are first moved to (j, j + d_r/2), so they rotate by frequency j.
    """
    if interleave:
        b, h, t, d = x.shape
        x = x.view(b, h, t, d // 2, 2).transpose(-1, -2).reshape(b, h, t, d)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def _joint_view(c: torch.Tensor, k_rot: torch.Tensor) -> torch.Tensor | None:
    """[c ; k_rot] as one view when k_rot sits right after c in the same buffer (LatentLayer's layout)."""
    r, d_r = c.shape[-1], k_rot.shape[-1]
    if (
        c.stride() == k_rot.stride()
        and c.stride(-1) == 1
        and c.stride(-2) == r + d_r
        and k_rot.data_ptr() == c.data_ptr() + r * c.element_size()
    ):
        return c.as_strided((*c.shape[:-1], r + d_r), c.stride())
    return None


# ---------------------------------------------------------------------------------------------------------- masks


def additive_mask(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int, dtype: torch.dtype, device
) -> torch.Tensor | None:
    """Turn whatever create_causal_mask produced (None, bool 4-D, additive 4-D, 2-D padding) into an additive
    [B, 1, T, S] mask, or None when nothing is masked. The T queries are the last T of the S keys."""
    neg = torch.finfo(dtype).min
    if attention_mask is not None and attention_mask.dim() == 4:
        m = attention_mask[:, :, -q_len:, :kv_len]
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(~m, neg)
        return m.to(dtype)
    mask = None
    if q_len > 1:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
        causal = torch.arange(kv_len, device=device)[None, :] <= q_pos  # [T, S]
        mask = torch.zeros(q_len, kv_len, dtype=dtype, device=device).masked_fill(~causal, neg)[None, None]
    if attention_mask is not None and attention_mask.dim() == 2:  # [B, S] padding, 1 = keep
        pad = torch.zeros(batch, 1, 1, kv_len, dtype=dtype, device=device)
        pad = pad.masked_fill(attention_mask[:, None, None, :kv_len] == 0, neg)
        mask = pad if mask is None else (mask + pad).clamp(min=neg)
    return mask


# ------------------------------------------------------------------------------------------------------ attention


def attention_shape(hidden_size: int, heads: int, d_nope: int, d_rope: int, d_v: int, rank: int,
                    **options: Any) -> SimpleNamespace:
    """The config fields InternVideo3LatentAttention reads, for one built outside a model config (the GQA
    converter, a wrapped foreign module: engine/latent_attention.py). `options`: rope_interleave, attention_scale, attention_dropout,
    q_proj_bias, kv_a_proj_bias, qk_latent_layernorm, ...; the constructor's defaults stand for what is left out."""
    return SimpleNamespace(hidden_size=hidden_size, num_attention_heads=heads, qk_nope_head_dim=d_nope,
                           qk_rope_head_dim=d_rope, v_head_dim=d_v, kv_lora_rank=rank, kv_lora_rank_list=None,
                           **options)


class InternVideo3LatentAttention(nn.Module):
    """Drop-in replacement for Qwen3VLTextAttention with M²LA projections (same forward signature).

    mode "stock" caches expanded per-head K/V (the reference); mode "latent" caches [c ; RoPE(k_pe)] through
    `past_key_values.update(c, k_rot, layer_idx)`: c [B, 1, T, r], k_rot [B, 1, T, d_r].
    """

    def __init__(self, config: Any, layer_idx: int, mode: str = "stock"):
        super().__init__()
        assert mode in ("stock", "latent"), f"mode {mode!r}: use 'stock' or 'latent'"
        self.config = config
        self.layer_idx = layer_idx
        self.mode = mode
        self.num_heads = config.num_attention_heads
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.kv_lora_rank = layer_rank(config, layer_idx)
        self.rope_interleave = bool(getattr(config, "rope_interleave", True))
        scale = getattr(config, "attention_scale", None)
        self.scaling = float(scale) if scale is not None else self.qk_head_dim**-0.5  # tau, not d_v^-1/2
        self.num_key_value_groups = 1  # the stock kernels' repeat_kv must not repeat expanded heads
        self.attention_dropout = getattr(config, "attention_dropout", 0.0)
        self.is_causal = True
        self._dense_kv_b: torch.Tensor | None = None

        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.qk_head_dim, bias=getattr(config, "q_proj_bias", True))
        self.kv_a_proj_with_mqa = nn.Linear(
            hidden, self.kv_lora_rank + self.qk_rope_head_dim, bias=getattr(config, "kv_a_proj_bias", True)
        )
        if getattr(config, "qk_latent_layernorm", False):
            from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRMSNorm

            self.kv_a_layernorm = Qwen3VLTextRMSNorm(self.kv_lora_rank, eps=config.rms_norm_eps)
        else:
            self.kv_a_layernorm = None
        self.kv_b_proj = nn.Linear(
            self.kv_lora_rank, self.num_heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, hidden, bias=False)

    # -- helpers ----------------------------------------------------------------------------------------------

    def kv_b_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """W_b as [H, d_n + d_v, r]; quantized weights are dequantized once and kept."""
        w = self.kv_b_proj.weight
        if isinstance(w, nn.Parameter) and w.dtype.is_floating_point and getattr(w, "quant_state", None) is None:
            dense = w
        else:
            if self._dense_kv_b is None or self._dense_kv_b.dtype != dtype:
                self._dense_kv_b = dense_weight(self.kv_b_proj, dtype)
            dense = self._dense_kv_b
        return dense.to(dtype).view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)

    def _attention_interface(self):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.qwen3_vl.modeling_qwen3_vl import eager_attention_forward

        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        return eager_attention_forward if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]

    def _project(self, hidden_states, position_embeddings):
        """q_nope [B,H,T,d_n], rotated q_pe [B,H,T,d_r], latent c [B,1,T,r], rotated k_pe [B,1,T,d_r]."""
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, self.num_heads, self.qk_head_dim).transpose(1, 2)
        q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        a = self.kv_a_proj_with_mqa(hidden_states)
        c, k_pe = a.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        if self.kv_a_layernorm is not None:
            c = self.kv_a_layernorm(c)
        cos, sin = position_embeddings
        q_pe = apply_m2la_rope(q_pe, cos, sin, self.rope_interleave)
        k_pe = apply_m2la_rope(k_pe.view(b, 1, t, self.qk_rope_head_dim), cos, sin, self.rope_interleave)
        return q_nope, q_pe, c.view(b, 1, t, self.kv_lora_rank), k_pe

    def _expand(self, c: torch.Tensor, k_rot: torch.Tensor):
        """Per-head K [B,H,S,d_n+d_r] and V [B,H,S,d_v] from latents c [B,1,S,r] and rotated k_pe [B,1,S,d_r]."""
        b, _, s, _ = c.shape
        kv = self.kv_b_proj(c[:, 0]).view(b, s, self.num_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.transpose(1, 2).split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat((k_nope, k_rot.expand(b, self.num_heads, s, self.qk_rope_head_dim)), dim=-1)
        return k, v

    def _kernel(self, query, key, value, attention_mask, **kwargs):
        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        if impl in ("flash_attention_2", "sdpa") and self.qk_head_dim > self.v_head_dim:
            # fused kernels want one head width: zero-pad V (the extra outputs are zeros, sliced off below);
            # on the CPU this turns SDPA's math fallback into its flash kernel (3x faster at 4K tokens)
            value = nn.functional.pad(value, [0, self.qk_head_dim - self.v_head_dim])
        out, weights = self._attention_interface()(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return out[..., : self.v_head_dim], weights  # out: [B, T, H, d_v]

    def _absorbed(self, q_nope, q_pe, c, k_rot, attention_mask):
        """Attention straight on the latents: [B, T, H, d_v]. All H heads share one key, so heads act as rows."""
        b, h, t, _ = q_nope.shape
        s = c.shape[2]
        w = self.kv_b_weight(q_nope.dtype)
        w_uk, w_uv = w[:, : self.qk_nope_head_dim], w[:, self.qk_nope_head_dim :]  # [H, d_n, r], [H, d_v, r]
        q_abs = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # W_UK folded into the query
        if absorbed_kernel(q_nope.device) == "sdpa":
            return self._absorbed_sdpa(q_abs, q_pe, c, k_rot, attention_mask, w_uv), None
        c2, k2 = c[:, 0], k_rot[:, 0]  # [B, S, r], [B, S, d_r]
        scores = torch.bmm(q_abs.reshape(b, h * t, -1), c2.transpose(1, 2))
        scores = scores + torch.bmm(q_pe.reshape(b, h * t, -1), k2.transpose(1, 2))
        scores = (scores * self.scaling).view(b, h, t, s)
        mask = additive_mask(attention_mask, b, t, s, scores.dtype, scores.device)
        if mask is not None:
            scores = scores + mask
        acc = torch.float64 if scores.dtype == torch.float64 else torch.float32  # fp32 softmax, fp64 kept for tests
        probs = torch.softmax(scores, dim=-1, dtype=acc).to(c.dtype)
        o_lat = torch.bmm(probs.view(b, h * t, s), c2).view(b, h, t, -1)  # [B, H, T, r]
        return torch.einsum("bhtr,hvr->bthv", o_lat, w_uv), probs  # W_UV applied after the sum

    def _absorbed_sdpa(self, q_abs, q_pe, c, k_rot, attention_mask, w_uv):
        """The absorbed form as one MQA call: queries [q~ ; q_pe] of all heads as rows of one head, key
        [c ; k_rot], value c (a view of the same buffer)."""
        b, h, t, r = q_abs.shape
        s = c.shape[2]
        joint = _joint_view(c, k_rot)
        if joint is None:  # not one buffer (no LatentCache): one copy
            joint = torch.cat((c, k_rot), dim=-1)
        query = torch.cat((q_abs, q_pe), dim=-1).reshape(b, 1, h * t, -1)
        mask = additive_mask(attention_mask, b, t, s, query.dtype, query.device)  # [B|1, 1, T, S]
        if mask is not None:  # rows are (head, t) pairs, head-major
            mask = mask[:, :, None].expand(mask.shape[0], 1, h, t, s).reshape(mask.shape[0], 1, h * t, s)
        o_lat = nn.functional.scaled_dot_product_attention(
            query, joint, joint[..., :r], attn_mask=mask, scale=self.scaling
        )  # [B, 1, H*T, r]
        return torch.einsum("bhtr,hvr->bthv", o_lat.view(b, h, t, r), w_uv)

    # -- forward ----------------------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Any = None,
        cache_position: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = hidden_states.shape
        q_nope, q_pe, c, k_rot = self._project(hidden_states, position_embeddings)
        cos, sin = position_embeddings
        cache_kwargs = {"sin": sin, "cos": cos, "cache_position": cache_position}
        path = attention_path(self.mode, t)
        query = None
        if path == "stock":
            query = torch.cat((q_nope, q_pe), dim=-1)
            key, value = self._expand(c, k_rot)
            if past_key_values is not None:
                key, value = past_key_values.update(key, value, self.layer_idx, cache_kwargs)
            out, weights = self._kernel(query, key, value, attention_mask, **kwargs)
        else:
            if past_key_values is not None:
                c, k_rot = past_key_values.update(c, k_rot, self.layer_idx, cache_kwargs)
            if path == "expanded":
                key, value = self._expand(c, k_rot)
                out, weights = self._kernel(torch.cat((q_nope, q_pe), dim=-1), key, value, attention_mask, **kwargs)
            else:
                out, weights = self._absorbed(q_nope, q_pe, c, k_rot, attention_mask)
        out = self.o_proj(out.reshape(b, t, self.num_heads * self.v_head_dim).contiguous())
        return out, weights


# ---------------------------------------------------------------------------------------------------------- model


class InternVideo3ForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """Qwen3-VL whose text attention is M²LA. `latent=True` builds the layers in latent mode directly."""

    config_class = InternVideo3Config

    def __init__(self, config: InternVideo3Config, latent: bool = False):
        super().__init__(config)
        text = config.text_config
        for i, layer in enumerate(self.model.language_model.layers):
            attn = InternVideo3LatentAttention(text, i, mode="latent" if latent else "stock")
            attn.apply(self._init_weights)
            layer.self_attn = attn

    def latent_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        return latent_bytes_per_token(self.config.text_config, dtype or self.dtype)

    def expanded_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        return expanded_bytes_per_token(self.config.text_config, dtype or self.dtype)

    def gqa_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        return gqa_bytes_per_token(self.config.text_config, dtype or self.dtype)


__all__ = [
    "ABSORB_MAX_QUERY",
    "InternVideo3Config",
    "InternVideo3ForConditionalGeneration",
    "InternVideo3LatentAttention",
    "InternVideo3TextConfig",
    "absorbed_kernel",
    "additive_mask",
    "apply_m2la_rope",
    "attention_path",
    "attention_shape",
    "expanded_bytes_per_token",
    "force_attention",
    "gqa_bytes_per_token",
    "latent_bytes_per_token",
    "layer_rank",
]
