"""SamPredictor given a SAM 2 model answers as Meta's `SAM2ImagePredictor`, through the calls SAM's predictor
has (set_image, predict, predict_torch, set_embedding): same random weights, same image, same prompts ->
the same scores and low-res logits to RTOL = 1e-4 relative in fp32, and the same masks except where the
reference logit lies within MASK_TOL of 0. Then the input checks both families share.
"""

import warnings
from unittest.mock import patch

import numpy as np
import pytest
import torch

from sam import ImageEmbedding, SamPredictor
from sam.build_sam2 import TINY, build_sam2
from tests.helpers.reference import MASK_TOL, PROMPTS, RTOL, rel_err, test_image, twin_models
from tests.helpers.reference import TINY as SAM_TINY
from tests.helpers.sam2_reference import meta_predictor, twin_sam2

IMAGE = test_image(300, 200)  # H x W: the PROMPTS lie on it


@pytest.fixture(scope="module")
def pair():
    ref, model = twin_sam2(TINY, seed=1)
    meta, ours = meta_predictor(ref), SamPredictor(model)
    meta.set_image(IMAGE)
    ours.set_image(IMAGE)
    return meta, ours


def assert_same(meta, ours, prompt: dict) -> None:
    """predict and predict with return_logits: Meta's and ours."""
    ref_masks, ref_scores, ref_low = meta.predict(**prompt)
    ref_logits, _, _ = meta.predict(**prompt, return_logits=True)
    masks, scores, low = ours.predict(**prompt)
    logits, _, _ = ours.predict(**prompt, return_logits=True)
    assert masks.dtype == bool and set(np.unique(ref_masks)) <= {0.0, 1.0}  # Meta's are 0/1 floats
    assert masks.shape == ref_masks.shape and scores.shape == ref_scores.shape and low.shape == ref_low.shape
    assert rel_err(scores, ref_scores) < RTOL and rel_err(low, ref_low) < RTOL and rel_err(logits, ref_logits) < RTOL
    assert np.abs(low).max() <= 32 and np.abs(ref_low).max() <= 32  # the low-res logits come clamped
    decided = np.abs(ref_logits) > MASK_TOL
    assert decided.mean() > 0.99
    assert np.array_equal(masks[decided], ref_masks.astype(bool)[decided])


def test_embedding_matches(pair):
    meta, ours = pair
    embedding = ours.embedding
    assert embedding.input_size == (TINY.img_size, TINY.img_size) and embedding.original_size == (300, 200)
    assert rel_err(ours.get_image_embedding(), meta.get_image_embedding()) < RTOL
    for a, b in zip(embedding.high_res_features, meta._features["high_res_feats"], strict=True):
        assert a.shape == b.shape and rel_err(a, b) < RTOL
    assert embedding.nbytes == 4 * sum(t.numel() for t in (embedding.features, *embedding.high_res_features))


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompts_match(pair, name):
    assert_same(*pair, PROMPTS[name])


@pytest.mark.parametrize("multimask_output", [True, False])
def test_mask_input_matches(pair, multimask_output):
    """A previous answer's low-res logits (clamped, as both return them) as the mask prompt."""
    meta, ours = pair
    _, scores, low = ours.predict(**PROMPTS["one point"])
    mask_input = low[np.argmax(scores)][None]
    for prompt in ({}, PROMPTS["one point"]):
        assert_same(meta, ours, {**prompt, "mask_input": mask_input, "multimask_output": multimask_output})


@pytest.mark.parametrize("multimask_output", [True, False])
def test_batched_boxes_through_predict_torch(pair, multimask_output):
    """One mask per box, boxes and points in model-input pixels from predictor.transform."""
    meta, ours = pair
    boxes = np.array([[20, 30, 170, 260], [0, 0, 100, 100], [50, 150, 199, 299]])
    points, labels = np.array([[[100, 100]], [[30, 40]], [[120, 200]]]), np.array([[1], [0], [1]])
    ref_masks, ref_scores, ref_low = meta.predict(
        point_coords=points, point_labels=labels, box=boxes, multimask_output=multimask_output
    )
    transform = ours.transform
    masks, scores, low = ours.predict_torch(
        torch.as_tensor(transform.apply_coords(points, IMAGE.shape[:2]), dtype=torch.float),
        torch.as_tensor(labels),
        transform.apply_boxes_torch(torch.as_tensor(boxes), IMAGE.shape[:2]),
        multimask_output=multimask_output,
    )
    assert masks.shape == (3, 3 if multimask_output else 1, 300, 200) and masks.dtype == torch.bool
    assert rel_err(scores, ref_scores) < RTOL and rel_err(low, ref_low) < RTOL
    assert (masks.numpy() != ref_masks.astype(bool)).mean() < 1e-3


