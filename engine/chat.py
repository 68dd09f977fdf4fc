"""VideoChat: a loaded Qwen3-VL / InternVideo3 model that answers chat messages about video clips.

The agent, the captioner and the UI talk to this object only. Messages are plain {"role", "content": str};
clips go into the last user message, before its text, one `Video N:` block each with a `<t seconds>` stamp
per frame pair (Qwen3-VL layout, stamps from PTS via engine/video_inputs.py). Decoding is greedy by default.
Generation goes through engine/generate.py (latent cache with per-video prefix reuse) when that module is
present and accepts the model; the plain `model.generate` path is kept beside it and always works.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Sequence

from engine.defaults import DEFAULT_CACHE_BYTES
from engine.video_inputs import Clip, build_inputs

log = logging.getLogger(__name__)

_THINK = re.compile(r"<think>.*?</think>\s*", re.S)
ROLES = ("system", "user", "assistant", "tool")  # "tool": a tool's result, wrapped in <tool_response> by the template


class VideoChat:
    """A loaded model + processor. Thread-safe: one generation at a time."""

    def __init__(
        self,
        model,
        processor,
        plan,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        library: str | Path | None = None,
        total_pixels: int | None = None,
        use_latent_cache: bool | None = None,
        cache_disk_bytes: int = 0,
    ):
        self.model = model
        self.processor = processor
        self.plan = plan
        self.name = plan.spec.name
        self.total_pixels = total_pixels
        self._lock = threading.Lock()
        self.cache_bytes = cache_bytes
        self.cache_disk_bytes = cache_disk_bytes  # cap of the prefix cache's disk spill; 0: from free disk space
        self.library = Path(library) if library else None
        self.last_path = ""  # "latent-cache" | "plain": which path produced the last answer
        self.oom_retries = 0  # calls retried with a smaller clip after a CUDA OOM
        self._fast = None
        self._fast_error = ""
        if use_latent_cache is not False:
            self._fast, self._fast_error = _latent_generator(self, required=bool(use_latent_cache))

    # --- facts for the UI ------------------------------------------------------------------------------------

    @property
    def quantization(self) -> str:
        """nf4 | int8 | bf16, or "fp32 (CPU)": an unquantized model on a CPU runs in float32."""
        q = self.plan.quantization
        return "fp32 (CPU)" if q == "bf16" and self.plan.device == "cpu" else q

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    def describe(self) -> dict:
        """Model, quantization, device and cache use, for the settings/status view."""
        info = {
            "model": self.name,
            "family": self.plan.spec.family,
            "quantization": self.quantization,
            "device": self.device,
            "parameters": self.plan.params,
            "estimated_bytes": self.plan.need_bytes,
            "revision": getattr(self.plan.spec, "revision", None) or "not pinned",
            "generation": "latent-cache" if self._fast is not None else "plain",
            "cache": {},
        }
        if self._fast is None and self._fast_error:
            info["latent_cache_unavailable"] = self._fast_error
        stats = getattr(self._fast, "stats", None)
        if callable(stats):
            info["cache"] = stats()
        return info

    # --- prompts -----------------------------------------------------------------------------------------------

    def to_template_messages(self, messages: list[dict], clips: Sequence[Clip]) -> list[dict]:
        """Plain messages -> the processor's chat-template messages, clips in the last user message."""
        for m in messages:
            assert m.get("role") in ROLES, f"bad role in {m!r}"
            assert isinstance(m.get("content"), str), f"content must be a string in {m!r}"
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if clips and last_user is None:
            raise ValueError("clips need a user message to go into")
        out = []
        for i, m in enumerate(messages):
            if i == last_user and clips:
                content = []
                for n, clip in enumerate(clips, 1):
                    content.append({"type": "text", "text": f"Video {n}: "})
                    content.append({"type": "video"})
                    content.append({"type": "text", "text": "\n"})
                content.append({"type": "text", "text": m["content"]})
                out.append({"role": "user", "content": content})
            else:  # plain strings: every Qwen chat template (and remote ones) accepts them for any role
                out.append({"role": m["role"], "content": m["content"]})
        return out

    def native_tools(self) -> bool:
        """True when the processor's chat template renders `tools` and role "tool" itself (Qwen3 format)."""
        template = getattr(self.processor, "chat_template", None) or ""
        if isinstance(template, dict):
            template = template.get("default", "")
        return "tools" in template and "tool_response" in template

    def prompt_text(self, messages: list[dict], clips: Sequence[Clip] = (), tools: Sequence[dict] | None = None) -> str:
        """The prompt the model reads: tools (OpenAI function schemas) go through the chat template, as trained."""
        tools = list(tools or [])
        if not self.native_tools():  # a template without tool support: the same Qwen3 layout, written here
            messages = qwen3_tool_messages(messages, tools)
            tools = []
        extra = {"tools": tools} if tools else {}
        return self.processor.apply_chat_template(
            self.to_template_messages(messages, clips), tokenize=False, add_generation_prompt=True, **extra
        )

    def inputs(self, messages: list[dict], clips: Sequence[Clip] = (), tools: Sequence[dict] | None = None):
        """The processor's tensors for one conversation (input_ids, attention_mask, pixel_values_videos, ...)."""
        return build_inputs(self.processor, [self.prompt_text(messages, clips, tools)], [list(clips)],
                            self.total_pixels)

    # --- generation --------------------------------------------------------------------------------------------

    def chat(self, messages: list[dict], clips: Sequence[Clip] = (), max_new_tokens: int = 512,
             tools: Sequence[dict] | None = None, **gen) -> str:
        """The model's reply (thinking stripped) to messages, with clips shown in the last user message.

        tools: JSON schemas ({"type": "function", "function": {...}}) given to the chat template; messages may
        hold role "tool" results (the template wraps them in <tool_response>)."""
        with self._lock:
            try:
                return self._chat_once(messages, clips, max_new_tokens, tools, **gen)
            except Exception as err:
                if not is_oom(err):
                    raise
                smaller = [smaller_clip(c) for c in clips]
                log.warning("CUDA out of memory (%s); freed the GPU, retrying once with %s", err,
                            f"{sum(len(c.timestamps) for c in smaller)} instead of "
                            f"{sum(len(c.timestamps) for c in clips)} frames" if clips else "the same prompt")
                self.free_memory()
                self.oom_retries += 1
            try:
                return self._chat_once(messages, smaller, max_new_tokens, tools, **gen)
            except Exception as err:
                if not is_oom(err):
                    raise
                self.free_memory()  # the model stays usable for the next call
                from storage.errors import SightlineError

                raise SightlineError(
                    f"The GPU ran out of memory answering about {len(clips)} clip(s), also with half the frames.",
                    hint="Close other programs using the GPU, lower SIGHTLINE_CACHE_BYTES, or set "
                    "SIGHTLINE_QUANTIZATION=nf4.",
                ) from None

    def _chat_once(self, messages, clips, max_new_tokens, tools, **gen) -> str:
        batch = self.inputs(messages, clips, tools)
        ids = None
        if self._fast is not None:
            try:
                ids = self._fast(batch, clips, max_new_tokens=max_new_tokens, **gen)
                self.last_path = "latent-cache"
            except Exception as err:  # noqa: BLE001 - the plain path must always answer
                if is_oom(err):
                    raise  # the plain path would run out too: free memory first (chat)
                log.warning("latent-cache generation failed (%s: %s); using the plain path", type(err).__name__, err)
                ids = None
        if ids is None:
            ids = self._plain(batch, max_new_tokens, **gen)[0]
            self.last_path = "plain"
        return self.decode(ids)

    def free_memory(self) -> None:
        """After a CUDA OOM: drop what the failed call held, move cached prefixes off the GPU, empty the allocator."""
        import gc

        import torch

        core = getattr(self.model, "model", None)
        if core is not None and hasattr(core, "rope_deltas"):
            core.rope_deltas = None  # the next prefill recomputes it
        cache = getattr(self._fast, "prefix_cache", None)
        entries = getattr(cache, "_mem", None)
        if entries:
            from engine.generate import to_host

            for entry in list(entries.values()):
                to_host(entry)  # evicted from the GPU, kept for reuse
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def chat_batch(self, conversations: Sequence[tuple[list[dict], Sequence[Clip]]], max_new_tokens: int = 256) -> list[str]:
        """One reply per (messages, clips), generated together with left padding on the plain path."""
        if not conversations:
            return []
        with self._lock:
            texts = [self.prompt_text(m, c) for m, c in conversations]
            tok = self.processor.tokenizer
            side, tok.padding_side = tok.padding_side, "left"
            try:
                batch = build_inputs(self.processor, texts, [list(c) for _m, c in conversations], self.total_pixels)
            finally:
                tok.padding_side = side
            self.last_path = "plain"
            return [self.decode(ids) for ids in self._plain(batch, max_new_tokens)]

    def _plain(self, batch, max_new_tokens: int, **gen):
        """The model's own generate; returns the new token ids per row."""
        import torch

        batch = batch.to(self.model.device)
        gen.setdefault("do_sample", False)
        if not gen["do_sample"]:
            gen.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, **gen)
        return [row[batch["input_ids"].shape[1]:] for row in out]

    def decode(self, ids) -> str:
        return strip_reasoning(self.processor.tokenizer.decode(ids, skip_special_tokens=True))


