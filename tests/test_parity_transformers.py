"""Parity with transformers' SamModel, through the whole loading path.

A random SamModel is saved with save_pretrained, served by the loopback Hub under the real repo id and
file names, and loaded with `load_model(repo_id)`. Both models get the same preprocessed pixels and the
same prompts (in model-input pixels); image embeddings, low-res mask logits and IoU scores must agree to
RTOL = 1e-4 relative (L2 norm of the difference over the L2 norm of transformers' output).

Prompt conventions: transformers nests points as (images, objects, points, 2) and labels as (images,
objects, points); ours are (objects, points, 2) and (objects, points). Label -1 ("not a point", also
the padding point both add when there is no box) means the same in both. transformers' -10 label pads
ragged point lists with a zero token that still takes part in attention; Meta's model has no such
label, so it is not compared here.

One known difference in transformers' port: its two-way transformer's LayerNorms use eps 1e-6 (from
mask_decoder_config.layer_norm_eps) where Meta's use PyTorch's default 1e-5. The weights are the same and
this package follows Meta, so the test gives transformers' decoder Meta's eps (otherwise the logits differ
by about 1e-4 relative on these weights; `test_transformers_decoder_eps_is_the_only_difference`).
"""

import pytest
import torch

from sam import ImageEmbedding, SamPredictor
from sam.weights import load_model
from tests.helpers.reference import test_image

RTOL = 1e-4

# Prompts as fractions of the model input side, so they fit any img_size. Each entry: points (objects x
# points x 2), labels (objects x points), boxes (objects x 4), multimask.
CASES = {
    "one point": dict(points=[[[0.3, 0.2]]], labels=[[1]]),
    "points with negatives": dict(points=[[[0.3, 0.2], [0.1, 0.5], [0.6, 0.1], [0.5, 0.5]]], labels=[[1, 1, 0, 0]]),
    "ignored point": dict(points=[[[0.3, 0.2], [0.7, 0.4]]], labels=[[1, -1]]),
    "box": dict(boxes=[[0.05, 0.08, 0.7, 0.6]]),
    "box and points": dict(boxes=[[0.05, 0.08, 0.7, 0.6]], points=[[[0.3, 0.2], [0.4, 0.5]]], labels=[[1, 0]]),
    "three boxes": dict(boxes=[[0.0, 0.0, 0.5, 0.5], [0.2, 0.1, 0.9, 0.7], [0.6, 0.3, 0.7, 0.4]]),
    "two objects with points": dict(
        points=[[[0.3, 0.2], [0.2, 0.3]], [[0.6, 0.4], [0.1, 0.1]]], labels=[[1, 0], [1, 1]]
    ),
    "single mask": dict(points=[[[0.3, 0.2]]], labels=[[1]], multimask=False),
    "box single mask": dict(boxes=[[0.05, 0.08, 0.7, 0.6]], multimask=False),
}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-12))


@torch.no_grad()
def compare(local_hub, checkpoints, size: str, repo_id: str, meta_eps: bool = True) -> dict[str, float]:
    """Largest relative error of each output, over all CASES."""
    from transformers import SamModel

    folder = checkpoints.transformers(size)
    local_hub.add(repo_id, folder)
    ours = load_model(repo_id)
    hf = SamModel.from_pretrained(folder).eval()
    if meta_eps:
        for module in hf.mask_decoder.transformer.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = 1e-5

    predictor = SamPredictor(ours)
    image = test_image(480, 640)
    resized = torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)[None].float()
    pixels = ours.preprocess(resized)  # 1 x 3 x S x S, normalised and padded: fed to both models
    features, hf_features = ours.image_encoder(pixels), hf.get_image_embeddings(pixels)
    errors = {"embedding": rel_err(features, hf_features), "logits": 0.0, "scores": 0.0}
    predictor.set_embedding(ImageEmbedding(features, image.shape[:2], tuple(resized.shape[-2:])))

    side = ours.img_size
    for name, case in CASES.items():
        points = torch.tensor(case["points"]) * side if "points" in case else None
        labels = torch.tensor(case["labels"]) if "labels" in case else None
        boxes = torch.tensor(case["boxes"]) * side if "boxes" in case else None
        multimask = case.get("multimask", True)
        _, scores, low_res = predictor.predict_torch(points, labels, boxes, multimask_output=multimask)
        out = hf(
            image_embeddings=hf_features,
            input_points=points[None] if points is not None else None,
            input_labels=labels[None] if labels is not None else None,
            input_boxes=boxes[None] if boxes is not None else None,
            multimask_output=multimask,
        )
        assert low_res.shape[1] == (3 if multimask else 1), name
        errors["logits"] = max(errors["logits"], rel_err(low_res, out.pred_masks[0]))
        errors["scores"] = max(errors["scores"], rel_err(scores, out.iou_scores[0]))
    return errors


def test_tiny_config(local_hub, checkpoints):
    errors = compare(local_hub, checkpoints, "tiny", "facebook/sam-vit-base")
    assert max(errors.values()) < RTOL, errors


def test_transformers_decoder_eps_is_the_only_difference(local_hub, checkpoints):
    errors = compare(local_hub, checkpoints, "tiny", "facebook/sam-vit-base", meta_eps=False)
    assert errors["embedding"] < RTOL and 1e-5 < errors["logits"] < 1e-2, errors


@pytest.mark.slow
def test_slimsam_like_config(local_hub, checkpoints):
    """A pruned ViT-B as SlimSAM publishes it: widths (384 tokens, 1536 MLP) read from config.json.

    At 512 px the 32x32 token grid is not a multiple of the 14-token windows: padding is exercised too.
    """
    errors = compare(local_hub, checkpoints, "slim", "Zigeng/SlimSAM-uniform-50")
    assert max(errors.values()) < RTOL, errors


@pytest.mark.slow
def test_vit_b_full_size(local_hub, checkpoints):
    errors = compare(local_hub, checkpoints, "vit_b", "facebook/sam-vit-base")
    assert max(errors.values()) < RTOL, errors
