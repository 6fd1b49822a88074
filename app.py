"""Segment Anything in the browser: click, drag a box or hover over an image; export the objects.

python app.py [--model NAME_OR_PATH]  (or SAM_MODEL=...); serves on 127.0.0.1:7860 unless
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise. Layout and wiring only: the logic is in
sam.app.canvas (the page's requests), sam.app.session (per-visitor state) and sam.app.service (shared models
and caches).
"""

import argparse
import functools
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from starlette.middleware import Middleware

from sam import limits
from sam.allocator import reuse_freed_memory
from sam.app.body_limit import BodyLimit
from sam.app.canvas import CanvasServer, SamCanvas, model_error
from sam.app.service import DEFAULT_MODEL, Models, Service, everything, everything_json, load, segment
from sam.app.session import AppSession, SessionRegistry
from sam.images import ImageError, frame_count, load_image
from sam.weights import KNOWN_MODELS

EXAMPLES = sorted((Path(__file__).parent / "examples").glob("*.jpg"))
SESSION_TTL_S = limits.SESSION_TTL_S
MAX_SESSIONS = int(os.environ.get("SAM_MAX_SESSIONS", str(limits.MAX_SESSIONS)))
MAX_MODELS = int(os.environ.get("SAM_MAX_MODELS", str(limits.MAX_MODELS)))
# Settings of "Everything" (sam.automatic.SamAutomaticMaskGenerator), e.g. '{"points_per_side": 16}'.
EVERYTHING_ENV = "SAM_EVERYTHING"


def model_choices(default: str) -> list[str]:
    names = [n for n in KNOWN_MODELS if not n.endswith(".pt")]  # the .pt names are aliases
    return names if default in names else [default, *names]


def build_demo(model_name: str, service: Service | None = None) -> gr.Blocks:
    service = service or Service()
    registry = SessionRegistry()
    canvas_server = CanvasServer(service, registry)
    choices = model_choices(model_name)
    everything_args = generator_settings(os.environ.get(EVERYTHING_ENV, ""))

    def expire(session: AppSession | None) -> None:
        if isinstance(session, AppSession):
            registry.remove(session)
            session.close()

    def on_load(progress=gr.Progress()):  # noqa: B008 (Gradio's way of asking for a progress bar)
        progress(0, desc=f"Loading {model_name}")
        return canvas_server.status(model_name)

    def on_image(session, name, evt: gr.EventData):
        data = evt._data if isinstance(evt._data, dict) else {}
        rid = data.get("rid")
        try:
            path = upload_path(data.get("path"))
            image, title = load_image(path), str(data.get("name") or "image")[:100]
            animated = frame_count(path) > 1  # the page shows the frame we segment, not the animation
            return canvas_server.open_image(session, name, image, title, path, animated, rid)
        except Exception as e:
            return {"error": error_text(e), "rid": rid}, session, status_for(name, e)

    def on_example(session, name, evt: gr.SelectData):
        try:
            path = EXAMPLES[int(evt.index)]
            return canvas_server.open_image(session, name, load_image(path), path.name, str(path), True)
        except Exception as e:
            return {"error": error_text(e)}, session, status_for(name, e)

    def on_model(session, name):
        if name not in choices:
            return {"error": f"unknown model {name!r}"}, gr.skip()
        try:
            return canvas_server.switch_model(session, name)
        except Exception as e:
            return {"error": error_text(e)}, status_for(name, e)

    def on_everything(session, name, progress=gr.Progress()):  # noqa: B008
        def report(done: int, total: int) -> None:
            progress(done / max(total, 1), desc="Segmenting everything")

        try:
            return canvas_server.everything(session, report, **everything_args)
        except Exception as e:
            return {"error": error_text(e)}

    def everything_api(image, points_per_side, pred_iou_thresh, stability_score_thresh, model) -> dict[str, Any]:
        """Every object in an image (Meta's automatic mask generator) -> {"size", "masks" (COCO RLE), "scores",
        "stability", "bbox" (XYWH), "areas", "points"}, best predicted IoU first."""
        model, image = api_inputs(model, image)
        try:
            key = service.add_image(image)
            args = dict(points_per_side=int(points_per_side), pred_iou_thresh=float(pred_iou_thresh),
                        stability_score_thresh=float(stability_score_thresh))
            if not 1 <= args["points_per_side"] <= 64:
                raise ValueError("points_per_side must be between 1 and 64")
            records = everything(service, model, key, **args)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return everything_json(records, model)

    def on_export(session):
        try:
            return str(canvas_server.export(session, tempfile.mkdtemp(prefix="sam-export-")))
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def status_for(name: str, error: Exception) -> str:
        return canvas_server.status(name) if isinstance(error, ValueError) else model_error(name, error)

    def api_inputs(model: str | None, image) -> tuple[str, np.ndarray]:
        model = model or model_name
        if model not in choices:
            raise gr.Error(f"model must be one of {', '.join(choices)}")
        if image is None:
            raise gr.Error("no image given")
        try:
            return model, load_image(image)  # a file in Gradio's upload cache (gr.File checks that)
        except ImageError as e:
            raise gr.Error(str(e)) from None

    def segment_api(image, points, labels, box, multimask, model) -> dict[str, Any]:
        """Masks for one object: image, points [[x, y], ...], labels [1|0, ...], box [x0, y0, x1, y1] ->
        {"size", "masks" (COCO RLE), "scores", "boxes", "model", "weights"}."""
        model, image = api_inputs(model, image)
        try:
            return segment(service, model, image, points, labels, box, bool(multimask))
        except ValueError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="Segment Anything") as demo:
        session = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=expire)
        gr.Markdown("## Segment Anything\nClick an object, drag a box around it, or rest the cursor on it.")
        with gr.Row(equal_height=True):
            model = gr.Dropdown(choices, value=model_name, label="Model", scale=1, min_width=160)
            status = gr.Markdown("Loading the model…", elem_id="sam-status")
        canvas = SamCanvas(canvas_server, elem_id="sam-canvas")
        gallery = gr.Gallery(
            [str(p) for p in EXAMPLES], label="Examples", columns=6, height=140, allow_preview=False,
            object_fit="cover", elem_id="sam-examples",
        )
        with gr.Row():
            export = gr.Button("Export objects (zip)", elem_id="sam-export", scale=0, min_width=200)
            zip_file = gr.File(
                label="Masks, cut-outs, COCO and YOLO labels", elem_id="sam-zip", interactive=False, height=90
            )

        with gr.Column(visible=False):  # script API only (see README, "App")
            api_image = gr.File(label="image", type="filepath")  # decoded by sam.images, not by Gradio
            api_points, api_labels = gr.JSON([], label="points"), gr.JSON([], label="labels")
            api_box = gr.JSON([], label="box")
            api_multimask = gr.Checkbox(True, label="multimask")
            api_model = gr.Dropdown(choices, value=model_name, label="model")
            api_out = gr.JSON(label="result")
            api_go = gr.Button("segment")
            api_points_per_side = gr.Number(32, precision=0, label="points_per_side")
            api_iou = gr.Number(0.88, label="pred_iou_thresh")
            api_stability = gr.Number(0.95, label="stability_score_thresh")
            api_all = gr.JSON(label="result")
            api_everything = gr.Button("everything")

        demo.load(
            on_load, None, status, show_progress_on=[status], concurrency_id="status", concurrency_limit=None,
            api_visibility="private",
        )
        embed = dict(concurrency_id="embed", concurrency_limit=1, show_progress_on=[status], api_visibility="private")
        canvas.image(on_image, [session, model], [canvas, session, status], trigger_mode="multiple", **embed)
        gallery.select(on_example, [session, model], [canvas, session, status], trigger_mode="multiple", **embed)
        model.change(on_model, [session, model], [canvas, status], trigger_mode="always_last", **embed)
        canvas.everything(on_everything, [session, model], canvas, trigger_mode="once", **embed)
        export.click(
            on_export, session, zip_file, concurrency_id="export", concurrency_limit=2, api_visibility="private"
        )
        api_go.click(
            segment_api,
            [api_image, api_points, api_labels, api_box, api_multimask, api_model],
            api_out,
            api_name="segment",
            concurrency_id="api",
            concurrency_limit=1,
        )
        api_everything.click(
            everything_api,
            [api_image, api_points_per_side, api_iou, api_stability, api_model],
            api_all,
            api_name="everything",
            concurrency_id="api",
            concurrency_limit=1,
        )
    return demo


