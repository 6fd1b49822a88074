"""An ASGI middleware that refuses request bodies over a size limit (HTTP 413) before the app parses them.

Gradio's `max_file_size` bounds uploads only; its JSON routes (`/gradio_api/queue/join`, `/run/...`,
`/call/...`, the canvas's `/component_server`) read whatever body they are sent. `BodyLimit` answers 413
at once when Content-Length says the body is too large (nothing of it is read), and stops a body sent
without Content-Length (chunked) as soon as it passes the limit. Paths in `exempt` (the upload routes,
which enforce `max_file_size` as they stream to disk) pass through untouched.
"""

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


class BodyLimit:
    """Wraps an ASGI app: HTTP requests whose body exceeds `max_bytes` get 413 with a one-line message."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: Iterable[str] = GRADIO_UPLOAD_PATHS) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.exempt = tuple(p.rstrip("/") for p in exempt)

    def is_exempt(self, path: str) -> bool:
        """Exempt paths match at the end, so they hold under any mount point or root path."""
        path = path.rstrip("/")
        return any(path == p or path.endswith(p) for p in self.exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_exempt(scope.get("path", "")):
            return await self.app(scope, receive, send)
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            return await self.refuse(send)
        seen, over, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # the app caught BodyTooLarge and answers on its own (e.g. 400): answer 413 instead
                if not started:
                    started = True
                    await self.refuse(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # BodyTooLarge, or whatever the app made of it
            if not over:
                raise
            if not started:
                await self.refuse(send)

    async def refuse(self, send: Send) -> None:
        body = f"Request body too large: at most {self.max_bytes} bytes are accepted here.\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
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
