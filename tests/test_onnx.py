"""The exported ONNX decoder (sam/onnx.py) against our PyTorch prompt encoder + mask decoder, in onnxruntime."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sam.onnx import DecoderGraph, cached_decoder, decoder_key, onnx_inputs
from sam.predictor import ImageEmbedding, SamPredictor
from sam.weights import load_model

PROMPTS = {  # model-input pixels of a 1024 px input; scaled to the model's input size
    "point": dict(points=[[500, 375]], labels=[1]),
    "points": dict(points=[[500, 375], [620, 400], [100, 90]], labels=[1, 1, 0]),
    "box": dict(box=[425, 300, 700, 620]),
    "box+points": dict(points=[[500, 375], [450, 600]], labels=[1, 0], box=[425, 300, 700, 620]),
}


@pytest.fixture(scope="module", params=["tiny", "random:vit_t", "random:sam-vit-base"])
def exported(request, checkpoints, tmp_path_factory):
    """(model, graph path, onnxruntime session, predictor on a random embedding); "tiny" is the app tests'
    model (256 px input, 16x16 embedding), the others MobileSAM's and ViT-B's full-size decoders."""
    source = str(checkpoints.transformers("tiny", 0)) if request.param == "tiny" else request.param
    model = load_model(source, dtype="float32")
    folder = tmp_path_factory.mktemp("onnx")
    path = cached_decoder(model, folder)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    c = model.prompt_encoder.embed_dim
    h, w = model.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0))
    predictor = SamPredictor(model)
    predictor.set_embedding(ImageEmbedding(embedding, (model.img_size,) * 2, (model.img_size,) * 2))
    image_graph = ort.InferenceSession(str(cached_decoder(model, folder, part="image")),
                                       providers=["CPUExecutionProvider"])
    session.image_side = image_graph.run(None, {"image_embeddings": embedding.numpy()})[0]  # once per image
    return model, path, session, predictor


def torch_decode(predictor, scale, points=None, labels=None, box=None, mask_input=None, multimask=True):
    """Our PyTorch decoder (SamPredictor.decode, with its speed tricks): low-res logits Cx4hx4w, IoU C."""
    pts = None if points is None else (torch.tensor(points, dtype=torch.float)[None] * scale,
                                       torch.tensor(labels, dtype=torch.int)[None])
    boxes = None if box is None else torch.tensor(box, dtype=torch.float)[None] * scale
    masks = None if mask_input is None else torch.as_tensor(mask_input)[None, None]
    with torch.no_grad():
        low_res, iou = predictor.decode(pts, boxes, masks, multimask)
    return low_res[0].numpy(), iou[0].numpy()


def onnx_decode(session, predictor, scale, points=None, labels=None, box=None, mask_input=None, multimask=True):
    """The graph's answer, with the page's choice of outputs: tokens 1-3 with multimask, else token 0."""
    feed = onnx_inputs(
        predictor.features.numpy(), session.image_side, None if points is None else np.array(points) * scale, labels,
        None if box is None else np.array(box) * scale, mask_input,
    )
    low_res, iou = session.run(None, feed)
    pick = slice(1, 4) if multimask else slice(0, 1)
    return low_res[0, pick], iou[0, pick]


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_onnx_equals_pytorch(exported, prompt, multimask):
    model, _, session, predictor = exported
    scale = model.img_size / 1024
    expected = torch_decode(predictor, scale, **PROMPTS[prompt], multimask=multimask)
    got = onnx_decode(session, predictor, scale, **PROMPTS[prompt], multimask=multimask)
    assert got[0].shape == expected[0].shape == ((3 if multimask else 1), *model.prompt_encoder.mask_input_size)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], expected[1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("prompt", ["point", "box+points"])
def test_onnx_with_mask_input(exported, prompt):
    """Refinement: an earlier answer's logits as mask_input."""
    model, _, session, predictor = exported
    scale = model.img_size / 1024
    first, _ = torch_decode(predictor, scale, **PROMPTS["point"])
    mask_input = first[0] * 4  # logits of a size the decoder meets when refining
    expected = torch_decode(predictor, scale, **PROMPTS[prompt], mask_input=mask_input, multimask=False)
    got = onnx_decode(session, predictor, scale, **PROMPTS[prompt], mask_input=mask_input, multimask=False)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], expected[1], atol=1e-4, rtol=0)
    no_mask = onnx_decode(session, predictor, scale, **PROMPTS[prompt], multimask=False)
    assert np.abs(no_mask[0] - got[0]).max() > 1e-3  # the mask input is used, not ignored


def test_cache_key_follows_the_weights(exported, tmp_path):
    model, path, _, _ = exported
    key = decoder_key(model)
    assert path.name == f"decoder-{key}.onnx"
    mtime = path.stat().st_mtime_ns
    assert cached_decoder(model, path.parent) == path and path.stat().st_mtime_ns == mtime  # not exported again
    weight = model.mask_decoder.iou_token.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] += 1.0
        try:
            assert decoder_key(model) != key
        finally:
            weight.copy_(saved)
    assert decoder_key(model) == key
    assert list(path.parent.glob(".decoder-*")) == []  # no half-written files left behind
    assert cached_decoder(model, path.parent, part="image").name == f"image-{key}.onnx"
    with pytest.raises(ValueError, match="part must be one of"):
        cached_decoder(model, path.parent, part="encoder")


def test_sam2_is_refused():
    with pytest.raises(ValueError, match="only SAM models"):
        DecoderGraph(load_model("random:hiera_t"))
