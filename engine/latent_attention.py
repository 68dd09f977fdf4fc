"""Switch a loaded model's M²LA attention to the latent cache path, check it, and switch it back.

The model's own attention layers are InternVideo3LatentAttention (engine/models/internvideo3.py) in "stock" mode,
or a checkpoint's remote code (DeepseekV3Attention-like modules with q_proj, kv_a_proj_with_mqa, kv_b_proj and
o_proj). `install_latent_attention(model)` turns our layers to "latent" mode and wraps foreign ones
(`wrap_foreign`, sharing their weights), each first verified against the module's own forward
(`verify_latent_module`); `uninstall_latent_attention` undoes it and `own_attention` undoes it for one block;
`uses_latent_cache` says whether a model runs the latent path. The end-to-end check of an installed latent path
(greedy decode steps against the model's own attention) is engine/latent_check.py.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from engine.latent_cache import LatentCache
from engine.models.internvideo3 import InternVideo3LatentAttention, attention_shape
from storage.errors import SightlineError

M2LA_PROJECTIONS = ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")


def is_m2la_module(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, name, None), nn.Module) for name in M2LA_PROJECTIONS)


def find_m2la_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every attention module carrying the four M²LA projections."""
    return [(name, m) for name, m in model.named_modules() if is_m2la_module(m)]


def wrap_foreign(module: nn.Module, layer_idx: int | None = None) -> InternVideo3LatentAttention:
    """Wrap a foreign M²LA/MLA attention module (remote code, DeepseekV3Attention): share its projections.

    Sizes come from the module's config where it has them, checked against the weight shapes.
    """
    cfg = getattr(module, "config", None)
    heads = int(getattr(module, "num_heads", 0) or getattr(cfg, "num_attention_heads"))
    d_r = int(getattr(module, "qk_rope_head_dim", 0) or getattr(cfg, "qk_rope_head_dim"))
    d_n = int(getattr(module, "qk_nope_head_dim", 0) or getattr(cfg, "qk_nope_head_dim"))
    d_v = int(getattr(module, "v_head_dim", 0) or getattr(cfg, "v_head_dim"))
    idx = int(layer_idx if layer_idx is not None else getattr(module, "layer_idx", 0))
    r = module.kv_a_proj_with_mqa.out_features - d_r
    assert module.q_proj.out_features == heads * (d_n + d_r), (
        f"q_proj has {module.q_proj.out_features} outputs, expected heads {heads} x (d_n {d_n} + d_r {d_r})"
    )
    assert module.kv_b_proj.out_features == heads * (d_n + d_v), (
        f"kv_b_proj has {module.kv_b_proj.out_features} outputs, expected heads {heads} x (d_n {d_n} + d_v {d_v})"
    )
    assert module.kv_b_proj.in_features == r, (
        f"kv_b_proj takes {module.kv_b_proj.in_features} inputs, kv_a_proj_with_mqa gives a latent of {r}"
    )
    shim = attention_shape(
        module.q_proj.in_features, heads, d_n, d_r, d_v, r,
        rope_interleave=bool(getattr(cfg, "rope_interleave", True)),
        attention_scale=getattr(module, "scaling", None),
        attention_dropout=getattr(cfg, "attention_dropout", 0.0),
        q_proj_bias=module.q_proj.bias is not None,
        kv_a_proj_bias=module.kv_a_proj_with_mqa.bias is not None,
        qk_latent_layernorm=False,
        _attn_implementation=getattr(cfg, "_attn_implementation", "eager"),
    )
    with torch.device("meta"):
        new = InternVideo3LatentAttention(shim, idx, mode="latent")
    new.config = cfg if cfg is not None else shim
    new.q_proj, new.kv_a_proj_with_mqa, new.kv_b_proj, new.o_proj = (
        module.q_proj,
        module.kv_a_proj_with_mqa,
        module.kv_b_proj,
        module.o_proj,
    )
    new.kv_a_layernorm = getattr(module, "kv_a_layernorm", None)
    new.scaling = float(getattr(module, "scaling", new.scaling))
    new.rope_interleave = shim.rope_interleave
    return new


