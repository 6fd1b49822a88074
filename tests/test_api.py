"""The docs' call forms, each checked against sam.SamPredictor on the same prompts (tiny random model)."""

from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
import torch
from PIL import Image

from sam import SAM, SAMPredictor, SamPredictor
from sam.automatic import SamAutomaticMaskGenerator
from sam.build import SamConfig, ViTConfig, build_sam
from sam.masks import mask_to_box

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

TINY = SamConfig(ViTConfig(64, 2, 4, (1,), window_size=4), img_size=256)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_sam(TINY)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 170, 3), dtype=np.uint8)
    img[20:70, 30:90] = (250, 30, 30)
    return img


@pytest.fixture(scope="module")
def ref(tiny, image):
    p = SamPredictor(tiny)
    p.set_image(image)
    return p


@pytest.fixture
def model(tiny):
    return SAM(tiny)


def expect(ref, results, calls, multimask=False):
    """results[0] holds, in order, the masks of ref.predict(**call) for each call."""
    r = results[0]
    masks, scores = [], []
    for call in calls:
        m, s, _ = ref.predict(**{k: np.asarray(v) for k, v in call.items()}, multimask_output=multimask)
        masks.extend(m)
        scores.extend(s)
    assert r.masks.shape == (len(masks), *ref.original_size) and r.masks.dtype == bool
    np.testing.assert_allclose(r.scores, scores, rtol=1e-4, atol=1e-5)
    for got, want in zip(r.masks, masks):
        assert (got != want).mean() < 1e-3  # batched float sums may flip a pixel at the threshold


def test_one_point(model, ref, image):
    expect(ref, model(image, points=[60, 40], labels=[1]), [dict(point_coords=[[60, 40]], point_labels=[1])])


def test_several_points_give_one_mask_each(model, ref, image):
    calls = [dict(point_coords=[[60, 40]], point_labels=[1]), dict(point_coords=[[140, 90]], point_labels=[1])]
    expect(ref, model(image, points=[[60, 40], [140, 90]], labels=[1, 1]), calls)
    expect(ref, model(image, points=[[60, 40], [140, 90]], labels=[[1, 1]]), calls)  # the docs' other spelling
    expect(ref, model(image, points=[[60, 40], [140, 90]]), calls)  # labels default to foreground


def test_several_points_one_object_and_negative_labels(model, ref, image):
    pts = [[60, 40], [140, 90]]
    pos = model(image, points=[pts], labels=[[1, 1]])
    expect(ref, pos, [dict(point_coords=pts, point_labels=[1, 1])])
    neg = model(image, points=[pts], labels=[[1, 0]])
    expect(ref, neg, [dict(point_coords=pts, point_labels=[1, 0])])
    assert not np.isclose(pos[0].scores[0], neg[0].scores[0])


def test_boxes(model, ref, image):
    b1, b2 = [20, 15, 100, 80], [90, 40, 165, 115]
    expect(ref, model(image, bboxes=b1), [dict(box=b1)])
    expect(ref, model(image, bboxes=[b1, b2]), [dict(box=b1), dict(box=b2)])
    expect(ref, model(image, bboxes=torch.tensor([b1, b2])), [dict(box=b1), dict(box=b2)])


def test_boxes_with_points(model, ref, image):
    b1, b2 = [20, 15, 100, 80], [90, 40, 165, 115]
    # one box refined by several points: one object
    one = model(image, bboxes=b1, points=[[60, 40], [95, 75]], labels=[1, 0])
    expect(ref, one, [dict(box=b1, point_coords=[[60, 40], [95, 75]], point_labels=[1, 0])])
    # box i with point group i
    two = model(image, bboxes=[b1, b2], points=[[[60, 40]], [[120, 80]]], labels=[[1], [0]])
    calls = [
        dict(box=b1, point_coords=[[60, 40]], point_labels=[1]),
        dict(box=b2, point_coords=[[120, 80]], point_labels=[0]),
    ]
    expect(ref, two, calls)
    with pytest.raises(ValueError, match="2 boxes but 3 point groups"):
        model(image, bboxes=[b1, b2], points=[[1, 2], [3, 4], [5, 6]])


def test_multimask(model, ref, image):
    calls = [dict(point_coords=[[60, 40]], point_labels=[1]), dict(point_coords=[[140, 90]], point_labels=[1])]
    res = model(image, points=[[60, 40], [140, 90]], multimask_output=True)
    assert len(res[0]) == 6
    expect(ref, res, calls, multimask=True)


