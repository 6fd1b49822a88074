"""What the page needs to decode hovers and clicks itself: the decoder as ONNX, each image's embedding, ORT Web.

The page (static/decoder.js) loads ONNX Runtime Web, fetches the ONNX graphs of the model's prompt encoder
and mask decoder once per model (sam/onnx.py, exported on first request and cached on disk per weights)
and each image's embedding once, as float16 bytes; it runs the image graph once per image and then
decodes locally. The server still hears of
every prompt (`local` requests, recorded without decoding, see CanvasServer) and decodes only when an
object is added. Anything that fails here leaves the page on server decoding.

Routes (added to Gradio's app by app.py):
  GET /sam/decoder/decoder-KEY.onnx   the decoder graph (immutable: KEY hashes the weights)
  GET /sam/decoder/image-KEY.onnx     the image graph, run once per image
  GET /sam/embedding?key=&model=   CxHxW float16, little-endian, of the current image of the session
                                      named by the X-Sam-Token header (not in the URL, which logs keep)
  GET /sam/ort/NAME   onnxruntime-web's files, when SAM_ORT_URL names a local folder
"""

import logging
import re
import threading
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..modeling.sam import Sam
from ..onnx import cached_decoder, decoder_key
from .service import Service
from .session import AppSession, SessionRegistry
from .settings import ONNX_DIR, ORT_CDN, ORT_INTEGRITY, Settings

logger = logging.getLogger(__name__)
PREFIX = "/sam"
ORT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


class BrowserDecode:
    """The page's local decoding: its configuration in each view, and the routes that serve its files."""

    def __init__(self, service: Service, ort_url: str = ORT_CDN, cache_dir: str | Path = ONNX_DIR) -> None:
        self.service = service
        self.registry: SessionRegistry | None = None  # the page's sessions (set by CanvasServer)
        self.owner = lambda session: session.token  # whose embedding a session's image has (set by CanvasServer)
        self.remote = ort_url.startswith(("https://", "http://"))
        self.ort_folder = None if self.remote else Path(ort_url)
        self.ort_base = (ort_url.rstrip("/") + "/") if self.remote else f"{PREFIX}/ort/"
        self.integrity = ORT_INTEGRITY if ort_url == ORT_CDN else None
        self.cache_dir = Path(cache_dir)
        self._keys: dict[str, tuple[Sam, str]] = {}  # model name -> (model, decoder_key)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, service: Service) -> "BrowserDecode | None":
        return cls(service, settings.ort_url) if settings.browser_decode else None

    def key(self, model_name: str, model: Sam) -> str:
        """decoder_key of a loaded model, computed once per model object (it hashes the decoder's weights)."""
        with self._lock:
            known = self._keys.get(model_name)
            if known is not None and known[0] is model:
                return known[1]
        key = decoder_key(model)
        with self._lock:
            self._keys[model_name] = (model, key)
        return key

    def config(
        self, session: AppSession, input_size: tuple[int, int], display: tuple[int, int]
    ) -> dict[str, Any] | None:
        """The "local" part of a view: where the page gets ORT, the graph and the embedding, and the sizes it
        needs to draw masks as the server does; None for models that decode on the server only (SAM 2)."""
        model = self.service.models.get(session.model_name)
        if not isinstance(model, Sam) or session.image is None:
            return None
        try:
            key = self.key(session.model_name, model)
        except Exception:  # the page decodes on the server, as without browser decoding
            logger.exception("browser decoding is not offered for %s", session.model_name)
            return None
        h, w = model.prompt_encoder.image_embedding_size
        return {
            "ort": self.ort_base,
            "integrity": self.integrity,
            "graph": f"{PREFIX}/decoder/decoder-{key}.onnx",
            "image_graph": f"{PREFIX}/decoder/image-{key}.onnx",
            "embedding": f"{PREFIX}/embedding",
            "model": session.model_name,
            "shape": [model.prompt_encoder.embed_dim, h, w],
            "img_size": model.img_size,
            "input": list(input_size),
            "display": list(display),
            "threshold": model.mask_threshold,
        }

    def routes(self) -> list[Route]:
        routes = [
            Route(f"{PREFIX}/decoder/{{name}}", self.decoder, methods=["GET"]),
            Route(f"{PREFIX}/embedding", self.embedding, methods=["GET"]),
        ]
        if self.ort_folder is not None:
            routes.append(Route(f"{PREFIX}/ort/{{name}}", self.ort, methods=["GET"]))
        return routes

    # routes (sync: Starlette runs them on its thread pool) -----------------------------------------------
    def decoder(self, request: Request) -> Response:
        match = re.fullmatch(r"(decoder|image)-([0-9a-f]{16})\.onnx", request.path_params["name"])
        with self._lock:
            found = [(name, model) for name, (model, key) in self._keys.items() if match and key == match[2]]
        if not found:
            return PlainTextResponse("no such decoder", status_code=404)
        name, model = found[0]
        if self.service.models.get(name) is not model:  # unloaded or replaced since the page was told of it
            return PlainTextResponse("that model is no longer loaded", status_code=404)
        try:
            path = cached_decoder(model, self.cache_dir, match[2], part=match[1])
        except Exception:
            logger.exception("could not export the decoder of %s", name)
            return PlainTextResponse("the decoder could not be exported", status_code=500)
        return FileResponse(path, media_type="application/octet-stream", headers=IMMUTABLE)

    def embedding(self, request: Request) -> Response:
        """The embedding of the image the session shows, with the session's model, as float16 bytes."""
        q = request.query_params
        session = self.registry.get(request.headers.get("x-sam-token")) if self.registry else None
        image = session.image if session else None
        if session is None or image is None or q.get("key") != image.key or q.get("model") != session.model_name:
            return PlainTextResponse("not this session's image", status_code=404)
        try:
            embedded = self.service.embed(session.model_name, image.key, image.path, owner=self.owner(session))
        except (ValueError, LookupError) as e:
            return PlainTextResponse(str(e), status_code=404)
        features = embedded.embedding.features[0].detach().to("cpu").half().contiguous()
        headers = {"Cache-Control": "private, max-age=3600", "X-Sam-Shape": ",".join(map(str, features.shape))}
        return Response(features.numpy().astype("<f2").tobytes(), media_type="application/octet-stream",
                        headers=headers)

    def ort(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.ort_folder / name if SAFE_NAME.match(name) else None
        if path is None or path.suffix not in ORT_TYPES or not path.is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path, media_type=ORT_TYPES[path.suffix], headers={"Cache-Control": "public, max-age=86400"})
