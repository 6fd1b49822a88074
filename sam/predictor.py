"""SamPredictor: embed an image once, then answer many prompts (a drop-in for Meta's predictor).

Given a SAM 2 model it answers as Meta's `SAM2ImagePredictor` does, behind the same calls: the image is
resized to the square input (points and boxes scale by S/W and S/H), a box goes in as two corner points,
a single-mask request may fall back to the best multimask output when its mask is unstable, and the
low-res logits it returns are clamped to [-32, 32]. Masks are bool for both families (Meta's SAM 2
predictor returns them as 0/1 floats).
"""

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .modeling.common import Stamp, same_stamp, stamp
from .modeling.mask_decoder import ImageRows, MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.sam import Sam
from .modeling.sam2 import Sam2
from .prompts import as_tensors
from .transforms import ResizeLongestSide, ResizeSquare


@dataclass(frozen=True)
class ImageEmbedding:
    """What a predictor needs to answer prompts about one image, without the model.

    A web session keeps this and hands it back to a shared predictor with `set_embedding`.
    """

    features: torch.Tensor  # 1 x C x h x w image embedding
    original_size: tuple[int, int]  # (H, W) of the image the user gave
    input_size: tuple[int, int]  # (H', W') of the model input: the long side resized (SAM), S x S (SAM 2)
    high_res_features: tuple[torch.Tensor, ...] = ()  # SAM 2: 1 x C/8 x 4h x 4w and 1 x C/4 x 2h x 2w

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.features, *self.high_res_features))


RECENT_ROWS = 4  # images whose decoder image side is kept (about 15 MB each for ViT-B)
_recent_rows: "OrderedDict[int, tuple[weakref.ref, Stamp, ImageRows]]" = OrderedDict()
_recent_lock = threading.Lock()