def test_many_boxes_are_one_predict_torch_call(model, image, monkeypatch):
    calls = []
    original = model.predictor.predict_torch
    monkeypatch.setattr(model.predictor, "predict_torch", lambda *a, **k: calls.append(1) or original(*a, **k))
    boxes = [[i, i, i + 40, i + 30] for i in range(0, 50, 5)]
    assert len(model(image, bboxes=boxes)[0]) == 10
    assert len(calls) == 1


def test_bad_prompts(model, image):
    with pytest.raises(ValueError, match="2 points but 3 labels"):
        model(image, points=[[1, 2], [3, 4]], labels=[1, 1, 1])
    with pytest.raises(ValueError, match="labels must be 1"):
        model(image, points=[1, 2], labels=[2])
    with pytest.raises(ValueError, match="box must be"):
        model(image, bboxes=[1, 2, 3])
    with pytest.raises(ValueError, match="empty or inverted"):
        model(image, bboxes=[50, 2, 10, 30])
    with pytest.raises(ValueError, match="without points"):
        model(image, labels=[1])
    with pytest.raises(ValueError, match="equal lengths"):
        model(image, points=[[1, 2], [3]])
    with pytest.raises(ValueError, match="segment-everything, not to prompts"):
        model(image, points=[1, 2], crop_n_layers=1)
    with pytest.raises(ValueError, match="unknown argument 'crop_layers'"):
        model(image, crop_layers=1)
    with pytest.raises(ValueError, match="no image"):
        SAM(model.model)(points=[1, 2])


def test_sources_and_last_image_reuse(model, image, tmp_path):
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[::-1].copy()).save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("not an image")
    prompt = dict(points=[60, 40], labels=[1])
    from_array = model(image, **prompt)[0]
    for source in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.fromarray(image)):
        r = model(source, **prompt)[0]
        np.testing.assert_array_equal(r.masks, from_array.masks)
    folder = model(tmp_path, **prompt)
    assert [r.path for r in folder] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert [r.path for r in model(str(tmp_path / "*.png"), **prompt)] == [r.path for r in folder]
    # no source: the last image again, without re-running the encoder
    features = model.predictor.features
    again = model(points=[60, 40], labels=[1])[0]
    assert model.predictor.features is features
    assert again.path == str(tmp_path / "b.png")
    np.testing.assert_array_equal(again.masks, folder[1].masks)
    assert model([image, image[::-1].copy()], **prompt)[1].orig_img.shape == image.shape
    stream = model(tmp_path, **prompt, stream=True)
    assert not isinstance(stream, list) and len(list(stream)) == 2
    with pytest.raises(FileNotFoundError, match="no such file"):
        model(tmp_path / "missing.png", **prompt)
    with pytest.raises(ValueError, match=r"float image must hold values in \[0, 1\]"):
        model(image.astype(np.float32), **prompt)  # sam.images reads floats in [0, 1] only


def test_segment_everything_uses_the_generator(model, tiny, image):
    args = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1)
    records = SamAutomaticMaskGenerator(tiny, **args).generate(image)
    r = model(image, points_stride=2, conf_thres=0.0, stability_score_thresh=0.0, crop_n_layers=1)[0]
    assert len(records) > 0 and len(r) == len(records)
    np.testing.assert_array_equal(r.masks, np.stack([rec["segmentation"] for rec in records]))
    np.testing.assert_allclose(r.scores, [rec["predicted_iou"] for rec in records], rtol=1e-6)
    with pytest.raises(ValueError, match="both given"):
        model(image, points_stride=4, points_per_side=4)


def test_conf_drops_low_scores(model, image):
    points = [[[x, y]] for x in range(10, 170, 30) for y in range(10, 120, 40)]
    everything = model(image, points=points)[0]
    conf = float(np.median(everything.scores))
    kept = model(image, points=points, conf=conf)[0]
    assert 0 < len(kept) == int((everything.scores > conf).sum()) < len(everything)
    np.testing.assert_array_equal(kept.masks, everything.masks[everything.scores > conf])


