"""A SAM 2 model in the app's service: the same embedding, candidates and masks as SamPredictor gives."""

import numpy as np
import torch

from sam import SamPredictor
from sam.app.everything import everything
from sam.app.service import Models, Service, segment
from sam.automatic import SamAutomaticMaskGenerator
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


def test_segment_everything_with_a_sam2_model_gives_the_generators_records_with_sam2_defaults():
    torch.manual_seed(0)
    model = build_sam2(TINY).eval()
    service = Service(Models(lambda name: model), cache_items=4, cache_mb=64)
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    key = service.add_image(image)
    assert SamAutomaticMaskGenerator(model).pred_iou_thresh == 0.8  # SAM 2's default, not SAM's 0.88
    args = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)  # random weights pass none else
    records = everything(service, "sam2", key, **args)
    expected = SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle", **args)
    direct = sorted(expected.generate(image), key=lambda r: -r["predicted_iou"])
    assert len(records) == len(direct) > 0
    for got, want in zip(records, direct, strict=True):
        assert got["segmentation"] == want["segmentation"] and got["predicted_iou"] == want["predicted_iou"]
        assert got["bbox"] == want["bbox"]
    assert not service._everything  # the run's slot is given back
