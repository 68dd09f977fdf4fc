"""engine/registry.py + engine/loading.py: the tiny model through the real loading code, nf4 on CPU, every error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from engine.loading import (
    GIB,
    bytes_needed,
    check_transformers,
    count_params,
    load_vlm,
    load_vlm_or_reason,
    plan_load,
    runtime_bytes,
)
from engine.registry import DEFAULT_GPU_MODEL, REGISTRY, resolve
from storage.errors import SightlineError

pytestmark = pytest.mark.usefixtures("fresh_loads")  # conftest: no model loaded by another test is reused


@pytest.fixture
def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA GPU with `free` bytes free, as torch would report it (nothing is allocated on it)."""
    import torch

    def install(free_gib: float, total_gib: float = 24.0):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), int(total_gib * GIB)))

    return install


def test_tiny_model_loads_through_the_real_loading_code(tiny_dir):
    chat = load_vlm(str(tiny_dir), quantization="bf16")
    info = chat.describe()
    assert info["model"] == str(tiny_dir.resolve()) and info["family"] == "qwen3_vl" and info["device"] == "cpu"
    assert type(chat.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(chat.processor).__name__ == "Qwen3VLProcessor"
    assert type(chat.processor.tokenizer).__name__ == "Qwen2TokenizerFast"
    assert load_vlm(str(tiny_dir), quantization="bf16") is chat  # loaded once
    assert count_params(json.loads((tiny_dir / "config.json").read_text()))[0] == pytest.approx(
        sum(p.numel() for p in chat.model.parameters()), rel=0.02
    )


def test_nf4_on_cpu_loads_quantized_and_generates(tiny_dir):
    import bitsandbytes as bnb
    from torch import nn

    chat = load_vlm(str(tiny_dir), quantization="nf4")
    assert chat.plan.quantization == "nf4"
    model = chat.model
    layer = model.model.language_model.layers[0]
    assert isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit) and isinstance(layer.mlp.up_proj, bnb.nn.Linear4bit)
    assert layer.self_attn.q_proj.weight.quant_type == "nf4"
    # the vision tower and lm_head stay in full precision (skip list)
    assert type(model.model.visual.blocks[0].attn.qkv) is nn.Linear
    assert type(model.lm_head) is nn.Linear
    reply = chat.chat([{"role": "user", "content": "What happens?"}], max_new_tokens=5)
    assert isinstance(reply, str)
    assert chat.describe()["quantization"] == "nf4"


def test_registry_names_and_unknown_names():
    assert resolve("internvideo3").name == DEFAULT_GPU_MODEL
    assert resolve("Qwen3-VL-2B").name == "Qwen/Qwen3-VL-2B-Instruct"
    assert resolve("qwen/qwen3-vl-8b-instruct").family == "qwen3_vl"
    assert resolve(DEFAULT_GPU_MODEL).trust_remote_code
    assert resolve("someone/some-model").family == "unknown"  # decided by its config later
    with pytest.raises(SightlineError) as err:
        resolve("gpt-7-vision")
    for spec in REGISTRY:
        assert spec.name in err.value.hint
    assert "tiny" in err.value.hint


@pytest.mark.parametrize("name", ["internvideo3", "qwen3-vl-8b"])
def test_no_gpu_refuses_big_models_and_says_what_to_do(no_gpu, name):
    with pytest.raises(SightlineError) as err:
        load_vlm(name)
    text = err.value.user_text()
    assert "needs a CUDA GPU" in text and "has none" in text
    assert "SIGHTLINE_VLM_MODEL=none" in text and "SIGHTLINE_VLM_MODEL=qwen3-vl-2b" in text
    assert "vlm_model=" not in text.replace("SIGHTLINE_VLM_MODEL=", "")  # only knobs that exist
    assert "GiB of GPU memory with SIGHTLINE_QUANTIZATION=nf4" in text  # the plan's own figure, not "8 GiB"


