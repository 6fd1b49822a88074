"""Segment everything for the app's visitors: a bounded number of runs at once, sharing the embedding lock.

The generator (sam.automatic) runs one batch of points at a time with the embedding lock held, so images
that other visitors upload meanwhile are embedded between its batches.
"""

import contextlib
from collections.abc import Callable

from ..deadline import Deadline
from .service import Service
from .settings import ENV, EVERYTHING_RUNS, MAX_EVERYTHING_MASKS


class Busy(ValueError):
    """Work refused at once because too much of it runs already; the message says to try again."""


@contextlib.contextmanager
def everything_slot(service: Service, owner: str | None):
    """One segment-everything run for `owner` (a visitor; None: anonymous), among at most EVERYTHING_RUNS at
    once; Busy if not."""
    owner = owner if owner is not None else object()
    with service._everything_guard:
        if service._everything.get(owner):
            raise Busy("your segment-everything is still running: wait for it (or cancel it) first")
        if sum(service._everything.values()) >= EVERYTHING_RUNS:
            raise Busy("segment everything is busy with other visitors' images: try again in a minute")
        service._everything[owner] = 1
    try:
        yield
    finally:
        with service._everything_guard:
            del service._everything[owner]


def everything(
    service: Service,
    model_name: str,
    key: str,
    path: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    owner: str | None = None,
    max_masks: int = MAX_EVERYTHING_MASKS,
    **generator_args,
) -> list[dict]:
    """Segment everything in a kept image (sam.automatic with Meta's defaults unless overridden).

    Records as SamAutomaticMaskGenerator's with output_mode="uncompressed_rle", best predicted IoU first,
    at most max_masks of them. One run per owner and EVERYTHING_RUNS in all (Busy beyond). It takes the
    embedding lock one batch of points at a time, so embeddings asked for meanwhile run between its
    batches; past `service.everything_timeout_s` it stops with sam.deadline.TimeLimitError (a ValueError).
    """
    from ..automatic import SamAutomaticMaskGenerator

    with everything_slot(service, owner):
        embedded = service.embed(model_name, key, path, owner=owner)
        image = service.image(key, path)
        generator = SamAutomaticMaskGenerator(
            service.models.get(model_name), output_mode="uncompressed_rle", **generator_args
        )
        lock = service._embed_lock

        def between_batches(done: int, total: int) -> None:
            lock.yield_turn()
            if progress is not None:
                progress(done, total)

        with lock, service.workload.job(service.embed_threads, shared=False):
            deadline = Deadline(
                service.everything_timeout_s, "segment everything", ENV["everything_timeout_s"],
                "nothing was changed. Use fewer points per side, or click the objects one by one.",
            )
            records = generator.generate(
                image, embedding=embedded.embedding, progress=between_batches, deadline=deadline, max_masks=max_masks
            )
    return sorted(records, key=lambda r: -r["predicted_iou"])


def everything_json(records: list[dict], model_name: str) -> dict[str, object]:
    """Records of `everything` -> JSON for scripts: COCO RLE masks (pycocotools decodes them), scores, boxes."""
    from ..masks import encode_coco_rle, rle_to_mask

    size = records[0]["segmentation"]["size"] if records else None
    return {
        "size": size,
        "masks": [encode_coco_rle(rle_to_mask(r["segmentation"])) for r in records],
        "scores": [round(r["predicted_iou"], 6) for r in records],
        "stability": [round(r["stability_score"], 6) for r in records],
        "bbox": [r["bbox"] for r in records],  # Meta's XYWH
        "areas": [int(r["area"]) for r in records],
        "points": [r["point_coords"][0] for r in records],
        "model": model_name,
    }
