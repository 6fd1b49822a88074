import numpy as np
import pycocotools.mask as coco_mask
import pytest

from sam.masks import (
    area,
    decode_coco_rle,
    encode_coco_rle,
    mask_to_box,
    mask_to_polygons,
    mask_to_rle,
    mask_to_xywh,
    normalize_polygons,
    polygons_to_mask,
    rle_to_mask,
)

# pycocotools' decode warns about numpy 2's copy keyword; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def random_masks(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        if i % 3 == 0:  # one rectangle reaching the bottom-right corner
            m = np.zeros((h, w), bool)
            m[rng.integers(0, h) :, rng.integers(0, w) :] = True
        elif i % 3 == 1:  # noise of any density
            m = rng.random((h, w)) < rng.random()
        else:  # long runs: counts of several 5-bit groups, and negative differences
            m = np.zeros((h, w), bool)
            m.ravel(order="F")[: rng.integers(0, h * w)] = True
            m = m if rng.random() < 0.5 else ~m
        yield m


def reference(mask: np.ndarray) -> dict:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_compressed_rle_is_byte_identical_to_pycocotools():
    masks = [*random_masks(), np.zeros((5, 7), bool), np.ones((5, 7), bool), np.zeros((300, 400), bool)]
    for m in masks:
        ours, ref = encode_coco_rle(m), reference(m)
        assert isinstance(ours["counts"], str)
        assert ours["counts"].encode() == ref["counts"], m.shape
        assert ours["size"] == list(ref["size"])
        assert np.array_equal(coco_mask.decode({"size": ours["size"], "counts": ours["counts"]}), m)


def test_decode_compressed_and_uncompressed():
    for m in random_masks(seed=1, n=100):
        ref = reference(m)
        assert np.array_equal(decode_coco_rle({"size": ref["size"], "counts": ref["counts"]}), m)
        assert np.array_equal(decode_coco_rle(mask_to_rle(m)), m)
        assert np.array_equal(rle_to_mask(mask_to_rle(m)), m)


def test_uncompressed_rle_matches_pycocotools_runs():
    m = np.zeros((4, 5), bool)
    m[1:3, 1:4] = True
    # column-major runs starting with zeros
    assert mask_to_rle(m) == {"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2, 5]}
    ref = coco_mask.frPyObjects(mask_to_rle(m), 4, 5)
    assert np.array_equal(coco_mask.decode(ref), m)


def test_box_area_match_pycocotools():
    for m in random_masks(seed=2, n=100):
        ref = reference(m)
        assert area(m) == int(coco_mask.area(ref))
        if m.any():
            assert mask_to_xywh(m) == [int(v) for v in coco_mask.toBbox(ref)]
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert mask_to_box(m) == [3, 2, 9, 5]
    assert mask_to_xywh(m) == [3, 2, 6, 3]
    assert mask_to_box(np.zeros((4, 4), bool)) == [0, 0, 0, 0]


def test_encoding_is_fast_enough_to_be_vectorised():
    """A noisy 1024x768 mask has ~200k runs; a per-run Python loop would take far longer than this bound."""
    import time

    rng = np.random.default_rng(0)
    m = rng.random((768, 1024)) < 0.3
    encode_coco_rle(m)
    t = time.perf_counter()
    rle = encode_coco_rle(m)
    elapsed = time.perf_counter() - t
    assert rle["counts"].encode() == reference(m)["counts"]
    assert elapsed < 1.0


def blob(h=120, w=160):
    yy, xx = np.mgrid[:h, :w]
    a = (xx - 50) ** 2 / 30**2 + (yy - 60) ** 2 / 40**2 < 1
    b = (np.abs(xx - 125) < 20) & (np.abs(yy - 30) < 15)
    return a | b


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_polygons_rasterise_back():
    m = blob()
    m[100, 150] = True  # a single pixel: degenerate, dropped
    polys = mask_to_polygons(m)
    assert len(polys) == 2
    assert all(p.ndim == 2 and p.shape[1] == 2 and len(p) >= 3 for p in polys)
    assert polys[0][:, 0].mean() < 80  # the ellipse (largest) first
    assert iou(polygons_to_mask(polys, m.shape), blob()) > 0.97
    norm = normalize_polygons(polys, m.shape)
    assert all((p >= 0).all() and (p <= 1).all() for p in norm)
    np.testing.assert_allclose(norm[0] * [160, 120], polys[0], rtol=1e-5)
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="HxW"):
        encode_coco_rle(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="HxW"):
        mask_to_polygons(np.zeros(5, bool))