def test_results(model, image, tmp_path):
    r = model(image, bboxes=[[20, 15, 100, 80], [90, 40, 165, 115]])[0]
    h, w = image.shape[:2]
    assert len(r) == 2 and r.orig_shape == (h, w)
    assert r.logits.shape == (2, 64, 64)  # 4x the 16x16 embedding of a 256 input
    assert r.boxes.shape == (2, 4)
    for box, mask in zip(r.boxes, r.masks):
        assert list(box) == mask_to_box(mask)
    assert len(r.xy) == len(r.xyn) == 2
    for xy, xyn in zip(r.xy, r.xyn):
        assert xy.ndim == 2 and xy.shape[1] == 2
        np.testing.assert_allclose(xyn * [w, h], xy, atol=1e-3)
        assert (xyn >= 0).all() and (xyn <= 1).all()
    overlay = r.plot()
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert (overlay != image).any(axis=2).mean() > 0.05
    out = r.save(tmp_path / "out" / "overlay.png")
    assert Image.open(out).size == (w, h)
    coco = r.to_coco()
    for ann, mask in zip(coco["annotations"], r.masks):
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), mask)
        assert ann["score"] == pytest.approx(float(r.scores[coco["annotations"].index(ann)]))
    lines = r.to_yolo([3, 5])
    assert {line.split()[0] for line in lines} <= {"3", "5"} and lines


def test_info(model, tiny, tmp_path, capsys):
    info = model.info()
    assert info["parameters"] == sum(p.numel() for p in tiny.parameters())
    assert info["layers"] > 10 and info["precision"] == "float32" and info["device"] == "cpu"
    mixed = build_sam("tiny_vit").set_precision(torch.bfloat16)  # TinyViT keeps some layers in fp32
    assert SAM(mixed).info(verbose=False)["precision"] == "bfloat16"
    assert info["size_mb"] is None and "parameters" in capsys.readouterr().out
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    loaded = SAM(str(path))
    info = loaded.info(verbose=False)
    assert info["size_mb"] == round(path.stat().st_size / 2**20, 1) and info["files"] == [str(path)]
    assert info["img_size"] == 256


def test_info_of_a_hub_model(local_hub, checkpoints):
    """A known name downloaded from the (loopback) Hub: its size on disk is that of the cached file."""
    meta = checkpoints.meta("tiny")
    local_hub.add("ybelkada/segment-anything", {"checkpoints/sam_vit_b_01ec64.pth": meta})
    local_hub.add("facebook/sam-vit-base", checkpoints.transformers("tiny"))
    info = SAM("sam_b.pt").info(verbose=False)
    assert info["size_mb"] == round(meta.stat().st_size / 2**20, 1)
    assert len(info["files"]) == 1 and info["files"][0].endswith("sam_vit_b_01ec64.pth")
    assert "ybelkada/segment-anything" in info["weights"]
    hf = SAM("sam-vit-base").info(verbose=False)  # transformers layout: config.json + model.safetensors
    assert sorted(Path(f).name for f in hf["files"]) == ["config.json", "model.safetensors"]


def test_sam_predictor(tiny, image, ref, tmp_path):
    Image.fromarray(image).save(tmp_path / "a.png")
    predictor = SAMPredictor(overrides=dict(conf=0.0, task="segment", mode="predict", imgsz=256), model=tiny)
    predictor.set_image(str(tmp_path / "a.png"))
    expect(ref, predictor(bboxes=[20, 15, 100, 80]), [dict(box=[20, 15, 100, 80])])
    predictor.set_image(image)
    expect(ref, predictor(points=[60, 40], labels=[1]), [dict(point_coords=[[60, 40]], point_labels=[1])])
    calls = [dict(point_coords=[[60, 40]], point_labels=[1]), dict(point_coords=[[140, 90]], point_labels=[1])]
    expect(ref, predictor(points=[[60, 40], [140, 90]], labels=[[1, 1]]), calls)
    expect(
        ref,
        predictor(points=[[[60, 40], [140, 90]]], labels=[[1, 0]]),
        [dict(point_coords=[[60, 40], [140, 90]], point_labels=[1, 0])],
    )
    everything = predictor(source=image, points_stride=2, conf_thres=0.0, stability_score_thresh=0.0)
    assert len(everything[0]) > 0
    predictor.reset_image()
    with pytest.raises(ValueError, match="no image"):
        predictor(points=[60, 40])
    high = SAMPredictor(overrides=dict(conf=1e6), model=tiny)
    assert len(high(image, points=[60, 40])[0]) == 0
    with pytest.raises(ValueError, match="takes 256"):
        SAMPredictor(overrides=dict(imgsz=1024), model=tiny)
    with pytest.raises(ValueError, match="unknown overrides"):
        SAMPredictor(overrides=dict(cof=0.2), model=tiny)
