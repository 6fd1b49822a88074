"""The script API: `/segment` and `/everything` (docs/app.md), for gradio_client and HTTP callers.

Each endpoint reads its image with the app's limits and answers JSON; whatever the caller got wrong, and
a model that cannot be loaded, comes back as one gr.Error line saying what to change, with no path of
the server in it.
"""

import logging
import math
from typing import Any

import gradio as gr
import numpy as np

from .everything import everything, everything_json
from .service import Service, public_message, read_image, segment

logger = logging.getLogger(__name__)
MAX_POINTS_PER_SIDE = 32  # /everything's points_per_side: the page's default grid (1,024 points) at most


class ApiHandlers:
    """The two endpoints, over the models in `choices`; a call that names none gets `model_name`."""

    def __init__(self, service: Service, model_name: str, choices: list[str]) -> None:
        self.service = service
        self.model_name = model_name
        self.choices = choices

    def _model(self, model: str | None) -> str:
        model = model or self.model_name
        if model not in self.choices:
            raise ValueError(f"model must be one of {', '.join(self.choices)}")
        return model

    def segment_api(self, image, points, labels, box, multimask, model, request: gr.Request = None) -> dict[str, Any]:
        """Masks for one object: image, points [[x, y], ...], labels [1|0, ...], box [x0, y0, x1, y1] ->
        {"size", "masks" (COCO RLE), "scores", "boxes", "model", "weights"}."""
        try:
            model = self._model(model)
            owner = getattr(request, "session_hash", None)
            return segment(self.service, model, _image(image), points, labels, box, bool(multimask), owner=owner)
        except Exception as e:
            raise _refusal(e) from None

    def everything_api(
        self, image, points_per_side, pred_iou_thresh=None, stability_score_thresh=0.95, model=None,
        request: gr.Request = None,
    ) -> dict[str, Any]:
        """Every object in an image (Meta's automatic mask generator) -> {"size", "masks" (COCO RLE), "scores",
        "stability", "bbox" (XYWH), "areas", "points"}, best predicted IoU first, at most 255 masks."""
        try:
            model = self._model(model)
            args = dict(
                points_per_side=_number("points_per_side", points_per_side, 1, MAX_POINTS_PER_SIDE, integer=True),
                stability_score_thresh=_number("stability_score_thresh", stability_score_thresh, 0.0, 1.0),
            )
            if pred_iou_thresh is not None:  # None: the model's default (0.88 for SAM, 0.8 for SAM 2)
                args["pred_iou_thresh"] = _number("pred_iou_thresh", pred_iou_thresh, 0.0, 1.0)
            key = self.service.add_image(_image(image))
            owner = getattr(request, "session_hash", None)  # one run at a time per API session
            records = everything(self.service, model, key, owner=owner, **args)
        except Exception as e:
            raise _refusal(e) from None
        return everything_json(records, model)


def _refusal(error: Exception) -> gr.Error:
    message = public_message(error)
    if message.startswith("Internal error"):
        logger.error("API call failed", exc_info=error)
    return gr.Error(message)


def _image(image) -> np.ndarray:
    if image is None:
        raise ValueError("no image given")
    return read_image(image)  # a file in Gradio's upload cache (gr.File checks that)


def _number(name: str, value: Any, low: float, high: float, integer: bool = False) -> float:
    """An API argument as a finite number in [low, high] (an integer if asked); ValueError saying what to send."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be {kind} from {low:g} to {high:g}, got {str(value)[:20]}")
    if not low <= value <= high or (integer and value != int(value)):
        raise ValueError(f"{name} must be {kind} from {low:g} to {high:g}, got {value:g}")
    return int(value) if integer else float(value)
