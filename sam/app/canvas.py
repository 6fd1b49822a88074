"""The app's image canvas: a custom `gr.HTML` component and the server side of its requests.

The page shows the user's image from their own file and draws masks, points and boxes over it
(`static/canvas.js`). Clicks, drags and hovers call `CanvasServer.sam_act` directly (Gradio's
`server_functions`, no queue round trip); the answer carries only masks as 1-bit PNG data URLs at the
display size (the image size, long side at most 1024). Image uploads go through Gradio's queue
(`image` event) because an embedding takes seconds and runs one at a time.

When the page decodes in the browser (sam/app/browser_decode.py, static/decoder.js), its prompts come as
`local` requests: recorded in the session without decoding, answered with the prompts and the choices of
candidate from which the page computes the masks itself. The server decodes them only when it needs the
mask (Add object) or when the page goes back to server decoding.
"""

import base64
import io
import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..export import color
from .actions import parse_action
from .browser_decode import BrowserDecode
from .everything import everything
from .service import Decoder, Embedded, Service, model_info
from .session import AppSession, ImageRef, Prompt, SessionRegistry

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
DISPLAY_MAX_SIDE = 1024
LOCAL = ("point", "box", "undo", "choose", "choose_first")  # what a page that decodes itself only reports

# One script, in this order (the files share its scope).
JS_FILES = ("canvas.js", "server.js", "decoder.js", "panel.js", "input.js")
# Before @children: the tool (toolbar, image, hints) and its side panel (masks, objects); @children: the
# components placed inside the canvas in app.py (export, examples), below the panel on wide screens.

