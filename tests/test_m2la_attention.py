"""M²LA attention and latent cache on tiny models: absorbed == expanded == stock, chunked == one pass, RoPE,
cache bytes, installation into foreign modules (transformers' DeepseekV3Attention) and its refusals."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.latent_cache import LatentCache, LatentLayer, cache_nbytes  # noqa: E402
from engine.latent_attention import install_latent_attention  # noqa: E402
from engine.models.internvideo3 import (  # noqa: E402
    InternVideo3Config,
    InternVideo3ForConditionalGeneration,
    InternVideo3LatentAttention,
    apply_m2la_rope,
    expanded_bytes_per_token,
    force_attention,
    latent_bytes_per_token,
)
from engine.tiny import randomize_, tiny_internvideo3_config  # noqa: E402
from storage.errors import SightlineError  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(dtype=torch.float32, impl="sdpa", latent=False, **over):
    cfg = tiny_internvideo3_config(**over)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return randomize_(InternVideo3ForConditionalGeneration(cfg, latent=latent).eval(), std=0.2).to(dtype)


def _ids(n=24, seed=0):
    return torch.randint(2, 100, (1, n), generator=torch.Generator().manual_seed(seed))


def _rope(d, positions, dtype):
    inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = positions.double()[:, None] * inv[None]
    emb = torch.cat((freqs, freqs), -1)[None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------------------ the layer


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_absorbed_equals_expanded_and_stock_in_one_layer(dtype, tol):
    model = _model(dtype)
    attn = model.model.language_model.layers[0].self_attn
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    cos, sin = _rope(16, torch.arange(12) * 2 + 3, dtype)
    with torch.no_grad():
        attn.mode = "stock"
        stock = attn(x, (cos, sin), None)[0]
        attn.mode = "latent"
        with force_attention(path="expanded"):
            expanded = attn(x, (cos, sin), None)[0]
        with force_attention(path="absorbed"):
            absorbed = attn(x, (cos, sin), None)[0]
            with force_attention(kernel="sdpa"):  # no cache: [c ; k_rot] concatenated once
                fused = attn(x, (cos, sin), None)[0]
    diff = _max_diff(absorbed, expanded)
    assert _max_diff(fused, absorbed) < tol, f"sdpa vs bmm absorbed: max diff {_max_diff(fused, absorbed):.2e}"
    assert diff < tol, f"absorbed vs expanded: max diff {diff:.2e}"
    assert _max_diff(expanded, stock) < tol, f"expanded vs stock: max diff {_max_diff(expanded, stock):.2e}"
    assert stock.abs().max() > 0.1, "the test needs outputs of visible size"


@pytest.mark.parametrize(
    "dtype,tol,path,kernel",
    [
        (torch.float64, 1e-10, "absorbed", "bmm"),
        (torch.float64, 1e-10, "absorbed", "sdpa"),  # the fused MQA form CUDA uses, on the CPU here
        (torch.float64, 1e-10, "expanded", None),
        (torch.float32, 1e-4, None, None),
    ],
)
def test_chunked_prefill_and_step_decode_equal_one_full_pass(dtype, tol, path, kernel):
    model = _model(dtype)
    ids = _ids(24)
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits  # stock path, one pass
        install_latent_attention(model)
        cache = LatentCache(config=model.config)
        chunks = [(0, 9), (9, 15)] + [(i, i + 1) for i in range(15, 24)]
        with force_attention(path=path, kernel=kernel):
            parts = [
                model(
                    input_ids=ids[:, a:b], past_key_values=cache, use_cache=True, cache_position=torch.arange(a, b)
                ).logits
                for a, b in chunks
            ]
    diff = _max_diff(torch.cat(parts, 1), full)
    assert diff <= tol, f"chunked ({path}, {kernel}) vs one pass: max abs logit diff {diff:.2e}"
    assert cache.get_seq_length() == 24


def test_rope_depends_only_on_offset_and_matches_complex_pair_rotation():
    d = 16
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, d, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 1, d, generator=gen, dtype=torch.float64)

    def rot(x, pos):
        cos, sin = _rope(d, torch.tensor([pos]), torch.float64)
        return apply_m2la_rope(x, cos, sin, interleave=True)

    # q_pe(t) . k_pe(s) depends only on t - s
    dots = {(t, s): float((rot(q, t) * rot(k, s)).sum()) for t, s in [(5, 2), (13, 10), (103, 100), (7, 7), (0, 0)]}
    assert abs(dots[(5, 2)] - dots[(13, 10)]) < 1e-12 and abs(dots[(5, 2)] - dots[(103, 100)]) < 1e-12
    assert abs(dots[(7, 7)] - dots[(0, 0)]) < 1e-12
    assert abs(dots[(5, 2)] - dots[(7, 7)]) > 1e-6, "different offsets must give different scores"
    # de-interleaved convention == complex rotation of pairs (2j, 2j+1) by pos * theta_j (before de-interleave)
    pos = 37
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(q[0, 0, 0, 0::2], q[0, 0, 0, 1::2]) * torch.exp(1j * pos * theta)
    expected = torch.cat((z.real, z.imag))  # de-interleaved layout: [reals ; imags]
    assert _max_diff(rot(q, pos)[0, 0, 0], expected) < 1e-12


def test_rope_of_text_in_the_model_depends_only_on_offset():
    """Through the model's own MRoPE cos/sin (text: t = h = w), the latent layer's q_pe . k_pe is shift-invariant."""
    model = _model(torch.float64)
    attn = model.model.language_model.layers[0].self_attn
    rotary = model.model.language_model.rotary_emb
    x = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    @torch.no_grad()
    def score(t, s):
        pos = torch.tensor([[s, t]]).expand(3, 1, 2)
        cos, sin = rotary(x, pos)  # Qwen3-VL computes these in fp32 (§5 item 3), hence the 1e-4 below
        _, q_pe, _, k_pe = attn._project(x, (cos, sin))
        return float((q_pe[0, :, 1] * k_pe[0, 0, 0]).sum())  # query token 1 at t, key token 0 at s

    assert abs(score(9, 4) - score(1009, 1004)) < 1e-4
    assert abs(score(9, 4) - score(10, 4)) > 1e-2


# ------------------------------------------------------------------------------------------------ the model


def test_generate_through_latent_cache_equals_stock_and_bytes_match_accounting():
    model = _model(torch.float32)
    ids = _ids(20)
    with torch.no_grad():
        from transformers import DynamicCache

        stock_cache = DynamicCache()
        stock = model.generate(ids, max_new_tokens=8, do_sample=False, past_key_values=stock_cache)
        install_latent_attention(model)
        cache = LatentCache(config=model.config)
        cache.reserve(28)
        latent = model.generate(ids, max_new_tokens=8, do_sample=False, past_key_values=cache)
    assert latent.tolist() == stock.tolist()
    tokens = cache.get_seq_length()
    assert tokens == 27  # the last generated token is never fed back
    cfg = model.config.text_config
    k, v = cache.layers[0].keys, cache.layers[0].values
    assert tuple(k.shape) == (1, 1, tokens, 24) and tuple(v.shape) == (1, 1, tokens, 16)
    assert cache.nbytes() == cache_nbytes(cache) == latent_bytes_per_token(cfg, torch.float32) * tokens
    assert cache.allocated_bytes() == latent_bytes_per_token(cfg, torch.float32) * 28  # reserved exactly
    # the stock path cached expanded per-head K [B, H, S, d_n+d_r] and V [B, H, S, d_v]
    assert tuple(stock_cache.layers[0].keys.shape) == (1, 4, tokens, 32)
    assert cache_nbytes(stock_cache) == expanded_bytes_per_token(cfg, torch.float32) * tokens


def test_cost_accounting_for_the_8b_shape():
    cfg = InternVideo3Config().text_config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.kv_lora_rank) == (36, 32, 896)
    assert (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim) == (128, 128, 128)
    assert cfg.q_proj_bias and cfg.kv_a_proj_bias and not cfg.qk_latent_layernorm and cfg.rope_interleave
    assert cfg.latent_bytes_per_token() == 36 * 1024 * 2  # 72 KiB
    assert cfg.gqa_bytes_per_token() == 36 * 2048 * 2  # 144 KiB
    assert cfg.expanded_bytes_per_token() == 36 * 12288 * 2  # 864 KiB
    per_layer = InternVideo3Config(text_config={"kv_lora_rank_list": [512] * 18 + [896] * 18}).text_config
    assert per_layer.latent_bytes_per_token() == 18 * (512 + 128) * 2 + 18 * 1024 * 2


def test_per_layer_ranks_build_and_match():
    model = _model(torch.float64, num_hidden_layers=2, kv_lora_rank_list=[8, 20])
    ids = _ids(12)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
        install_latent_attention(model)
        cache = LatentCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
    assert _max_diff(out, ref) < 1e-10
    assert [layer.keys.shape[-1] for layer in cache.layers] == [8, 20]


def test_eager_kernel_path_agrees():
    model = _model(torch.float32, impl="eager")
    ids = _ids(16)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
        install_latent_attention(model)
        with force_attention(path="expanded"):
            a = model(input_ids=ids, past_key_values=LatentCache(), use_cache=True).logits
        with force_attention(path="absorbed"):
            b = model(input_ids=ids, past_key_values=LatentCache(), use_cache=True).logits
    assert _max_diff(a, ref) < 1e-4 and _max_diff(b, ref) < 1e-4


# --------------------------------------------------------------------------------- foreign modules (install)


def _tiny_deepseek(rope_interleave=True):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = DeepseekV3Config(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=2,
        q_lora_rank=None,
        kv_lora_rank=24,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=12,
        rope_interleave=rope_interleave,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return randomize_(DeepseekV3ForCausalLM(cfg).eval(), std=0.2)


def test_install_into_transformers_deepseek_v3_attention_matches_its_own_generate():
    model = _tiny_deepseek()
    ids = _ids(16)
    with torch.no_grad():
        ref_logits = model(input_ids=ids, use_cache=False).logits
        ref = model.generate(ids, max_new_tokens=8, do_sample=False)
        names = install_latent_attention(model)
        assert len(names) == 2
        assert all(isinstance(model.get_submodule(n), InternVideo3LatentAttention) for n in names)
        cache = LatentCache(config=model.config)
        out = model.generate(ids, max_new_tokens=8, do_sample=False, past_key_values=cache)
        logits = model(input_ids=ids, past_key_values=LatentCache(), use_cache=True).logits
    assert out.tolist() == ref.tolist()
    assert _max_diff(logits, ref_logits) < 1e-4
    # DeepSeek-V3 normalizes the latent (kv_a_layernorm): the cache holds the normalized c, 24 + 8 wide
    assert tuple(cache.layers[0].keys.shape[-1:]) == (24,) and cache.layers[0].values.shape[-1] == 8


def test_install_refuses_a_module_whose_rope_convention_differs():
    model = _tiny_deepseek(rope_interleave=False)  # our wrapper reads the config, so fake a mismatch:
    for layer in model.model.layers:
        layer.self_attn.config.rope_interleave = False
    before = [type(layer.self_attn) for layer in model.model.layers]
    import engine.latent_attention as la

    original = la.wrap_foreign

    def wrong_convention(module, layer_idx=None):
        new = original(module, layer_idx)
        new.rope_interleave = True  # what a wrong assumption about the checkpoint would do
        return new

    la.wrap_foreign = wrong_convention
    try:
        with pytest.raises(SightlineError) as err:
            install_latent_attention(model)
    finally:
        la.wrap_foreign = original
    assert "disagrees with the model's own attention" in err.value.user_text()
    assert [type(layer.self_attn) for layer in model.model.layers] == before, "a refused install changes nothing"


def test_install_refuses_a_model_without_m2la():
    with pytest.raises(SightlineError) as err:
        install_latent_attention(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    assert "no M²LA attention" in err.value.user_text()


# ------------------------------------------------------------------------------------------------ the cache


def test_latent_layer_grows_crops_and_resets():
    layer = LatentLayer()
    c = torch.randn(2, 1, 300, 24)
    k = torch.randn(2, 1, 300, 16)
    keys, values = layer.update(c[:, :, :100], k[:, :, :100])
    assert layer.capacity == 100 and tuple(keys.shape) == (2, 1, 100, 24)
    keys, values = layer.update(c[:, :, 100:], k[:, :, 100:])
    assert layer.get_seq_length() == 300 and layer.capacity >= 300
    assert torch.equal(keys, c) and torch.equal(values, k)
    assert layer.nbytes() == 2 * 300 * (24 + 16) * 4 <= layer.allocated_bytes()
    layer.crop(-50)
    assert layer.get_seq_length() == 250 and torch.equal(layer.keys, c[:, :, :250])
    assert layer.get_mask_sizes(torch.arange(250, 253)) == (253, 0)
    from engine.models.internvideo3 import _joint_view

    joint = _joint_view(layer.keys, layer.values)  # c and k_rot sit side by side in one buffer
    assert joint is not None and torch.equal(joint, torch.cat((c, k), -1)[:, :, :250])
    assert torch.equal(layer.joint, joint)
    assert _joint_view(c, k) is None
    layer.reset()
    assert layer.get_seq_length() == 0
    with pytest.raises(AssertionError, match="latent widths"):
        layer.update(torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 16))


def test_path_choice_and_override():
    from engine.models.internvideo3 import ABSORB_MAX_QUERY, absorbed_kernel, attention_path

    cpu = torch.device("cpu")
    assert attention_path("stock", 1) == "stock"
    assert attention_path("latent", 1) == "absorbed"
    assert attention_path("latent", ABSORB_MAX_QUERY + 1) == "expanded"
    assert absorbed_kernel(cpu) == "bmm"
    with force_attention(path="expanded"):
        assert attention_path("latent", 1) == "expanded"
        assert attention_path("stock", 1) == "stock"
        assert absorbed_kernel(cpu) == "bmm"  # a choice not named keeps its value
        with force_attention(kernel="sdpa"):
            assert absorbed_kernel(cpu) == "sdpa" and attention_path("latent", 1) == "expanded"
            with force_attention(path=None):  # None: the automatic choice again
                assert attention_path("latent", 1) == "absorbed"
            assert attention_path("latent", 1) == "expanded"
        assert absorbed_kernel(cpu) == "bmm"
    assert attention_path("latent", 1) == "absorbed"
    with pytest.raises(AssertionError, match="unknown path"):
        with force_attention(path="stock"):
            pass
    with pytest.raises(AssertionError, match="unknown choice"):
        with force_attention(kernal="sdpa"):
            pass


def test_install_refuses_a_module_whose_forward_it_cannot_drive():
    class OtherSignature(torch.nn.Module):  # M²LA projections, but a forward that wants position ids
        def __init__(self):
            super().__init__()
            self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = 2, 8, 8, 8
            self.q_proj = torch.nn.Linear(16, 2 * 16)
            self.kv_a_proj_with_mqa = torch.nn.Linear(16, 12 + 8)
            self.kv_b_proj = torch.nn.Linear(12, 2 * 16, bias=False)
            self.o_proj = torch.nn.Linear(16, 16, bias=False)

        def forward(self, hidden_states, position_ids):
            return self.o_proj(hidden_states), None

    model = torch.nn.Sequential(OtherSignature())
    with pytest.raises(SightlineError) as err:
        install_latent_attention(model)
    assert "Could not run 0's own attention" in err.value.user_text()
    assert isinstance(model[0], OtherSignature)
