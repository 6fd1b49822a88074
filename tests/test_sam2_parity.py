"""Parity with Meta's `sam2` package (SAM 2.1, images): same random weights, same image, same prompts, same
numbers in fp32.

Embeddings (every level), low-res logits, IoU scores and object-score logits agree to RTOL = 1e-4 relative
(L2); masks are equal except at pixels whose reference logit lies within MASK_TOL of 0. Meta's side is
`SAM2ImagePredictor` (set_image + predict); ours is `predict` below on the Sam2 module.
"""

import inspect
from dataclasses import asdict

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sam2.modeling.backbones.hieradet import Hiera as MetaHiera

from sam.build_sam2 import CONFIGS, TINY, build_sam2, drop_video_keys
from sam.modeling.sam2 import Sam2
from tests.helpers.reference import MASK_TOL, PROMPTS, RTOL, rel_err, test_image
from tests.helpers.sam2_reference import YAMLS, meta_features, meta_predict, meta_predictor, meta_yaml, twin_sam2


class Ours:
    """set_image + predict with Meta's conventions, on our Sam2 (the minimal predictor of these tests)."""

    def __init__(self, model: Sam2) -> None:
        self.model = model

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """HxWx3 uint8 RGB."""
        self.orig_hw = image.shape[:2]
        x = torch.as_tensor(image).permute(2, 0, 1)[None].float()
        self.embedding, self.high_res = self.model.encode(self.model.preprocess(x))

    def _to_input(self, coords: np.ndarray) -> torch.Tensor:
        """...x2 (x, y) original pixels -> model-input pixels, as Meta's SAM2Transforms does."""
        h, w = self.orig_hw
        return torch.as_tensor(coords, dtype=torch.float) / torch.tensor([w, h]) * self.model.img_size

    @torch.no_grad()
    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        """Returns masks (B)xCxHxW, IoU scores (B)xC, low-res logits (B)xCxhxw, object scores (B)x1."""
        coords = labels = boxes = mask = None
        if point_coords is not None:
            coords = self._to_input(point_coords)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            boxes = self._to_input(np.asarray(box).reshape(-1, 2, 2)).reshape(-1, 4)
        if mask_input is not None:
            mask = torch.as_tensor(mask_input, dtype=torch.float)
            mask = mask[None] if mask.ndim == 3 else mask
        low, iou, obj = self.model.decode(
            self.embedding,
            self.high_res,
            point_coords=coords,
            point_labels=labels,
            boxes=boxes,
            mask_input=mask,
            multimask_output=multimask_output,
        )
        masks = self.model.postprocess_masks(low, self.model.img_size, self.orig_hw) > self.model.mask_threshold
        out = masks, iou, low.clamp(-32.0, 32.0), obj
        return tuple(t.squeeze(0).numpy() for t in out)


def assert_same(ref_out: tuple, our_out: tuple) -> None:
    ref_masks, ref_scores, ref_low, ref_obj, ref_logits = ref_out
    masks, scores, low, obj = our_out
    assert set(np.unique(ref_masks)) <= {0.0, 1.0}  # Meta's SAM 2 predictor returns masks as 0/1 floats
    ref_masks = ref_masks.astype(bool)
    assert masks.shape == ref_masks.shape and masks.dtype == bool
    assert scores.shape == ref_scores.shape and low.shape == ref_low.shape and obj.shape == ref_obj.shape
    assert rel_err(scores, ref_scores) < RTOL
    assert rel_err(low, ref_low) < RTOL
    assert rel_err(obj, ref_obj) < RTOL
    decided = np.abs(ref_logits) > MASK_TOL
    assert decided.mean() > 0.99
    assert np.array_equal(masks[decided], ref_masks[decided])


@pytest.fixture(scope="module")
def tiny_pair():
    ref, ours = twin_sam2(TINY, seed=1)
    image = test_image(300, 200)
    meta, pred = meta_predictor(ref), Ours(ours)
    meta.set_image(image)
    pred.set_image(image)
    return meta, pred


