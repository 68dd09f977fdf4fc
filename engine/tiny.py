"""Tiny random Qwen3-VL / InternVideo3 models for tests, built offline: a locally trained tokenizer, the real
config and processor.

Nothing here downloads. `tiny_model_dir(folder)` writes a complete model folder (config, safetensors weights,
tokenizer, chat template, image + video processor configs) that the real loading code opens like any local
checkpoint (`engine.loading.load_vlm("tiny", library=folder)` builds and loads it); `tiny_internvideo3_dir`
does the same for a tiny InternVideo3 loaded through remote code. The architecture is the real
`Qwen3VLForConditionalGeneration` (vision tower with deepstack, interleaved M-RoPE); only the sizes are small.
In memory, without a folder: `tiny_internvideo3_config`, `synthetic_video_inputs` (processor-shaped inputs for
one video) and `randomize_` (visible random weights).
Widths are >= 64 wherever bitsandbytes 4-bit must quantize a Linear (it crashes below 64 on CPU,
offline-stack.md section 4), so the same folder also serves the nf4 test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from engine.models.internvideo3 import InternVideo3Config

from storage.once import OnceCache

TINY_NAME = "tiny-qwen3-vl"
# Bump when the tiny model's recipe changes, so cached folders are rebuilt.
TINY_VERSION = 4

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<think>",
    "</think>",
]
MARKUP_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>")

# Qwen3-VL's chat template (tokenizer_config / chat_template.json of the Qwen3-VL checkpoints), tools included:
# tools as JSON schemas in a `# Tools` system block, assistant calls as <tool_call>{"name", "arguments"}</tool_call>,
# role "tool" results wrapped in <tool_response> inside a user turn, reasoning before </think> split off old
# assistant turns. The Thinking checkpoints pre-fill "<think>\n" after the generation prompt; the Instruct ones
# (and InternVideo3-Instruct, trained on the same ChatML) do not: `chat_template(think=...)` gives either.
_QWEN3_VL_TEMPLATE = r"""{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count) %}
    {%- if content is string %}
        {{- content }}
    {%- else %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if do_vision_count %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                <|vision_start|><|image_pad|><|vision_end|>
            {%- elif 'video' in item or item.type == 'video' %}
                {%- if do_vision_count %}
                    {%- set video_count.value = video_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                <|vision_start|><|video_pad|><|vision_end|>
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
{%- endmacro %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content, false) + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + render_content(messages[0].content, false) + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set content = render_content(message.content, false) %}
        {%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}
            {%- set ns.multi_step_tool = false %}
            {%- set ns.last_query_index = index %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = render_content(message.content, True) %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- GENERATION_PROMPT }}
{%- endif %}
"""


def chat_template(think: bool = False) -> str:
    """Qwen3-VL's template; think=True is the Thinking checkpoints' (generation prompt pre-fills <think>)."""
    prompt = "'<|im_start|>assistant\\n<think>\\n'" if think else "'<|im_start|>assistant\\n'"
    return _QWEN3_VL_TEMPLATE.replace("GENERATION_PROMPT", prompt)


CHAT_TEMPLATE = chat_template(think=False)

# Enough English, digits and JSON for the tokenizer to cover what tests and the agent write.
_CORPUS = [
    "What happens in this video? A cat sits on a red mat.",
    "A person rides a bike down the street past a yellow taxi sign.",
    "The screen shows the text THANKS FOR WATCHING in white letters.",
    "Describe what is seen, who is there, any on-screen text and the actions.",
    "Video 1: at 12.5 seconds someone says hello and waves. 0 1 2 3 4 5 6 7 8 9",
    '{"tool": "search", "args": {"query": "red van", "video": 3, "start": 10.0, "end": 20.5}}',
    "You are Sightline, an assistant that answers questions about videos with evidence.",
    "yes no true false supported not supported answer evidence verify inspect transcript screen_text finish",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?'\"()[]{}<>-_/\\=+*#%&@$",
]

# Folders written (or found complete) in this process; the marker file says so to later processes.
_BUILT: OnceCache = OnceCache()


def build_tokenizer():
    """A byte-level BPE tokenizer trained here on a small corpus, wrapped as Qwen2TokenizerFast (4.57 needs that)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    control = [t for t in SPECIAL_TOKENS if t not in MARKUP_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    # As in Qwen3's tokenizer, the tool-call and thinking tags are added but not special: decoding with
    # skip_special_tokens keeps them, so the parser sees <tool_call> and the reasoning's </think>.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None
    )
    fast.add_special_tokens({"additional_special_tokens": control[1:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _tiny_text_widths() -> dict:
    """The text model's tiny widths, shared by the tiny Qwen3-VL and the tiny InternVideo3 (a fresh dict each call)."""
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        # sum(mrope_section) == head_dim / 2
        rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    )


def tiny_config(tokenizer):
    """Qwen3VLConfig with the real layout and tiny widths (transformers 4.57 keywords: rope_scaling=)."""
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tokenizer)
    vocab += -vocab % 64  # a round vocabulary, like real checkpoints
    return Qwen3VLConfig(
        text_config=dict(
            _tiny_text_widths(),
            vocab_size=vocab,
            max_position_embeddings=4096,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            patch_size=16,  # the real patch: the processor's 32 px per merged token holds
            temporal_patch_size=2,
            spatial_merge_size=2,
            out_hidden_size=64,
            num_position_embeddings=64,
            deepstack_visual_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def build_processor(tokenizer):
    """The real Qwen3VLProcessor: Qwen2-VL image processor + Qwen3-VL video processor + the tokenizer."""
    from transformers import Qwen2VLImageProcessorFast, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessorFast(patch_size=16, temporal_patch_size=2, merge_size=2)
    # Tiny budgets: at most 16 merged tokens per frame pair on average keeps tests fast.
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 2 * 32 * 32, "longest_edge": 16 * 32 * 32 * 8},
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _built_once(out: Path, seed: int, write) -> Path:
    """Run write(out, seed) unless `out` already holds a complete build of this version; return `out`."""
    marker = out / "sightline_tiny.json"

    def build() -> Path:
        if marker.exists() and json.loads(marker.read_text()).get("version") == TINY_VERSION:
            return out
        out.mkdir(parents=True, exist_ok=True)
        write(out, seed)
        marker.write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))  # written last: the build is whole
        return out

    return _BUILT.get(out, build, keep=False)  # one build at a time; the marker on disk says whether it is done


