"""Stops the animation frames that Gradio's progress trackers ask for when nothing shows them.

Each Gradio (6.31) progress tracker counts the seconds its event has been pending in a
`requestAnimationFrame` loop, for the timer it shows. The loop runs as well where the progress is hidden
(`show_progress="hidden"`: the page's uploads show theirs on the canvas), and the page loader's tracker
is removed in the same update that marks it complete, so its loop never hears of it and asks for a frame
60 times a second for as long as the page is open. Each frame asked for is a frame the browser renders:
headless Chromium on 2 cores spent 0.9 s of CPU per 10 s on the idle page (0.02 to 0.2 s without), and
during an upload three hidden trackers kept it rendering 60 frames a second while the same cores embedded
the image (when browser and server share a machine; a visitor's laptop pays it in battery).

`ProgressTimerFix` serves Gradio's tracker script with the loop asking for its next frame only while the
status is pending and the progress is shown (a one-expression change). Any other Gradio version's
script, which does not hold that expression, is served as it is, with a warning in the log.
"""

import logging

SCRIPT = "statustracker-"  # the name with which Gradio's tracker script starts (a content hash follows)
LOOP = b"W&&ze()})}"  # the loop's next frame, asked for while W (started, not yet stopped) holds
# ... and only while the status is still pending and the progress is shown (y: the show_progress prop)
FIXED = b"W&&(o.status===`pending`&&y()!==`hidden`?ze():W=!1)})}"
SHOW = b"y=j(o,`show_progress`"  # where the script names the prop y

log = logging.getLogger(__name__)


def fixed(script: bytes) -> bytes | None:
    """The tracker script with its loop stopping when the status leaves pending or the progress is hidden;
    None if it is not Gradio 6.31's (LOOP not found exactly once, or y not the show_progress prop)."""
    return script.replace(LOOP, FIXED) if script.count(LOOP) == 1 and script.count(SHOW) == 1 else None


class ProgressTimerFix:
    """ASGI middleware: serves Gradio's tracker script (a GET of .../statustracker-*.js) fixed."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        name = scope.get("path", "").rsplit("/", 1)[-1]
        script = name.startswith(SCRIPT) and name.endswith(".js")
        if scope["type"] != "http" or scope["method"] != "GET" or not script:
            return await self.app(scope, receive, send)
        start: dict = {}
        body = bytearray()

        async def collect(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            headers = list(start.get("headers", []))
            plain = start.get("status") == 200 and all(k.lower() != b"content-encoding" for k, _ in headers)
            script = fixed(bytes(body)) if plain else None
            if script is None:
                if plain:
                    log.warning("%s: not the Gradio 6.31 tracker script; served unchanged", name)
                script = bytes(body)
            else:
                headers = [(k, str(len(script)).encode() if k.lower() == b"content-length" else v) for k, v in headers]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": script})

        # The body must come as messages to be read: no sending the file by its path (an ASGI extension).
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != "http.response.pathsend"}
        await self.app({**scope, "extensions": extensions}, receive, collect)
