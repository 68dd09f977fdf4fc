"""VideoChat: a loaded Qwen3-VL / InternVideo3 model that answers chat messages about video clips.

The agent, the captioner and the UI talk to this object only. Messages are plain {"role", "content": str};
clips go into the last user message, before its text, one `Video N:` block each with a `<t seconds>` stamp
per frame pair (Qwen3-VL layout, stamps from PTS via engine/video_inputs.py). Decoding is greedy by default.
Generation goes through engine/generate.py (latent cache with per-video prefix reuse, engine-m2la's code) when
that module is present and accepts the model; the plain `model.generate` path is kept beside it and always works.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Sequence

from engine.video_inputs import Clip, build_inputs

log = logging.getLogger(__name__)

_THINK = re.compile(r"<think>.*?</think>\s*", re.S)


class VideoChat:
    """A loaded model + processor. Thread-safe: one generation at a time."""

    def __init__(
        self,
        model,
        processor,
        plan,
        cache_bytes: int = 4 * 2**30,
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
            assert m.get("role") in ("system", "user", "assistant"), f"bad role in {m!r}"
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

    def prompt_text(self, messages: list[dict], clips: Sequence[Clip] = ()) -> str:
        return self.processor.apply_chat_template(
            self.to_template_messages(messages, clips), tokenize=False, add_generation_prompt=True
        )

    def inputs(self, messages: list[dict], clips: Sequence[Clip] = ()):
        """The processor's tensors for one conversation (input_ids, attention_mask, pixel_values_videos, ...)."""
        return build_inputs(self.processor, [self.prompt_text(messages, clips)], [list(clips)], self.total_pixels)

    # --- generation --------------------------------------------------------------------------------------------

    def chat(self, messages: list[dict], clips: Sequence[Clip] = (), max_new_tokens: int = 512, **gen) -> str:
        """The model's reply (thinking stripped) to messages, with clips shown in the last user message."""
        with self._lock:
            batch = self.inputs(messages, clips)
            ids = None
            if self._fast is not None:
                try:
                    ids = self._fast(batch, clips, max_new_tokens=max_new_tokens, **gen)
                    self.last_path = "latent-cache"
                except Exception as err:  # noqa: BLE001 - the plain path must always answer
                    log.warning("latent-cache generation failed (%s: %s); using the plain path", type(err).__name__, err)
                    ids = None
            if ids is None:
                ids = self._plain(batch, max_new_tokens, **gen)[0]
                self.last_path = "plain"
            return self.decode(ids)

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
        text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
        return _THINK.sub("", text).strip()


def _latent_generator(chat: VideoChat, required: bool):
    """engine.generate's latent-cache generator for this model, or (None, why not). engine-m2la owns that module."""
    try:
        from engine import generate as fast  # noqa: PLC0415 - optional, owned by engine-m2la
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
            from engine.models.internvideo3 import uninstall_latent_attention

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
    from engine.models.internvideo3 import check_latent_decode

    try:
        why = check_latent_decode(model)
    except Exception as err:  # noqa: BLE001 - a check that cannot run cannot vouch for the latent path
        why = f"the end-to-end check could not run ({type(err).__name__}: {err})"
    return f"the end-to-end check failed: {why}; the model's own cache is used" if why else ""
