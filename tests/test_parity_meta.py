"""Parity with Meta's segment-anything: same random weights, same image, same prompts, same numbers (fp32).

Tolerances (tests/reference.py): embeddings, low-res logits and scores agree to RTOL = 1e-4 relative
(L2 norm of the difference over the L2 norm of the reference); masks are equal except at pixels whose
reference logit lies within MASK_TOL of the 0 threshold.
"""

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor as MetaPredictor

from sam import CONFIGS, SamPredictor, build_sam
from sam import predictor as predictor_module
from sam.build import SamConfig, TinyViTConfig
from tests.helpers.reference import (
    MASK_TOL,
    PROMPTS,
    RTOL,
    TINY,
    assert_same_prediction,
    rel_err,
    test_image,
    twin_models,
)


@pytest.fixture(scope="module")
def tiny_pair():
    ref, ours = twin_models(TINY, seed=1)
    image = test_image(300, 200)
    meta, pred = MetaPredictor(ref), SamPredictor(ours)
    meta.set_image(image)
    pred.set_image(image)
    return meta, pred


def test_embedding_matches(tiny_pair):
    meta, pred = tiny_pair
    assert pred.features.shape == meta.features.shape == (1, 256, 16, 16)
    assert rel_err(pred.features, meta.features) < RTOL
    assert pred.original_size == meta.original_size and pred.input_size == meta.input_size


def test_dense_pe_follows_the_weights():
    """get_dense_pe follows the weights: after new ones are loaded, and after a change in place."""
    ref, ours = twin_models(TINY, seed=2)
    key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    assert torch.equal(ours.prompt_encoder.get_dense_pe(), ref.prompt_encoder.get_dense_pe())
    state = ours.state_dict()
    state[key] = torch.randn_like(state[key])
    ours.load_state_dict(state)
    ref.load_state_dict(state)
    assert torch.equal(ours.prompt_encoder.get_dense_pe(), ref.prompt_encoder.get_dense_pe())
    with torch.no_grad():
        ours.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2)
        ref.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2)
    assert torch.equal(ours.prompt_encoder.get_dense_pe(), ref.prompt_encoder.get_dense_pe())


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_matches(tiny_pair, name):
    meta, pred = tiny_pair
    kw = PROMPTS[name]
    ref = meta.predict(**kw)
    ref_logits = meta.predict(**kw, return_logits=True)[0]
    ours = pred.predict(**kw)
    assert_same_prediction(ref, ours, ref_logits, pred.predict(**kw)[0])
    our_logits = pred.predict(**kw, return_logits=True)[0]
    assert rel_err(our_logits, ref_logits) < RTOL


@pytest.mark.parametrize("name", ["one point", "box and points"])
def test_refinement_with_mask_input(tiny_pair, name):
    meta, pred = tiny_pair
    kw = PROMPTS[name]
    first = meta.predict(**kw)
    mask_input = first[2][np.argmax(first[1])][None]
    ref = meta.predict(**kw, mask_input=mask_input)
    ref_logits = meta.predict(**kw, mask_input=mask_input, return_logits=True)[0]
    ours = pred.predict(**kw, mask_input=mask_input)
    assert_same_prediction(ref, ours, ref_logits, ours[0])
    assert rel_err(ours[2], first[2]) > 1e-3  # the mask input really changed the answer


def test_batched_boxes_predict_torch(tiny_pair):
    meta, pred = tiny_pair
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [200, 300], size=(50, 2, 2))
    boxes = np.concatenate([xy.min(1), xy.max(1)], axis=1)
    ref_boxes = meta.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), meta.original_size)
    our_boxes = pred.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), pred.original_size)
    assert torch.equal(ref_boxes, our_boxes)
    ref = meta.predict_torch(None, None, boxes=ref_boxes, multimask_output=True, return_logits=True)
    ours = pred.predict_torch(None, None, boxes=our_boxes, multimask_output=True, return_logits=True)
    assert ours[0].shape == ref[0].shape == (50, 3, 300, 200)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) < RTOL
    assert torch.equal((ours[0] > 0)[ref[0].abs() > MASK_TOL], (ref[0] > 0)[ref[0].abs() > MASK_TOL])


def test_decoding_leaves_the_embedding_as_it_was(tiny_pair):
    """The decoder overwrites its own intermediate tensors in place, never the image embedding it is given."""
    _, pred = tiny_pair
    before = pred.features.clone()
    first = pred.predict(**PROMPTS["one point"], return_logits=True)[0]
    boxes = torch.tensor([[10.0, 20.0, 120.0, 200.0], [50.0, 60.0, 90.0, 250.0]])
    pred.predict_torch(None, None, boxes=pred.transform.apply_boxes_torch(boxes, pred.original_size))
    assert torch.equal(pred.features, before)
    assert np.array_equal(pred.predict(**PROMPTS["one point"], return_logits=True)[0], first)


def test_final_attention_for_the_first_tokens_only(tiny_pair):
    """final_tokens=k gives the first k tokens of the full run (each token attends to the image on its own
    in the final attention) and the same image side."""
    _, pred = tiny_pair
    transformer = pred.model.mask_decoder.transformer
    c = pred.features.shape[1]
    tokens = torch.randn(3, 7, c, generator=torch.Generator().manual_seed(0))
    pe = pred.model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        full, keys = transformer(pred.features, pe, tokens)
        for k in (1, 5):
            first, keys_k = transformer(pred.features, pe, tokens, final_tokens=k)
            assert first.shape == (3, k, c)
            torch.testing.assert_close(first, full[:, :k], rtol=0, atol=1e-6)
            assert torch.equal(keys_k, keys)


