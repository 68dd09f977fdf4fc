"""The answering agent: a closed observe -> reason -> act loop over the library's tools, with verified evidence.

`answer(question, tools, vlm, video_id=None, on_step=None, max_steps=DEFAULT_AGENT_STEPS)` -> `AgentResult`
(engine/defaults.py); with `vlm=None` it answers in evidence-only mode. Tools are handed in (`LibraryTools` is the
one the app composes).
"""

from engine.agent.context import AgentResult, Budget, Step, ToolBackend, VideoInfo
from engine.agent.evidence import Evidence
from engine.agent.loop import answer, check_library, check_question
from engine.agent.tools import DEFAULT_TOOLS

__all__ = ["AgentResult", "Budget", "DEFAULT_TOOLS", "Evidence", "Step", "ToolBackend", "VideoInfo", "answer",
           "check_library", "check_question"]