def test_every_level_matches(tiny_pair):
    meta, pred = tiny_pair
    s = TINY.img_size
    assert pred.embedding.shape == meta._features["image_embed"].shape == (1, TINY.hidden_dim, s // 16, s // 16)
    assert rel_err(pred.embedding, meta._features["image_embed"]) < RTOL
    for ours, ref in zip(pred.high_res, meta._features["high_res_feats"], strict=True):
        assert ours.shape == ref.shape
        assert rel_err(ours, ref) < RTOL
    image = torch.as_tensor(test_image(300, 200)).permute(2, 0, 1)[None].float()
    x = pred.model.preprocess(image)
    assert rel_err(x, meta._transforms(test_image(300, 200))[None]) < RTOL
    with torch.no_grad():
        levels = pred.model.image_encoder(x)
    for ours, ref in zip(levels, meta_features(meta.model, x), strict=True):
        assert ours.shape == ref.shape
        assert rel_err(ours, ref) < RTOL


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompts_match(tiny_pair, name):
    meta, pred = tiny_pair
    prompt = PROMPTS[name]
    assert_same(meta_predict(meta, **prompt), pred.predict(**prompt))


@pytest.mark.parametrize("multimask_output", [True, False])
def test_mask_input_matches(tiny_pair, multimask_output):
    """A previous answer's low-res logits as the mask prompt, with and without a point."""
    meta, pred = tiny_pair
    _, scores, low = meta.predict(**PROMPTS["one point"])
    mask_input = low[np.argmax(scores)][None]
    for prompt in ({}, PROMPTS["one point"]):
        prompt = {**prompt, "mask_input": mask_input, "multimask_output": multimask_output}
        assert_same(meta_predict(meta, **prompt), pred.predict(**prompt))


@pytest.mark.parametrize("with_points", [False, True])
def test_batched_boxes_match(tiny_pair, with_points):
    meta, pred = tiny_pair
    prompt = {"box": np.array([[20, 30, 170, 260], [0, 0, 100, 100], [50, 150, 199, 299]])}
    if with_points:
        prompt |= {"point_coords": np.array([[[100, 100]], [[30, 40]], [[120, 200]]]), "point_labels": [[1], [0], [1]]}
    for multimask_output in (True, False):
        ref_out = meta_predict(meta, **prompt, multimask_output=multimask_output)
        our_out = pred.predict(**prompt, multimask_output=multimask_output)
        assert our_out[0].shape[:2] == (3, 3 if multimask_output else 1)
        assert_same(ref_out, our_out)


@pytest.mark.parametrize("thresh", [0.0, 1.01])
def test_single_mask_fallback_matches(tiny_pair, thresh):
    """The single-mask answer both when it is kept (threshold 0) and when the best multimask output
    replaces it (threshold above any stability score): several prompts at once, so prompts whose best
    multimask output differs are covered."""
    meta, pred = tiny_pair
    decoders = (meta.model.sam_mask_decoder, pred.model.sam_mask_decoder)
    for decoder in decoders:
        decoder.dynamic_multimask_stability_thresh = thresh
    try:
        prompt = {"point_coords": np.array([[[120, 80]], [[40, 250]], [[150, 20]], [[10, 290]]])}
        prompt |= {"point_labels": np.ones((4, 1)), "multimask_output": False}
        ref_out, our_out = meta_predict(meta, **prompt), pred.predict(**prompt)
        assert_same(ref_out, our_out)
        _, multi_scores, _ = meta.predict(**{**prompt, "multimask_output": True})
        if thresh > 1:
            assert np.allclose(our_out[1][:, 0], multi_scores.max(1))
        else:
            assert not np.allclose(our_out[1][:, 0], multi_scores.max(1))
    finally:
        for decoder in decoders:
            decoder.dynamic_multimask_stability_thresh = TINY.dynamic_multimask_stability_thresh


@pytest.mark.parametrize("name", list(CONFIGS))
def test_configs_are_metas(name):
    """Our configs hold the values of Meta's SAM 2.1 YAML files (or of its Hiera's defaults where a file
    leaves a value out), and SAM 2.0's files agree with 2.1's on everything an image model uses."""
    meta = meta_yaml(YAMLS[name])
    trunk, neck = meta.image_encoder.trunk, meta.image_encoder.neck
    defaults = inspect.signature(MetaHiera).parameters
    for key, ours in asdict(CONFIGS[name].encoder).items():
        assert ours == tuple_of(trunk.get(key, defaults[key].default)), key
    config = CONFIGS[name]
    assert config.hidden_dim == neck.d_model and config.fpn_top_down_levels == tuple(neck.fpn_top_down_levels)
    assert config.scalp == meta.image_encoder.scalp and config.img_size == meta.image_size
    with torch.device("meta"):  # shapes only, no memory
        assert build_sam2(config).image_encoder.trunk.channel_list == list(neck.backbone_channel_list)
    v2 = meta_yaml(YAMLS[name].replace("sam2.1", "sam2"))
    assert v2.image_encoder == meta.image_encoder
    for key in ("image_size", "use_high_res_features_in_sam", "directly_add_no_mem_embed", "pred_obj_scores"):
        assert v2[key] == meta[key], key
    assert meta.pred_obj_scores_mlp and meta.iou_prediction_use_sigmoid and meta.use_high_res_features_in_sam


def tuple_of(value):
    """A YAML list (or a default) as the tuple our frozen configs hold."""
    return tuple(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else value


def test_video_keys_are_all_that_is_dropped():
    """Meta's full state dict loads strictly into ours once the video-only entries are gone, and every
    dropped entry belongs to a module our image model does not have."""
    ref, ours = twin_sam2(TINY, seed=3)
    kept = drop_video_keys(ref.state_dict())
    assert set(kept) == set(ours.state_dict())
    dropped = set(ref.state_dict()) - set(kept)
    assert dropped and all(k.split(".")[0] not in dict(ours.named_children()) for k in dropped)


@pytest.mark.slow
def test_hiera_tiny_full_size():
    """Hiera-T at 1024 px: embeddings and a box + point prediction."""
    ref, ours = twin_sam2(CONFIGS["hiera_tiny"], seed=4)
    n_ours = sum(v.numel() for v in ours.state_dict().values())
    assert n_ours == sum(v.numel() for v in drop_video_keys(ref.state_dict()).values())
    image = test_image(480, 640)
    meta, pred = meta_predictor(ref), Ours(ours)
    meta.set_image(image)
    pred.set_image(image)
    assert pred.embedding.shape == (1, 256, 64, 64)
    assert rel_err(pred.embedding, meta._features["image_embed"]) < RTOL
    for a, b in zip(pred.high_res, meta._features["high_res_feats"], strict=True):
        assert rel_err(a, b) < RTOL
    prompt = {"box": np.array([100, 80, 500, 400]), "point_coords": np.array([[300, 200]]), "point_labels": [1]}
    assert_same(meta_predict(meta, **prompt), pred.predict(**prompt))