class SamPredictor:
    def __init__(self, sam_model: Sam | Sam2) -> None:
        self.model = sam_model
        resize = ResizeLongestSide if sam_model.keeps_aspect_ratio else ResizeSquare
        self.transform = resize(sam_model.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an HxWx3 uint8 image."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"the image is empty: {image.shape[1]}x{image.shape[0]} pixels")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        input_image = self.transform.apply_image(np.ascontiguousarray(image))
        if not input_image.flags.writeable:  # SAM 2's transform hands the caller's array over, maybe read-only
            input_image = input_image.copy()
        input_torch = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(input_torch, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """1x3xH'xW' image as `transform.apply_image` gives it: the long side resized to the input (SAM),
        or any size (SAM 2 resizes it to the square input itself)."""
        shape = tuple(transformed_image.shape)
        if transformed_image.ndim != 4 or shape[1] != 3 or min(shape[2:]) < 1:
            raise ValueError(f"expected a 1x3xHxW tensor, got shape {shape}")
        keeps_aspect = self.model.keeps_aspect_ratio
        if keeps_aspect and max(shape[2:]) != self.model.img_size:
            raise ValueError(f"the long side must be {self.model.img_size}, got {shape}")
        self.reset_image()
        x = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        features = self.model.encode(x)
        features, high_res = features if isinstance(features, tuple) else (features, ())
        self.set_embedding(
            ImageEmbedding(
                features=features,
                original_size=(int(original_image_size[0]), int(original_image_size[1])),
                input_size=(int(shape[2]), int(shape[3])) if keeps_aspect else (self.model.img_size,) * 2,
                high_res_features=tuple(high_res),
            )
        )

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Answer prompts about an image embedded earlier, with no encoder run."""
        if isinstance(self.model, Sam2) != bool(embedding.high_res_features):
            made, needs = ("SAM 2", "SAM") if embedding.high_res_features else ("SAM", "SAM 2")
            raise ValueError(f"this embedding was made by a {made} model; a {needs} model cannot use it")
        self.embedding = embedding
        self.features = embedding.features
        self.high_res_features = embedding.high_res_features
        self.original_size = embedding.original_size
        self.input_size = embedding.input_size
        self.is_image_set = True

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one object from prompts in original-image pixels.

        point_coords Nx2 (x, y), point_labels N (1 foreground, 0 background), box 4 (x0, y0, x1, y1),
        mask_input 1x256x256 low-res logits from an earlier call. Returns masks CxHxW (bool, or float
        logits with return_logits), scores C and low-res logits Cx256x256, C = 3 with multimask_output else 1.
        One object per call: several boxes (one mask each) go through `predict_torch`.
        """
        self._require_image()
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            point_coords = np.asarray(point_coords, dtype=float).reshape(1, -1, 2)
            point_labels = np.asarray(point_labels).reshape(1, -1)
            if point_labels.shape[1] != point_coords.shape[1]:
                raise ValueError(f"{point_coords.shape[1]} points but {point_labels.shape[1]} labels")
        if box is not None:
            box = np.asarray(box, dtype=float)
            if box.size != 4:
                raise ValueError(
                    f"predict takes one box [x0, y0, x1, y1], got {box.size / 4:g} boxes' worth of numbers: for one "
                    "mask per box, pass them to predict_torch (after predictor.transform.apply_boxes_torch)"
                )
            box = box.reshape(1, 4)
        points_t, box_t, mask_t = as_tensors(
            self.transform, self.original_size, point_coords, point_labels, box, mask_input, self.device
        )
        coords_t, labels_t = points_t if points_t is not None else (None, None)
        masks, scores, low_res = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output=multimask_output, return_logits=return_logits
        )
        return masks[0].cpu().numpy(), scores[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in model-input pixels (see `transform`).

        point_coords BxNx2, point_labels BxN, boxes Bx4, mask_input Bx1x256x256 ->
        masks BxCxHxW, scores BxC, low-res logits BxCx256x256 (SAM 2: clamped to [-32, 32], as Meta's).
        """
        self._require_image()
        points = (point_coords, point_labels) if point_coords is not None else None
        low_res, scores = self.decode(points, boxes, mask_input, multimask_output)
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        if isinstance(self.model, Sam2):
            low_res = low_res.clamp(-32.0, 32.0)  # after the masks, which come from the unclamped logits
        return masks, scores, low_res

    def decode(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder: low-res logits BxCx256x256 and scores BxC.

        With min_iou, prompts whose scores are all <= min_iou get -inf logits instead of computed masks.
        SAM 2's object scores: `model.decode`.
        """
        pe = self.model.prompt_encoder
        ours = isinstance(self.model.mask_decoder, MaskDecoder) and isinstance(pe, PromptEncoder)
        fast = ours and not torch.is_grad_enabled()  # the image side kept from earlier decodes (image_rows)
        rows = self.image_rows() if fast and mask_input is None else None
        if fast and mask_input is not None and (points is not None or boxes is not None):
            mask16 = pe.mask_downscaling[:-1](mask_input)
            rows = self.model.mask_decoder.rows_with_mask(
                self.image_rows(), mask16, pe.mask_downscaling[-1], pe.no_mask_embed.weight
            )
            mask_input = None  # folded into the rows: no dense embedding to make
        if isinstance(self.model, Sam2):
            coords, labels = points if points is not None else (None, None)
            low_res, scores, _ = self.model.decode(
                self.features,
                self.high_res_features,
                point_coords=coords,
                point_labels=labels,
                boxes=boxes,
                mask_input=mask_input,
                multimask_output=multimask_output,
                min_iou=min_iou,
                rows=rows,
            )
            return low_res, scores
        sparse, dense = pe(points=points, boxes=boxes, masks=mask_input)
        return self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=pe.get_dense_pe() if rows is None else None,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            min_iou=min_iou,
            rows=rows,
        )

    @torch.no_grad()
    def image_rows(self) -> ImageRows:
        """The decoder's image side of the current image before any prompt (see `ImageRows`), made at the
        first decode without a mask input. Kept with the embedding for the RECENT_ROWS embeddings used last,
        by every predictor of the process (the app makes a predictor per request), while the weights it
        comes from stay as they were."""
        decoder, pe = self.model.mask_decoder, self.model.prompt_encoder
        weights = stamp(decoder.transformer.layers[0], pe)  # what the rows are made from
        features = self.features
        with _recent_lock:
            kept = _recent_rows.get(id(features))
            if kept is not None and kept[0]() is features and same_stamp(kept[1], weights):
                _recent_rows.move_to_end(id(features))
                return kept[2]
        rows = decoder.image_rows(features, pe.get_dense_pe(), pe.no_mask_embed.weight)
        with _recent_lock:
            _recent_rows[id(features)] = (weakref.ref(features), weights, rows)
            _recent_rows.move_to_end(id(features))
            while len(_recent_rows) > RECENT_ROWS:
                _recent_rows.popitem(last=False)
        return rows

    def get_image_embedding(self) -> torch.Tensor:
        """The 1xCx64x64 embedding of the current image."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.embedding: ImageEmbedding | None = None
        self.features: torch.Tensor | None = None
        self.high_res_features: tuple[torch.Tensor, ...] = ()
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image() (or set_embedding()) first")
