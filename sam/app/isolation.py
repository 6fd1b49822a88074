"""Cross-origin isolation of the app's pages, so that ONNX Runtime Web may decode on several threads.

WebAssembly threads need SharedArrayBuffer, which a browser grants only to a cross-origin isolated page:
one served with `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy`. The
embedder policy is `credentialless`, so the page may still load other sites' files that send no CORP
header (they are fetched without cookies). A page inside another site's iframe, as a Space shown on its
Hub page, is not isolated whatever it sends (its parent would have to be as well): there the page
decodes on one thread; opened at its own address it uses up to four (static/decoder.js).
"""

HEADERS = [(b"cross-origin-opener-policy", b"same-origin"), (b"cross-origin-embedder-policy", b"credentialless")]


class CrossOriginIsolation:
    """ASGI middleware: adds HEADERS to every HTTP response that does not set them itself."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                have = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
