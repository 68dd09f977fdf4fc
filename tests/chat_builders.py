"""Real `VideoChat` objects for tests that bring their own model (or none): no fakes that a rename would miss.

`cpu_plan` is the `LoadPlan` of a model kept unquantized on the CPU; `bare_chat` wraps a model built in the test
(or None, to render prompts only) without building the latent-cache generator, so tests can hand it to
`engine.generate.make_generator` themselves.
"""

from __future__ import annotations

from engine.chat import VideoChat
from engine.loading import LoadPlan
from engine.registry import ModelSpec


def cpu_plan(name: str = "test-model", family: str = "qwen3_vl", revision: str | None = None) -> LoadPlan:
    """What load_vlm would plan for an unquantized model on the CPU; sizes are not counted (0)."""
    return LoadPlan(ModelSpec(name, family, revision=revision), quantization="bf16", device="cpu", params=0,
                    keep_params=0, need_bytes=0, free_bytes=None)


def bare_chat(model=None, processor=None, plan: LoadPlan | None = None, **kwargs) -> VideoChat:
    """A VideoChat over `model` and `processor` as given, without the latent-cache generator (kwargs: cache_bytes,
    library, ...)."""
    return VideoChat(model, processor, plan or cpu_plan(), use_latent_cache=False, **kwargs)
