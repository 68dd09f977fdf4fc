"""The native tool protocol: tools as JSON schemas through a Qwen3-format chat template, calls as <tool_call>
JSON, results as role "tool" messages wrapped in <tool_response>, thinking stripped whether or not the template
pre-fills <think>. The prompts are rendered with the tiny model's real processor (engine/tiny.py), no weights.
"""

from __future__ import annotations

import json

import pytest

from engine.agent import answer
from engine.agent.parsing import parse_turn, strip_thinking
from engine.agent.tools import DEFAULT_TOOLS, tool_schemas
from engine.chat import VideoChat, strip_reasoning
from tests.agent_doubles import ScriptedChat, call, two_video_backend
from tests.chat_builders import bare_chat, cpu_plan

# The old tiny template: ChatML without any tool support (what a remote template without tools looks like).
PLAIN_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from engine.tiny import build_tokenizer

    return build_tokenizer()


def _chat(tokenizer, template: str) -> VideoChat:
    """A VideoChat with the tiny processor and no weights: enough to render what the model would read."""
    from engine.tiny import build_processor

    processor = build_processor(tokenizer)
    processor.chat_template = template
    return bare_chat(None, processor, cpu_plan("render-only", "qwen3_vl"))


class Rendering(ScriptedChat):
    """The scripted model, which also renders each reasoning turn's prompt with a real chat template."""

    def __init__(self, renderer: VideoChat, turns, verdicts=()):
        super().__init__(list(turns), list(verdicts))
        self.renderer, self.prompts = renderer, []

    def chat(self, messages, clips=(), max_new_tokens=512, tools=None):
        if tools:
            self.prompts.append(self.renderer.prompt_text(messages, clips, tools))
        return super().chat(messages, clips, max_new_tokens, tools)


def _run(renderer):
    model = Rendering(renderer, [
        call("search", query="dagger"),
        call("transcript", video=2, start=0, end=10),
        call("finish", answer="At 5 s in talk.mp4.", evidence=[{"moment": 3}]),
    ], verdicts=["YES"])
    result = answer("when do they say dagger", two_video_backend(), model)
    assert result.mode == "agent", result.answer
    return model, result


def test_schemas_are_openai_function_json_that_match_the_tools():
    schemas = tool_schemas()
    assert [s["function"]["name"] for s in schemas] == [fn.__name__ for fn in DEFAULT_TOOLS]
    for s in schemas:
        assert s["type"] == "function" and s["function"]["description"]
        params = s["function"]["parameters"]
        assert params["type"] == "object" and set(params["required"]) <= set(params["properties"])
        json.dumps(s)  # plain JSON
    by = {s["function"]["name"]: s["function"]["parameters"] for s in schemas}
    assert by["inspect"]["required"] == ["video", "start", "end"]
    assert by["inspect"]["properties"]["start"]["type"] == "number"
    assert by["inspect"]["properties"]["video"]["type"] == "integer"
    assert by["inspect"]["properties"]["fps"]["default"] == 2.0
    assert by["search"]["properties"]["modality"]["enum"] == ["speech", "text", "visual", "caption"]
    assert by["finish"]["properties"]["evidence"]["type"] == "array"


@pytest.mark.slow  # the tiny tokenizer and processor (transformers imports)
def test_the_model_sees_the_tools_block_its_calls_and_tool_responses(tokenizer):
    from engine.tiny import CHAT_TEMPLATE

    renderer = _chat(tokenizer, CHAT_TEMPLATE)
    assert renderer.native_tools()
    model, result = _run(renderer)
    assert [e.moment_id for e in result.evidence] == [3]
    first, last = model.prompts[0], model.prompts[-1]
    # one system turn: Sightline's rules, then the template's tools block with every schema as one JSON line
    assert first.startswith("<|im_start|>system\nYou are Sightline") and first.count("<|im_start|>system") == 1
    assert "# Tools\n\nYou may call one or more functions" in first
    block = first[first.index("<tools>\n") + 8:first.index("\n</tools>")]
    assert [json.loads(line) for line in block.split("\n")] == tool_schemas()
    assert first.endswith("<|im_start|>user\n" + model.calls[0]["messages"][1]["content"]
                          + "<|im_end|>\n<|im_start|>assistant\n")
    # the model's calls stay in its own format, each result comes back as a tool response in a user turn
    assert '<|im_start|>assistant\nLet me check.\n<tool_call>{"name": "search"' in last
    assert last.count("<|im_start|>user\n<tool_response>\n") == 2
    assert "\n</tool_response><|im_end|>\n<|im_start|>assistant\n" in last
    response = last[last.rindex("<tool_response>\n") + 16:last.rindex("\n</tool_response>")]
    assert "I sleep with a dagger" in response and "Already checked:" in response
    # the messages the loop built: role "tool" for results, never a user turn posing as one
    roles = [m["role"] for m in [c for c in model.calls if c["kind"] == "turn"][2]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]


