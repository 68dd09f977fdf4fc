"""The test doubles stand for real classes: a method renamed or a parameter added in the real one breaks them here,
instead of letting tests pass against an interface the product no longer has."""

from __future__ import annotations

import inspect

from engine.agent.context import ToolBackend
from engine.agent.library_tools import LibraryTools
from engine.chat import VideoChat
from tests.agent_doubles import FakeBackend, ScriptedChat


def _methods(cls) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}


def _params(fn) -> list[str]:
    """Parameter names in order, without self and **kwargs."""
    return [name for name, p in inspect.signature(fn).parameters.items()
            if name != "self" and p.kind is not p.VAR_KEYWORD]


def test_fake_backend_has_the_tool_backends_methods_with_their_parameters():
    wanted = _methods(ToolBackend)
    assert wanted, "ToolBackend lists no methods"
    assert wanted <= _methods(FakeBackend), f"FakeBackend lacks {sorted(wanted - _methods(FakeBackend))}"
    assert wanted <= _methods(LibraryTools), f"LibraryTools lacks {sorted(wanted - _methods(LibraryTools))}"
    for name in sorted(wanted):
        assert _params(getattr(FakeBackend, name)) == _params(getattr(ToolBackend, name)), name
        assert _params(getattr(LibraryTools, name)) == _params(getattr(ToolBackend, name)), name


def test_scripted_chat_takes_what_videochat_chat_takes():
    assert _params(ScriptedChat.chat) == _params(VideoChat.chat) == ["messages", "clips", "max_new_tokens", "tools"]
