"""Segment Anything in the browser: click, drag a box or hover over an image; export the objects.

python app.py [--model NAME_OR_PATH] [--precision auto|float32|bfloat16]; every other setting is a SAM_*
environment variable (sam/app/settings.py, docs/deployment.md). Serves on 127.0.0.1:7860 unless
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise. Layout and wiring only: the handlers are in
sam/app/handlers.py (the page) and sam/app/api.py (/segment, /everything), the page's requests in
sam/app/canvas.py, per-visitor state in sam/app/session.py and the shared models and caches in
sam/app/service.py.
"""

import argparse
import dataclasses
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from sam.allocator import reuse_freed_memory
from sam.app import settings as limits
from sam.app.api import ApiHandlers
from sam.app.body_limit import BodyLimit, UploadBudget
from sam.app.browser_decode import BrowserDecode
from sam.app.canvas import STATIC, sam_canvas
from sam.app.handlers import Handlers, model_choices
from sam.app.isolation import CrossOriginIsolation
from sam.app.progress_timer import ProgressTimerFix
from sam.app.service import Service
from sam.app.settings import ENV, PRECISIONS, Settings
from sam.app.sweep import Sweeper

EXAMPLES = sorted((Path(__file__).parent / "examples").glob("*.jpg"))


def layout(h: Handlers) -> SimpleNamespace:
    """The page's components (inside a gr.Blocks context)."""
    ui = SimpleNamespace()
    # A plain function, not the bound method: Gradio deep-copies each session's State with its callback,
    # and a bound method would take the handlers, the service and every model's weights with it.
    ui.session = gr.State(None, time_to_live=limits.SESSION_TTL_S, delete_callback=lambda s: h.expire(s))
    ui.in_use = gr.State(h.model_name)  # the picker goes back to it when a switch fails
    with gr.Row(elem_id="sam-top", equal_height=False):
        gr.Markdown("# Segment Anything\nClick an object, drag a box around it, or rest the cursor on it.",
                    elem_id="sam-title")
        # labelled with each model's embedding time here; the values stay the model names
        ui.model = gr.Dropdown(h.model_labels(), value=h.model_name, label="Model", scale=0, min_width=300,
                               elem_id="sam-model")
        ui.status = gr.Markdown("Loading the model…", elem_id="sam-status")
    with sam_canvas(h.canvas, elem_id="sam-canvas") as ui.canvas, gr.Column(elem_id="sam-side"):
        ui.export = gr.Button("Export objects (zip)", elem_id="sam-export")
        ui.zip_file = gr.File(  # shown once it holds a zip (page.css)
            label="Masks, cut-outs, COCO and YOLO labels", elem_id="sam-zip", interactive=False
        )
        ui.gallery = gr.Gallery(
            [str(p) for p in h.examples], label="Examples", columns=3, height="auto", allow_preview=False,
            object_fit="cover", buttons=[], elem_id="sam-examples",
        )
    return ui


def wire_page(demo: gr.Blocks, ui: SimpleNamespace, h: Handlers) -> None:
    """The page's events. Embeddings run one at a time (they use every core); clicks bypass the queue.
    The picker's labels (embedding times) are brought up to date after each event that may embed."""
    quick = dict(concurrency_id="status", concurrency_limit=None, api_visibility="private", show_progress="hidden")
    demo.load(
        h.on_load, None, ui.status, show_progress_on=[ui.status], concurrency_id="status", concurrency_limit=None,
        api_visibility="private",
    ).then(h.picker, None, ui.model, **quick)
    embed = dict(concurrency_id="embed", concurrency_limit=1, show_progress_on=[ui.status], api_visibility="private")
    opened = [ui.canvas, ui.session, ui.status]
    # The canvas shows its own progress while a new image is embedded; Gradio's on the status line as well
    # cost the browser about 1 s of CPU per upload (model switches keep it: it shows the download).
    upload = {**embed, "show_progress_on": None, "show_progress": "hidden"}
    ui.canvas.image(h.on_image, [ui.session, ui.model], opened, trigger_mode="multiple", **upload).then(
        h.picker, None, ui.model, **quick
    )
    ui.gallery.select(h.on_example, [ui.session, ui.model], opened, trigger_mode="multiple", **upload).then(
        h.picker, None, ui.model, **quick
    )
    # .input, not .change: putting the picker back after a failed switch must not switch again
    ui.model.input(
        h.on_model, [ui.session, ui.model], [ui.canvas, ui.status], trigger_mode="always_last", **embed
    ).then(h.model_in_use, [ui.model, ui.in_use], [ui.model, ui.in_use], **quick).then(
        h.picker, None, ui.model, **quick
    )
    # Segment everything takes the embedding lock one batch at a time (sam.app.everything.everything) and
    # answers "busy" at once beyond its cap: it must not hold a queue slot that uploads wait for. Its
    # progress and Cancel are on the canvas (CanvasServer.sam_act).
    ui.canvas.everything(
        h.on_everything, [ui.session, ui.model], ui.canvas, trigger_mode="once", concurrency_id="everything",
        concurrency_limit=None, show_progress="hidden", api_visibility="private",
    )
    ui.export.click(
        h.on_export, ui.session, ui.zip_file, concurrency_id="export", concurrency_limit=2, api_visibility="private"
    )


