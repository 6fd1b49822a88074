"""A SAM 2 model in the app's service: the same embedding, candidates and masks as SamPredictor gives."""

import numpy as np
import pytest
import torch

from sam import SamPredictor
from sam.app.service import Models, Service, everything, segment
from sam.build_sam2 import TINY, build_sam2


def test_the_service_answers_as_the_predictor_with_a_sam2_model():
    torch.manual_seed(0)
    model = build_sam2(TINY, weights_source="random weights (tiny SAM 2)").eval()
    service = Service(Models(lambda name: model), cache_items=4, cache_mb=64, decode_threads=torch.get_num_threads())
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    embedded = service.embed("sam2", service.add_image(image))
    assert torch.equal(embedded.embedding.features, predictor.features)
    for a, b in zip(embedded.embedding.high_res_features, predictor.high_res_features, strict=True):
        assert torch.equal(a, b)
    decoder = service.decoder("sam2", embedded.embedding)
    for points, labels, box in (([[10, 20]], [1], None), ([[10, 20], [40, 5]], [1, 0], [4, 4, 30, 40])):
        low_res, scores = decoder.decode(np.array(points, float), np.array(labels), None if box is None else
                                         np.array(box, float), None, True)
        masks, want_scores, want_low = predictor.predict(np.array(points), np.array(labels), box and np.array(box))
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
        assert (decoder.masks(low_res) != masks).sum() <= 2
    answer = segment(service, "sam2", image, [[10, 20]], [1])
    assert answer["weights"] == "random weights (tiny SAM 2)" and len(answer["masks"]) == 3


def test_segment_everything_refuses_a_sam2_model_with_a_message():
    model = build_sam2(TINY).eval()
    service = Service(Models(lambda name: model), cache_items=4, cache_mb=64)
    key = service.add_image(np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="with SAM 2 it is not available yet"):
        everything(service, "sam2", key)
    assert not service._everything  # the run's slot is given back
