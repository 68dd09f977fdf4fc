"""The installed latent attention is checked end to end (greedy decode steps of a prompt with frames through the
latent cache against the model's own attention); a decoder that ignores the cache keyword makes Sightline keep
the model's own cache and say why in describe() (the Settings view)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.chat import VideoChat  # noqa: E402
from engine.latent_attention import uses_latent_cache  # noqa: E402
from engine.latent_check import check_latent_decode  # noqa: E402
from engine.models.internvideo3 import InternVideo3ForConditionalGeneration  # noqa: E402
from engine.tiny import randomize_, synthetic_video_inputs, tiny_internvideo3_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model():
    cfg = tiny_internvideo3_config()
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return randomize_(InternVideo3ForConditionalGeneration(cfg, latent=True).eval(), std=0.15)


def _plan():
    from tests.chat_builders import cpu_plan

    return cpu_plan("tiny-iv3", "internvideo3", revision="files:test")


def _ignore_cache_keyword(monkeypatch, model):
    """The decoder drops the cache it is handed (a remote-code signature change would look like this)."""
    lm = model.model.language_model
    original = lm.forward

    def forward(*args, past_key_values=None, **kwargs):
        return original(*args, past_key_values=None, **kwargs)

    monkeypatch.setattr(lm, "forward", forward)


def test_a_correct_latent_path_passes_and_is_used(model, tmp_path):
    assert check_latent_decode(model) == ""
    chat = VideoChat(model, None, _plan(), cache_bytes=2**20, library=tmp_path)
    info = chat.describe()
    assert info["generation"] == "latent-cache" and "latent_cache_unavailable" not in info
    assert uses_latent_cache(model)


def test_a_decoder_ignoring_the_cache_keeps_the_models_own_cache_and_says_why(model, tmp_path, monkeypatch):
    batch = synthetic_video_inputs(model.config, frames=2, height=4, width=4, seed=3)
    gen = dict(max_new_tokens=4, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        model.model.rope_deltas = None
        expected = model.generate(**batch, **gen)  # the latent path, working
    _ignore_cache_keyword(monkeypatch, model)
    why = check_latent_decode(model)
    assert why.startswith("decode step") and "model's own attention" in why
    chat = VideoChat(model, None, _plan(), cache_bytes=2**20, library=tmp_path)
    info = chat.describe()
    assert info["generation"] == "plain"
    assert "end-to-end check failed" in info["latent_cache_unavailable"] and "own cache is used" in info["latent_cache_unavailable"]
    assert not uses_latent_cache(model)  # back on the model's own attention and cache
    monkeypatch.undo()
    with torch.no_grad():
        model.model.rope_deltas = None
        plain = model.generate(**batch, **gen)  # the plain path (own attention, DynamicCache) answers the same
    assert plain.tolist() == expected.tolist()


def test_a_check_that_cannot_run_also_keeps_the_models_own_cache(model, tmp_path, monkeypatch):
    lm = model.model.language_model
    original = lm.forward

    def forward(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            raise RuntimeError("unexpected cache object")
        return original(*args, **kwargs)

    monkeypatch.setattr(lm, "forward", forward)
    chat = VideoChat(model, None, _plan(), cache_bytes=2**20, library=tmp_path)
    why = chat.describe()["latent_cache_unavailable"]
    assert "could not run" in why and "unexpected cache object" in why and not uses_latent_cache(model)