def generator_settings(text: str) -> dict[str, Any]:
    """SAM_EVERYTHING's JSON object of SamAutomaticMaskGenerator keyword arguments (checked at startup)."""
    import inspect

    from sam.automatic import SamAutomaticMaskGenerator

    if not text.strip():
        return {}
    try:
        args = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{EVERYTHING_ENV} must be a JSON object: {e}") from None
    allowed = set(inspect.signature(SamAutomaticMaskGenerator).parameters) - {"model", "output_mode", "point_grids"}
    if not isinstance(args, dict) or not set(args) <= allowed:
        raise SystemExit(f"{EVERYTHING_ENV} must be a JSON object with keys among {', '.join(sorted(allowed))}")
    return args


def upload_path(path: Any) -> str:
    """A path the page says it uploaded: it must be a file in Gradio's upload folder."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    if not isinstance(path, str) or not path:
        raise ValueError("the upload did not give a file")
    real = Path(path).resolve()
    if not is_in_or_equal(real, Path(get_upload_folder()).resolve()) or not real.is_file():
        raise ValueError("the upload is not a file this server received")
    return str(real)


def error_text(e: Exception) -> str:
    return str(e) if isinstance(e, ValueError | LookupError) else f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=os.environ.get("SAM_MODEL") or DEFAULT_MODEL,
        help=f"known name ({', '.join(model_choices(DEFAULT_MODEL))}), Hub repo id, local file or folder, "
        f"or random:NAME; default: $SAM_MODEL or {DEFAULT_MODEL}",
    )
    parser.add_argument(
        "--precision",
        default=os.environ.get("SAM_PRECISION") or "auto",
        choices=["float32", "bfloat16", "auto"],
        help="image encoder precision; auto: bfloat16 where the CPU runs it fast (default: $SAM_PRECISION or auto)",
    )
    args = parser.parse_args(argv)
    reuse_freed_memory()  # before the server's threads start: see sam/allocator.py
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service(Models(functools.partial(load, precision=args.precision), max_models=MAX_MODELS))
    # Load the model while the server starts, so the first visitor does not wait for it; errors are
    # shown in the page's status line (the model is tried again there).
    threading.Thread(target=lambda: _try(service, args.model), daemon=True).start()
    demo = build_demo(args.model, service)
    demo.queue(max_size=limits.QUEUE_SIZE, default_concurrency_limit=1)
    demo.launch(
        state_session_capacity=MAX_SESSIONS,
        max_file_size=f"{limits.MAX_UPLOAD_MB}mb",  # uploads; BodyLimit bounds every other request body
        allowed_paths=[str(p) for p in EXAMPLES],
        app_kwargs={"middleware": [Middleware(BodyLimit, max_bytes=limits.MAX_BODY_KB << 10)]},
    )


def _try(service: Service, name: str) -> None:
    try:
        service.models.get(name)
    except Exception as e:
        logging.getLogger("app").error("could not load %s: %s", name, e)


if __name__ == "__main__":
    main()
