"""Convert Qwen3-VL's GQA text attention into M²LA form (TransMLA-style), so the latent cache serves stock models.

Per layer, with H query heads, G key/value heads of width d, n = H / G (all math in float64):

1. q/k RMSNorm. Qwen3's per-head q_norm/k_norm divide by each token's RMS, which no linear map reproduces. The
   norm weight is folded into q_proj/k_proj together with the mean inverse RMS over calibration inputs (or over
   Gaussian inputs when none are given). Exact only when the layer has no q/k norm (nn.Identity).
2. RoPE (RoRoPE). For each frequency j, the G heads' key pairs (rows j and j + d/2) rotate by the same angle, so
   any mixing across heads commutes with RoPE. The principal mixing vector u_j (top eigenvector of the G x G
   pair covariance) gives the one shared rope key k_pe^(j) = sum_g u_j[g] K_g^(j); query head h in group g gets
   q_pe_h^(j) = u_j[g] Q_h^(j). What is left, R_g^(j) = K_g^(j) - u_j[g] k_pe^(j), loses its rotation: it is
   kept as the head's position-free key part k_nope (q_nope_h = Q_h). Exact iff every R_g is zero: G == 1
   (one key head, MQA) or the heads' key pairs are collinear at every frequency.
3. Latent (BKV-PCA). The stacked [R_1..R_G ; V_1..V_G] (2Gd rows, bias as an extra input column) is projected on
   its top-r principal output directions U_r (weighted by the calibration covariance): kv_a's c rows = U_r^T M,
   kv_b = U_r. Full rank ((2G-1)d at most, since the residual keys span (G-1)d) reproduces K_nope and V exactly;
   below it the relative output error sqrt(sum of dropped eigenvalues / total) is reported.
4. Scale. M²LA scores use tau = (d_n + d_r)^-1/2 = (2d)^-1/2; the query rows are multiplied by sqrt(2) so the
   logits keep Qwen's 1/sqrt(d).

So a conversion is exact (up to float rounding) when: no q/k norm, G == 1 or collinear key pairs, r >= full rank.
`convert_model` returns a ConversionReport with each layer's figures and, given calibration inputs, the max
absolute logit difference of the converted model against the original.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LayerReport:
    layer: int
    rank: int
    full_rank: int
    latent_rel_error: float  # relative error of [K_nope ; V] over the calibration distribution
    rope_residual: float  # share of rope-key energy outside the shared key (loses its rotation)
    norms_folded: bool  # q/k RMSNorm approximated by a constant scale
    exact: bool


@dataclass
class ConversionReport:
    layers: list[LayerReport] = field(default_factory=list)
    logit_max_abs_diff: float | None = None
    logit_max_abs: float | None = None

    @property
    def exact(self) -> bool:
        return all(layer.exact for layer in self.layers)

    def to_dict(self) -> dict:
        return {
            "exact": self.exact,
            "logit_max_abs_diff": self.logit_max_abs_diff,
            "logit_max_abs": self.logit_max_abs,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _has_norm(norm: nn.Module | None) -> bool:
    return norm is not None and not isinstance(norm, nn.Identity)


def _affine(linear: nn.Linear, rows: int) -> torch.Tensor:
    """[W | b] in float64: rows x (D + 1) (bitsandbytes weights are dequantized first)."""
    from engine.quantization import dense_weight

    w = dense_weight(linear).detach().to("cpu", torch.float64)  # conversion math runs on the CPU in float64
    b = linear.bias.detach().to("cpu", torch.float64) if linear.bias is not None else torch.zeros(rows, dtype=torch.float64)
    return torch.cat((w, b[:, None]), dim=1)


def _fold_norm(m: torch.Tensor, norm: nn.Module | None, heads: int, d: int, x: torch.Tensor) -> torch.Tensor:
    """Approximate RMSNorm(head rows of m applied to x) by weight * mean inverse RMS per head; m: [heads*d, D+1]."""
    if not _has_norm(norm):
        return m
    w = norm.weight.detach().to("cpu", torch.float64)
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    y = (x @ m.T).view(x.shape[0], heads, d)  # [N, heads, d]
    inv_rms = torch.rsqrt(y.pow(2).mean(-1) + eps).mean(0)  # [heads]
    return (m.view(heads, d, -1) * inv_rms[:, None, None] * w[None, :, None]).reshape(heads * d, -1)


def _calibration(calib: torch.Tensor | None, hidden: int, seed: int = 0) -> torch.Tensor:
    """[N, D + 1] inputs with a trailing 1 (the bias column); Gaussian when no calibration is given."""
    if calib is None:
        gen = torch.Generator().manual_seed(seed)
        calib = torch.randn(max(256, 2 * hidden), hidden, generator=gen, dtype=torch.float64)
    x = calib.reshape(-1, hidden).to("cpu", torch.float64)
    return torch.cat((x, torch.ones(x.shape[0], 1, dtype=torch.float64)), dim=1)


def _pair_rows(d: int, j: int) -> list[int]:
    return [j, j + d // 2]  # Qwen's rotate_half pairs dims j and j + d/2


def _interleaved(rows: torch.Tensor, d: int) -> torch.Tensor:
    """Reorder [d, ...] from Qwen's (j, j + d/2) pairing to the interleaved (2j, 2j + 1) layout M²LA reads."""
    order = torch.stack((torch.arange(d // 2), torch.arange(d // 2) + d // 2), dim=1).reshape(-1)
    return rows[order]


@torch.no_grad()
def convert_attention(attn: nn.Module, config: Any, layer_idx: int, rank: int | None = None, calib=None):
    """One Qwen3VLTextAttention -> (InternVideo3LatentAttention in stock mode, LayerReport). See the module doc."""
    from engine.models.internvideo3 import InternVideo3LatentAttention, attention_shape

    hidden = config.hidden_size
    h, g, d = config.num_attention_heads, config.num_key_value_heads, attn.head_dim
    n_rep = h // g
    x = _calibration(calib, hidden, seed=layer_idx)
    cov = x.T @ x / x.shape[0]  # [(D+1), (D+1)]

    norms = _has_norm(getattr(attn, "q_norm", None)) or _has_norm(getattr(attn, "k_norm", None))
    mq = _fold_norm(_affine(attn.q_proj, h * d), getattr(attn, "q_norm", None), h, d, x).view(h, d, -1)
    mk = _fold_norm(_affine(attn.k_proj, g * d), getattr(attn, "k_norm", None), g, d, x).view(g, d, -1)
    mv = _affine(attn.v_proj, g * d).view(g, d, -1)

    # RoPE: one shared key per frequency (RoRoPE); the rest becomes position-free key.
    k_pe = torch.zeros(d, hidden + 1, dtype=torch.float64)
    q_pe = torch.zeros(h, d, hidden + 1, dtype=torch.float64)
    resid = mk.clone()
    mk_cov = mk @ cov  # [G, d, D+1], so each frequency's G x G covariance is one small product
    rope_energy = rope_left = 0.0
    for j in range(d // 2):
        rows = _pair_rows(d, j)
        kj = mk[:, rows]  # [G, 2, D+1]
        pair_cov = torch.einsum("gcx,fcx->gf", kj, mk_cov[:, rows])  # [G, G]
        evals, evecs = torch.linalg.eigh(pair_cov)
        u = evecs[:, -1]
        shared = torch.einsum("g,gcx->cx", u, kj)  # [2, D+1]
        k_pe[rows] = shared
        resid[:, rows] = kj - u[:, None, None] * shared[None]
        q_pe[:, rows] = u.repeat_interleave(n_rep)[:, None, None] * mq[:, rows]
        rope_energy += float(evals.clamp(min=0).sum())
        rope_left += float(evals[:-1].clamp(min=0).sum())
    rope_residual = rope_left / rope_energy if rope_energy > 0 else 0.0

    # Latent: PCA of the stacked [R_1..R_G ; V_1..V_G] outputs.
    m = torch.cat((resid.reshape(g * d, -1), mv.reshape(g * d, -1)), dim=0)  # [2Gd, D+1]
    out_cov = m @ cov @ m.T
    evals, evecs = torch.linalg.eigh(out_cov)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    full_rank = int((evals > evals[0] * 1e-10).sum()) if evals[0] > 0 else 0
    r = full_rank if rank is None else int(rank)
    assert 1 <= r <= 2 * g * d, f"rank {r} outside 1..{2 * g * d} (2 x kv heads {g} x head_dim {d})"
    u_r = evecs[:, :r]  # [2Gd, r]
    total = float(evals.sum())
    latent_err = math.sqrt(float(evals[r:].sum()) / total) if total > 0 else 0.0
    a_c = u_r.T @ m  # [r, D+1]

    # Assemble the M²LA weights (per head [nope ; rope] for q, [k_nope ; v] for kv_b).
    factor = math.sqrt(2 * d) / math.sqrt(d)  # tau = (2d)^-1/2 vs Qwen's d^-1/2
    q_rows = torch.cat((mq, torch.stack([_interleaved(q_pe[i], d) for i in range(h)])), dim=1) * factor
    kv_a = torch.cat((a_c, _interleaved(k_pe, d)), dim=0)  # [r + d, D+1]
    u_heads = u_r.view(2, g, d, r)  # [k/v, group, d, r]
    group = torch.arange(h) // n_rep
    kv_b = torch.cat((u_heads[0][group], u_heads[1][group]), dim=1).reshape(h * 2 * d, r)

    shape = attention_shape(hidden, h, d, d, d, r, q_proj_bias=True, kv_a_proj_bias=True,  # biases: the affine column
                            qk_latent_layernorm=False, rope_interleave=True, attention_scale=None,
                            attention_dropout=getattr(config, "attention_dropout", 0.0))
    new = InternVideo3LatentAttention(shape, layer_idx, mode="stock").to(torch.float64)
    new.config = config
    dtype, device = dense_dtype(attn), attn.q_proj.weight.device
    new.q_proj.weight.copy_(q_rows.reshape(h * 2 * d, -1)[:, :hidden])
    new.q_proj.bias.copy_(q_rows.reshape(h * 2 * d, -1)[:, hidden])
    new.kv_a_proj_with_mqa.weight.copy_(kv_a[:, :hidden])
    new.kv_a_proj_with_mqa.bias.copy_(kv_a[:, hidden])
    new.kv_b_proj.weight.copy_(kv_b)
    new.o_proj.weight.copy_(_affine(attn.o_proj, hidden)[:, :-1])
    if attn.o_proj.bias is not None:
        new.o_proj.bias = nn.Parameter(attn.o_proj.bias.detach().clone())
    new.to(device=device, dtype=dtype)
    exact = (not norms) and rope_residual <= 1e-12 and r >= full_rank
    report = LayerReport(layer_idx, r, full_rank, latent_err, rope_residual, norms, exact)
    return new, report


def dense_dtype(attn: nn.Module) -> torch.dtype:
    """The floating dtype a converted attention computes in. A bitsandbytes layer stores uint8 (nf4) or int8
    weights, which a dense layer cannot take: its compute dtype is used instead, else that of any floating
    parameter of the attention (norms, biases), else float32. The converted layer stays dense, as kv_b_proj
    does in a quantized InternVideo3."""
    weight = attn.q_proj.weight
    if weight.dtype.is_floating_point:
        return weight.dtype
    compute = getattr(attn.q_proj, "compute_dtype", None)
    if isinstance(compute, torch.dtype) and compute.is_floating_point:
        return compute
    for p in attn.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def _text_config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg


def _decoder_layers(model: nn.Module):
    for path in ("model.language_model.layers", "language_model.layers", "model.layers", "layers"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError("no decoder layers found (looked for model.language_model.layers and model.layers)")


@torch.no_grad()
def convert_model(
    model: nn.Module,
    rank: int | list[int] | None = None,
    calibration: dict | None = None,
    latent: bool = True,
) -> ConversionReport:
    """Convert every GQA text attention of a Qwen3-VL (or Qwen3) model to M²LA in place; return the report.

    rank: None = full rank per layer (exact where the conditions in the module doc hold); an int or a
    per-layer list truncates. calibration: model inputs (input_ids, pixel_values_videos, ...) used to capture
    each layer's attention inputs and to measure the logit error. latent: switch the new layers to the latent
    cache afterwards (install_latent_attention, which verifies them).
    """
    from engine.latent_attention import install_latent_attention

    config = _text_config(model)
    layers = _decoder_layers(model)
    n = len(layers)
    ranks = rank if isinstance(rank, (list, tuple)) else [rank] * n
    assert len(ranks) == n, f"rank list has {len(ranks)} entries, model has {n} layers"

    captured: dict[int, torch.Tensor] = {}
    before = None
    if calibration is not None:
        hooks = [
            layer.self_attn.register_forward_hook(
                lambda mod, args, kwargs, out, i=i: captured.__setitem__(
                    i, kwargs.get("hidden_states", args[0] if args else None).detach()
                ),
                with_kwargs=True,
            )
            for i, layer in enumerate(layers)
        ]
        try:
            before = model(**calibration, use_cache=False).logits.detach()
        finally:
            for hook in hooks:
                hook.remove()

    report = ConversionReport()
    for i, layer in enumerate(layers):
        new, layer_report = convert_attention(layer.self_attn, config, i, ranks[i], captured.get(i))
        layer.self_attn = new
        report.layers.append(layer_report)

    config.qk_nope_head_dim = config.qk_rope_head_dim = config.v_head_dim = config.head_dim
    final = [lr.rank for lr in report.layers]
    config.kv_lora_rank = max(final)
    config.kv_lora_rank_list = final if len(set(final)) > 1 else None
    config.q_proj_bias = config.kv_a_proj_bias = True
    config.qk_latent_layernorm = False
    config.rope_interleave = True
    config.attention_scale = None
    config.m2la_converted = True

    if latent:
        install_latent_attention(model)
    if calibration is not None:
        after = model(**calibration, use_cache=False).logits.detach()
        report.logit_max_abs_diff = float((after.double() - before.double()).abs().max())
        report.logit_max_abs = float(before.double().abs().max())
    return report