def test_auto_and_none_fall_back_to_evidence_only(no_gpu, tmp_path):
    from dataclasses import replace

    from app.services import vlm_options
    from app.settings import load_settings

    settings = load_settings({}, vlm_model="auto", quantization="auto", cache_bytes=GIB, library=str(tmp_path / "lib"))
    chat, reason = load_vlm_or_reason(**vlm_options(settings))
    assert chat is None and "no CUDA GPU" in reason and "evidence" in reason
    assert reason.startswith("No answering model") and "SIGHTLINE_VLM_MODEL=qwen3-vl-2b" in reason, reason
    chat, reason = load_vlm_or_reason(**vlm_options(replace(settings, vlm_model="none")))
    assert chat is None and "'none'" in reason
    assert reason.startswith("No answering model") and "SIGHTLINE_VLM_MODEL=qwen3-vl-2b" in reason, reason


def test_offline_weights_name_the_model_and_how_to_get_them(no_gpu, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing downloaded before
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SightlineError) as err:
        load_vlm("qwen3-vl-2b")
    text = err.value.user_text()
    assert "Qwen/Qwen3-VL-2B-Instruct" in text and "cannot be downloaded" in text and "HF_HUB_OFFLINE" in text
    assert "huggingface-cli download Qwen/Qwen3-VL-2B-Instruct" in text and "SIGHTLINE_VLM_MODEL=PATH" in text and "--vlm-model" not in text