def wire_api(h: ApiHandlers) -> None:
    """The script API, /segment and /everything (docs/app.md), on hidden components."""
    with gr.Column(visible=False):
        image = gr.File(label="image", type="filepath")  # decoded by sam.images, not by Gradio
        points, labels, box = gr.JSON([], label="points"), gr.JSON([], label="labels"), gr.JSON([], label="box")
        multimask = gr.Checkbox(True, label="multimask")
        model = gr.Dropdown(h.choices, value=h.model_name, label="model")
        points_per_side = gr.Number(32, label="points_per_side")  # an integer, checked by the handler
        iou = gr.Number(None, label="pred_iou_thresh")  # None: the model's default
        stability = gr.Number(0.95, label="stability_score_thresh")
        segment_out, everything_out = gr.JSON(label="result"), gr.JSON(label="result")
        segment_go, everything_go = gr.Button("segment"), gr.Button("everything")
    api = dict(concurrency_id="api", concurrency_limit=1)
    segment_go.click(
        h.segment_api, [image, points, labels, box, multimask, model], segment_out, api_name="segment", **api
    )
    everything_go.click(
        h.everything_api, [image, points_per_side, iou, stability, model], everything_out, api_name="everything",
        concurrency_id="everything", concurrency_limit=None,  # capped, with a "busy" answer, by the service
    )


def build_demo(settings: Settings, service: Service | None = None, browser: BrowserDecode | None = None) -> gr.Blocks:
    """The app; with `browser` (and its routes on the server) pages decode hovers and clicks themselves."""
    h = Handlers(service or Service.from_settings(settings), settings.model, EXAMPLES, settings.everything)
    h.canvas.use_browser(browser)
    # Gradio deletes uploads and its copies of the exports an hour after they arrive (sam/app/sweep.py: the rest).
    with gr.Blocks(title="Segment Anything", delete_cache=(600, limits.SESSION_TTL_S)) as demo:
        ui = layout(h)
        wire_page(demo, ui, h)
        wire_api(ApiHandlers(h.service, h.model_name, h.choices))
    return demo


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Settings from the environment, then --model / --precision; a bad value exits with its message."""
    try:
        settings = Settings.from_env()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=settings.model,
        help=f"known name ({', '.join(model_choices(Settings.model))}), Hub repo id, local file or folder, "
        f"or random:NAME; default: ${ENV['model']} or {Settings.model}",
    )
    parser.add_argument(
        "--precision", default=settings.precision, choices=PRECISIONS,
        help=f"image encoder precision; auto: bfloat16 where the CPU runs it fast (default: ${ENV['precision']} "
        f"or {Settings.precision})",
    )
    args = parser.parse_args(argv)
    try:
        return dataclasses.replace(settings, model=args.model, precision=args.precision)
    except ValueError as e:  # an unknown model: refused now rather than on every request
        raise SystemExit(f"error: {e}") from None


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    reuse_freed_memory()  # before the server's threads start: see sam/allocator.py
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service.from_settings(settings)
    # Load the model while the server starts, so the first visitor does not wait for it; errors are
    # shown in the page's status line (the model is tried again there).
    threading.Thread(target=lambda: _try(service, settings.model), daemon=True).start()
    browser = BrowserDecode.from_settings(settings, service)
    demo = build_demo(settings, service, browser)
    demo.queue(max_size=limits.QUEUE_SIZE, default_concurrency_limit=1)
    Sweeper(get_upload_folder(), limits.EXPORT_DIR).start()
    demo.launch(
        state_session_capacity=settings.max_sessions,
        max_file_size=f"{limits.MAX_UPLOAD_MB}mb",  # uploads; BodyLimit bounds every other request body
        allowed_paths=[str(p) for p in EXAMPLES],
        css=(STATIC / "page.css").read_text(),  # the page around the canvas (canvas.css is the canvas's own)
        # Gradio's progress trackers ask for frames when nothing shows them (sam/app/progress_timer.py).
        app_kwargs={"middleware": [Middleware(BodyLimit, **body_limits()), Middleware(ProgressTimerFix),
                                   *([Middleware(CrossOriginIsolation)] if browser else [])],  # wasm threads
                    "routes": browser.routes() if browser else []},  # the decoder, embeddings and ORT Web
    )


def body_limits() -> dict:
    """BodyLimit's arguments: JSON bodies, upload requests (their multipart framing aside) and upload budgets."""
    budget = UploadBudget(limits.UPLOAD_MB_PER_CLIENT << 20, limits.UPLOAD_MB_TOTAL << 20)
    return dict(max_bytes=limits.MAX_BODY_KB << 10, upload_max_bytes=(limits.MAX_UPLOAD_MB + 1) << 20, budget=budget)


def _try(service: Service, name: str) -> None:
    try:
        service.models.get(name)
    except Exception as e:
        logging.getLogger("app").error("could not load %s: %s", name, e)


if __name__ == "__main__":
    main()
