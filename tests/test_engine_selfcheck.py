"""`python -m engine.selfcheck`: end to end on the tiny model; a real id offline fails with the clear message."""

from __future__ import annotations

import json

import pytest

from engine import selfcheck


def test_selfcheck_passes_end_to_end_on_the_tiny_model(tmp_path, capsys):
    code = selfcheck.main(["--model", "tiny", "--library", str(tmp_path), "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and report["status"] == "PASS", out
    assert "\nPASS\n" in out and "cache bytes/token latent" in out
    cmp = report["compare"]
    assert cmp["converted"] and cmp["tokens_equal"] and cmp["generated_tokens"] == 6
    assert cmp["logit_rel_diff"] <= 1e-4
    # measured from the allocated latent cache and equal to the model's own formula
    assert cmp["latent_cache_bytes_per_token"] == cmp["latent_bytes_per_token_formula"] > 0
    assert report["clip"]["frames"] == 8 and report["clip"]["timestamps"][0] == 0.0


def test_selfcheck_with_a_real_id_offline_fails_clearly(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = selfcheck.main(["--model", "Qwen/Qwen3-VL-2B-Instruct"])
    out = capsys.readouterr().out
    assert code == 1 and "\nFAIL\n" in out
    assert "cannot be downloaded" in out and "huggingface-cli download Qwen/Qwen3-VL-2B-Instruct" in out
    code = selfcheck.main(["--model", "internvideo3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["status"] == "FAIL" and "needs a CUDA GPU" in report["reason"]


@pytest.mark.parametrize("bad", [["--quantization", "fp3"]])
def test_selfcheck_rejects_bad_flags(bad):
    with pytest.raises(SystemExit):
        selfcheck.main(["--model", "tiny", *bad])


def test_selfcheck_on_the_internvideo3_layout_needs_no_conversion(tmp_path, capsys):
    from engine.tiny import tiny_internvideo3_dir

    folder = tiny_internvideo3_dir(tmp_path)
    code = selfcheck.main(["--model", str(folder), "--max-new-tokens", "6", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["status"] == "PASS", report
    cmp = report["compare"]
    assert not cmp["converted"] and cmp["tokens_equal"]
    # stock M2LA caches expanded per-head K/V; the latent cache holds r + d_r = 16 + 16 floats per token per layer
    assert cmp["latent_cache_bytes_per_token"] == 2 * 32 * 4 == cmp["latent_bytes_per_token_formula"]
    assert cmp["original_cache_bytes_per_token"] == 2 * 4 * (32 + 16) * 4  # 2 layers, 4 heads, K 32 + V 16, fp32


def test_selfcheck_says_fail_when_paths_disagree_or_a_step_breaks(tmp_path, monkeypatch):
    report = selfcheck.run("tiny", library=str(tmp_path), video=str(tmp_path / "missing.mp4"))
    assert report["status"] == "FAIL" and report["reason"].startswith("sampling the clip: ")
    assert "no such video file" in report["reason"]

    def disagreeing(chat, batch, max_new_tokens=12):
        return dict(tokens_equal=False, tokens_agreeing=3, generated_tokens=6, logit_rel_diff=0.2, tolerance=1e-4)

    monkeypatch.setattr(selfcheck, "compare_paths", disagreeing)
    report = selfcheck.run("tiny", library=str(tmp_path), max_new_tokens=2)
    assert report["status"] == "FAIL" and "tokens equal for 3 of 6" in report["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "tiny-internvideo3"])
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_selfcheck_passes_quantized(tmp_path, capsys, model, quantization):
    """The check the README tells users to run, in 4 and 8 bits: a stock Qwen3-VL's attention is converted from
    bitsandbytes weights (uint8/int8 storage) into a dense latent attention in the compute dtype."""
    code = selfcheck.main(["--model", model, "--quantization", quantization, "--library", str(tmp_path),
                           "--max-new-tokens", "4", "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and report["status"] == "PASS", report.get("reason")
    assert report["loaded"]["quantization"] == quantization
    assert report["compare"]["tokens_equal"]
    assert report["compare"]["converted"] == (model == "tiny")