def _save(model, tokenizer, eos_token_id: int, pad_token_id: int, out: Path) -> None:
    """Save a tiny model greedy by default, with the shared tokenizer's processor beside it."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        eos_token_id=[eos_token_id, pad_token_id], pad_token_id=pad_token_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)
    build_processor(tokenizer).save_pretrained(out)


def tiny_model_dir(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny model into folder/tiny-qwen3-vl (once; reused when already complete) and return its path."""
    return _built_once(Path(folder) / TINY_NAME, seed, _write_tiny_qwen3_vl)


def _write_tiny_qwen3_vl(out: Path, seed: int) -> None:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    _save(model, tokenizer, config.text_config.eos_token_id, config.text_config.pad_token_id, out)


# The remote-code file of the tiny InternVideo3 folder: the real checkpoint ships its modeling code and an
# auto_map; ours re-exports engine/models/internvideo3.py's classes, so loading goes through trust_remote_code
# like the real one.
_REMOTE_CODE = '''"""Tiny InternVideo3 for Sightline's tests: remote code that re-exports engine/models/internvideo3.py."""
from engine.models.internvideo3 import InternVideo3Config, InternVideo3ForConditionalGeneration  # noqa: F401
'''
IV3_NAME = "tiny-internvideo3"


def tiny_internvideo3_dir(folder: str | Path, seed: int = 0) -> Path:
    """A tiny InternVideo3 (Qwen3-VL with M2LA attention) folder loaded with trust_remote_code, like the real one.

    Same tokenizer, vision tower and processor as the tiny Qwen3-VL; text attention from
    engine/models/internvideo3.py's InternVideo3ForConditionalGeneration (stock mode: the model's own
    expanded-K/V cache) with random weights.
    """
    return _built_once(Path(folder) / IV3_NAME, seed, _write_tiny_internvideo3)


