"""The script API: `/segment` and `/everything` (docs/app.md), for gradio_client and HTTP callers.

Each endpoint reads its image with the app's limits and answers JSON; whatever the caller got wrong
comes back as one gr.Error line saying what to change.
"""

from typing import Any

import gradio as gr
import numpy as np

from ..images import ImageError
from .service import Service, everything, everything_json, read_image, segment

MAX_POINTS_PER_SIDE = 64  # /everything's points_per_side (the page uses the SAM_EVERYTHING setting)


class ApiHandlers:
    """The two endpoints, over the models in `choices`; a call that names none gets `model_name`."""

    def __init__(self, service: Service, model_name: str, choices: list[str]) -> None:
        self.service = service
        self.model_name = model_name
        self.choices = choices

    def _api_inputs(self, model: str | None, image) -> tuple[str, np.ndarray]:
        model = model or self.model_name
        if model not in self.choices:
            raise gr.Error(f"model must be one of {', '.join(self.choices)}")
        if image is None:
            raise gr.Error("no image given")
        try:
            return model, read_image(image)  # a file in Gradio's upload cache (gr.File checks that)
        except ImageError as e:
            raise gr.Error(str(e)) from None

    def segment_api(self, image, points, labels, box, multimask, model) -> dict[str, Any]:
        """Masks for one object: image, points [[x, y], ...], labels [1|0, ...], box [x0, y0, x1, y1] ->
        {"size", "masks" (COCO RLE), "scores", "boxes", "model", "weights"}."""
        model, image = self._api_inputs(model, image)
        try:
            return segment(self.service, model, image, points, labels, box, bool(multimask))
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def everything_api(self, image, points_per_side, pred_iou_thresh, stability_score_thresh, model) -> dict[str, Any]:
        """Every object in an image (Meta's automatic mask generator) -> {"size", "masks" (COCO RLE), "scores",
        "stability", "bbox" (XYWH), "areas", "points"}, best predicted IoU first."""
        model, image = self._api_inputs(model, image)
        try:
            key = self.service.add_image(image)
            args = dict(points_per_side=int(points_per_side), pred_iou_thresh=float(pred_iou_thresh),
                        stability_score_thresh=float(stability_score_thresh))
            if not 1 <= args["points_per_side"] <= MAX_POINTS_PER_SIDE:
                raise ValueError(f"points_per_side must be between 1 and {MAX_POINTS_PER_SIDE}")
            records = everything(self.service, model, key, **args)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return everything_json(records, model)
