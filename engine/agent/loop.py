"""The answering loop, after InternVideo3's multimodal contextual reasoning: observe -> reason -> act.

One evolving context holds the question, what tools returned, the model's reasoning, its calls and a short
memory of what was already checked. The loop starts by observing (a search for the question), then lets the
model call one tool per turn until it finishes or the step/token budget is spent; then it forces a final
answer. Evidence is resolved by `resolve.py`; without a model, `evidence_only.py` answers instead.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

from engine.agent import prompts
from engine.agent.context import AgentResult, Budget, Context, Step, ToolBackend, estimate_tokens
from engine.agent.evidence_only import evidence_only
from engine.agent.parsing import parse_turn, strip_thinking
from engine.agent.resolve import check_answer_times, fallback_evidence, resolve_evidence
from engine.agent.tools import DEFAULT_TOOLS, call_key, call_tool, describe_tools, tool_schemas
from engine.defaults import DEFAULT_AGENT_STEPS
from storage.errors import SightlineError

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
OUT_OF_STEPS = "I ran out of steps before I could answer; the closest moments I found are listed as evidence."
ELIDED = "(older result elided to save context; the memory below lists what it found)"


def check_question(question: str) -> str:
    question = " ".join((question or "").split())
    if not question:
        raise SightlineError("The question is empty.", hint="Ask something about your videos, e.g. \"when is the "
                                                             "red van on screen?\"")
    if len(question) > MAX_QUESTION_CHARS:
        raise SightlineError(f"The question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}.",
                             hint="Shorten it to what you want to know.")
    return question


def check_library(tools: ToolBackend) -> None:
    """A library with nothing indexed cannot answer anything: say so (before any model is loaded)."""
    if not tools.videos():
        raise SightlineError("The library has no indexed videos yet, so there is nothing to answer from.",
                             hint="Index a folder first: sightline index PATH (or add one in the Library tab).")


def _clean_answer(text: str) -> str:
    """A model's free text as an answer: no thinking, no tool-call markup."""
    visible, _ = strip_thinking((text or "").replace("\ufffd", ""))  # no broken-byte debris
    visible = re.sub(r"<tool_call>.*?(</tool_call>|$)", "", visible, flags=re.S)
    visible = re.sub(r"```.*?(```|$)", "", visible, flags=re.S)
    return " ".join(visible.split())


def _title(name: str, args: dict) -> str:
    """The chat title of a step: tool name and its most telling argument ("search: red van")."""
    if name == "search":
        return f"search: {args.get('query', '')}"
    if name in ("inspect", "transcript", "screen_text", "verify"):
        where = f"video {args.get('video', '?')} {args.get('start', '?')}-{args.get('end', '?')} s"
        return f"{name}: {where}" if name != "verify" else f"verify: {str(args.get('claim', ''))[:60]} ({where})"
    return name


def _compact(ctx: Context) -> None:
    """Elide the oldest tool results (keep the question turn and the last two results) to fit the token budget."""
    results = [i for i, m in enumerate(ctx.messages) if m["role"] in ("tool", "user") and i > 1]
    for i in results[:-2]:
        if ctx.context_tokens() <= ctx.budget.max_context_tokens:
            return
        if ctx.messages[i]["content"] != ELIDED:
            ctx.messages[i] = {"role": ctx.messages[i]["role"], "content": ELIDED}


def _model_turn(ctx: Context) -> str:
    reply = ctx.model_call(ctx.messages, (), ctx.budget.max_new_tokens, tools=tool_schemas(DEFAULT_TOOLS),
                           tools_text=describe_tools(DEFAULT_TOOLS))
    ctx.messages.append({"role": "assistant", "content": reply})
    return reply


def _observe_first(ctx: Context) -> str:
    """The loop's first observation: the library overview and a search for the question itself."""
    obs = call_tool(ctx, "search", {"query": ctx.question})
    ctx.tool_calls += 1
    ctx.done_calls[call_key("search", {"query": ctx.question})] = ctx.memory[-1] if ctx.memory else ""
    ctx.emit("tool", f"search: {ctx.question}", "search", {"query": ctx.question}, observation=obs.text)
    return obs.text


def answer(question: str, tools: ToolBackend, vlm, video_id: int | None = None,
           on_step: Callable[[Step], None] | None = None, max_steps: int = DEFAULT_AGENT_STEPS,
           budget: Budget | None = None, no_model_reason: str = "") -> AgentResult:
    """Answer a question over the library (or one video) with evidence; evidence-only when `vlm` is None."""
    question = check_question(question)
    check_library(tools)
    if vlm is None:
        return evidence_only(question, tools, video_id, no_model_reason, on_step)
    budget = budget or Budget(max_steps=max_steps)
    ctx = Context(question, tools, vlm, budget, video_id, on_step)
    if video_id is not None:
        ctx.video_id = ctx.video(video_id).id  # raises SightlineError for an unknown video
    try:
        return _loop(ctx)
    except Exception as err:  # noqa: BLE001 - a model that fails mid-question still leaves the evidence
        log.exception("the agent loop failed")
        why = err.user_text() if isinstance(err, SightlineError) else f"{type(err).__name__}: {err}"
        return evidence_only(question, tools, ctx.video_id, why, on_step, loaded=True)