def test_unreachable_hub_is_the_same_clear_error(no_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(SightlineError) as err:
        load_vlm("someone/some-video-model")
    text = err.value.user_text()
    assert "someone/some-video-model" in text and "cannot be reached" in text and "huggingface-cli download" in text


def test_not_enough_gpu_memory_gives_estimate_and_free(fake_gpu):
    fake_gpu(free_gib=3.0)
    with pytest.raises(SightlineError) as err:
        load_vlm("internvideo3")
    text = err.value.user_text()
    assert "Not enough GPU memory" in text and DEFAULT_GPU_MODEL in text and "nf4" in text
    need = bytes_needed(REGISTRY[0].params, REGISTRY[0].keep_params, "nf4")
    assert f"{need / GIB:.1f} GiB" in text and "3.0 GiB is free" in text
    fake_gpu(free_gib=15.0)
    with pytest.raises(SightlineError, match="in bf16") as err:
        load_vlm("internvideo3", quantization="bf16")
    assert "SIGHTLINE_QUANTIZATION=nf4" in err.value.hint


def test_auto_quantization_is_bf16_when_it_fits_else_nf4():
    spec = resolve("internvideo3")
    bf16 = bytes_needed(spec.params, spec.keep_params, "bf16")
    nf4 = bytes_needed(spec.params, spec.keep_params, "nf4")
    run = runtime_bytes(spec.params)  # the same clip's cache copy and activations under either quantization
    assert bf16 > 2 * spec.params and nf4 - run < (bf16 - run) / 2
    assert plan_load(spec, "auto", free_bytes=80 * GIB).quantization == "bf16"
    assert plan_load(spec, "auto", free_bytes=12 * GIB).quantization == "nf4"
    assert plan_load(spec, "int8", free_bytes=16 * GIB).quantization == "int8"
    assert "kv_b_proj" in plan_load(spec, "nf4", free_bytes=12 * GIB).skip_modules
    with pytest.raises(SightlineError, match="Unknown quantization"):
        plan_load(spec, "fp8", free_bytes=80 * GIB)


def test_a_folder_that_is_not_a_video_model(tmp_path):
    folder = tmp_path / "text-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}))
    with pytest.raises(SightlineError, match="not a video model") as err:
        load_vlm(str(folder))
    assert "no vision_config" in err.value.message
    other = tmp_path / "llava"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava", "vision_config": {"hidden_size": 8}}))
    with pytest.raises(SightlineError, match="model_type is 'llava'"):
        load_vlm(str(other))
    with pytest.raises(SightlineError, match="no config.json"):
        load_vlm(str(tmp_path))


def test_a_hub_id_whose_config_is_not_a_video_model():
    from engine.registry import with_family

    with pytest.raises(SightlineError, match="someone/llm is not a video model"):
        with_family(resolve("someone/llm"), {"model_type": "llama"})
    assert with_family(resolve("someone/vl"), {"model_type": "qwen3_vl", "vision_config": {"depth": 1}}).family == "qwen3_vl"


def test_newly_initialized_weights_are_fatal(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = load_file(broken / "model.safetensors")
    dropped = next(k for k in weights if k.endswith("post_attention_layernorm.weight"))
    del weights[dropped]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SightlineError, match="newly initialized") as err:
        load_vlm(str(broken), quantization="bf16")
    assert "post_attention_layernorm" in err.value.message


def test_transformers_version_pin():
    assert check_transformers("4.57.3") and check_transformers("4.57.6")
    for bad in ("4.57.2", "4.56.0", "5.0.0", "5.24.0"):
        with pytest.raises(SightlineError, match=">=4.57.3,<5") as err:
            check_transformers(bad)
        assert "pip install" in err.value.hint
    check_transformers()  # the installed one is in range


def test_engine_modules_import_without_torch():
    code = (
        "import sys, engine.registry, engine.loading, engine.chat, engine.captioner, engine.video_inputs, engine.tiny;"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out


@pytest.fixture(scope="module")
def iv3_dir(tmp_path_factory):
    from engine.tiny import tiny_internvideo3_dir

    return tiny_internvideo3_dir(tmp_path_factory.mktemp("iv3"))


def test_internvideo3_layout_loads_with_trust_remote_code(iv3_dir, tmp_path):
    config = json.loads((iv3_dir / "config.json").read_text())
    assert config["model_type"] == "internvideo3" and "AutoModelForCausalLM" in config["auto_map"]
    chat = load_vlm(str(iv3_dir), quantization="bf16", library=tmp_path)
    assert chat.plan.spec.family == "internvideo3" and chat.plan.spec.trust_remote_code
    assert type(chat.model).__name__ == "InternVideo3ForConditionalGeneration"
    info = chat.describe()
    assert info["generation"] == "latent-cache" and info["cache"]["cache_kind"] == "latent", info
    messages = [{"role": "user", "content": "What happens?"}]
    plain = chat.decode(chat._plain(chat.inputs(messages), 6)[0])
    assert chat.chat(messages, max_new_tokens=6) == plain and chat.last_path == "latent-cache"


def test_internvideo3_nf4_on_cpu_keeps_kv_b_proj_dense(iv3_dir, tmp_path):
    import bitsandbytes as bnb
    from torch import nn

    chat = load_vlm(str(iv3_dir), quantization="nf4", library=tmp_path)
    attn = chat.model.model.language_model.layers[0].self_attn
    assert isinstance(attn.q_proj, bnb.nn.Linear4bit) and isinstance(attn.kv_a_proj_with_mqa, bnb.nn.Linear4bit)
    assert type(attn.kv_b_proj) is nn.Linear  # the absorbed decode reads its weight as [H, d_n + d_v, r]
    assert isinstance(chat.chat([{"role": "user", "content": "What happens?"}], max_new_tokens=4), str)


def test_internvideo3_nf4_on_cpu_uses_the_latent_cache(iv3_dir, tmp_path):
    chat = load_vlm(str(iv3_dir), quantization="nf4", library=tmp_path)
    assert chat.describe()["generation"] == "latent-cache", chat.describe().get("latent_cache_unavailable")


def test_remote_code_needing_a_missing_package_is_a_clear_error(iv3_dir, tmp_path):
    folder = tmp_path / "needs-package"
    shutil.copytree(iv3_dir, folder)
    code = folder / "modeling_internvideo3_tiny.py"
    code.write_text("import sightline_missing_kernels  # noqa\n" + code.read_text())
    with pytest.raises(SightlineError, match="sightline_missing_kernels") as err:
        load_vlm(str(folder), quantization="bf16")
    assert "pip install" in err.value.hint


def test_gpu_running_out_while_loading_is_the_memory_error(tiny_dir, fake_gpu, monkeypatch):
    import torch
    from transformers import AutoModelForImageTextToText

    fake_gpu(free_gib=40.0)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", oom)
    with pytest.raises(SightlineError, match="Not enough GPU memory") as err:
        load_vlm(str(tiny_dir), quantization="bf16")
    assert "40.0 GiB was free" in err.value.message and "nf4" in err.value.hint


def test_int8_on_cpu_loads_quantized_and_generates(tiny_dir):
    import bitsandbytes as bnb
    from torch import nn

    chat = load_vlm(str(tiny_dir), quantization="int8")
    assert isinstance(chat.model.model.language_model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    assert type(chat.model.model.visual.blocks[0].attn.qkv) is nn.Linear and type(chat.model.lm_head) is nn.Linear
    assert isinstance(chat.chat([{"role": "user", "content": "What happens?"}], max_new_tokens=4), str)


def test_memory_estimate_counts_the_real_8b_shape():
    """count_params (which the GPU-memory check uses) against the InternVideo3-8B model built on the meta device."""
    import torch

    from engine.models.internvideo3 import InternVideo3Config, InternVideo3ForConditionalGeneration

    config = InternVideo3Config()  # defaults are the 8B checkpoint's shapes
    with torch.device("meta"):
        model = InternVideo3ForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    keep = sum(p.numel() for n, p in model.named_parameters()  # what nf4/int8 leave dense (SKIP_MODULES)
               if n.startswith(("model.visual", "lm_head", "model.language_model.embed_tokens"))
               or ".kv_b_proj." in n)
    counted = count_params(config.to_dict())
    assert counted[0] == pytest.approx(total, rel=1e-3) and counted[1] == pytest.approx(keep, rel=1e-3)
    spec = resolve("internvideo3")
    assert spec.params == pytest.approx(total, rel=0.01) and spec.keep_params == pytest.approx(keep, rel=0.01)
    # nf4 fits a 12 GiB card, bf16 needs more than 16 GiB (a 24 GiB one)
    assert 6 * GIB < bytes_needed(total, keep, "nf4") < 12 * GIB < 16 * GIB < bytes_needed(total, keep, "bf16") < 24 * GIB


def test_vlm_model_none_imports_nothing_heavy():
    code = (
        "import sys; from engine.loading import load_vlm_or_reason; from app.settings import load_settings\n"
        "from app.services import vlm_options\n"
        "chat, reason = load_vlm_or_reason(**vlm_options(load_settings({}, vlm_model='none')))\n"
        "print(chat is None, 'torch' in sys.modules, reason.startswith('No answering model'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "True"], out


def test_one_table_maps_families_to_loaders():
    from transformers import AutoModelForImageTextToText

    from engine.loading import model_class_for
    from engine.registry import ModelSpec

    assert model_class_for(resolve("qwen3-vl-2b")) is AutoModelForImageTextToText
    with pytest.raises(SightlineError, match="no loader for model family 'llava'") as err:
        model_class_for(ModelSpec("x/llava", "llava"))
    assert DEFAULT_GPU_MODEL in err.value.hint



def test_count_params_reads_llm_config_and_keeps_kv_b_proj_dense():
    """A local folder whose config names its text part `llm_config` (the registry accepts it) is counted, and
    InternVideo3's kv_b_proj, which stays bf16 under nf4/int8, is counted with the kept parameters."""
    from engine.loading import count_params
    from engine.models.internvideo3 import InternVideo3Config

    cfg = InternVideo3Config().to_dict()
    total, kept = count_params(cfg)
    renamed = dict(cfg, llm_config=cfg["text_config"])
    del renamed["text_config"]
    assert count_params(renamed) == (total, kept)
    t = cfg["text_config"]
    kv_b = t["num_hidden_layers"] * t["kv_lora_rank"] * t["num_attention_heads"] * (t["qk_nope_head_dim"] + t["v_head_dim"])
    gqa = {k: v for k, v in t.items() if k != "kv_lora_rank"}  # the same model counted as plain GQA attention
    assert kept - count_params({**cfg, "text_config": gqa})[1] == kv_b > 0

