"""Errors at the two edges (CLI and web UI): an exception -> the one line a user reads.

`user_message(err)` is the one converter: a SightlineError gives its message and hint; anything else is a bug,
logged with its traceback (app/logs.py) and shown as one line that points at the log. `shown_as(to_error)`
wraps a function (or a generator function: a streaming Gradio handler) so that whatever it raises reaches the
edge as `to_error(user_message(err))`: click.ClickException in app/cli.py, gr.Error in app/handlers.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import wraps

from storage.errors import SightlineError


def user_message(err: BaseException, bug: str = "Internal error") -> str:
    """The one line to show for `err`: message + hint for a SightlineError; for anything else (a bug) the
    traceback goes to the log and the line says `bug`, the error and where the log is."""
    if isinstance(err, SightlineError):
        return err.user_text()
    from app.logs import log_exception, log_path

    log_exception(err)
    return f"{bug}: {err}. Details in {log_path()}."


def shown_as(to_error: Callable[[str], BaseException], keep: tuple[type[BaseException], ...] = ()):
    """A decorator: every Exception the function raises becomes `to_error(user_message(err))`, raised without
    the chain (no traceback reaches the user); the types in `keep` (already the edge's own errors) pass as they
    are."""

    def convert(err: Exception) -> BaseException:
        return err if isinstance(err, keep) else to_error(user_message(err))

    def decorate(fn):
        if inspect.isgeneratorfunction(fn):
            @wraps(fn)
            def gen_wrapper(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - the edge
                    raise convert(err) from None
            return gen_wrapper

        @wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - the edge
                raise convert(err) from None
        return wrapper

    return decorate