def _test_rope(d_r: int, positions: torch.Tensor, dtype, device, theta: float = 10000.0):
    inv = theta ** (-torch.arange(0, d_r, 2, dtype=torch.float64, device=device) / d_r)
    freqs = positions.to(torch.float64)[:, None] * inv[None]
    emb = torch.cat((freqs, freqs), dim=-1)[None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _tolerance(dtype: torch.dtype) -> float:
    # fp64 is bounded by the stock eager kernel, which takes its softmax in fp32
    return {torch.float64: 1e-6, torch.float32: 1e-4}.get(dtype, 5e-2)


@torch.no_grad()
def verify_latent_module(reference: nn.Module, latent: InternVideo3LatentAttention, tokens: int = 8, seed: int = 0):
    """Max abs difference between the reference module's own forward over `tokens` random states and the latent
    path (prefill tokens-1 through a latent cache, then one absorbed decode step), relative to max(1, |ref|)."""
    # The states arrive in the dtype of the dense weights; with 4-bit projections that is the dtype the loader
    # kept for the rest (kv_b_proj stays dense for the absorbed path), or the 4-bit layers' compute dtype.
    dense = [w.dtype for w in (latent.o_proj.weight, latent.kv_b_proj.weight) if w.dtype.is_floating_point]
    dtype = dense[0] if dense else getattr(latent.o_proj, "compute_dtype", None) or torch.bfloat16
    device = latent.o_proj.weight.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(1, tokens, latent.q_proj.in_features, generator=gen, dtype=torch.float32).to(device, dtype)
    pos = torch.arange(tokens, device=device) * 3 + 1
    cos, sin = _test_rope(latent.qk_rope_head_dim, pos, dtype, device)
    neg = torch.finfo(dtype).min
    causal = torch.full((tokens, tokens), neg, dtype=dtype, device=device).triu(1)[None, None]
    ref = reference(hidden_states=x, position_embeddings=(cos, sin), attention_mask=causal, past_key_values=None)[0]

    saved_mode, latent.mode = latent.mode, "latent"
    try:
        cache = LatentCache()
        first = latent(
            x[:, :-1], (cos[:, :-1], sin[:, :-1]), causal[:, :, :-1, :-1], past_key_values=cache,
            cache_position=torch.arange(tokens - 1, device=device),
        )[0]
        last = latent(
            x[:, -1:], (cos[:, -1:], sin[:, -1:]), causal[:, :, -1:, :], past_key_values=cache,
            cache_position=torch.tensor([tokens - 1], device=device),
        )[0]
    finally:
        latent.mode = saved_mode
    out = torch.cat((first, last), dim=1)
    diff = (out.float() - ref.float()).abs().max().item()
    return diff / max(1.0, ref.float().abs().max().item())


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def install_latent_attention(model: nn.Module, verify: bool = True) -> list[str]:
    """Switch every M²LA attention module of `model` to the latent path; return the switched module names.

    Our own layers change mode; foreign ones (remote code, DeepseekV3Attention) are wrapped, sharing their
    weights. With verify, each is first checked against that module's own forward on the same input; a
    disagreement raises SightlineError and leaves the model unchanged.
    """
    found = find_m2la_modules(model)
    if not found:
        raise SightlineError(
            "This model has no M²LA attention (q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj) to install into.",
            hint="Convert a GQA Qwen3-VL first with engine.convert.convert_model, or use the model's own cache.",
        )
    plan = []
    for i, (name, module) in enumerate(found):
        if isinstance(module, InternVideo3LatentAttention):
            latent = module
        else:
            latent = wrap_foreign(module, getattr(module, "layer_idx", i))
        if verify:
            ref = module
            if module is latent:  # our own layer: its stock path is the reference
                ref = _StockView(module)
            try:
                err = verify_latent_module(ref, latent)
            except Exception as exc:  # noqa: BLE001 - a forward we cannot drive is a refusal, not a crash
                raise SightlineError(
                    f"Could not run {name}'s own attention to verify the M²LA latent path "
                    f"({type(exc).__name__}: {exc}).",
                    hint="This checkpoint's attention takes other inputs than Qwen3-VL's; use the model's own cache.",
                ) from exc
            tol = _tolerance(latent.o_proj.weight.dtype)
            if not err <= tol:
                raise SightlineError(
                    f"M²LA latent attention disagrees with the model's own attention in {name}: "
                    f"relative max difference {err:.2e} > {tol:.0e}.",
                    hint="The checkpoint's attention differs from InternVideo3's layout (rope convention, norms "
                    "or scale); run with the model's own cache (latent cache off).",
                )
        plan.append((name, module, latent))
    for name, module, latent in plan:
        latent.mode = "latent"
        if latent is not module:
            object.__setattr__(latent, "_stock_module", module)  # unregistered: not a submodule, not in state_dict
            _set_submodule(model, name, latent)
    return [name for name, _, _ in plan]


def _latent_layers(model: nn.Module) -> list[tuple[str, InternVideo3LatentAttention]]:
    return [(n, m) for n, m in find_m2la_modules(model)
            if isinstance(m, InternVideo3LatentAttention) and m.mode == "latent"]


def uninstall_latent_attention(model: nn.Module) -> list[str]:
    """Undo install_latent_attention: our own layers back to stock mode, wrapped foreign modules put back."""
    names = []
    for name, layer in _latent_layers(model):
        original = getattr(layer, "_stock_module", None)
        if original is not None:
            _set_submodule(model, name, original)
        else:
            layer.mode = "stock"
        names.append(name)
    return names


@contextlib.contextmanager
def own_attention(model: nn.Module) -> Iterator[None]:
    """Inside the block the model runs its own attention (and cache layout); the latent path comes back after."""
    layers = _latent_layers(model)
    uninstall_latent_attention(model)
    try:
        yield
    finally:
        for name, layer in layers:
            if getattr(layer, "_stock_module", None) is not None:
                _set_submodule(model, name, layer)
            layer.mode = "latent"


class _StockView(nn.Module):
    """Runs an InternVideo3LatentAttention in stock mode regardless of its current mode (the reference)."""

    def __init__(self, inner: InternVideo3LatentAttention):
        super().__init__()
        object.__setattr__(self, "inner", inner)

    def forward(self, *args, **kwargs):
        saved, self.inner.mode = self.inner.mode, "stock"
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.inner.mode = saved


def uses_latent_cache(model: nn.Module) -> bool:
    """True when the model's attention layers run the latent path (so a LatentCache fits it)."""
    mods = [m for _, m in find_m2la_modules(model)]
    return bool(mods) and all(getattr(m, "mode", None) == "latent" for m in mods)
