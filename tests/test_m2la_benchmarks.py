"""The M²LA benchmarks' own checks: the GPU script refuses clearly without CUDA and its code path runs (tiny
shape on the CPU) with cache sizes that match the cost accounting."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_refuses_without_cuda(capsys, monkeypatch):
    gpu = _load("m2la_gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--json"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "m2la_cache.py" in err


def test_gpu_benchmark_code_path_runs_on_a_tiny_shape(capsys):
    from engine.models.internvideo3 import gqa_bytes_per_token, latent_bytes_per_token
    from engine.tiny import tiny_internvideo3_config

    gpu = _load("m2la_gpu")
    argv = ["--cpu-smoke", "--contexts", "16", "--steps", "1", "--warmup", "1", "--layers", "1", "--json"]
    assert gpu.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"gqa_dynamic", "gqa_static", "m2la_absorbed", "m2la_absorbed_bmm"}
    assert all(not r["oom"] and r["tokens_per_s"] > 0 for r in rows.values())
    cfg = tiny_internvideo3_config(num_hidden_layers=1).text_config
    latent, gqa = latent_bytes_per_token(cfg, torch.float32), gqa_bytes_per_token(cfg, torch.float32)
    assert rows["m2la_absorbed"]["cache_bytes"] == latent * (16 + 3)  # preallocated: context + warmup + steps + 1
    assert rows["m2la_absorbed_bmm"]["cache_bytes"] == latent * (16 + 3)
    assert rows["gqa_static"]["cache_bytes"] == gqa * (16 + 3)
    assert rows["gqa_dynamic"]["cache_bytes"] == gqa * 16  # measured right after filling
    assert set(result["speedup_m2la_over"]) == {"gqa_dynamic@16", "gqa_static@16"}
