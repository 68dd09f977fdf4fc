"""The web server's gate, in front of Gradio's routes: which files it serves, which framework routes answer
without a login, how fast wrong logins may be retried, and which folders of this machine the UI may add.

- Files: every `file=` / `file/` request is answered only when the path is one the library serves
  (`app.served_files.ServedFiles.allows`: a probed, indexed video, its browser proxy, a thumbnail). Anything else,
  URLs included (Gradio would answer those with a redirect), gets 403 before Gradio sees it.
- Framework routes that need no login in Gradio (`/gradio_api/reset`, `/gradio_api/cancel`) get 401 without
  one when the UI has a login.
- Logins: each wrong password from a client makes that client's next attempt wait longer (LOGIN_DELAY_S,
  doubling, at most LOGIN_DELAY_MAX_S); attempts of one client run one at a time, so parallel guesses wait too.
- Media roots (`SIGHTLINE_MEDIA_ROOTS`): folders that may be added through the UI. Unset: any folder when the
  UI listens on localhost only, none (uploads only) when it serves a network.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

from storage.errors import SightlineError

LOGIN_DELAY_S = 0.5  # wait before the attempt after a first failure; doubles with each further failure
LOGIN_DELAY_MAX_S = 8.0
LOGIN_FORGET_S = 900.0  # a client's failures are forgotten after this long without an attempt
_FILE_ROUTE = re.compile(r"^(?:/gradio_api)?/file[=/](.*)$", re.S)
_NEEDS_LOGIN = re.compile(r"^(?:/gradio_api)?/(?:reset|cancel)/?$")
_LOGIN = re.compile(r"^/login/?$")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# --- media roots -------------------------------------------------------------------------------------------------


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS or host.startswith("127.")


def media_roots(setting: str, host: str, share: bool = False) -> list[Path] | None:
    """The folders the UI may add: None means any; [] means none (uploads only)."""
    roots = [Path(p).expanduser().resolve() for p in (setting or "").split(os.pathsep) if p.strip()]
    if roots:
        return roots
    return None if is_local(host) and not share else []


def check_media_root(path: Path, roots: list[Path] | None) -> None:
    """Refuse a folder or file outside the media roots (path already resolved)."""
    if roots is None:
        return
    if not roots:
        raise SightlineError("This server is reachable from the network, so it adds only uploaded videos.",
                             hint="Upload the videos, or start it with SIGHTLINE_MEDIA_ROOTS set to the folders "
                             "that may be indexed.")
    if not any(path == r or r in path.parents for r in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise SightlineError(f"{path} is outside the folders this server may index ({allowed}).",
                             hint="Add a folder inside them, or change SIGHTLINE_MEDIA_ROOTS.")


# --- the ASGI gate -----------------------------------------------------------------------------------------------


class RequestGuard:
    """ASGI middleware (passed to Gradio through launch's app_kwargs). `served` answers `allows(path, refresh)`;
    `demo` is the Blocks, whose server app holds the login tokens once launched."""

    def __init__(self, app, served, demo):
        self.app, self.served, self.demo = app, served, demo
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (wrong logins in a row, last attempt)
        self._locks: dict[str, asyncio.Lock] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        match = _FILE_ROUTE.match(path)
        if match:
            wanted = match.group(1)
            ok = self.served.allows(wanted) or await asyncio.to_thread(self.served.allows, wanted, True)
            if not ok:
                return await _answer(send, 403, b"File not allowed.")
        elif _NEEDS_LOGIN.match(path) and not self._logged_in(scope):
            return await _answer(send, 401, b"Not authenticated.")
        elif _LOGIN.match(path) and scope.get("method") == "POST":
            return await self._login(scope, receive, send)
        return await self.app(scope, receive, send)

    def _logged_in(self, scope) -> bool:
        server = getattr(self.demo, "server_app", None)
        if server is None or (server.auth is None and server.auth_dependency is None):
            return True  # no login configured: nothing to bypass
        cookies = _cookies(scope)
        token = cookies.get(f"access-token-{server.cookie_id}") or cookies.get(
            f"access-token-unsecure-{server.cookie_id}")
        return token is not None and server.tokens.get(token) is not None

    def login_delay(self, client: str) -> float:
        failures, last = self._failures.get(client, (0, 0.0))
        if not failures or time.monotonic() - last > LOGIN_FORGET_S:
            return 0.0
        return min(LOGIN_DELAY_MAX_S, LOGIN_DELAY_S * 2 ** (failures - 1))

    async def _login(self, scope, receive, send):
        client = (scope.get("client") or ("?", 0))[0]
        lock = self._locks.setdefault(client, asyncio.Lock())
        async with lock:  # one attempt at a time per client: parallel guesses queue behind the delay
            delay = self.login_delay(client)
            if delay:
                await asyncio.sleep(delay)
            status: list[int] = []

            async def watch(message):
                if message["type"] == "http.response.start":
                    status.append(message["status"])
                await send(message)

            await self.app(scope, receive, watch)
            failures, last = self._failures.get(client, (0, 0.0))
            if time.monotonic() - last > LOGIN_FORGET_S:
                failures = 0
            if status and status[0] == 200:
                self._failures.pop(client, None)
            elif status and status[0] in (400, 401, 403):
                self._failures[client] = (failures + 1, time.monotonic())
            if len(self._failures) > 10_000:  # many clients: keep the newest half
                for key, _ in sorted(self._failures.items(), key=lambda kv: kv[1][1])[:5_000]:
                    self._failures.pop(key, None)
                    self._locks.pop(key, None)


def _cookies(scope) -> dict[str, str]:
    out = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                out[key] = val
    return out


async def _answer(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