def test_image_rows_give_the_decode_without_them(tiny_pair):
    """The first layer from the per-image rows equals the decoder run on the embedding, for one prompt and a
    batch, with and without a mask input, and the predictor uses them (made once per image)."""
    _, pred = tiny_pair
    decoder, pe = pred.model.mask_decoder, pred.model.prompt_encoder
    g = torch.Generator().manual_seed(3)
    close = lambda got, want: torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())  # noqa: E731
    for b in (1, 4):
        points = (torch.rand(b, 2, 2, generator=g) * 300, torch.randint(0, 2, (b, 2), generator=g))
        mask = torch.randn(b, 1, 64, 64, generator=g) * 4
        with torch.no_grad():
            sparse, dense = pe(points=points, boxes=None, masks=None)
            plain = decoder(pred.features, pe.get_dense_pe(), sparse, dense, True)
            rows = pred.image_rows()
            fast = decoder(pred.features, None, sparse, dense, True, rows=rows)
            _, masked = pe(points=points, boxes=None, masks=mask)
            plain_masked = decoder(pred.features, pe.get_dense_pe(), sparse, masked, True)
        for got, want in zip(fast, plain, strict=True):
            close(got, want)
        assert pred.image_rows() is rows  # kept for the next prompt
        seen: list = []
        hook = decoder.register_forward_hook(lambda m, a, kw, out, seen=seen: seen.append(kw["rows"]), with_kwargs=True)
        try:
            with torch.no_grad():
                low, _ = pred.decode(points, None, None, True)
                low_masked, _ = pred.decode(points, None, mask, True)
        finally:
            hook.remove()
        assert seen[0] is rows and seen[1].k.shape[0] == b  # the mask inputs folded into rows of the batch
        close(low, plain[0])
        close(low_masked, plain_masked[0])
        assert rel_err(low_masked, low) > 1e-3  # the mask input really changed the answer


def test_image_rows_follow_the_image_and_the_weights():
    ours = twin_models(TINY, seed=2)[1]
    pred = SamPredictor(ours)
    pred.set_image(test_image(300, 200))
    first = pred.image_rows()
    assert pred.image_rows() is first
    with torch.no_grad():
        ours.prompt_encoder.no_mask_embed.weight.add_(1.0)
    second = pred.image_rows()
    assert second is not first and torch.allclose(second.keys, first.keys + 1.0, atol=1e-6)
    with torch.no_grad():
        ours.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2)
    third = pred.image_rows()
    assert third is not second and not torch.allclose(third.key_pe, second.key_pe)
    with torch.no_grad():
        ours.mask_decoder.transformer.layers[0].cross_attn_image_to_token.q_proj.weight.mul_(2)
    fourth = pred.image_rows()
    assert fourth is not third and torch.equal(fourth.keys, third.keys) and not torch.equal(fourth.qt, third.qt)
    other = SamPredictor(ours)  # the app makes a predictor per request: the rows go with the embedding
    other.set_embedding(pred.embedding)
    assert other.image_rows() is fourth
    pred.set_image(test_image(200, 300))
    assert pred.image_rows() is not fourth and not torch.equal(pred.image_rows().keys, fourth.keys)


def test_image_rows_are_kept_for_the_recent_embeddings(monkeypatch):
    monkeypatch.setattr(predictor_module, "RECENT_ROWS", 2)
    ours = twin_models(TINY, seed=2)[1]
    preds = [SamPredictor(ours) for _ in range(3)]
    for i, p in enumerate(preds):
        p.set_image(test_image(300, 200 + 10 * i))
    rows = [p.image_rows() for p in preds]
    assert preds[2].image_rows() is rows[2] and preds[1].image_rows() is rows[1]
    assert preds[0].image_rows() is not rows[0]  # the least recent one was let go


def test_bgr_input_is_flipped(tiny_pair):
    _, pred = tiny_pair
    image = test_image(300, 200)
    rgb = pred.features.clone()
    pred.set_image(image[..., ::-1].copy(), image_format="BGR")
    assert rel_err(pred.features, rgb) < 1e-6


@pytest.mark.slow
def test_vit_b_full_size():
    """One run at the real ViT-B size: 1024 input, 12 blocks of width 768, a 640x480 photo."""
    ref, ours = twin_models(CONFIGS["vit_b"], seed=2)
    image = test_image(480, 640)
    meta, pred = MetaPredictor(ref), SamPredictor(ours)
    meta.set_image(image)
    pred.set_image(image)
    assert pred.features.shape == (1, 256, 64, 64)
    assert rel_err(pred.features, meta.features) < RTOL
    for kw in (PROMPTS["one point"], PROMPTS["box and points"]):
        ref_logits = meta.predict(**kw, return_logits=True)[0]
        assert_same_prediction(meta.predict(**kw), pred.predict(**kw), ref_logits, pred.predict(**kw)[0])


def test_errors_are_clear(tiny_pair):
    _, pred = tiny_pair
    with pytest.raises(ValueError, match="point_labels"):
        pred.predict(point_coords=np.array([[1, 2]]))
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        pred.predict(point_coords=np.array([[1, 2], [3, 4]]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        pred.set_image(np.zeros((10, 10), np.uint8))
    fresh = SamPredictor(pred.model)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(point_coords=np.array([[1, 2]]), point_labels=np.array([1]))


@pytest.mark.parametrize("config", [TINY, SamConfig(TinyViTConfig(), img_size=256)], ids=["vit", "tiny_vit"])
def test_encoders_allocate_on_the_inputs_device(config):
    """No CPU-only buffers in the forward pass: the shape-only 'meta' device stands in for an accelerator."""
    model = build_sam(config).eval().to("meta")
    with torch.no_grad():
        out = model.encode(torch.empty(1, 3, 256, 256, device="meta"))
    assert out.device.type == "meta" and out.shape == (1, 256, 16, 16)