def test_decodes_without_a_mask_input_use_the_image_rows(pair):
    """SAM 2's decoder also runs its first layer from the per-image rows: the same low-res logits and scores as
    without them, and the predictor passes them for prompts without a mask input only."""
    _, ours = pair
    model = ours.model
    points = torch.tensor([[[120.0, 80.0], [300.0, 700.0]]]), torch.tensor([[1, 0]])
    prompt = dict(point_coords=points[0], point_labels=points[1])
    with torch.no_grad():
        plain = model.decode(ours.features, ours.high_res_features, **prompt)
        fast = model.decode(ours.features, ours.high_res_features, **prompt, rows=ours.image_rows())
    for a, f in zip(plain, fast, strict=True):
        torch.testing.assert_close(f, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
    mask = torch.randn(1, 1, *plain[0].shape[-2:], generator=torch.Generator().manual_seed(0)) * 4
    with torch.no_grad():
        plain_masked = model.decode(ours.features, ours.high_res_features, **prompt, mask_input=mask)
        low_masked, scores_masked = ours.decode(points, None, mask, True)  # the mask input folded into rows
    torch.testing.assert_close(low_masked, plain_masked[0], rtol=1e-5, atol=1e-5 * plain_masked[0].abs().max().item())
    torch.testing.assert_close(scores_masked, plain_masked[1], rtol=1e-5, atol=1e-6)
    seen = []
    record = lambda self, *a, **kw: seen.append((kw["rows"], kw["mask_input"])) or plain  # noqa: E731
    with patch.object(type(model), "decode", record), torch.no_grad():
        ours.decode(points, None, None, True)
        ours.decode(points, None, mask, True)
    assert seen[0] == (ours.image_rows(), None) and seen[1][0].k.shape[0] == 1 and seen[1][1] is None
    with pytest.raises(ValueError, match="mask_input=None"):  # rows carry the dense embedding: not both
        model.decode(ours.features, ours.high_res_features, **prompt, mask_input=mask, rows=ours.image_rows())


def test_transform_scales_each_side_to_the_square_input(pair):
    """SAM 2 does not keep the aspect ratio: x scales by S/W, y by S/H; the image goes to the model unchanged."""
    _, ours = pair
    s = TINY.img_size
    assert np.allclose(ours.transform.apply_coords(np.array([[200.0, 300.0]]), (300, 200)), [[s, s]])
    assert ours.transform.apply_image(IMAGE) is IMAGE


def test_a_kept_embedding_answers_without_the_encoder(pair):
    """What a web session does: keep predictor.embedding, hand it to another predictor of the same model."""
    meta, ours = pair
    other = SamPredictor(ours.model)
    other.set_embedding(ours.embedding)
    for prompt in (PROMPTS["box and points"], PROMPTS["single mask"]):
        a, b = ours.predict(**prompt, return_logits=True), other.predict(**prompt, return_logits=True)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert_same(meta, other, PROMPTS["points with negatives"])


def test_set_torch_image_and_bgr_give_the_same_embedding(pair):
    _, ours = pair
    other = SamPredictor(ours.model)
    other.set_torch_image(torch.as_tensor(IMAGE).permute(2, 0, 1)[None], IMAGE.shape[:2])
    assert torch.equal(other.features, ours.features)
    other.set_image(np.ascontiguousarray(IMAGE[..., ::-1]), image_format="BGR")
    assert torch.equal(other.features, ours.features)
    assert all(torch.equal(a, b) for a, b in zip(other.high_res_features, ours.high_res_features))


def test_a_read_only_image_is_copied_not_shared(pair):
    """SAM 2's transform hands the image over unchanged: a read-only one (as the app keeps them) is copied
    rather than given to torch, which warns that writing to it would be undefined."""
    _, ours = pair
    image = IMAGE.copy()
    image.setflags(write=False)
    other = SamPredictor(ours.model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.set_image(image)
    assert torch.equal(other.features, ours.features)


@pytest.mark.parametrize("multimask", [True, False])
def test_decode_min_iou_drops_prompts_below_it(pair, multimask):
    """What segment everything asks of the decoder: prompts with no score above min_iou get -inf logits,
    their masks never upscaled; the others' masks and scores are those of the ungated decode (a single-mask
    request's dynamic choice included)."""
    _, ours = pair
    points = torch.tensor([[[30.0, 40.0]], [[200.0, 100.0]], [[128.0, 250.0]], [[90.0, 160.0]]])
    labels = torch.ones(4, 1, dtype=torch.int)
    upscaled = []
    decoder = ours.model.sam_mask_decoder
    with torch.no_grad():
        low, scores = ours.decode((points, labels), None, None, multimask)
        min_iou = float(scores.max(1).values.median())
        with patch.object(decoder, "upscale_masks", side_effect=lambda src, *a: upscaled.append(len(src)) or
                          type(decoder).upscale_masks(decoder, src, *a)):  # fmt: skip
            gated, gated_scores = ours.decode((points, labels), None, None, multimask, min_iou=min_iou)
        if multimask:
            upscale = (scores > min_iou).any(1)
        else:  # the dynamic choice computes the single mask and the best of three, to judge the first's stability
            with patch.object(decoder, "dynamic_multimask_via_stability", False):
                single = ours.decode((points, labels), None, None, False)[1]
            best = ours.decode((points, labels), None, None, True)[1].max(1, keepdim=True).values
            upscale = (torch.cat([single, best], 1) > min_iou).any(1)
    assert 0 < (scores > min_iou).any(1).sum() <= upscale.sum() < 4 and upscaled == [int(upscale.sum())]
    assert torch.equal(gated[upscale], low[upscale]) and torch.isinf(gated[~upscale]).all()
    assert torch.equal(gated_scores[upscale], scores[upscale]) and (gated_scores[~upscale] <= min_iou).all()


def test_embeddings_of_the_other_family_are_refused(pair):
    _, ours = pair
    sam = SamPredictor(twin_models(SAM_TINY)[1])
    sam.set_image(IMAGE)
    with pytest.raises(ValueError, match="made by a SAM model; a SAM 2 model cannot use it"):
        SamPredictor(ours.model).set_embedding(sam.embedding)
    with pytest.raises(ValueError, match="made by a SAM 2 model; a SAM model cannot use it"):
        sam.set_embedding(ours.embedding)
    assert isinstance(ours.embedding, ImageEmbedding)


# ---- both families -------------------------------------------------------------------------------------


@pytest.fixture(params=["sam", "sam2"])
def predictor(request) -> SamPredictor:
    model = twin_models(SAM_TINY)[1] if request.param == "sam" else build_sam2(TINY)
    return SamPredictor(model)


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 5, 3), (5, 0, 3)])
def test_an_empty_image_is_refused(predictor, shape):
    """A 0x0 image once raised ZeroDivisionError."""
    with pytest.raises(ValueError, match=f"the image is empty: {shape[1]}x{shape[0]} pixels"):
        predictor.set_image(np.zeros(shape, np.uint8))