def display_size(height: int, width: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """(H, W) of the masks sent to the page: the image size, scaled down so the long side is <= max_side."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def mask_data_url(mask: np.ndarray) -> str:
    """HxW bool -> a 1-bit PNG data URL, white inside and transparent outside."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    im = Image.frombytes("1", (w, h), np.packbits(mask, axis=1).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def label_data_url(masks: list[np.ndarray], colors: list[tuple[int, int, int]]) -> str:
    """Masks (HxW bool, at most 255) -> an 8-bit palette PNG data URL: pixel value i + 1 where mask i is
    (smaller masks drawn over larger ones), colour i + 1 from `colors`, value 0 transparent."""
    if len(masks) > 255:
        raise ValueError("at most 255 masks fit an 8-bit label image")
    labels = np.zeros(masks[0].shape if masks else (1, 1), dtype=np.uint8)
    for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        labels[masks[i]] = i + 1
    im = Image.fromarray(labels, mode="P")
    flat = [0, 0, 0] + [c for rgb in colors for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_url(image: np.ndarray, quality: int = 90) -> str:
    """HxWx3 uint8 -> a JPEG data URL (to show an example image in the page once)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def sam_canvas(server: "CanvasServer", **kwargs: Any) -> gr.HTML:
    """The canvas component (Gradio's custom HTML); `server` answers its requests (`server.sam_act` in the
    page's script). Components created inside `with canvas:` are shown in its side column. A gr.HTML
    instance rather than a subclass: Gradio writes a .pyi stub beside the module of every component class
    it sees defined."""

    def sam_act(data: Any) -> dict[str, Any]:  # a plain function: Gradio marks it as a server function
        return server.sam_act(data)

    canvas = gr.HTML(
        value={},
        html_template=(STATIC / "canvas.html").read_text(),
        css_template=(STATIC / "canvas.css").read_text(),
        js_on_load="\n".join((STATIC / name).read_text() for name in JS_FILES),
        server_functions=[sam_act],
        apply_default_css=False,
        **kwargs,
    )
    canvas.api_info = lambda: {"type": "object", "description": "the canvas state sent to the page"}
    return canvas


class CanvasServer:
    """Answers the page's requests: validates them, updates the session, returns masks as PNG data URLs."""

    def __init__(self, service: Service, registry: SessionRegistry) -> None:
        self.service = service
        self.registry = registry
        self.browser: BrowserDecode | None = None

    def use_browser(self, browser: BrowserDecode | None) -> None:
        """Let pages decode in the browser (None: every decode on the server)."""
        self.browser = browser
        if browser is not None:
            browser.registry, browser.owner = self.registry, self.owner

    def decoder(self, session: AppSession) -> Decoder:
        image = session.require_image()
        embedded = self.service.embed(session.model_name, image.key, image.path, owner=self.owner(session))
        return self.service.decoder(session.model_name, embedded.embedding)

    @staticmethod
    def owner(session: AppSession) -> str | None:
        """Whose cache entry the session's image has (Service.embed): None for the examples, shared by all."""
        return None if session.image is None or session.image.shared else session.token

    def sam_act(self, data: Any) -> dict[str, Any]:
        """One request from the page: {token, seq, type, ...} -> the changed parts of the view, or {error}."""
        seq = data.get("seq") if isinstance(data, dict) else None
        session = self.registry.get(data.get("token")) if isinstance(data, dict) else None
        if session is None:
            return {"error": "This page's session has expired: upload the image again.", "expired": True, "seq": seq}
        if data.get("type") in ("progress", "cancel"):  # while a job holds the session's lock
            return {**self._job(session, data), "seq": seq}
        if session.job is not None:
            return {"error": BUSY[session.job], "busy": session.job, "seq": seq}
        start = time.perf_counter()
        try:
            with session.lock:
                session.touched = time.monotonic()
                key = data.get("key")
                if key is not None and (session.image is None or key != session.image.key):
                    return {"stale": True, "seq": seq}  # aimed at an image the page no longer shows
                out = self._act(session, data)
        except (ValueError, LookupError) as e:
            return {"error": str(e), "seq": seq}
        except Exception as e:  # never a traceback in the page; the log has it
            logger.exception("request %r failed", data.get("type"))
            return {"error": f"Internal error ({type(e).__name__}); see the server log.", "seq": seq}
        out["seq"] = seq
        out["ms"] = round((time.perf_counter() - start) * 1000, 1)
        return out

    def _job(self, session: AppSession, data: dict[str, Any]) -> dict[str, Any]:
        """How far the session's job is; a cancel request stops segment-everything run `run`."""
        if data["type"] == "cancel":
            run = data.get("run")
            if isinstance(run, bool) or not isinstance(run, int):
                return {"error": "run must be an integer"}
            session.cancel_run = run
        return {"job": session.job, "progress": session.progress}

    def _act(self, session: AppSession, data: dict[str, Any]) -> dict[str, Any]:
        action = parse_action(data, session.image)
        kind = action.type
        if data.get("local") is True and kind in LOCAL:
            prompt = None
            if kind in ("point", "box"):
                prompt = Prompt(kind, (action.x, action.y) if kind == "point" else action.box, action.label)
            session.record(kind, prompt, action.index)
            return {**self.view(session, None, data), "recorded": True}
        if kind == "choose" and not session.stale:
            session.choose(action.index)
            return {"selected": session.selected}
        if kind in ("clear", "clear_all"):
            session.clear_all() if kind == "clear_all" else session.clear()
            return self.view(session, None, data)
        if kind == "delete":
            session.delete_object(action.index)
            return self.view(session, None, data)
        if kind == "rename":
            obj = session.rename_object(action.index, action.name)
            return {**self.view(session, None, data), "message": f"Renamed to {obj.name}."}
        if kind == "pick":
            obj = session.pick(action.index)
            return {**self.view(session, None, data), "message": f"Added {obj.name}."}
        decoder = self.decoder(session)
        session.sync(decoder)
        if kind == "choose":
            session.choose(action.index)
            return self.view(session, decoder, data)
        if kind == "hover":
            low_res, score = session.preview(decoder, action.x, action.y)
            mask = decoder.masks(low_res[None], display_size(*decoder.original_size))[0]
            return {"hover": {"png": mask_data_url(mask), "score": round(score, 4)}}
        if kind == "point":
            session.add_point(decoder, action.x, action.y, action.label)
        elif kind == "box":
            session.set_box(decoder, action.box)
        elif kind == "undo":
            session.undo(decoder)
        elif kind == "choose_first":
            session.choose_first(decoder, action.index)
        elif kind == "add":
            obj = session.add_object(decoder, action.name)
            return {**self.view(session, decoder, data), "message": f"Added {obj.name}."}
        return self.view(session, decoder, data)

    def view(self, session: AppSession, decoder: Decoder | None, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Prompts, candidate masks and (when the page's copy is out of date) objects, for the page."""
        out: dict[str, Any] = {"prompts": [p.as_json() for p in session.prompts], "selected": session.selected}
        out["choices"] = [p.choice for p in session.prompts]  # the candidate picked after each prompt (None: best)
        out["candidates"] = []
        if session.low_res is not None and decoder is not None:
            size = display_size(*decoder.original_size)
            out["candidates"] = _pngs(decoder.masks(session.low_res, size), session.scores)
            out["model"] = session.model_name  # the model that answered
            out["first_version"] = session.first_version
            sent = data.get("first_version") if data else None
            if len(session.prompts) > 1 and session.first is not None and sent != session.first_version:
                out["first"] = _pngs(decoder.masks(session.first[0], size), session.first[1])
            if len(session.prompts) > 1 and session.first is not None:
                out["first_selected"] = session.first_selected()
        if data is None or data.get("objects_version") != session.objects_version:
            out["objects"] = self.objects(session)
            out["objects_version"] = session.objects_version
        return out

    def objects(self, session: AppSession) -> list[dict[str, Any]]:
        if session.image is None:
            return []
        size = display_size(session.image.height, session.image.width)
        out = []
        for obj in session.objects:
            mask = _resize(obj.mask(), size)
            out.append(
                {"id": obj.id, "name": obj.name, "color": obj.color, "score": round(obj.score, 4), "area": obj.area,
                 "png": mask_data_url(mask)}
            )
        return out

    # Queued events (seconds of work, one embedding at a time) ----------------------------------------------
    def open_image(
        self,
        session: AppSession | None,
        model_name: str,
        image: np.ndarray,
        name: str,
        path: str | None,
        send_image: bool,
        rid: Any = None,
        shared: bool = False,
    ) -> tuple[dict[str, Any], AppSession, str]:
        """A new image for the session: keep it, embed it (cached by content) -> (view, session, status)."""
        session = session if isinstance(session, AppSession) else AppSession()
        if session.job is not None:
            raise ValueError(BUSY[session.job])
        self.registry.add(session)
        session.job = "image"
        try:
            with session.lock:
                key = self.service.add_image(image)
                embedded = self.service.embed(model_name, key, path, owner=None if shared else session.token)
                h, w = image.shape[:2]
                session.set_image(ImageRef(key, w, h, name, path, shared), model_name)
                view = self.view(session, None)
                self._local(view, session, embedded)
        finally:
            session.job = None
        view.update(token=session.token, image={"key": key, "width": w, "height": h, "name": name}, rid=rid)
        if send_image:
            view["image"]["src"] = image_data_url(image)
        return view, session, self.status(model_name, embedded)

    def switch_model(self, session: AppSession | None, model_name: str) -> tuple[dict[str, Any], str]:
        """Use another model for the session's image: embed again, replay the prompts -> (view, status)."""
        self.service.models.get(model_name)  # raises with the reason when it cannot be loaded
        if not isinstance(session, AppSession) or session.image is None:
            return {}, self.status(model_name)
        with session.lock:
            image = session.image
            embedded = self.service.embed(model_name, image.key, image.path, owner=self.owner(session))
            session.model_name = model_name
            decoder = self.service.decoder(model_name, embedded.embedding)
            session.replay(decoder)
            view = self.view(session, decoder)
            self._local(view, session, embedded)
        view.update(token=session.token, image={"key": image.key, "width": image.width, "height": image.height})
        return view, self.status(model_name, embedded)

    def _local(self, view: dict[str, Any], session: AppSession, embedded: Embedded) -> None:
        """Tell the page how to decode in the browser (view["local"]; None: on the server)."""
        if self.browser is not None:
            size = display_size(*embedded.embedding.original_size)
            view["local"] = self.browser.config(session, embedded.embedding.input_size, size)

    def export(self, session: AppSession | None, folder: str | Path) -> Path:
        """All objects of the session in one zip (sam.export.build_zip) written into `folder`."""
        from ..export import ExportObject, build_zip, safe_name

        if not isinstance(session, AppSession) or session.image is None:
            raise ValueError("upload an image first")
        with session.lock:
            if not session.objects:
                raise ValueError("no objects yet: click on the image, then Add object")
            ref = session.image
            image = self.service.image(ref.key, ref.path)
            objects = [ExportObject(o.name, o.mask(), o.score, _rgb(o.color)) for o in session.objects]
        path = Path(folder) / f"{safe_name(Path(ref.name).stem, default='image')}_objects.zip"
        path.write_bytes(build_zip(image, objects, ref.name))
        return path

    def everything(
        self, session: AppSession | None, progress=None, run: int | None = None, **generator_args
    ) -> dict[str, Any]:
        """Segment everything in the session's image -> the view with an "everything" label image.

        progress(done, total) is called between batches of points; a cancel request for `run` (see sam_act)
        stops the run there with Cancelled, the session unchanged.
        """
        from ..masks import rle_to_mask

        if not isinstance(session, AppSession) or session.image is None:
            raise ValueError("upload an image first")

        def report(done: int, total: int) -> None:
            session.progress = (done, total)
            if run is not None and session.cancel_run == run:
                raise Cancelled("Segment everything was cancelled; nothing was changed.")
            if progress is not None:
                progress(done, total)

        if session.job is not None:
            raise ValueError(BUSY[session.job])
        session.job, session.progress = "everything", None
        try:
            with session.lock:
                ref, model_name = session.image, session.model_name
                records = everything(self.service, model_name, ref.key, ref.path, report, owner=session.token,
                                     **generator_args)
                masks = [(rle_to_mask(r["segmentation"]), r["predicted_iou"]) for r in records]
                session.set_everything(masks)
                size = display_size(ref.height, ref.width)
                shown = [_resize(m, size) for m, _ in masks[: len(session.everything)]]
                colors = [color(i) for i in range(len(shown))]
                view = self.view(session, None)
        finally:
            session.job = session.progress = None
        view.update(token=session.token, image={"key": ref.key, "width": ref.width, "height": ref.height})
        view["everything"] = {
            "png": label_data_url(shown, colors) if shown else None,
            "colors": ["#{:02x}{:02x}{:02x}".format(*c) for c in colors],
            "scores": [round(o.score, 4) for o in session.everything],
        }
        n = len(shown)
        view["message"] = (
            f"{n} mask{'s' if n != 1 else ''} from {model_name}: click one to make it an object." if n
            else f"{model_name} found no masks in this image."
        )
        return view

    def status(self, model_name: str, embedded: Embedded | None = None) -> str:
        """The status line: model, weights, precision, embedding time; or what is wrong and how to fix it."""
        try:
            info = model_info(model_name, self.service.models.get(model_name))
        except Exception as e:
            return model_error(model_name, e)
        source = str(info["source"])
        if source.startswith(f"{model_name} (") and source.endswith(")"):  # "sam-vit-base (facebook/sam-vit-base)"
            source = source[len(model_name) + 2 : -1]
        name = f"**{model_name}** ({source})" if source != model_name else f"**{model_name}**"
        parts = [name, str(info["precision"])]
        if embedded is not None:
            parts.append("embedding cached" if embedded.cached else f"embedding {embedded.seconds:.2f} s")
        line = " · ".join(parts)
        if info["random"]:
            line = "⚠️ RANDOM WEIGHTS (masks are meaningless; for tests and development) · " + line
        return line


class Cancelled(Exception):
    """The page asked to stop a running job."""


BUSY = {  # what a request made while a job runs is told
    "image": "Wait: the image is still loading.",
    "everything": "Wait: segment everything is running (or cancel it).",
}


def _pngs(masks: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    return [{"png": mask_data_url(m), "score": round(float(s), 4)} for m, s in zip(masks, scores)]


def _resize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW bool -> (h, w) bool, nearest neighbour (masks shown at the display size)."""
    if mask.shape == size:
        return mask
    return np.asarray(Image.fromarray(mask).resize(size[::-1], Image.Resampling.NEAREST))


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def model_error(model_name: str, error: Exception) -> str:
    """Why a model cannot be used, and how to fix it (sam.weights puts the fix in its messages)."""
    return (
        f"⚠️ Could not load **{model_name}**: {error}\n\n"
        "Choose another model above, or start the app with `python app.py --model PATH` "
        "(a local checkpoint or folder) or `SAM_MODEL=...`."
    )
