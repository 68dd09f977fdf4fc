"""GQA Qwen3-VL -> M²LA conversion: exact at full rank under the stated conditions, errors reported otherwise,
and a converted tiny Qwen3-VL (engine/tiny.py's config) runs end to end through the latent cache with a video."""

from __future__ import annotations


import pytest

torch = pytest.importorskip("torch")

from engine.convert import convert_model  # noqa: E402
from engine.latent_attention import uses_latent_cache  # noqa: E402
from engine.tiny import randomize_, synthetic_video_inputs  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Vocab:
    """Just what engine.tiny.tiny_config reads from a tokenizer (training the real one takes seconds)."""

    def __init__(self):
        from engine.tiny import SPECIAL_TOKENS

        self.ids = {t: 200 + i for i, t in enumerate(SPECIAL_TOKENS)}

    def convert_tokens_to_ids(self, token):
        return self.ids[token]

    def __len__(self):
        return 256


def _tiny_qwen(kv_heads=2, norms=True, dtype=torch.float64, seed=0):
    from transformers import Qwen3VLForConditionalGeneration

    from engine.tiny import tiny_config

    cfg = tiny_config(_Vocab())
    cfg.text_config.num_key_value_heads = kv_heads
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = randomize_(Qwen3VLForConditionalGeneration(cfg).eval(), std=0.15, seed=seed).to(dtype)
    if not norms:
        for layer in model.model.language_model.layers:
            layer.self_attn.q_norm = torch.nn.Identity()
            layer.self_attn.k_norm = torch.nn.Identity()
    return model


def _calibration(model, n=20, seed=0):
    ids = torch.randint(0, 190, (1, n), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids}


def test_full_rank_conversion_is_exact_without_norms_and_one_kv_head():
    import copy

    model = _tiny_qwen(kv_heads=1, norms=False)
    original = copy.deepcopy(model.model.language_model.layers[0].self_attn)
    report = convert_model(model, rank=None, calibration=_calibration(model))
    # Model logits pass through Qwen's RMSNorm, which computes in fp32; the layer itself is compared in fp64.
    x = torch.randn(1, 20, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cos, sin = model.model.language_model.rotary_emb(x, torch.arange(20)[None].expand(3, 1, 20))
    mask = torch.full((20, 20), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    with torch.no_grad():
        ref = original(x, (cos, sin), mask)[0]
        layer_diff = (model.model.language_model.layers[0].self_attn(x, (cos, sin), mask)[0] - ref).abs().max().item()
    print(f"full-rank GQA->M²LA (1 kv head, no q/k norm, fp64): max abs logit diff {report.logit_max_abs_diff:.3e}, "
          f"attention layer max abs diff {layer_diff:.3e} (|out| up to {ref.abs().max().item():.2f})")
    assert layer_diff < 1e-12
    assert report.exact, report.to_dict()
    assert report.logit_max_abs > 0.5, "logits must be of visible size for the check to mean anything"
    assert report.logit_max_abs_diff <= 1e-9, report.to_dict()
    assert [lr.full_rank for lr in report.layers] == [16, 16]  # (2G - 1) d with G = 1, d = 16
    assert uses_latent_cache(model)
    cfg = model.config.text_config
    assert (cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim) == (16, 16, 16, 16)


def test_truncated_conversion_reports_error_growing_as_rank_falls():
    errors, latent = [], []
    for rank in (16, 10, 6, 3):
        model = _tiny_qwen(kv_heads=1, norms=False)
        report = convert_model(model, rank=rank, calibration=_calibration(model))
        errors.append(report.logit_max_abs_diff)
        latent.append(report.layers[0].latent_rel_error)
        assert report.exact == (rank == 16)
    print("rank 16/10/6/3 -> max abs logit diff", [f"{e:.3e}" for e in errors], "latent rel error", latent)
    assert errors[0] < 1e-9 < errors[1] < errors[2] < errors[3], errors
    assert latent[0] < 1e-7 < latent[1] < latent[2] < latent[3], latent


def test_conversion_with_several_kv_heads_or_norms_is_reported_inexact():
    model = _tiny_qwen(kv_heads=2, norms=True)
    report = convert_model(model, rank=None, calibration=_calibration(model))
    d = report.to_dict()
    assert not report.exact
    assert all(lr.norms_folded for lr in report.layers)
    assert all(lr.rope_residual > 0.01 for lr in report.layers), d  # two random key heads are not collinear
    assert all(lr.full_rank <= 48 for lr in report.layers)  # (2G - 1) d = 48
    assert report.logit_max_abs_diff > 1e-3, d


def test_collinear_key_heads_convert_exactly():
    """Several kv heads are exact too when, per frequency, the heads' key pairs are multiples of one pair."""
    model = _tiny_qwen(kv_heads=2, norms=False)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            k = layer.self_attn.k_proj.weight.view(2, 16, -1)
            k[1] = -0.5 * k[0]  # head 1's keys = -0.5 x head 0's at every dim
    report = convert_model(model, rank=None, calibration=_calibration(model))
    assert report.exact, report.to_dict()
    assert report.logit_max_abs_diff <= 1e-9, report.to_dict()


def test_converted_tiny_qwen3vl_runs_end_to_end_with_a_video(tmp_path):
    """engine/tiny.py's Qwen3-VL (2 kv heads, q/k norms) converted below full rank, then a video question and a
    follow-up through the latent cache and the prefix cache equal fresh runs of the converted model."""
    from engine.generate import generate_with_prefix
    from engine.prefix_cache import PrefixCache, PrefixKey

    model = _tiny_qwen(kv_heads=2, norms=True, dtype=torch.float32)
    cfg = model.config
    batch = synthetic_video_inputs(cfg, frames=2, height=4, width=8, before=(7, 8), question=(9, 10, 11))
    report = convert_model(model, rank=[40, 32], calibration=batch)
    assert [lr.rank for lr in report.layers] == [40, 32]
    assert report.logit_max_abs_diff is not None and report.logit_max_abs_diff > 0
    assert model.config.text_config.kv_lora_rank_list == [40, 32]
    follow = dict(batch, input_ids=torch.cat([batch["input_ids"][:, :-3], torch.tensor([[12, 13]])], 1))
    follow["attention_mask"] = torch.ones_like(follow["input_ids"])
    gen = {"max_new_tokens": 6, "do_sample": False, "eos_token_id": None}
    with torch.no_grad():
        fresh = [
            model.generate(**b, **gen)[0, b["input_ids"].shape[1] :].tolist() for b in (batch, follow)
        ]
    cache = PrefixCache(tmp_path / "cache", byte_budget=2**20)
    key = PrefixKey("video", "2f", "tmpl", "tiny-converted", "fp32")
    first = generate_with_prefix(model, batch, cache, key, **gen)
    second = generate_with_prefix(model, follow, cache, key, **gen)
    assert (first.prefix_hit, second.prefix_hit) == (False, True)
    assert [first.tokens.tolist(), second.tokens.tolist()] == fresh
    entry = cache.get(key)
    assert [k.shape[-1] for k, _ in entry.layers] == [40, 32]  # latent widths per layer
