"""Results, Boxes and Masks against what Ultralytics documents for each name (types, shapes, meanings, BGR).

Built from known masks, without a model: a 60x80 image with a rectangle and an L-shaped mask.
"""

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
import torch
from PIL import Image

from sam.results import Boxes, Masks, Results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

H, W = 60, 80


@pytest.fixture
def bgr():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def masks():
    m = np.zeros((2, H, W), bool)
    m[0, 10:30, 5:25] = True  # x 5..24, y 10..29
    m[1, 40:50, 30:70] = True
    m[1, 20:50, 60:70] = True  # an L: x 30..69, y 20..49
    return m


@pytest.fixture
def r(bgr, masks):
    logits = np.stack([np.where(m[::4, ::4], 5.0, -5.0) for m in masks]).astype(np.float32)
    return Results.from_masks(bgr, masks, np.array([0.9, 0.5]), "photos/cat.jpg", logits)


def test_results_attributes(r, bgr):
    assert isinstance(r.orig_img, np.ndarray) and r.orig_img is bgr  # as given: BGR, HxWx3 uint8
    assert r.orig_shape == (H, W) and isinstance(r.path, str)
    assert r.names == {0: "0", 1: "1"}  # SAM has no classes: mask i is class i
    assert set(r.speed) == {"preprocess", "inference", "postprocess"}
    assert r.probs is None and r.keypoints is None and r.obb is None
    assert len(r) == 2 and repr(r) == "Results(2 masks, image 80x60, path='photos/cat.jpg')"


def test_boxes(r):
    b = r.boxes
    assert isinstance(b, Boxes) and isinstance(b.data, torch.Tensor) and b.data.shape == (2, 6) == b.shape
    assert b.xyxy.tolist() == [[5, 10, 25, 30], [30, 20, 70, 50]]  # pixel edges around each mask
    assert b.xywh.tolist() == [[15, 20, 20, 20], [50, 35, 40, 30]]  # centre x, centre y, width, height
    assert torch.allclose(b.xyxyn, b.xyxy / torch.tensor([W, H, W, H]))
    assert torch.allclose(b.xywhn, b.xywh / torch.tensor([W, H, W, H]))
    assert b.conf.tolist() == pytest.approx([0.9, 0.5]) and b.cls.tolist() == [0, 1]
    assert b.id is None and b.is_track is False and b.orig_shape == (H, W)
    one = b[1]
    assert isinstance(one, Boxes) and one.xyxy.tolist() == [[30, 20, 70, 50]]
    assert [box.xyxy.tolist() for box in b] == [[[5, 10, 25, 30]], [[30, 20, 70, 50]]]
    as_numpy = b.numpy()
    assert isinstance(as_numpy.xyxy, np.ndarray) and as_numpy.xywh.tolist() == b.xywh.tolist()
    np.testing.assert_allclose(as_numpy.xywhn, b.xywhn.numpy())


def test_masks(r, masks):
    m = r.masks
    assert isinstance(m, Masks) and isinstance(m.data, torch.Tensor) and m.data.dtype == torch.bool
    assert m.data.shape == (2, H, W) and np.array_equal(m.data.numpy(), masks)
    assert len(m.xy) == len(m.xyn) == 2
    for xy, xyn, mask in zip(m.xy, m.xyn, masks):
        assert isinstance(xy, np.ndarray) and xy.dtype == np.float32 and xy.ndim == 2 and xy.shape[1] == 2
        np.testing.assert_allclose(xyn * [W, H], xy, atol=1e-4)
        rows, cols = np.nonzero(mask)
        assert xy[:, 0].min() == cols.min() and xy[:, 0].max() == cols.max()  # the outline's extent
        assert xy[:, 1].min() == rows.min() and xy[:, 1].max() == rows.max()
    assert [tuple(mask.data.shape) for mask in m] == [(1, H, W), (1, H, W)]
    assert isinstance(m.numpy().data, np.ndarray) and isinstance(m.cpu().data, torch.Tensor)
    empty = Masks(torch.zeros(1, H, W, dtype=torch.bool), (H, W))
    assert empty.xy[0].shape == (0, 2)


def test_indexing_iteration_and_conversions(r):
    second = r[1]
    assert isinstance(second, Results) and len(second) == 1 and second.path == r.path
    assert second.boxes.cls.tolist() == [1] and second.logits.shape == (1, 15, 20)
    assert [len(x) for x in r] == [1, 1] and [x.scores.tolist() for x in r] == [[pytest.approx(0.9)], [0.5]]
    assert len(r[torch.tensor([True, False])]) == 1 and len(r[:0]) == 0
    n = r.numpy()
    assert isinstance(n.masks.data, np.ndarray) and isinstance(n.boxes.data, np.ndarray)
    assert n.masks.xy[0].tolist() == r.masks.xy[0].tolist() and n.summary() == r.summary()
    back = n.cpu()
    assert isinstance(back.masks.data, torch.Tensor) and torch.equal(back.boxes.data, r.boxes.data)
    assert torch.equal(r.to("cpu", torch.float32).masks.data, r.masks.data.float())
    assert len(r.new()) == 0 and r.new().orig_img is r.orig_img


