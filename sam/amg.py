"""Helpers of the automatic mask generator, with the semantics of Meta's `segment_anything/utils/amg.py`.

Point grids, crop boxes, XYXY boxes (x1, y1 inclusive pixel indices, as Meta's `batched_mask_to_box`),
a greedy NMS that equals torchvision's, small-region removal with OpenCV, and `LowResMasks`: the
upsampling of low-resolution logits to the image, evaluated only where a threshold decision needs it.
"""

import math
from collections.abc import Iterator
from functools import reduce
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n)x2 points (x, y) evenly spaced in [0, 1]^2, cell centres, row by row."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has int(n_per_side / scale_per_layer**i) points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (x0, y0, x1, y1) and their layer: the whole image, then (2**i)**2 overlapping crops in layer i."""
    crop_boxes, layer_idxs = [[0, 0, im_size[1], im_size[0]]], [0]
    im_h, im_w = im_size
    short_side = min(im_h, im_w)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """Nx4 boxes in a crop -> the same boxes in the image."""
    x0, y0 = crop_box[:2]
    return boxes + torch.tensor([[x0, y0, x0, y0]], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """Nx2 points in a crop -> the same points in the image."""
    x0, y0 = crop_box[:2]
    return points + torch.tensor([[x0, y0]], device=points.device)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """N bools: the box (in crop coordinates) lies within atol of a crop edge that is not an image edge."""
    crop_box_t = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_box_t = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop_edge = torch.isclose(boxes, crop_box_t[None, :], atol=atol, rtol=0)
    near_image_edge = torch.isclose(boxes, orig_box_t[None, :], atol=atol, rtol=0)
    return torch.any(near_crop_edge & ~near_image_edge, dim=1)


def box_xyxy_to_xywh(box: list[int]) -> list[int]:
    """(x0, y0, x1, y1) -> (x0, y0, x1 - x0, y1 - y0); with inclusive x1, y1 as Meta reports bboxes."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than area_thresh; returns (mask, changed).

    8-connected components, as Meta; if every island is small, the largest is kept.
    """
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working_mask = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working_mask, 8)
    sizes = stats[:, -1][1:]  # row 0 is the background label
    small_regions = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small_regions:
        return mask, False
    fill_labels = [0] + small_regions
    if not correct_holes:
        fill_labels = [i for i in range(n_labels) if i not in fill_labels]
        if not fill_labels:
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill_labels), True


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as torchvision.ops.nms on the CPU.

    boxes Nx4 (x0, y0, x1, y1), scores N. Boxes are visited by decreasing score (stable: ties in index
    order); a box is dropped when its IoU with a kept box is > iou_threshold. Returns the kept indices
    (int64) by decreasing score. IoU is computed in float32 like torchvision's, compared in float64.
    """
    n = len(boxes)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores, descending=True, stable=True).indices
    x0, y0, x1, y1 = boxes.float()[order].unbind(1)
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if i + 1 == n:
            break
        w = (torch.minimum(x1[i], x1[i + 1 :]) - torch.maximum(x0[i], x0[i + 1 :])).clamp_min(0)
        h = (torch.minimum(y1[i], y1[i + 1 :]) - torch.maximum(y0[i], y0[i + 1 :])).clamp_min(0)
        inter = w * h
        iou = inter / (areas[i] + areas[i + 1 :] - inter)
        suppressed[i + 1 :] |= (iou.double() > iou_threshold).numpy()
    return order[torch.tensor(keep, dtype=torch.int64)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category idxs; kept indices by decreasing score (ties in index order), as torchvision."""
    keep = torch.zeros(len(boxes), dtype=torch.bool)
    for category in torch.unique(idxs):
        members = torch.where(idxs == category)[0]
        keep[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep)[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


# Margin for the cell bounds: a cell value is a float64 convex combination of float32 logits, off from
# the exact combination by about 1e-16 of the largest logit, so 1e-6 covers logits up to 1e9.
_EPS = 1e-6


class _Axis:
    """One axis of `Sam.postprocess_masks`: low-res -> img_size (bilinear), keep `valid`, -> `out` (bilinear);
    with img_size None, low-res -> `out` in one bilinear step (`Sam2.postprocess_masks`).

    Every output pixel is a convex combination of a few consecutive low-res samples. Consecutive pixels
    that use the same samples form a band: band b covers output pixels [start, start + length) and
    samples `support[b]` (low-res indices, the last one repeated to a common width) with `weights[b]`
    (span x width, zero on repeats and past `length`).
    """

    def __init__(self, low: int, img_size: int | None, valid: int, out: int) -> None:
        # Interpolating the identity along one axis gives the out x low weight matrix of that axis.
        a = torch.eye(low, dtype=torch.float64).view(1, low, low, 1)
        if img_size is not None:
            a = F.interpolate(a, size=(img_size, 1), mode="bilinear", align_corners=False)[:, :, :valid]
        a = F.interpolate(a, size=(out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].T
        used = a != 0
        first = used.int().argmax(1)
        last = low - 1 - used.flip(1).int().argmax(1)
        new_band = torch.ones(out, dtype=torch.bool)
        new_band[1:] = (first[1:] != first[:-1]) | (last[1:] != last[:-1])
        self.start = torch.nonzero(new_band)[:, 0]
        self.length = torch.diff(self.start, append=torch.tensor([out]))
        self.band = torch.repeat_interleave(torch.arange(len(self.start)), self.length)  # band of each pixel
        first, last = first[self.start], last[self.start]
        j = torch.arange(int((last - first).max()) + 1)
        i = torch.arange(int(self.length.max()))
        self.support = torch.minimum(first[:, None] + j, last[:, None])  # bands x width
        self.valid = i[None, :] < self.length[:, None]  # bands x span
        self.pixels = (self.start[:, None] + i).clamp(max=out - 1)  # bands x span, output pixel index
        self.weights = a[self.pixels[:, :, None], self.support[:, None, :]]
        self.weights *= self.valid[:, :, None] & (j <= (last - first)[:, None])[:, None, :]
        # Window start of each band in the padded axis (padded index p holds sample clamp(p - pad)):
        # the band's support exactly when it is full width or clamped at the start, else from `first`.
        width, n_samples = len(j), last - first + 1
        self.window = torch.where(n_samples == width, first, torch.where(first == 0, n_samples - width, first))
        self.window += width - 1
        self.consecutive = bool((self.window.diff() == 1).all())

    def reduce(self, x: torch.Tensor, dim: int, largest: bool) -> torch.Tensor:
        """Max (or min) of x over each band's window along dim: low -> bands.

        A band's window is `width` consecutive samples of x padded by repeating its edge samples, chosen
        to cover the band's support (exactly, except for narrower bands inside the axis). The windows of
        all start positions come from shifted elementwise ops, several times cheaper than gathering
        every band's samples with index_select.
        """
        op, reduce = (torch.maximum, torch.amax) if largest else (torch.minimum, torch.amin)
        n, width = x.shape[dim], self.support.shape[1]
        pad = width - 1
        shape = list(x.shape)
        shape[dim] = n + pad
        out = x.new_empty(shape)
        inner = n - pad  # starts whose window holds no padding
        if inner > 0:
            mid = out.narrow(dim, pad, inner)
            if width == 1:
                mid.copy_(x)
            for j in range(1, width):
                op(mid if j > 1 else x.narrow(dim, 0, inner), x.narrow(dim, j, inner), out=mid)
        for p in [*range(min(pad, n + pad)), *range(max(pad, n), n + pad)]:
            lo, hi = max(p - pad, 0), min(p - pad + width, n)
            out.narrow(dim, p, 1).copy_(reduce(x.narrow(dim, lo, hi - lo), dim, keepdim=True))
        if self.consecutive:
            return out.narrow(dim, int(self.window[0]), len(self.window))
        return out.index_select(dim, self.window)


class LowResMasks:
    """`Sam.postprocess_masks(logits) > t` (pixel counts, boxes, masks), mostly without full-resolution logits.

    With img_size None, the logits go to original_size in one bilinear step (SAM 2; input_size is unused).

    Each output pixel is a convex combination (bilinear weights, two stages) of a few low-res samples,
    so its logit lies between their min and max. Pixels that use the same samples form a cell (a row
    band times a column band: 4x4 pixels for a 1024 model on a 1024-wide image). A cell whose min is
    above t lies wholly above t, one whose max is not above t wholly below; only the undecided cells
    in between (along the contours) are evaluated pixel by pixel. A mask with many undecided cells
    (noisy logits) is upsampled whole instead, with the ops of `Sam.postprocess_masks`. Counts, boxes
    and masks are those of the full-resolution logits, up to float rounding at pixels whose logit is
    within ~1e-6 of t.
    """

    dense_fraction = 0.05  # upsample a mask whole when more of its cells than this are undecided

    def __init__(
        self,
        low_size: tuple[int, int],
        img_size: int | None,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> None:
        self.rows = _Axis(low_size[0], img_size, input_size[0], original_size[0])
        self.cols = _Axis(low_size[1], img_size, input_size[1], original_size[1])
        self.img_size, self.input_size, self.size = img_size, tuple(input_size), tuple(original_size)
        self.chunk = max(1, 2**20 // (self.rows.valid.shape[1] * self.cols.valid.shape[1]))
        self.dense_chunk = max(1, 2**24 // ((img_size or 0) ** 2 + self.size[0] * self.size[1]))

    def upsample(self, logits: torch.Tensor) -> torch.Tensor:
        """Kxhxw -> KxHxW logits, as `Sam.postprocess_masks` (`Sam2.postprocess_masks` without img_size)."""
        if self.img_size is None:
            return F.interpolate(logits[:, None], self.size, mode="bilinear", align_corners=False)[:, 0]
        x = F.interpolate(logits[:, None], (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = x[..., : self.input_size[0], : self.input_size[1]]
        if tuple(x.shape[-2:]) == self.size:  # resizing to the same size copies every value exactly
            return x[:, 0]
        return F.interpolate(x, self.size, mode="bilinear", align_corners=False)[:, 0]

    def bounds(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kxhxw logits -> min and max over each cell's samples, KxUxV (U row bands, V column bands)."""
        hi = self.cols.reduce(self.rows.reduce(logits, 1, True), 2, True)
        lo = self.cols.reduce(self.rows.reduce(logits, 1, False), 2, False)
        return lo, hi

    def levels(self, logits: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kxhxw logits, T ascending thresholds -> (low, high) KxUxV int32: the number of thresholds each
        cell lies wholly above, and may lie above. A cell is undecided for thresholds[i] when low <= i < high.
        """
        lo, hi = self.bounds(logits)
        t = thresholds.to(lo.dtype)
        return torch.bucketize(lo, t + _EPS, out_int32=True), torch.bucketize(hi, t - _EPS, out_int32=True)

    def _area_above(self, level: torch.Tensor, n: int) -> torch.Tensor:
        """KxUxV levels in 0..n -> Kxn float64: pixels in cells of level > i, for each i."""
        weight = (self.rows.length[:, None] * self.cols.length[None, :]).flatten().double()
        hist = torch.zeros(len(level), n + 1, dtype=torch.float64)
        hist.scatter_add_(1, level.flatten(1).long(), weight.expand(len(level), -1))
        return hist.flip(1).cumsum(1).flip(1)[:, 1:]

    def count_bounds(self, logits: torch.Tensor, thresholds: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Kxhxw logits -> lower and upper bounds (Kxlen(thresholds), float64) of the pixel counts > t."""
        t, order = torch.sort(torch.tensor(thresholds, dtype=torch.float64))
        low, high = self.levels(logits.float(), t)
        rank = torch.argsort(order)
        return self._area_above(low, len(t))[:, rank], self._area_above(high, len(t))[:, rank]

    def evaluate(self, logits: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Logits of cells (mask k, row band u, column band v): A x span_rows x span_cols, float64.

        Written as explicit sums (not bmm) so a cell's values do not depend on which cells share the call.
        """
        rows, cols = self.rows, self.cols
        patch = logits[k[:, None, None], rows.support[u][:, :, None], cols.support[v][:, None, :]].double()
        wr, wc = rows.weights[u], cols.weights[v]  # A x span x width
        tmp = sum(wr[:, :, p, None] * patch[:, None, p, :] for p in range(wr.shape[2]))  # A x span_r x width_c
        return sum(tmp[:, :, None, q] * wc[:, None, :, q] for q in range(wc.shape[2]))

    def _cell_pixels(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row index A x span_r x 1, column index A x 1 x span_c and validity A x span_r x span_c of cells."""
        valid = self.rows.valid[u][:, :, None] & self.cols.valid[v][:, None, :]
        return self.rows.pixels[u][:, :, None], self.cols.pixels[v][:, None, :], valid

    def _is_dense(self, undecided: torch.Tensor) -> torch.Tensor:
        """KxUxV undecided cells -> K bools: upsample the mask whole rather than cell by cell."""
        return undecided.flatten(1).sum(1) > self.dense_fraction * undecided.shape[1] * undecided.shape[2]

    def stats(
        self, logits: torch.Tensor, thresholds: tuple[float, ...], box_index: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kxhxw logits -> Kxlen(thresholds) int64 counts of pixels > t, Kx4 int64 boxes of the pixels
        > thresholds[box_index] ((x0, y0, x1, y1) inclusive, zeros when empty: Meta's convention) and
        K bools: the mask was upsampled whole (pass it to `mask` for a mask that matches the box).
        """
        logits = logits.float()
        t, order = torch.sort(torch.tensor(thresholds, dtype=torch.float64))
        rank = torch.argsort(order)
        low, high = self.levels(logits, t)
        undecided = high > low
        dense = self._is_dense(undecided)
        counts = torch.zeros(len(logits), len(t), dtype=torch.int64)
        boxes = torch.zeros(len(logits), 4, dtype=torch.int64)
        for index in torch.nonzero(dense)[:, 0].split(self.dense_chunk):
            full = self.upsample(logits[index])
            counts[index] = torch.stack([(full > t).sum((1, 2), dtype=torch.int32) for t in thresholds], 1).long()
            inside = full > thresholds[box_index]
            boxes[index] = _boxes(inside.any(1), inside.any(2))
        sparse = torch.nonzero(~dense)[:, 0]
        if len(sparse):
            sub_counts, boxes[sparse] = self._stats_cells(
                logits[sparse], low[sparse], high[sparse], t, int(rank[box_index])
            )
            counts[sparse] = sub_counts[:, rank]
        return counts, boxes, dense

    def _stats_cells(
        self, logits: torch.Tensor, low: torch.Tensor, high: torch.Tensor, t: torch.Tensor, box_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts (in the order of the ascending thresholds t) and boxes, by cells."""
        big = max(self.size) + 1
        counts = self._area_above(low, len(t))
        y0, y1 = self._extent(low.amax(2) > box_index, self.rows, big)
        x0, x1 = self._extent(low.amax(1) > box_index, self.cols, big)
        levels = torch.arange(len(t))
        for k, u, v in (c.unbind(1) for c in (high > low).nonzero().split(self.chunk)):
            rr, cc, valid = self._cell_pixels(u, v)
            undecided = (low[k, u, v][:, None] <= levels) & (high[k, u, v][:, None] > levels)  # A x T
            inside = self.evaluate(logits, k, u, v)[..., None] > t  # A x span_r x span_c x T
            inside &= valid[..., None] & undecided[:, None, None, :]
            counts.index_add_(0, k, inside.flatten(1, 2).sum(1, dtype=torch.float64))
            # Extents of each cell's inside pixels, reduced with elementwise ops over the few rows/columns.
            pos = inside[..., box_index]
            r_any, c_any = reduce(torch.logical_or, pos.unbind(2)), reduce(torch.logical_or, pos.unbind(1))
            rows, cols = rr[:, :, 0].unbind(1), cc[:, 0, :].unbind(1)
            for ext, hit, pix, op, none in (
                (y0, r_any, rows, torch.minimum, big),
                (y1, r_any, rows, torch.maximum, -1),
                (x0, c_any, cols, torch.minimum, big),
                (x1, c_any, cols, torch.maximum, -1),
            ):
                cell_ext = reduce(op, [torch.where(h, p, none) for h, p in zip(hit.unbind(1), pix)])
                ext.scatter_reduce_(0, k, cell_ext, "amin" if op is torch.minimum else "amax")
        boxes = torch.stack([x0, y0, x1, y1], 1)
        return counts.round().long(), torch.where((x1 >= 0)[:, None], boxes, 0)

    @staticmethod
    def _extent(bands_in: torch.Tensor, axis: _Axis, big: int) -> tuple[torch.Tensor, torch.Tensor]:
        """KxU bools (band wholly inside) -> first and last pixel covered (big / -1 if none)."""
        first = torch.where(bands_in, axis.start, big).amin(1)
        last = torch.where(bands_in, axis.start + axis.length - 1, -1).amax(1)
        return first, last

    def masks(self, logits: torch.Tensor, threshold: float, dense: torch.Tensor) -> Iterator[torch.Tensor]:
        """Kxhxw logits -> K HxW bool masks, one at a time: the pixels whose upsampled logit is > threshold.

        dense: K bools from `stats`, upsample the mask whole (as stats did), else by cells.
        """
        logits = logits.float()
        low, high = self.levels(logits, torch.tensor([threshold]))
        for i in range(len(logits)):
            if dense[i]:
                yield self.upsample(logits[i : i + 1])[0] > threshold
                continue
            above, undecided = low[i] > 0, high[i] > low[i]
            if not high[i].any():  # no pixel can be above the threshold
                yield torch.zeros(self.size, dtype=torch.bool)
                continue
            out = above.index_select(0, self.rows.band).index_select(1, self.cols.band)
            for u, v in (c.unbind(1) for c in undecided.nonzero().split(self.chunk)):
                values = self.evaluate(logits, torch.full_like(u, i), u, v)
                rr, cc, valid = self._cell_pixels(u, v)
                rr, cc = torch.broadcast_tensors(rr, cc)
                out[rr[valid], cc[valid]] = values[valid] > threshold
            yield out


def _boxes(cols_in: torch.Tensor, rows_in: torch.Tensor) -> torch.Tensor:
    """KxW and KxH bools (column / row holds a pixel of the mask) -> Kx4 inclusive boxes, zeros when empty."""

    def first_last(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(x.shape[1])
        return torch.where(x, idx, x.shape[1]).amin(1), torch.where(x, idx, -1).amax(1)

    (x0, x1), (y0, y1) = first_last(cols_in), first_last(rows_in)
    return torch.where((x1 >= 0)[:, None], torch.stack([x0, y0, x1, y1], 1), 0)
