"""The model holds plain state: it loads and runs inside torch.inference_mode(), builds on the meta device,
makes every tensor of its forward pass on its own device, and its dense positional encoding follows the
weights it holds."""

import numpy as np
import pytest
import torch

from sam.automatic import SamAutomaticMaskGenerator
from sam.build import build_sam
from sam.build_sam2 import TINY as TINY_SAM2
from sam.build_sam2 import build_sam2
from sam.modeling.prompt_encoder import PositionEmbeddingRandom
from sam.modeling.sam import Sam
from sam.predictor import SamPredictor
from sam.weights import load_model
from tests.helpers.reference import PROMPTS, TINY, random_state_dict, test_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A TINY checkpoint of non-degenerate random weights, in Meta's format."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(random_state_dict(build_sam(TINY), seed=3), path)
    return str(path)


def load_predict_everything(path: str) -> tuple[list, list]:
    """load_model, then every prompt of PROMPTS and a segment-everything run on one image."""
    model = load_model(path)
    image = test_image(300, 200)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    answers = [predictor.predict(**kw, return_logits=True) for kw in PROMPTS.values()]
    generator = SamAutomaticMaskGenerator(model, points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    return answers, generator.generate(image)


def test_inference_mode_gives_the_same_results(checkpoint):
    """Loaded, prompted and segmenting everything inside inference_mode, as without it."""
    plain_answers, plain_records = load_predict_everything(checkpoint)
    with torch.inference_mode():
        answers, records = load_predict_everything(checkpoint)
    assert len(answers) == len(PROMPTS)
    for (logits, scores, low), (plain_logits, plain_scores, plain_low) in zip(answers, plain_answers):
        assert torch.equal(torch.as_tensor(logits), torch.as_tensor(plain_logits))
        assert torch.equal(torch.as_tensor(scores), torch.as_tensor(plain_scores))
        assert torch.equal(torch.as_tensor(low), torch.as_tensor(plain_low))
    assert len(records) == len(plain_records) > 0
    for record, plain in zip(records, plain_records):
        assert np.array_equal(record["segmentation"], plain["segmentation"])
        assert record["bbox"] == plain["bbox"] and record["predicted_iou"] == plain["predicted_iou"]


def prompts(device: str) -> dict:
    """Two prompts of two points and a box each, and their mask inputs, in model-input pixels."""
    points = torch.tensor([[[30.0, 40.0], [200.0, 100.0]], [[5.0, 250.0], [128.0, 128.0]]], device=device)
    labels = torch.tensor([[1, 0], [1, 1]], device=device)
    boxes = torch.tensor([[10.0, 20.0, 150.0, 200.0], [0.0, 0.0, 255.0, 255.0]], device=device)
    return dict(points=(points, labels), boxes=boxes, masks=torch.zeros(2, 1, 64, 64, device=device))


@torch.no_grad()  # as the predictor runs it: the encoder's blocked attention writes into its output
def test_model_builds_and_decodes_on_the_meta_device():
    with torch.device("meta"):
        model = build_sam(TINY)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert model.device.type == "meta" and model.config == TINY
    sparse, dense = model.prompt_encoder(**prompts("meta"))
    assert sparse.shape == (2, 4, 256) and dense.shape == (2, 256, 16, 16)
    image_pe = model.prompt_encoder.get_dense_pe()
    assert image_pe.shape == (1, 256, 16, 16) and image_pe.device.type == "meta"
    embedding = model.encode(torch.zeros(1, 3, 256, 256, device="meta"))
    assert embedding.shape == (1, 256, 16, 16) and embedding.device.type == "meta"
    low, iou = model.mask_decoder(embedding, image_pe, sparse, dense, multimask_output=True)
    assert low.shape == (2, 3, 64, 64) and iou.shape == (2, 3)
    assert low.device.type == iou.device.type == "meta"
    masks = model.postprocess_masks(low, (256, 170), (300, 200))
    assert masks.shape == (2, 3, 300, 200) and masks.device.type == "meta"


@torch.no_grad()
def test_forward_makes_its_tensors_on_the_model_device():
    """A CPU model run while the default device is meta: a tensor made without a device would land there."""
    model = build_sam(TINY)
    model.load_state_dict(random_state_dict(model, seed=4))
    x = torch.randn(1, 3, 256, 256)
    cpu_prompts = prompts("cpu")
    with torch.device("meta"):
        embedding = model.encode(x)
        sparse, dense = model.prompt_encoder(**cpu_prompts)
        image_pe = model.prompt_encoder.get_dense_pe()
        # min_iou between the two prompts' best scores: one prompt's masks are computed, the other's are -inf
        _, scores = model.mask_decoder(embedding, image_pe, sparse, dense, multimask_output=True)
        min_iou = float(scores.max(1).values.mean())
        low, iou = model.mask_decoder(embedding, image_pe, sparse, dense, multimask_output=True, min_iou=min_iou)
        masks = model.postprocess_masks(low, (256, 170), (300, 200))
    for t in (embedding, sparse, dense, image_pe, low, iou, masks):
        assert t.device.type == "cpu"
    live = (iou > min_iou).any(1)
    assert live.tolist() in ([True, False], [False, True])
    assert torch.isinf(low[~live]).all() and torch.isfinite(low[live]).all()


def test_dense_pe_follows_load_state_dict():
    """After new weights are loaded (copied or assigned), the dense PE is that of the new weights."""
    model = build_sam(TINY)
    before = model.prompt_encoder.get_dense_pe()
    for assign in (False, True):
        state = random_state_dict(model, seed=5 + assign)
        model.load_state_dict(state, assign=assign)
        fresh = PositionEmbeddingRandom(128)
        fresh.positional_encoding_gaussian_matrix.copy_(
            state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
        )
        after = model.prompt_encoder.get_dense_pe()
        assert torch.equal(after, fresh((16, 16))[None])
        assert not torch.equal(after, before)
        before = after
    assert model.to("meta").prompt_encoder.get_dense_pe().device.type == "meta"


def test_config_and_weights_source_are_attributes_of_every_model(checkpoint):
    built = build_sam(TINY)
    assert built.config == TINY and built.weights_source == "random initialisation"
    assert build_sam(TINY, weights_source="trained here").weights_source == "trained here"
    loaded = load_model(checkpoint)
    assert loaded.config == TINY and loaded.weights_source == checkpoint
    by_hand = Sam(
        image_encoder=built.image_encoder, prompt_encoder=built.prompt_encoder, mask_decoder=built.mask_decoder
    )
    assert by_hand.config is None and by_hand.weights_source == "random initialisation"


@torch.no_grad()
def test_sam2_builds_on_meta_and_makes_its_tensors_on_its_device():
    """SAM 2 the same way: built on the meta device; run on the CPU while the default device is meta."""
    with torch.device("meta"):
        on_meta = build_sam2(TINY_SAM2)
        low, iou, obj = on_meta.decode(
            *on_meta.encode(torch.zeros(1, 3, 256, 256, device="meta")), boxes=prompts("meta")["boxes"]
        )
    assert low.shape == (2, 3, 64, 64) and low.device.type == iou.device.type == obj.device.type == "meta"
    model = build_sam2(TINY_SAM2)
    model.load_state_dict(random_state_dict(model, seed=4))
    cpu_prompts, x = prompts("cpu"), torch.randn(1, 3, 256, 256)
    with torch.device("meta"):
        embedding, high_res = model.encode(x)
        points, labels = cpu_prompts["points"]
        for multimask in (True, False):
            out = model.decode(
                embedding, high_res, point_coords=points, point_labels=labels, boxes=cpu_prompts["boxes"],
                mask_input=cpu_prompts["masks"], multimask_output=multimask,
            )
            masks = model.postprocess_masks(out[0], (256, 256), (300, 200))
            assert all(t.device.type == "cpu" for t in (*out, masks, embedding, *high_res))


def test_sam2_in_inference_mode_gives_the_same_results():
    model = load_model("random:hiera_t")
    image = test_image(300, 200)

    def answers() -> list:
        predictor = SamPredictor(model)
        predictor.set_image(image)
        return [predictor.predict(**kw, return_logits=True) for kw in PROMPTS.values()]

    plain = answers()
    with torch.inference_mode():
        inside = answers()
    for a, b in zip(plain, inside, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
