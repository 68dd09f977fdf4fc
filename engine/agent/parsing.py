"""Model text -> one tool call. Tolerant of what real models write; never raises on bad input.

Accepted, first match wins:
  <tool_call>{"name": "search", "arguments": {"query": "red van"}}</tool_call>   (the chat template's own format,
                                                                                 Qwen3 / Hermes; read first)
  ```json {"name": ..., "arguments": ...} ```                                     (a fenced block)
  {"tool": "search", "args": {...}}                                              (a bare JSON object)
  search(query="red van")                                                        (a Python-style call)
Keys may be name/tool/function and arguments/args/parameters/input; arguments may be a JSON string.
JSON is repaired for the usual slips (single quotes, True/None, trailing commas) before giving up.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

_THINK = re.compile(r"<think>(.*?)(</think>|$)", re.S)
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED = re.compile(r"```(?:json|tool_call|tool|python)?\s*\n?(.*?)```", re.S)
_NAME_KEYS = ("name", "tool", "function", "tool_name", "action")
_ARG_KEYS = ("arguments", "args", "parameters", "input", "params", "action_input")


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)


@dataclass
class Parsed:
    """What one model turn said: its reasoning (text outside the call), the call, or why no call was read."""

    reasoning: str
    call: ToolCall | None = None
    error: str | None = None  # set when the turn held something call-like that could not be read
    extra_calls: int = 0  # further calls in the same turn (only the first one runs)


def strip_thinking(text: str) -> tuple[str, str]:
    """(text without <think> blocks, the thinking text).

    A leading block that ends with </think> and has no opening tag is reasoning too: a template that pre-fills
    "<think>\n" after the generation prompt (Qwen3 Thinking) leaves the opening tag in the prompt, not the reply."""
    lead = ""
    head, sep, tail = text.partition("</think>")
    if sep and "<think>" not in head:
        lead, text = head.strip(), tail
    thoughts = " ".join([lead] * bool(lead) + [m.group(1).strip() for m in _THINK.finditer(text)])
    return _THINK.sub("", text).strip(), thoughts


def _repair(raw: str) -> object:
    """json.loads, then the forgiving routes; raises ValueError with the JSON error when all fail."""
    raw = raw.strip()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        first = err
    fixed = re.sub(r",\s*([}\]])", r"\1", raw)  # trailing commas
    try:
        return json.loads(fixed)
    except json.JSONDecodeError:
        pass
    try:  # single quotes, True/False/None: a Python literal
        return ast.literal_eval(re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False",
                                       re.sub(r"\bnull\b", "None", fixed))))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    raise ValueError(f"{first.msg} at character {first.pos}")


def _balanced_objects(text: str) -> list[str]:
    """Top-level {...} spans of text, in order (braces inside strings respected)."""
    spans, depth, start, quote, escape = [], 0, -1, "", False
    for i, ch in enumerate(text):
        if quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'" and depth > 0:
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    return spans


def _to_call(obj: object, tool_names: set[str]) -> ToolCall:
    """A decoded JSON value -> ToolCall; ValueError says what is wrong with it."""
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if not isinstance(obj, dict):
        raise ValueError("a tool call must be a JSON object like {\"name\": ..., \"arguments\": {...}}")
    if isinstance(obj.get("function"), dict):  # OpenAI style {"function": {"name", "arguments"}}
        obj = obj["function"]
    name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
    if name is None:
        if len(obj) == 1 and next(iter(obj)) in tool_names:  # {"search": {...}}
            name, args = next(iter(obj.items()))
            obj = {"arguments": args}
        else:
            raise ValueError("the tool call has no \"name\"")
    args = next((obj[k] for k in _ARG_KEYS if k in obj), None)
    if args is None:  # arguments written at the top level next to the name
        args = {k: v for k, v in obj.items() if k not in _NAME_KEYS}
    if isinstance(args, str):
        args = _repair(args) if args.strip().startswith("{") else {"query": args}
    if not isinstance(args, dict):
        raise ValueError(f"the arguments of {name} must be a JSON object")
    return ToolCall(name.strip(), args)


def _python_call(text: str, tool_names: set[str]) -> tuple[ToolCall | None, str | None, int]:
    """`name(key=value, ...)` on its own for a known tool name; (call, error, count)."""
    found = [m for m in re.finditer(r"(?m)^\s*`*(\w+)\((.*)\)`*\s*$", text) if m.group(1) in tool_names]
    if not found:
        return None, None, 0
    m = found[0]
    try:
        node = ast.parse(f"f({m.group(2)})", mode="eval").body
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        if node.args:
            return None, f"{m.group(1)}: write arguments by name, e.g. {m.group(1)}(query=\"...\")", len(found)
        return ToolCall(m.group(1), args), None, len(found)
    except (SyntaxError, ValueError) as err:
        return None, f"{m.group(1)}(...) could not be read: {err}", len(found)


def parse_turn(text: str, tool_names: set[str] | frozenset[str]) -> Parsed:
    """Read the first tool call of a model turn; the rest of the text is its reasoning."""
    tool_names = set(tool_names)
    visible, thoughts = strip_thinking(text or "")
    candidates: list[tuple[str, tuple[int, int]]] = []
    for pattern in (_TAGGED, _FENCED):
        candidates = [(m.group(1), m.span()) for m in pattern.finditer(visible) if m.group(1).strip()]
        if candidates:
            break
    if not candidates:
        spans = [s for s in _balanced_objects(visible) if re.search(r"\"?(name|tool|function)\"?\s*:", s)
                 or any(f"{n}" in s for n in tool_names)]
        candidates = [(s, (visible.find(s), visible.find(s) + len(s))) for s in spans]
    reasoning = (thoughts + " " + visible).strip()
    if not candidates:
        call, error, count = _python_call(visible, tool_names)
        if call or error:
            return Parsed(reasoning=reasoning, call=call, error=error, extra_calls=max(count - 1, 0))
        if "<tool_call>" in visible or re.search(r"\"(name|arguments)\"\s*:", visible):
            return Parsed(reasoning=reasoning, error="a tool call was started but no complete JSON object was found")
        return Parsed(reasoning=reasoning)
    raw, (a, b) = candidates[0]
    outside = (visible[:a] + " " + visible[b:]).strip()
    reasoning = (thoughts + " " + outside).strip()
    body = raw.strip()
    if not body.startswith(("{", "[")):
        objs = _balanced_objects(body)
        if objs:
            body = objs[0]
        else:
            call, error, _ = _python_call(body, tool_names)
            if call or error:
                return Parsed(reasoning=reasoning, call=call, error=error, extra_calls=len(candidates) - 1)
    try:
        call = _to_call(_repair(body), tool_names)
    except ValueError as err:
        return Parsed(reasoning=reasoning, error=f"the tool call is not valid JSON ({err})",
                      extra_calls=len(candidates) - 1)
    return Parsed(reasoning=reasoning, call=call, extra_calls=len(candidates) - 1)