def _write_tiny_internvideo3(out: Path, seed: int) -> None:
    from engine.models.internvideo3 import InternVideo3Config, InternVideo3ForConditionalGeneration

    tokenizer = build_tokenizer()
    base = tiny_config(tokenizer).to_dict()
    # r + d_r = 32: kv_a_proj's outputs a multiple of 32, which bitsandbytes' packed 4-bit CPU kernel (taken on
    # AVX512-BF16 machines) requires ("N must be divisible by block_n"); real checkpoints (896 + 128) meet it.
    text = dict(base["text_config"], kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16)
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        text.pop(key, None)
    ids = {k: base[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    vision = {k: v for k, v in base["vision_config"].items() if k not in ("model_type", "transformers_version")}
    config = InternVideo3Config(
        text_config=text,
        vision_config=vision,
        bos_token_id=text["bos_token_id"],
        eos_token_id=text["eos_token_id"],
        pad_token_id=text["pad_token_id"],
        **ids,
    )
    config.auto_map = {
        "AutoConfig": "modeling_internvideo3_tiny.InternVideo3Config",
        "AutoModelForCausalLM": "modeling_internvideo3_tiny.InternVideo3ForConditionalGeneration",
    }
    model = randomize_(InternVideo3ForConditionalGeneration(config), std=0.05, seed=seed).eval()
    _save(model, tokenizer, text["eos_token_id"], text["pad_token_id"], out)
    (out / "modeling_internvideo3_tiny.py").write_text(_REMOTE_CODE)  # after save_pretrained, which must not touch it


# --- tiny InternVideo3 in memory: configs, inputs and weights for tests and CPU benchmarks -------------------------


def tiny_internvideo3_config(**text_overrides: Any) -> InternVideo3Config:
    """The real layout with tiny widths, for tests and CPU benchmarks (only sizes differ from the 8B)."""
    from engine.models.internvideo3 import InternVideo3Config

    text = dict(
        _tiny_text_widths(),
        vocab_size=128,
        kv_lora_rank=24,
        qk_nope_head_dim=16,
        qk_rope_head_dim=16,
        v_head_dim=16,
        max_position_embeddings=32768,
        pad_token_id=0,
        eos_token_id=1,
    )
    text.update(text_overrides)
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=4,
        temporal_patch_size=2,
        spatial_merge_size=2,
        out_hidden_size=text["hidden_size"],
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    return InternVideo3Config(
        text_config=text,
        vision_config=vision,
        image_token_id=120,
        video_token_id=121,
        vision_start_token_id=122,
        vision_end_token_id=123,
    )


def synthetic_video_inputs(
    config: Any, frames: int, height: int, width: int, before=(2, 3, 4), question=(5, 6, 7, 8), seed: int = 0,
    stamps=None,
) -> dict:
    """Processor-shaped inputs for one video in Qwen3-VL's layout: per frame pair a timestamp token,
    <|vision_start|>, the video pads, <|vision_end|>; then the question. frames/height/width count patches
    (frames = temporal patches x temporal_patch_size is not needed: `frames` is the grid's t)."""
    import torch

    v = config.vision_config
    merge = v.spatial_merge_size
    per = (height // merge) * (width // merge)
    ids = list(before)
    for t in range(frames):
        stamp = stamps[t % len(stamps)] if stamps else 10 + t % 100
        ids += [stamp, config.vision_start_token_id] + [config.video_token_id] * per
        ids += [config.vision_end_token_id]
    ids += list(question)
    gen = torch.Generator().manual_seed(seed)
    patch = v.in_channels * v.temporal_patch_size * v.patch_size**2
    ids_t = torch.tensor([ids])
    return {
        "input_ids": ids_t,
        "attention_mask": torch.ones_like(ids_t),
        "pixel_values_videos": torch.randn(frames * height * width, patch, generator=gen),
        "video_grid_thw": torch.tensor([[frames, height, width]]),
    }


def randomize_(model: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Random weights of a visible size (biases and norm weights too), so tests see every term."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std
            p.copy_(1.0 + noise if "norm" in name else noise)
    return model
