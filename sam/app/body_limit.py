"""An ASGI middleware that refuses request bodies over a size limit (HTTP 413) before the app parses them.

Gradio's `max_file_size` bounds each uploaded file only; its JSON routes (`/gradio_api/queue/join`,
`/run/...`, `/call/...`, the canvas's `/component_server`) read whatever body they are sent. `BodyLimit`
answers 413 at once when Content-Length says the body is too large (nothing of it is read), and stops a
body sent without Content-Length (chunked) as soon as it passes the limit. Upload routes get their own
limit for the whole request (all its files together), and an `UploadBudget` bounds what each client
address, and all of them together, may upload in an hour (HTTP 429 beyond): with uploads deleted after
an hour (sam/app/sweep.py), that bounds the disk the app uses.
"""

import collections
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Gradio's routes that take multipart uploads and check max_file_size themselves.
GRADIO_UPLOAD_PATHS = ("/gradio_api/upload", "/gradio_api/process_recording")


class BodyTooLarge(Exception):
    """Raised inside `receive` when a streamed body passes the limit."""


class UploadBudget:
    """Bytes uploaded in the last `window_s` seconds, per client address and in all; refuses beyond either."""

    def __init__(self, per_client: int, total: int, window_s: float = 3600, clock=time.monotonic) -> None:
        self.per_client, self.total, self.window_s, self.clock = per_client, total, window_s, clock
        self._log: collections.deque[tuple[float, str, int]] = collections.deque()  # (when, client, bytes)
        self._lock = threading.Lock()

    def _used(self, client: str) -> tuple[int, int]:
        start = self.clock() - self.window_s
        while self._log and self._log[0][0] < start:
            self._log.popleft()
        return sum(n for _, c, n in self._log if c == client), sum(n for _, _, n in self._log)

    def refusal(self, client: str, incoming: int = 0) -> str | None:
        """Why `client` may not upload `incoming` more bytes now (None: it may)."""
        with self._lock:
            mine, everyone = self._used(client)
        hours = f"{self.window_s / 3600:g} hour" + ("s" if self.window_s != 3600 else "")
        if mine + incoming > self.per_client:
            return f"You uploaded {mine >> 20} MB in the last {hours}, the most this server takes: try again later."
        if everyone + incoming > self.total:
            return f"This server took all the uploads it can in {hours} ({self.total >> 20} MB): try again later."
        return None

    def add(self, client: str, n: int) -> None:
        if n > 0:
            with self._lock:
                self._log.append((self.clock(), client, n))


class BodyLimit:
    """Wraps an ASGI app: HTTP requests whose body exceeds `max_bytes` get 413 with a one-line message.

    Upload paths take up to `upload_max_bytes` a request (None: any size, Gradio's max_file_size aside)
    within `budget`.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        upload_paths: Iterable[str] = GRADIO_UPLOAD_PATHS,
        upload_max_bytes: int | None = None,
        budget: UploadBudget | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.upload_paths = tuple(p.rstrip("/") for p in upload_paths)
        self.upload_max_bytes = upload_max_bytes
        self.budget = budget

    def is_upload(self, path: str) -> bool:
        """Upload paths match at the end, so they hold under any mount point or root path."""
        path = path.rstrip("/")
        return any(path == p or path.endswith(p) for p in self.upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = self.is_upload(scope.get("path", ""))
        if upload and self.upload_max_bytes is None and self.budget is None:
            return await self.app(scope, receive, send)
        limit = (self.upload_max_bytes or float("inf")) if upload else self.max_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            return await self.refuse(send, limit)
        client = _client(scope)
        if upload and self.budget is not None:
            reason = self.budget.refusal(client, length or 0)
            if reason:
                return await self.refuse(send, limit, 429, reason)
        try:
            await self._limited(scope, receive, send, limit)
        finally:
            if upload and self.budget is not None:
                self.budget.add(client, scope.get("sam.body_seen", 0))

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: float) -> None:
        seen, over, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                scope["sam.body_seen"] = seen
                if seen > limit:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # the app caught BodyTooLarge and answers on its own (e.g. 400): answer 413 instead
                if not started:
                    started = True
                    await self.refuse(send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # BodyTooLarge, or whatever the app made of it
            if not over:
                raise
            if not started:
                await self.refuse(send, limit)

    async def refuse(self, send: Send, limit: float, status: int = 413, reason: str = "") -> None:
        reason = reason or f"Request body too large: at most {int(limit)} bytes are accepted here."
        body = (reason + "\n").encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The Content-Length header as an int; None when absent or not a number (the server rejects those)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _client(scope: Scope) -> str:
    """The client's address: the first of X-Forwarded-For (a Space's proxy sets it), else the peer's."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"x-forwarded-for":
            return value.decode("latin-1").split(",")[0].strip()
    client = scope.get("client")
    return str(client[0]) if client else "?"