def _loop(ctx: Context) -> AgentResult:
    question, tools, budget = ctx.question, ctx.backend, ctx.budget
    system = prompts.SYSTEM
    ctx.overhead_tokens = estimate_tokens(json.dumps(tool_schemas(DEFAULT_TOOLS))) + 60  # the template's tools block
    first = _observe_first(ctx)
    ctx.messages = [{"role": "system", "content": system},
                    {"role": "user", "content": prompts.question_turn(
                        question, prompts.videos_block(tools.videos(), ctx.video_id), first)}]
    tool_names = frozenset(fn.__name__ for fn in DEFAULT_TOOLS)
    final: dict | None = None
    while ctx.tool_calls < budget.max_steps:
        _compact(ctx)
        if ctx.context_tokens() > budget.max_context_tokens:
            ctx.emit("note", "context budget spent",
                     observation=f"The context holds about {ctx.context_tokens()} tokens; the budget is "
                                 f"{budget.max_context_tokens}.")
            break
        if ctx.tokens_spent >= budget.max_total_tokens:
            ctx.emit("note", "token budget spent",
                     observation=f"Model calls have used about {ctx.tokens_spent} tokens; the budget is "
                                 f"{budget.max_total_tokens}.")
            break
        parsed = parse_turn(_model_turn(ctx), tool_names)
        if parsed.call is None:
            ctx.tool_calls += 1  # a turn without a usable call still spends a step, so a confused model ends
            text = f"Error: {parsed.error}. " + prompts.NO_CALL if parsed.error else prompts.NO_CALL
            ctx.emit("error", "no tool call" if not parsed.error else "malformed tool call",
                     reasoning=parsed.reasoning, observation=text)
            ctx.messages.append({"role": "user", "content": prompts.with_memory(
                text, ctx.memory, budget.max_steps - ctx.tool_calls)})
            continue
        name, args = parsed.call.name, parsed.call.arguments
        key = call_key(name, args)
        if name != "finish" and key in ctx.done_calls:
            obs_text, error = f"You already made this call ({ctx.done_calls[key]}). Try something else or finish.", True
            obs = None
        else:
            obs = call_tool(ctx, name, args)
            obs_text, error = obs.text, obs.error
        if obs is not None and obs.final is not None:
            ctx.emit("tool", "finish", "finish", args, reasoning=parsed.reasoning, observation="")
            final = obs.final
            break
        ctx.tool_calls += 1
        if not error:
            ctx.done_calls[key] = ctx.memory[-1] if ctx.memory else name
        if parsed.extra_calls:
            obs_text += f"\n(Only your first call ran; {parsed.extra_calls} more were ignored. One call per turn.)"
        ctx.emit("error" if error else "tool", _title(name, args), name, args, parsed.reasoning, obs_text)
        # the result of the call, as the template was trained on it: a role "tool" message (<tool_response>)
        ctx.messages.append({"role": "tool", "content": prompts.with_memory(
            obs_text, ctx.memory, budget.max_steps - ctx.tool_calls)})
    if final is None:
        final = _forced_finish(ctx, tool_names)
    answer_text = final["answer"] or "I could not find an answer in the library."
    ctx.checks_left = budget.final_verifications
    evidence = resolve_evidence(ctx, answer_text, final["evidence"])
    if not evidence:
        evidence = fallback_evidence(ctx, answer_text)
    answer_text, evidence = check_answer_times(ctx, answer_text, evidence)
    ctx.emit("answer", "answer", observation=answer_text)
    return AgentResult(answer_text, evidence, "agent", ctx.steps)


def _forced_finish(ctx: Context, tool_names: frozenset[str]) -> dict:
    """Budget spent: ask once more for finish; take its answer, or the model's own words when it will not."""
    ctx.emit("note", "budget spent", observation=f"{ctx.tool_calls} tool calls made; asking for the final answer.")
    ctx.messages.append({"role": "user", "content": prompts.FORCE_FINISH})
    _compact(ctx)
    reply = _model_turn(ctx)
    parsed = parse_turn(reply, tool_names)
    if parsed.call is not None and parsed.call.name == "finish":
        args = parsed.call.arguments
        text = str(args.get("answer", "")).strip()
        ev = args.get("evidence") or []
        ctx.emit("tool", "finish", "finish", args, reasoning=parsed.reasoning)
        return {"answer": text or _clean_answer(parsed.reasoning) or OUT_OF_STEPS,
                "evidence": ev if isinstance(ev, list) else [ev]}
    text = "" if parsed.call is not None else _clean_answer(reply)
    if not text:
        text = OUT_OF_STEPS
    return {"answer": text, "evidence": []}