def test_predict_refuses_several_boxes(predictor):
    """predict answers one object; it once used the first of several boxes silently."""
    predictor.set_image(IMAGE)
    with pytest.raises(ValueError, match="predict takes one box .* got 2 boxes.* pass them to predict_torch"):
        predictor.predict(box=np.array([[10, 10, 50, 50], [60, 60, 90, 90]]))
    masks, _, _ = predictor.predict(box=np.array([[10, 10, 50, 50]]))  # one box, nested, is one object
    assert masks.shape == (3, 300, 200)


def test_integer_boxes_scale_like_float_ones(predictor):
    """apply_boxes_torch on an int64 tensor once scaled by the truncated integer factor (1.28 -> 1)."""
    boxes = torch.tensor([[20, 30, 170, 260]])
    scaled = predictor.transform.apply_boxes_torch(boxes, (300, 200))
    assert scaled.dtype == torch.float32
    assert torch.equal(scaled, predictor.transform.apply_boxes_torch(boxes.float(), (300, 200)))
    assert not torch.equal(scaled, boxes.float())


@pytest.mark.slow
def test_hiera_tiny_full_size():
    """Hiera-T at 1024 px, real sizes: the predictor against Meta's on a box with a point."""
    from sam.build_sam2 import CONFIGS

    ref, model = twin_sam2(CONFIGS["hiera_tiny"], seed=4)
    meta, ours = meta_predictor(ref), SamPredictor(model)
    image = test_image(480, 640)
    meta.set_image(image)
    ours.set_image(image)
    assert ours.features.shape == (1, 256, 64, 64) and ours.embedding.input_size == (1024, 1024)
    assert rel_err(ours.features, meta.get_image_embedding()) < RTOL
    prompt = {"box": np.array([100, 80, 500, 400]), "point_coords": np.array([[300, 200]]), "point_labels": [1]}
    assert_same(meta, ours, prompt)
    assert_same(meta, ours, {**prompt, "multimask_output": False})