def is_oom(err: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.cuda.OutOfMemoryError, or the RuntimeError older paths raise)."""
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "CUDA out of memory" in str(err))


def smaller_clip(clip: Clip) -> Clip:
    """The clip with every other frame (an even count, at least 2), for the retry after an OOM."""
    from dataclasses import replace

    n = len(clip.timestamps)
    keep = list(range(0, n, 2))
    if len(keep) % 2 and len(keep) > 1:
        keep = keep[:-1]
    if n <= 2 or len(keep) < 2:
        return clip
    return replace(clip, frames=clip.frames[keep], timestamps=[clip.timestamps[i] for i in keep])


def strip_reasoning(text: str) -> str:
    """A reply without its reasoning: <think>...</think> blocks, and a leading block that ends with </think> when
    the template pre-filled the opening <think> in the prompt (Qwen3 Thinking templates do)."""
    if "</think>" in text and "<think>" not in text.split("</think>", 1)[0]:
        text = text.split("</think>", 1)[1]
    return _THINK.sub("", text).strip()


def qwen3_tool_messages(messages: list[dict], tools: Sequence[dict]) -> list[dict]:
    """Messages for a template without tool support, in Qwen3's layout: the tools block appended to the system
    message, each run of role "tool" results as one user turn of <tool_response> blocks."""
    import json

    out: list[dict] = []
    if tools:
        block = (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
            "function signatures within <tools></tools> XML tags:\n<tools>"
            + "".join("\n" + json.dumps(t) for t in tools)
            + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
            '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
            "<args-json-object>}\n</tool_call>"
        )
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": messages[0]["content"] + "\n\n" + block})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": block})
    for m in messages:
        if m["role"] != "tool":
            out.append(dict(m))
            continue
        wrapped = f"<tool_response>\n{m['content']}\n</tool_response>"
        if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
            out[-1]["content"] += "\n" + wrapped
        else:
            out.append({"role": "user", "content": wrapped, "_tool": True})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def _latent_generator(chat: VideoChat, required: bool):
    """engine.generate's latent-cache generator for this model, or (None, why not)."""
    try:
        from engine import generate as fast  # noqa: PLC0415 - imported on first use, like every model import
    except ImportError as err:
        if required:
            raise
        return None, f"engine.generate is not available ({err})"
    make = getattr(fast, "make_generator", None)
    if make is None:
        return None, "engine.generate has no make_generator(chat) yet"
    try:
        fast = make(chat)
    except Exception as err:  # noqa: BLE001 - a model it cannot handle keeps the plain path
        if required:
            raise
        return None, f"{type(err).__name__}: {err}"
    if getattr(fast, "kind", "") == "latent":
        why = _latent_check(chat.model)
        if why:
            from engine.latent_attention import uninstall_latent_attention

            uninstall_latent_attention(chat.model)  # keep the model's own cache, unchanged
            log.warning("latent cache off: %s", why)
            if required:
                from storage.errors import SightlineError

                raise SightlineError(f"The latent cache is unavailable: {why}.",
                                     hint="Run without use_latent_cache=True: the model's own cache works.")
            return None, why
    return fast, ""


def _latent_check(model) -> str:
    """"" when a few greedy decode steps through the installed latent cache equal the model's own; else why."""
    from engine.latent_check import check_latent_decode

    try:
        why = check_latent_decode(model)
    except Exception as err:  # noqa: BLE001 - a check that cannot run cannot vouch for the latent path
        why = f"the end-to-end check could not run ({type(err).__name__}: {err})"
    return f"the end-to-end check failed: {why}; the model's own cache is used" if why else ""
