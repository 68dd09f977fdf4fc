"""Pinned revisions: the registry names a commit per hub model, SIGHTLINE_VLM_REVISION overrides it, remote code
never loads unpinned, every hub call of engine/loading.py passes revision=, the prefix-cache key and Settings
carry the resolved commit, and a local folder's recorded commit is read."""

from __future__ import annotations

import json
import re

import pytest

from app.services import vlm_options
from app.settings import load_settings
from engine import loading
from engine.registry import DEFAULT_GPU_MODEL, REGISTRY, local_revision, resolve
from storage.errors import SightlineError

COMMIT = re.compile(r"^[0-9a-f]{40}$")
pytestmark = pytest.mark.usefixtures("fresh_loads")  # conftest: no model loaded by another test is reused


def test_registry_pins_every_model_it_can_and_remote_code_is_never_loaded_unpinned():
    for spec in REGISTRY:
        if spec.revision is not None:
            assert COMMIT.match(spec.revision), f"{spec.name}: {spec.revision!r} is not a full commit"
        else:  # unknown commit: only allowed where pin_revision refuses it without an explicit setting
            assert spec.trust_remote_code, f"{spec.name} has no pinned commit"
    assert all(COMMIT.match(s.revision or "") for s in REGISTRY if s.family == "qwen3_vl")
    iv3 = resolve(DEFAULT_GPU_MODEL)
    with pytest.raises(SightlineError) as err:
        loading.pin_revision(iv3)
    assert "trust_remote_code" in err.value.message and "SIGHTLINE_VLM_REVISION=<commit>" in err.value.hint
    assert loading.pin_revision(iv3, "a" * 40).revision == "a" * 40
    qwen = resolve("qwen3-vl-2b")
    assert loading.pin_revision(qwen).revision == qwen.revision
    assert loading.pin_revision(qwen, " b" * 1 + "c" * 39).revision == "b" + "c" * 39  # the setting wins
    folder = resolve("tiny")
    assert loading.pin_revision(folder, "d" * 40) is folder  # a folder is what it is


def test_setting_is_read_from_the_environment():
    s = load_settings({"SIGHTLINE_VLM_REVISION": "e" * 40, "SIGHTLINE_CACHE_DISK_BYTES": "1000"})
    assert (s.vlm_revision, s.cache_disk_bytes) == ("e" * 40, 1000)
    assert load_settings({}).vlm_revision == ""


@pytest.mark.slow
def test_every_hub_call_passes_the_pinned_revision(tiny_dir, monkeypatch, tmp_path):
    """A hub id loads through the real loader; the hub calls are redirected to the tiny folder and record kwargs."""
    import huggingface_hub
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls: list[tuple[str, dict]] = []

    def hub_download(repo_id, filename, **kw):
        calls.append(("hf_hub_download", kw))
        return str(tiny_dir / filename)

    def redirect(name, original):
        def call(path, *args, **kw):
            calls.append((name, dict(kw)))
            kw.pop("revision")  # the tiny folder is local: transformers ignores revision= there anyway
            return original(str(tiny_dir), *args, **kw)
        return call

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained",
                        redirect("model", AutoModelForImageTextToText.from_pretrained))
    monkeypatch.setattr(AutoProcessor, "from_pretrained", redirect("processor", AutoProcessor.from_pretrained))

    pinned = resolve("qwen3-vl-2b").revision
    chat = loading.load_vlm("qwen3-vl-2b", "bf16", use_latent_cache=False)
    assert [n for n, _ in calls] == ["hf_hub_download", "model", "processor"]
    assert all(kw.get("revision") == pinned for _, kw in calls), calls
    assert chat.describe()["revision"] == pinned

    calls.clear()
    override = "f" * 40
    settings = load_settings({}, vlm_model="qwen3-vl-2b", quantization="bf16", cache_bytes=2**20,
                             library=str(tmp_path / "lib"), vlm_revision=override)
    chat, reason = loading.load_vlm_or_reason(**vlm_options(settings))
    assert chat is not None, reason
    assert calls and all(kw.get("revision") == override for _, kw in calls), calls
    assert chat.describe()["revision"] == override


def test_prefix_cache_key_uses_the_resolved_commit(tmp_path):
    torch = pytest.importorskip("torch")
    from engine.generate import make_generator
    from engine.models.internvideo3 import InternVideo3ForConditionalGeneration
    from engine.tiny import tiny_internvideo3_config
    from tests.chat_builders import bare_chat, cpu_plan

    torch.manual_seed(0)
    model = InternVideo3ForConditionalGeneration(tiny_internvideo3_config(), latent=True).eval()
    keys = []
    for commit in ("1" * 40, "2" * 40):
        chat = bare_chat(model, plan=cpu_plan("m", "internvideo3", revision=commit), cache_bytes=2**20, library=tmp_path)
        gen = make_generator(chat)
        assert commit in gen.revision
        keys.append(gen.revision)
    assert keys[0] != keys[1]  # another commit: another prefix-cache key, so no stale cache is reused


def test_a_local_folder_reports_the_commit_it_recorded(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    first = local_revision(folder)
    assert first.startswith("files:")
    (folder / "modeling_x.py").write_text("x = 1\n")
    assert local_revision(folder) != first  # other code: another revision
    meta = folder / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "config.json.metadata").write_text("0123456789abcdef0123456789abcdef01234567\netag\n1.0\n")
    assert local_revision(folder) == "0123456789abcdef0123456789abcdef01234567"  # huggingface-cli --local-dir
    snap = tmp_path / "models--a--b" / "snapshots" / ("9" * 40)
    snap.mkdir(parents=True)
    assert local_revision(snap) == "9" * 40  # a hub cache snapshot folder


@pytest.mark.slow
def test_settings_view_shows_revision_generation_and_disk_cache(tmp_path, monkeypatch):
    from unittest.mock import create_autospec

    from app.render import status_markdown
    from app.services import Services
    from engine.chat import VideoChat

    services = Services(load_settings({}, library=str(tmp_path / "lib")))
    chat = create_autospec(VideoChat, instance=True)  # only VideoChat's own methods: a rename fails here
    chat.describe.return_value = {
        "model": "Qwen/Qwen3-VL-2B-Instruct", "revision": "0" * 40, "generation": "plain",
        "latent_cache_unavailable": "the end-to-end check failed: decode step 2 | x",
        "cache": {"bytes": 0, "entries": 0, "disk_bytes": 3 * 2**20, "disk_cap": 2**30, "disk_entries": 2},
    }
    monkeypatch.setattr(loading, "load_vlm_or_reason", lambda *args, **kwargs: (chat, ""))
    assert services.loaded_vlm() is None and services.vlm() == (chat, "")  # what services loaded is what it shows
    text = status_markdown(services)
    assert "| Model revision | " + "0" * 40 + " |" in text
    assert "latent cache off: the end-to-end check failed: decode step 2 / x |" in text
    assert "| Prefix cache on disk | 3.0 MB of 1.0 GB cap, 2 files |" in text