@pytest.mark.slow  # the tiny tokenizer and processor (transformers imports)
def test_a_template_without_tool_support_gets_the_same_prompt(tokenizer):
    from engine.tiny import CHAT_TEMPLATE

    native, plain = _chat(tokenizer, CHAT_TEMPLATE), _chat(tokenizer, PLAIN_CHATML)
    assert not plain.native_tools()
    messages = [{"role": "system", "content": "Rules."}, {"role": "user", "content": "Q?"},
                {"role": "assistant", "content": call("search", query="x")},
                {"role": "tool", "content": "3 moments"}, {"role": "tool", "content": "more"}]
    assert plain.prompt_text(messages, tools=tool_schemas()) == native.prompt_text(messages, tools=tool_schemas())
    assert native.prompt_text(messages, tools=tool_schemas()).count("<|im_start|>user\n<tool_response>") == 1


@pytest.mark.slow  # the tiny tokenizer and processor (transformers imports)
def test_thinking_is_stripped_when_the_template_prefills_it(tokenizer):
    from engine.tiny import chat_template

    thinking = _chat(tokenizer, chat_template(think=True))
    prompt = thinking.prompt_text([{"role": "user", "content": "Does it?"}])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")  # the opening tag is in the prompt
    reply = "The frames show a taxi sign at 5 s.\n</think>\n\nYES, the sign is visible."
    ids = tokenizer(reply + "<|im_end|>")["input_ids"]
    assert thinking.decode(ids) == "YES, the sign is visible."
    assert strip_reasoning("<think>x</think>\n\nNO.") == "NO." and strip_reasoning("NO, 5 < 6.") == "NO, 5 < 6."
    assert strip_thinking(reply) == ("YES, the sign is visible.", "The frames show a taxi sign at 5 s.")
    parsed = parse_turn("I need the transcript.\n</think>\n\n<tool_call>\n"
                        '{"name": "transcript", "arguments": {"video": 2, "start": 0, "end": 9}}\n</tool_call>',
                        {"transcript"})
    assert parsed.call.name == "transcript" and parsed.reasoning == "I need the transcript."


def test_verify_reads_the_verdict_after_a_prefilled_thinking_block():
    """A raw reply that still holds the reasoning (a chat object that does not strip it) is not UNCLEAR."""
    model = ScriptedChat([call("verify", claim="someone says I sleep with a dagger", video=2, start=5, end=8),
                          call("finish", answer="At 5 s.", evidence=[{"moment": 3}])],
                         ["The transcript has the line at 5 s, so\n</think>\n\nYES, it is said."])
    steps = []
    result = answer("when do they say dagger", two_video_backend(), model, on_step=steps.append)
    check = next(s for s in steps if s.tool == "verify")
    assert "SUPPORTED." in check.observation and "NOT" not in check.observation and "UNCLEAR" not in check.observation
    assert result.evidence[0].verified


def test_a_chat_object_without_tools_still_gets_them_as_text():
    class Bare:
        def __init__(self):
            self.seen = []

        def chat(self, messages, clips=(), max_new_tokens=512):
            self.seen.append(messages)
            return call("finish", answer="At 5 s.", evidence=[{"moment": 3}]) if len(self.seen) == 1 else "YES"

    bare = Bare()
    result = answer("when do they say dagger", two_video_backend(), bare)
    assert result.mode == "agent" and result.answer == "At 5 s."
    assert "- verify(claim: str" in bare.seen[0][0]["content"]
    assert all(m["role"] != "tool" for msgs in bare.seen for m in msgs)
