"""auto_annotate on a synthetic dataset whose objects are known, with the real SAM pipeline (random weights)."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sam import SAM, auto_annotate
from sam.annotate import read_yolo_boxes
from sam.build import SamConfig, ViTConfig, build_sam
from sam.export import yolo_lines

TINY = SamConfig(ViTConfig(64, 2, 4, (1,), window_size=4), img_size=256)
COLORS = {0: (255, 0, 0), 1: (0, 0, 255)}  # class -> the colour (RGB) its objects are painted in


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return SAM(build_sam(TINY))


def color_detector(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A detector for the synthetic images (BGR, as auto_annotate hands them over): the bounding box of each
    pure-colour region, class by colour."""
    import cv2

    boxes, classes = [], []
    for cls, color in COLORS.items():
        hit = np.all(image == color[::-1], axis=2).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(hit, connectivity=8)
        for x, y, w, h, _ in stats[1:]:
            boxes.append([x, y, x + w, y + h])
            classes.append(cls)
    return np.array(boxes, dtype=float).reshape(-1, 4), np.array(classes, dtype=int)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """images/ with known objects (boxes, classes) per image stem; one image has none."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    truth = {}
    specs = {
        "one": ((96, 128), [(0, (10, 12, 50, 60)), (1, (70, 30, 120, 90))]),
        "two": ((120, 80), [(1, (5, 5, 40, 40)), (0, (30, 60, 75, 110)), (0, (50, 8, 78, 30))]),
        "empty": ((64, 64), []),
    }
    for stem, ((h, w), objects) in specs.items():
        image = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)  # no pure red or blue pixels
        for cls, (x0, y0, x1, y1) in objects:
            image[y0:y1, x0:x1] = COLORS[cls]
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        truth[stem] = (np.array([o[1] for o in objects], float).reshape(-1, 4), np.array([o[0] for o in objects]))
    return root, truth


def parse(path):
    rows = []
    for line in path.read_text().splitlines():
        cls, *coords = line.split()
        rows.append((int(cls), np.array([float(v) for v in coords]).reshape(-1, 2)))
    return rows


def read_bgr(path) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[..., ::-1])


def expected_lines(sam, image_path, boxes, classes):
    return yolo_lines(list(sam(read_bgr(image_path), bboxes=boxes)[0].masks.data.numpy()), classes)


def test_detector_sees_the_known_objects(dataset):
    root, truth = dataset
    for stem, (boxes, classes) in truth.items():
        got_boxes, got_classes = color_detector(read_bgr(root / "images" / f"{stem}.png"))
        order = np.lexsort((got_boxes[:, 1], got_boxes[:, 0]))
        want = np.lexsort((boxes[:, 1], boxes[:, 0]))
        np.testing.assert_array_equal(got_boxes[order], boxes[want])
        np.testing.assert_array_equal(got_classes[order], classes[want])


def test_round_trip_with_a_callable_detector(dataset, sam):
    root, truth = dataset
    seen = []
    out = auto_annotate(root / "images", det_model=lambda im: seen.append(im) or color_detector(im), sam_model=sam)
    for image, stem in zip(seen, ("empty", "one", "two")):  # the detector is given BGR, as Ultralytics' models
        np.testing.assert_array_equal(image, read_bgr(root / "images" / f"{stem}.png"))
    assert out == root / "images_auto_annotate_labels"  # the docs' default, beside the data folder
    assert sorted(p.name for p in out.iterdir()) == ["one.txt", "two.txt"]  # no detections, no file
    for stem in ("one", "two"):
        path = root / "images" / f"{stem}.png"
        boxes, classes = color_detector(read_bgr(path))
        text = (out / f"{stem}.txt").read_text()
        assert text.splitlines() == expected_lines(sam, path, boxes, classes)
        rows = parse(out / f"{stem}.txt")
        assert [cls for cls, _ in rows] == classes.tolist()  # one line per detection, in the detector's order
        assert sorted(classes.tolist()) == sorted(truth[stem][1].tolist())
        for _, xy in rows:
            assert len(xy) >= 3 and (xy >= 0).all() and (xy <= 1).all()


def test_round_trip_with_yolo_box_labels(dataset, sam, tmp_path):
    root, truth = dataset
    labels = tmp_path / "det_labels"
    labels.mkdir()
    for stem, (boxes, classes) in truth.items():
        h, w = np.asarray(Image.open(root / "images" / f"{stem}.png")).shape[:2]
        lines = [
            f"{c} {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}"
            for c, (x0, y0, x1, y1) in zip(classes, boxes)
        ]
        if lines:
            (labels / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        read_boxes, read_classes = read_yolo_boxes(labels / f"{stem}.txt", (h, w))
        np.testing.assert_allclose(read_boxes, boxes, atol=1e-9)
        np.testing.assert_array_equal(read_classes, classes)
    out = auto_annotate(str(root / "images"), det_model=labels, sam_model=sam, output_dir=tmp_path / "seg")
    assert out == tmp_path / "seg"
    assert sorted(p.name for p in out.iterdir()) == ["one.txt", "two.txt"]
    for stem in ("one", "two"):
        path = root / "images" / f"{stem}.png"
        h, w = np.asarray(Image.open(path)).shape[:2]
        boxes, classes = read_yolo_boxes(labels / f"{stem}.txt", (h, w))
        assert (out / f"{stem}.txt").read_text().splitlines() == expected_lines(sam, path, boxes, classes)
    # a class filter keeps only that class's objects
    only = auto_annotate(root / "images", det_model=labels, sam_model=sam, classes=[1], output_dir=tmp_path / "c1")
    for path in only.iterdir():
        assert {cls for cls, _ in parse(path)} == {1}


def test_bad_label_file_and_missing_ultralytics(dataset, sam, tmp_path, monkeypatch):
    root, _ = dataset
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "one.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(ValueError, match=r"one.txt:1: expected `class cx cy w h`"):
        auto_annotate(root / "images", det_model=tmp_path / "bad", sam_model=sam, output_dir=tmp_path / "o")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install ultralytics"):
        auto_annotate(root / "images", det_model="yolo11x.pt", sam_model=sam, output_dir=tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        auto_annotate(tmp_path / "nothing", det_model=color_detector, sam_model=sam)
