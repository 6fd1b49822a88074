"""SamAutomaticMaskGenerator: masks for everything in an image, from a grid of point prompts (Meta's API).

It returns the records of segment-anything's generator (of sam2's `SAM2AutomaticMaskGenerator` given a
SAM 2 model: see sam/automatic_sam2.py), computed in another order. Meta upsamples
the three candidate masks of every point to the full image before it filters them; here the filters
(predicted IoU, stability score, boxes near crop edges) and the NMS are decided from the low-res
logits (`LowResMasks` gives the exact full-resolution counts and boxes from them, evaluating pixels
only along the mask contours), and only the masks that are returned are upsampled.
"""

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from . import automatic_sam2, masks
from .allocator import release_free_memory
from .amg import (
    LowResMasks,
    batched_nms,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from .deadline import Deadline
from .generator_settings import check_settings
from .logit_store import LogitStore
from .modeling.sam import Sam
from .modeling.sam2 import Sam2
from .predictor import ImageEmbedding, SamPredictor
from .screen import Screen

DECODER_BATCH = 8  # prompts per decoder call
MASK_BATCH = 64  # masks upsampled per call at the end (each holds ~0.5 MB of cell levels meanwhile)

# Candidates are kept as a dict of tensors sharing their first dimension: slot N (where their low-res
# logits are in the LogitStore, which bounds the memory whatever the settings), iou N, stability N, boxes
# Nx4 (XYXY inclusive), points Nx2, crop N (crop index), dense N (the counts came from the whole upsampled
# mask; the mask is then upsampled the same way). Within a batch, before they are stored, logits Nxhxw
# stand in for slot.
Candidates = dict[str, torch.Tensor]


def _take(data: Candidates, keep: torch.Tensor) -> Candidates:
    return {key: value[keep] for key, value in data.items()}


def _cat(parts: list[Candidates]) -> Candidates:
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


class SamAutomaticMaskGenerator:
    def __init__(
        self,
        model: Sam | Sam2,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        logits_memory_mb: int = 256,
        mask_threshold: float | None = None,
        use_m2m: bool = False,
        multimask_output: bool = True,
        object_score_thresh: float | None = None,
        screen: bool | None = None,
    ) -> None:
        """Arguments and defaults are those of segment-anything's generator (its docstring explains each), or
        with a SAM 2 model those of sam2's SAM2AutomaticMaskGenerator: pred_iou_thresh None is 0.88 (SAM) or
        0.8 (SAM 2); mask_threshold None is the model's (0.0); use_m2m, multimask_output and
        object_score_thresh (ours, no gate when None) take SAM 2 models only: see sam/automatic_sam2.py.

        point_grids: one Nx2 grid of points in [0, 1] per crop layer, instead of points_per_side.
        output_mode: "binary_mask" (HxW bool arrays), "uncompressed_rle" or "coco_rle" (compressed counts).
        logits_memory_mb: candidates' low-res logits beyond this many MB wait in a temporary file
        (see LogitStore); the generator's other memory is bounded by the batch sizes.
        screen: screen the points' IoU with a bf16 copy of the decoder and decode in fp32 only those that
        may pass pred_iou_thresh (sam/screen.py); None: where it can pay (pred_iou_thresh > 0, no use_m2m,
        a CPU or GPU with fast bf16).
        """
        check_settings(model, points_per_side, point_grids, crop_n_layers, crop_n_points_downscale_factor,
                       points_per_batch, output_mode, logits_memory_mb)
        self.is_sam2 = isinstance(model, Sam2)
        if not self.is_sam2 and (use_m2m or not multimask_output or object_score_thresh is not None):
            raise ValueError("use_m2m, multimask_output and object_score_thresh are settings of SAM 2 models")
        if pred_iou_thresh is None:
            pred_iou_thresh = automatic_sam2.PRED_IOU_THRESH if self.is_sam2 else 0.88
        if points_per_side is not None:
            point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        self.logits_memory_mb = logits_memory_mb
        self.predictor = SamPredictor(model)
        self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.mask_threshold = model.mask_threshold if mask_threshold is None else mask_threshold
        self.use_m2m, self.multimask_output, self.object_score_thresh = use_m2m, multimask_output, object_score_thresh
        self._grids: dict[tuple, LowResMasks] = {}
        if screen is None:
            screen = Screen.wanted(model, pred_iou_thresh, self.predictor.device) and not use_m2m
        elif screen and (use_m2m or pred_iou_thresh <= 0.0):
            raise ValueError("screen takes pred_iou_thresh > 0 and no use_m2m (which needs every mask)")
        self.screen = Screen(model) if screen else None

    @torch.no_grad()
    def generate(
        self,
        image: np.ndarray,
        embedding: ImageEmbedding | None = None,
        progress: Callable[[int, int], None] | None = None,
        deadline: Deadline | None = None,
        max_masks: int | None = None,
    ) -> list[dict[str, Any]]:
        """Masks for an HxWx3 uint8 RGB image: a list of records, as segment-anything's generator.

        Each record: segmentation (HxW bool array, or an RLE dict), area (pixels), bbox [x, y, w, h]
        (w = last column - first column, as Meta), predicted_iou, point_coords [[x, y]],
        stability_score, crop_box [x, y, w, h].
        embedding: the image's embedding if it was computed already (used for the whole-image crop).
        progress: called with (points done, points in total) after each batch of points.
        deadline: checked between crops, batches of points and output masks; past it, the run stops with
        sam.deadline.TimeLimitError (the generator keeps no state from a stopped run).
        max_masks: return only the records that come first when all are sorted by predicted IoU (a stable
        sort), in their usual order; the others are not upsampled. With min_mask_region_area > 0 every
        mask is made first with SAM (its second NMS can change which ones remain).
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
        orig_size = image.shape[:2]
        if embedding is not None and tuple(embedding.original_size) != orig_size:
            raise ValueError(f"the embedding is of an image of size {embedding.original_size}, not {orig_size}")
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        total = sum(len(self.point_grids[layer]) for layer in layer_idxs)
        done = 0

        def advance(points: int) -> None:
            """After each batch of points (and before each crop, with 0): progress, then the deadline."""
            nonlocal done
            done += points
            if points:
                release_free_memory()  # see sam/allocator.py: without it, resident memory creeps up per batch
            if points and progress is not None:
                progress(done, total)
            if deadline is not None:
                deadline.check(f"{done} of {total} points done")

        if self.screen is not None:
            self.screen.start()
        store = LogitStore(self.logits_memory_mb << 20)
        try:
            data, grids = self._candidates(image, embedding, crop_boxes, layer_idxs, advance, store)
            if data is None:
                return []
            if max_masks is not None and (self.min_mask_region_area <= 0 or self.is_sam2):
                best = torch.sort(torch.argsort(-data["iou"], stable=True)[:max_masks]).values
                data = _take(data, best)
            records = self._records(data, crop_boxes, grids, orig_size, store, deadline)
        finally:
            store.close()
        if max_masks is not None and len(records) > max_masks:
            order = sorted(range(len(records)), key=lambda i: -records[i]["predicted_iou"])[:max_masks]
            records = [records[i] for i in sorted(order)]
        return records

    def _candidates(
        self,
        image: np.ndarray,
        embedding: ImageEmbedding | None,
        crop_boxes: list[list[int]],
        layer_idxs: list[int],
        advance: Callable[[int], None],
        store: LogitStore,
    ) -> tuple[Candidates | None, list]:
        """Every crop's candidates after its NMS, then across crops (None when there are none), and the crops'
        upsampling grids."""
        parts, grids = [], []
        for i, (crop_box, layer) in enumerate(zip(crop_boxes, layer_idxs)):
            advance(0)
            crop_embedding = embedding if i == 0 else None
            part, grid = self._process_crop(image, i, crop_box, layer, crop_embedding, advance, store)
            grids.append(grid)
            if part is not None:
                parts.append(part)
        if not parts:
            return None, grids
        data = _cat(parts)
        if len(crop_boxes) > 1:
            # Prefer masks from smaller crops (Meta's score: 1 / crop area).
            b = torch.tensor(crop_boxes)
            scores = 1 / ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[data["crop"]]
            keep = batched_nms(data["boxes"].float(), scores, torch.zeros(len(scores)), self.crop_nms_thresh)
            data = _take(data, keep)
        return data, grids

    def predict_low_res(self, points: torch.Tensor, crop_box: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Bx2 points (model-input pixels of the crop the predictor holds) -> low-res logits BxMxhxw, IoU BxM.

        The one place the model is asked for masks; crop_box (x0, y0, x1, y1 in the image) is unused here.
        Masks that cannot pass pred_iou_thresh are not computed (their logits are -inf). With a screen
        (sam/screen.py) only the prompts it keeps are decoded in fp32; the others keep their bf16 IoU, at
        least `margin` below the threshold.
        """
        min_iou = self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None
        if self.screen is not None and self.screen.on:
            return self.screen.decode(self.predictor.features, points, min_iou, lambda p: self._decode(p, min_iou))
        return self._decode(points, min_iou)

    def _decode(self, points: torch.Tensor, min_iou: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """predict_low_res in fp32, every prompt."""
        # The decoder holds ~30 MB of activations per prompt: a few prompts at a time bound the memory
        # (a batch of 64 would take 1.6 GB).
        logits, iou = [], []
        for chunk in points.split(DECODER_BATCH):
            labels = torch.ones(len(chunk), 1, dtype=torch.int, device=chunk.device)
            out = self.predictor.decode((chunk[:, None, :], labels), None, None, multimask_output=True, min_iou=min_iou)
            logits.append(out[0])
            iou.append(out[1])
        return torch.cat(logits), torch.cat(iou)

    def _process_crop(
        self,
        image: np.ndarray,
        crop_index: int,
        crop_box: list[int],
        layer: int,
        embedding: ImageEmbedding | None,
        advance: Callable[[int], None],
        store: LogitStore,
    ) -> tuple[Candidates | None, LowResMasks | None]:
        """Candidates of one crop after NMS (in image coordinates) and the upsampling of their logits."""
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        crop_size = cropped.shape[:2]
        if embedding is not None:
            self.predictor.set_embedding(embedding)
        else:
            self.predictor.set_image(cropped)
        points_for_image = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        parts, grid = [], None
        try:
            for start in range(0, len(points_for_image), self.points_per_batch):
                points = points_for_image[start : start + self.points_per_batch]
                part, grid = self._process_batch(points, crop_size, crop_box, image.shape[:2])
                part["slot"] = store.add(part.pop("logits"))
                parts.append(part)
                advance(len(points))
        finally:
            self.predictor.reset_image()  # also when the deadline (or the progress callback) stops the run
        data = _cat(parts)
        if len(data["iou"]) == 0:
            return None, grid
        keep = batched_nms(data["boxes"].float(), data["iou"], torch.zeros(len(data["iou"])), self.box_nms_thresh)
        data = _take(data, keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop"] = torch.full((len(keep),), crop_index, dtype=torch.int64)
        return data, grid

    def _decode_batch(self, points: np.ndarray, crop_size: tuple[int, int], crop_box: list[int]) -> Candidates:
        """Nx2 grid points (crop pixels) -> logits Kxhxw, iou K and points Kx2 of the candidates, unfiltered."""
        if self.is_sam2:
            return automatic_sam2.candidates(
                self.predictor, points, crop_size, multimask_output=self.multimask_output, use_m2m=self.use_m2m,
                object_score_thresh=self.object_score_thresh, min_region_area=self.min_mask_region_area,
                batch=DECODER_BATCH, pred_iou_thresh=self.pred_iou_thresh, screen=self.screen,
            )  # fmt: skip
        transformed = self.predictor.transform.apply_coords(points, crop_size)
        in_points = torch.as_tensor(transformed, device=self.predictor.device)
        logits, iou = self.predict_low_res(in_points, crop_box)
        return {
            "logits": logits.flatten(0, 1).float().cpu(),
            "iou": iou.flatten(0, 1).float().cpu(),
            "points": torch.as_tensor(points.repeat(logits.shape[1], axis=0)),
        }

    def _process_batch(
        self, points: np.ndarray, crop_size: tuple[int, int], crop_box: list[int], orig_size: tuple[int, int]
    ) -> tuple[Candidates, LowResMasks]:
        data = self._decode_batch(points, crop_size, crop_box)
        if self.pred_iou_thresh > 0.0:
            data = _take(data, data["iou"] > self.pred_iou_thresh)
        # Stability score: pixels above threshold + offset over pixels above threshold - offset at full
        # resolution, with Meta's int32 / int32 -> float32. A mask whose score cannot reach the threshold
        # even at the bounds of its counts (upper bound of the first over lower bound of the second) is
        # dropped before the exact counts; the small margin covers rounding of Meta's float32 score.
        t = self.mask_threshold
        thresholds = (t + self.stability_score_offset, t - self.stability_score_offset, t)
        grid = self._grid(tuple(data["logits"].shape[-2:]), crop_size)
        if self.stability_score_thresh > 0.0:
            lower, upper = grid.count_bounds(data["logits"], thresholds[:2])
            best = upper[:, 0] / lower[:, 1]  # inf or nan when the lower bound is 0: kept
            data = _take(data, ~(best < np.float32(self.stability_score_thresh) - 1e-6))
        counts, data["boxes"], data["dense"] = grid.stats(data["logits"], thresholds, box_index=2)
        data["stability"] = counts[:, 0].int() / counts[:, 1].int()
        if self.stability_score_thresh > 0.0:
            data = _take(data, data["stability"] >= self.stability_score_thresh)
        near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_size[1], orig_size[0]])
        return _take(data, ~near_edge), grid

    def _grid(self, low_size: tuple[int, int], crop_size: tuple[int, int]) -> LowResMasks:
        """The upsampling of this predictor's low-res logits to crop_size (cached: crops share sizes)."""
        img_size = None if self.is_sam2 else self.predictor.model.img_size  # SAM 2: straight to the crop size
        key = (low_size, img_size, self.predictor.input_size, crop_size)
        if key not in self._grids:
            self._grids[key] = LowResMasks(*key)
        return self._grids[key]

    def _masks(self, data: Candidates, grids: list, store: LogitStore) -> Iterator[np.ndarray]:
        """The candidates' masks at their crop's size, one at a time, in order (runs of one crop batched)."""
        t = self.mask_threshold
        crops = data["crop"].tolist()
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end] == crops[start] and end - start < MASK_BATCH:
                end += 1
            run = slice(start, end)
            for mask in grids[crops[start]].masks(store.get(data["slot"][run]), t, data["dense"][run]):
                yield mask.numpy()
            start = end

    def _records(
        self,
        data: Candidates,
        crop_boxes: list[list[int]],
        grids: list,
        orig_size: tuple[int, int],
        store: LogitStore,
        deadline: Deadline | None = None,
    ) -> list[dict]:
        """Upsample the surviving masks one at a time, remove small regions, encode, write records."""
        h, w = orig_size
        segmentations, areas, boxes, changed = [], [], data["boxes"].tolist(), []
        for i, mask in enumerate(self._masks(data, grids, store)):
            if deadline is not None:
                deadline.check(f"every point done and {i} of {len(boxes)} masks written")
            x0, y0, x1, y1 = crop_boxes[int(data["crop"][i])]
            if (x0, y0, x1, y1) != (0, 0, w, h):
                full = np.zeros((h, w), dtype=bool)
                full[y0:y1, x0:x1] = mask
                mask = full
            if self.min_mask_region_area > 0 and not self.is_sam2:  # SAM 2 did it on the low-res logits
                mask, holes = remove_small_regions(mask, self.min_mask_region_area, "holes")
                mask, islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
                changed.append(holes or islands)
                if changed[-1]:
                    boxes[i] = masks.inclusive_box(mask)
            areas.append(masks.area(mask))
            if self.output_mode == "binary_mask":
                segmentations.append(mask)
            elif self.output_mode == "uncompressed_rle":
                segmentations.append(masks.mask_to_rle(mask))
            else:
                segmentations.append(masks.encode_coco_rle(mask))
        order = list(range(len(segmentations)))
        if self.min_mask_region_area > 0 and order and not self.is_sam2:
            # As Meta: rerun NMS on the new boxes, preferring the masks that did not change.
            scores = torch.tensor([0.0 if c else 1.0 for c in changed])
            nms_thresh = max(self.box_nms_thresh, self.crop_nms_thresh)
            order = batched_nms(torch.tensor(boxes).float(), scores, torch.zeros(len(order)), nms_thresh).tolist()
        number = float if self.is_sam2 else int  # sam2's generator reports boxes as floats
        return [
            {
                "segmentation": segmentations[i],
                "area": areas[i],
                "bbox": [number(v) for v in box_xyxy_to_xywh(boxes[i])],
                "predicted_iou": data["iou"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability"][i].item(),
                "crop_box": [number(v) for v in box_xyxy_to_xywh(crop_boxes[int(data["crop"][i])])],
            }
            for i in order
        ]