def test_plot_is_bgr(r, bgr, masks):
    out = r.plot()
    assert isinstance(out, np.ndarray) and out.shape == (H, W, 3) and out.dtype == np.uint8
    far = np.ones((H, W), bool)
    far[:53] = False  # masks, outlines, boxes and labels all lie above row 53
    np.testing.assert_array_equal(out[far], bgr[far])  # the image itself, untouched, in BGR
    inside = masks[0].copy()
    inside[:14, :] = False
    inside[:, :9] = inside[26:, :] = inside[:, 21:] = False  # away from the outline and the box
    tint = np.array([109, 109, 242])  # colour 0 of the palette (242, 109, 109) as BGR
    unlabelled = r.plot(labels=False)
    np.testing.assert_allclose(unlabelled[inside], np.round(bgr[inside] * 0.5 + tint * 0.5), atol=1)
    assert (out[masks[0]] != unlabelled[masks[0]]).any()  # the label "0 0.90" is drawn
    pil = r.plot(pil=True)
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), out[..., ::-1])
    bare = r.plot(masks=False, boxes=False, labels=False)
    np.testing.assert_array_equal(bare[~(masks[0] | masks[1])], bgr[~(masks[0] | masks[1])])
    on_black = r.plot(img=np.zeros_like(bgr))
    assert (on_black[far] == 0).all()


def test_show_save_and_save_txt(r, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(Image.Image, "show", lambda im, *a, **k: shown.append(np.asarray(im)))
    r.show()
    assert len(shown) == 1 and np.array_equal(shown[0], r.plot()[..., ::-1])  # shown as RGB
    monkeypatch.chdir(tmp_path)
    name = r.save()
    assert name == "results_cat.jpg" and Image.open(name).size == (W, H)
    png = r.save(tmp_path / "sub" / "plot.png")
    assert isinstance(png, str) and np.array_equal(np.asarray(Image.open(png)), r.plot()[..., ::-1])
    txt = r.save_txt(tmp_path / "labels" / "cat.txt", save_conf=True)
    lines = [line.split() for line in Path(txt).read_text().splitlines()]
    assert [line[0] for line in lines] == ["0", "1"] and [float(line[-1]) for line in lines] == [0.9, 0.5]
    assert len(lines[1]) == 1 + 2 * len(r.masks.xy[1]) + 1  # class, the L's outline, conf
    xy = np.array(lines[0][1:-1], float).reshape(-1, 2)
    np.testing.assert_allclose(xy, r.masks.xyn[0], atol=1e-6)
    r.save_txt(txt)
    assert len(Path(txt).read_text().splitlines()) == 4  # appended, without conf this time
    r[:0].save_txt(tmp_path / "none.txt")
    assert not (tmp_path / "none.txt").exists()


def test_summary_and_to_json(r):
    s = r.summary()
    assert [d["name"] for d in s] == ["0", "1"] and [d["class"] for d in s] == [0, 1]
    assert s[0]["confidence"] == 0.9 and s[0]["box"] == {"x1": 5.0, "y1": 10.0, "x2": 25.0, "y2": 30.0}
    outline = r.masks.xy[1]
    assert s[1]["segments"] == {"x": outline[:, 0].tolist(), "y": outline[:, 1].tolist()}
    n = r.summary(normalize=True, decimals=3)
    assert n[1]["box"] == {"x1": 0.375, "y1": 0.333, "x2": 0.875, "y2": 0.833}
    assert max(n[1]["segments"]["x"]) <= 1
    assert json.loads(r.to_json()) == s and json.loads(r.to_json(normalize=True, decimals=3)) == n


def test_our_extras(r, masks):
    assert r.scores.dtype == np.float32 and r.scores.tolist() == pytest.approx([0.9, 0.5])
    assert r.logits.shape == (2, 15, 20)
    coco = r.to_coco()
    assert coco["images"][0] == {"id": 1, "file_name": "cat.jpg", "height": H, "width": W}
    for ann, mask in zip(coco["annotations"], masks):
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), mask)
    assert [ann["score"] for ann in coco["annotations"]] == pytest.approx([0.9, 0.5])
    lines = r.to_yolo([3, 5])
    assert [line.split()[0] for line in lines] == ["3", "5"]
    assert [len(p) for p in r.polygons] == [1, 1]


def test_conf_filter_keeps_class_numbers(bgr, masks):
    kept = Results.from_masks(bgr, masks, np.array([0.2, 0.8]), "image0.jpg", keep=np.array([False, True]))
    assert len(kept) == 1 and kept.boxes.cls.tolist() == [1] and kept.names == {0: "0", 1: "1"}
    assert kept.summary()[0]["name"] == "1"
