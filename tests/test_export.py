import io
import json
import zipfile

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image

from sam.export import (
    ExportObject,
    build_zip,
    coco_json,
    cutout_png,
    mask_png,
    safe_name,
    unique_names,
    yolo_labels,
)
from sam.masks import polygons_to_mask

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

H, W = 90, 140


def scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:H, :W]
    disc = (xx - 40) ** 2 + (yy - 45) ** 2 < 25**2
    rect = (np.abs(xx - 105) < 20) & (np.abs(yy - 30) < 12)
    ring = ((xx - 105) ** 2 + (yy - 70) ** 2 < 15**2) & ((xx - 105) ** 2 + (yy - 70) ** 2 > 6**2)
    objects = [
        ExportObject("cat", disc, 0.91, (255, 0, 0)),
        ExportObject("../../etc/passwd", rect, 0.5, category="box"),
        ExportObject("cat", ring, 0.75),
    ]
    return image, objects


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def parse_yolo(text: str) -> list[tuple[int, np.ndarray]]:
    rows = []
    for line in text.splitlines():
        cls, *coords = line.split()
        xy = np.array([float(v) for v in coords]).reshape(-1, 2)
        rows.append((int(cls), xy))
    return rows


def test_names_are_safe_and_unique():
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("  ") == "object"
    assert safe_name("a/b\\c:d*e?.png") == "a_b_c_d_e_.png"
    assert safe_name("x" * 500) == "x" * 64
    assert unique_names(["cat", "Cat", "cat", "", "/"]) == ["cat", "Cat_2", "cat_3", "object", "object_2"]


def test_coco_decodes_to_exact_masks():
    image, objects = scene()
    coco = coco_json(objects, (H, W), file_name="scene.png")
    json.dumps(coco)  # serialisable as is
    assert coco["images"] == [{"id": 1, "file_name": "scene.png", "height": H, "width": W}]
    assert [c["name"] for c in coco["categories"]] == ["cat", "box"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 1]
    for ann, obj in zip(coco["annotations"], objects):
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        assert np.array_equal(coco_mask.decode(rle).astype(bool), obj.mask)
        assert ann["area"] == int(coco_mask.area(rle)) == obj.mask.sum()
        assert ann["bbox"] == [int(v) for v in coco_mask.toBbox(rle)]
        assert ann["score"] == ann["predicted_iou"] == pytest.approx(obj.score)


def test_yolo_lines_parse_and_rasterise_back():
    image, objects = scene()
    text, names = yolo_labels(objects)
    assert names == ["cat", "box"]
    rows = parse_yolo(text)
    assert [cls for cls, _ in rows] == [0, 1, 0]  # one outer polygon per object here
    filled = []
    for _, xy in rows:
        assert len(xy) >= 3 and (xy >= 0).all() and (xy <= 1).all()
        filled.append(polygons_to_mask([xy * [W, H]], (H, W)))
    # the disc and the rectangle are blobs: their polygon gives the mask back
    assert iou(filled[0], objects[0].mask) > 0.95
    assert iou(filled[1], objects[1].mask) > 0.95
    # the ring's outer contour is traced, its hole is not (YOLO-seg has one polygon per line)
    ring = objects[2].mask
    assert (filled[2] & ring).sum() / ring.sum() > 0.97
    assert 0.7 < iou(filled[2], ring) < 0.9


def test_yolo_keeps_the_largest_region_of_a_mask():
    yy, xx = np.mgrid[:H, :W]
    two_pieces = ((xx - 40) ** 2 + (yy - 45) ** 2 < 25**2) | ((np.abs(xx - 110) < 8) & (np.abs(yy - 20) < 8))
    text, _ = yolo_labels([ExportObject("a", two_pieces), ExportObject("empty", np.zeros((H, W), bool))])
    rows = parse_yolo(text)
    assert len(rows) == 1  # one object, one line; the empty mask gives none
    assert rows[0][1][:, 0].max() * W < 70  # the disc, not the small square


def test_pngs_have_the_image_size():
    image, objects = scene()
    m = Image.open(io.BytesIO(mask_png(objects[0].mask)))
    assert m.mode == "L" and m.size == (W, H)
    assert set(np.unique(np.asarray(m))) == {0, 255}
    c = np.asarray(Image.open(io.BytesIO(cutout_png(image, objects[0].mask))))
    assert c.shape == (H, W, 4)
    assert np.array_equal(c[..., 3] > 0, objects[0].mask)
    assert np.array_equal(c[objects[0].mask][:, :3], image[objects[0].mask])


def test_zip_contents():
    image, objects = scene()
    data = build_zip(image, objects, image_name="my photo.jpg")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(
            [
                "images/my_photo.png",
                "masks/cat.png",
                "masks/etc_passwd.png",
                "masks/cat_2.png",
                "cutouts/cat.png",
                "cutouts/etc_passwd.png",
                "cutouts/cat_2.png",
                "annotations.json",
                "labels/my_photo.txt",
                "classes.txt",
            ]
        )
        assert all(not n.startswith(("/", "..")) and ".." not in n for n in names)
        for n in names:
            if n.endswith(".png"):
                assert Image.open(io.BytesIO(zf.read(n))).size == (W, H)
        assert zf.read("classes.txt").decode() == "cat\nbox\n"
        coco = json.loads(zf.read("annotations.json"))
        assert coco["images"][0]["file_name"] == "my_photo.png"
        assert [a["file"] for a in coco["annotations"]] == ["cat", "etc_passwd", "cat_2"]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(zf.read("images/my_photo.png")))), image)
        assert len(parse_yolo(zf.read("labels/my_photo.txt").decode())) == 3


def test_empty_and_bad_input():
    image, _ = scene()
    with zipfile.ZipFile(io.BytesIO(build_zip(image, []))) as zf:
        assert zf.read("labels/image.txt") == b""
        assert json.loads(zf.read("annotations.json"))["annotations"] == []
    with pytest.raises(ValueError, match="same size"):
        build_zip(image, [ExportObject("x", np.zeros((H + 1, W), bool))])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        build_zip(image.astype(np.float32), [])
