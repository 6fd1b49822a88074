"""The docs' call forms, each checked against sam.SamPredictor on the same prompts (tiny random model).

The Ultralytics-style API takes numpy arrays as BGR (as cv2.imread gives them); Meta's SamPredictor as RGB.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam import SAM, SAMPredictor, SamPredictor
from sam.automatic import SamAutomaticMaskGenerator
from sam.build import SamConfig, ViTConfig, build_sam

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
def bgr(image):
    return np.ascontiguousarray(image[..., ::-1])


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
    assert isinstance(r.masks.data, torch.Tensor)
    got_masks = r.masks.data.numpy()
    masks, scores = [], []
    for call in calls:
        m, s, _ = ref.predict(**{k: np.asarray(v) for k, v in call.items()}, multimask_output=multimask)
        masks.extend(m)
        scores.extend(s)
    assert got_masks.shape == (len(masks), *ref.original_size) and got_masks.dtype == bool
    np.testing.assert_allclose(r.scores, scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.boxes.conf.numpy(), scores, rtol=1e-4, atol=1e-5)
    for got, want in zip(got_masks, masks):
        assert (got != want).mean() < 1e-3  # batched float sums may flip a pixel at the threshold


def test_one_point(model, ref, image, bgr):
    expect(ref, model(bgr, points=[60, 40], labels=[1]), [dict(point_coords=[[60, 40]], point_labels=[1])])


def test_several_points_give_one_mask_each(model, ref, image, bgr):
    calls = [dict(point_coords=[[60, 40]], point_labels=[1]), dict(point_coords=[[140, 90]], point_labels=[1])]
    expect(ref, model(bgr, points=[[60, 40], [140, 90]], labels=[1, 1]), calls)
    expect(ref, model(bgr, points=[[60, 40], [140, 90]], labels=[[1, 1]]), calls)  # the docs' other spelling
    expect(ref, model(bgr, points=[[60, 40], [140, 90]]), calls)  # labels default to foreground


def test_several_points_one_object_and_negative_labels(model, ref, image, bgr):
    pts = [[60, 40], [140, 90]]
    pos = model(bgr, points=[pts], labels=[[1, 1]])
    expect(ref, pos, [dict(point_coords=pts, point_labels=[1, 1])])
    neg = model(bgr, points=[pts], labels=[[1, 0]])
    expect(ref, neg, [dict(point_coords=pts, point_labels=[1, 0])])
    assert not np.isclose(pos[0].scores[0], neg[0].scores[0])


def test_boxes(model, ref, image, bgr):
    b1, b2 = [20, 15, 100, 80], [90, 40, 165, 115]
    expect(ref, model(bgr, bboxes=b1), [dict(box=b1)])
    expect(ref, model(bgr, bboxes=[b1, b2]), [dict(box=b1), dict(box=b2)])
    expect(ref, model(bgr, bboxes=torch.tensor([b1, b2])), [dict(box=b1), dict(box=b2)])


def test_boxes_with_points(model, ref, image, bgr):
    b1, b2 = [20, 15, 100, 80], [90, 40, 165, 115]
    # one box refined by several points: one object
    one = model(bgr, bboxes=b1, points=[[60, 40], [95, 75]], labels=[1, 0])
    expect(ref, one, [dict(box=b1, point_coords=[[60, 40], [95, 75]], point_labels=[1, 0])])
    # box i with point group i
    two = model(bgr, bboxes=[b1, b2], points=[[[60, 40]], [[120, 80]]], labels=[[1], [0]])
    calls = [
        dict(box=b1, point_coords=[[60, 40]], point_labels=[1]),
        dict(box=b2, point_coords=[[120, 80]], point_labels=[0]),
    ]
    expect(ref, two, calls)
    with pytest.raises(ValueError, match="2 boxes but 3 point groups"):
        model(bgr, bboxes=[b1, b2], points=[[1, 2], [3, 4], [5, 6]])


def test_multimask(model, ref, image, bgr):
    calls = [dict(point_coords=[[60, 40]], point_labels=[1]), dict(point_coords=[[140, 90]], point_labels=[1])]
    res = model(bgr, points=[[60, 40], [140, 90]], multimask_output=True)
    assert len(res[0]) == 6
    expect(ref, res, calls, multimask=True)


def test_many_boxes_are_one_predict_torch_call(model, image, bgr, monkeypatch):
    calls = []
    original = model.predictor.predict_torch
    monkeypatch.setattr(model.predictor, "predict_torch", lambda *a, **k: calls.append(1) or original(*a, **k))
    boxes = [[i, i, i + 40, i + 30] for i in range(0, 50, 5)]
    assert len(model(bgr, bboxes=boxes)[0]) == 10
    assert len(calls) == 1


def test_bad_prompts(model, image, bgr):
    with pytest.raises(ValueError, match="2 points but 3 labels"):
        model(bgr, points=[[1, 2], [3, 4]], labels=[1, 1, 1])
    with pytest.raises(ValueError, match="labels must be 1"):
        model(bgr, points=[1, 2], labels=[2])
    with pytest.raises(ValueError, match="box must be"):
        model(bgr, bboxes=[1, 2, 3])
    with pytest.raises(ValueError, match="empty or inverted"):
        model(bgr, bboxes=[50, 2, 10, 30])
    with pytest.raises(ValueError, match="without points"):
        model(bgr, labels=[1])
    with pytest.raises(ValueError, match="equal lengths"):
        model(bgr, points=[[1, 2], [3]])
    with pytest.raises(ValueError, match="crop_n_layers: segment-everything settings"):
        model(bgr, points=[1, 2], crop_n_layers=1)
    with pytest.raises(ValueError, match="unknown argument 'crop_layers'"):
        model(bgr, crop_layers=1)
    with pytest.raises(ValueError, match="no image"):
        SAM(model.model)(points=[1, 2])


def test_prompts_off_the_image(model, bgr):
    """The app's /segment rule: a point must lie on the image; a box past an edge is clipped to it."""
    h, w = bgr.shape[:2]
    with pytest.raises(ValueError, match=f"point \\(171, 40\\) is outside the {w}x{h} image"):
        model(bgr, points=[w + 1, 40])
    with pytest.raises(ValueError, match="is outside the"):
        model(bgr, bboxes=[w + 5, 0, w + 50, 40])
    clipped = model(bgr, bboxes=[100, 60, w + 400, h + 300])[0]
    np.testing.assert_array_equal(clipped.masks.data, model(bgr, bboxes=[100, 60, w, h])[0].masks.data)


def test_colour_order_numpy_is_bgr_pil_is_rgb(model, ref, image, bgr, tmp_path):
    """As Ultralytics: arrays are BGR (cv2.imread's order), PIL images RGB, files as files; Meta's API stays RGB."""
    import cv2  # a runtime dependency (requirements.txt): never skipped

    Image.fromarray(image).save(tmp_path / "a.png")
    prompt = dict(bboxes=[20, 15, 100, 80])
    want = dict(box=[20, 15, 100, 80])  # Meta's SamPredictor, given the RGB image
    for source in (cv2.imread(str(tmp_path / "a.png")), bgr, Image.fromarray(image), str(tmp_path / "a.png")):
        r = model(source, **prompt)
        expect(ref, r, [want])
        np.testing.assert_array_equal(r[0].orig_img, bgr)  # orig_img is BGR, as Ultralytics keeps it
    swapped = model(image, **prompt)[0]  # an RGB array read as BGR: another image to the model
    assert not np.isclose(swapped.scores[0], model(bgr, **prompt)[0].scores[0])
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    expect(ref, model(bgra, **prompt), [want])
    grey = model(bgr[..., 0], **prompt)[0]  # one channel: the same in either order
    np.testing.assert_array_equal(grey.orig_img, np.repeat(bgr[..., :1], 3, axis=2))


def test_tensor_url_video_and_webcam_sources(model, ref, image, tmp_path):
    rgb = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # CHW RGB in [0, 1], as Ultralytics takes
    batch = model(torch.stack([rgb, rgb]), bboxes=[20, 15, 100, 80])
    assert [r.path for r in batch] == ["image0.jpg", "image1.jpg"]
    for r in batch:
        expect(ref, [r], [dict(box=[20, 15, 100, 80])])
    expect(ref, model(rgb, bboxes=[20, 15, 100, 80]), [dict(box=[20, 15, 100, 80])])
    with pytest.raises(ValueError, match=r"floats in \[0, 1\]"):
        model(rgb[None] * 255, bboxes=[20, 15, 100, 80])
    with pytest.raises(ValueError, match="divide it by 255"):
        model(torch.from_numpy(image).permute(2, 0, 1)[None], bboxes=[20, 15, 100, 80])
    with pytest.raises(ValueError, match="3 RGB channels"):
        model(rgb[:2][None], bboxes=[20, 15, 100, 80])
    with pytest.raises(ValueError, match="URLs are not fetched here: download the file first"):
        model("https://ultralytics.com/images/bus.jpg")
    with pytest.raises(ValueError, match="streams are not supported"):
        model("rtsp://example.com/live")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    for video in (tmp_path / "clip.mp4", "missing.MOV"):
        with pytest.raises(ValueError, match="video is not supported: SAM segments still images"):
            model(video)
    with pytest.raises(ValueError, match="webcam"):
        model(0)


def test_sources_and_last_image_reuse(model, image, bgr, tmp_path):
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[::-1].copy()).save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("not an image")
    prompt = dict(points=[60, 40], labels=[1])
    from_array = model(bgr, **prompt)[0]
    assert from_array.path == "image0.jpg"  # as Ultralytics names images given in memory
    for source in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.fromarray(image)):
        r = model(source, **prompt)[0]
        np.testing.assert_array_equal(r.masks.data, from_array.masks.data)
    folder = model(tmp_path, **prompt)
    assert [r.path for r in folder] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert [r.path for r in model(str(tmp_path / "*.png"), **prompt)] == [r.path for r in folder]
    # no source: the last image again, without re-running the encoder
    features = model.predictor.features
    again = model(points=[60, 40], labels=[1])[0]
    assert model.predictor.features is features
    assert again.path == str(tmp_path / "b.png")
    np.testing.assert_array_equal(again.masks.data, folder[1].masks.data)
    pair = model([bgr, bgr[::-1].copy()], **prompt)
    assert [r.path for r in pair] == ["image0.jpg", "image1.jpg"] and pair[1].orig_img.shape == image.shape
    stream = model(tmp_path, **prompt, stream=True)
    assert not isinstance(stream, list) and len(list(stream)) == 2
    with pytest.raises(FileNotFoundError, match="no such file"):
        model(tmp_path / "missing.png", **prompt)
    with pytest.raises(ValueError, match=r"float image must hold values in \[0, 1\]"):
        model(bgr.astype(np.float32), **prompt)  # sam.images reads floats in [0, 1] only


def test_mask_prompt_is_metas_mask_input(model, ref, bgr):
    first = model(bgr, points=[60, 40], labels=[1])[0]
    assert first.logits.shape == (1, 64, 64)  # 4x the 16x16 embedding of a 256 input
    refined = model(points=[[[60, 40], [140, 90]]], labels=[[1, 0]], masks=first.logits)
    call = dict(point_coords=[[60, 40], [140, 90]], point_labels=[1, 0], mask_input=first.logits)
    expect(ref, refined, [call])
    expect(ref, model(masks=first.logits[0]), [dict(mask_input=first.logits)])  # a mask alone is a prompt
    two = model(bboxes=[[20, 15, 100, 80], [90, 40, 165, 115]])[0]
    expect(ref, model(bboxes=[[20, 15, 100, 80], [90, 40, 165, 115]], masks=torch.from_numpy(two.logits)), [
        dict(box=[20, 15, 100, 80], mask_input=two.logits[:1]), dict(box=[90, 40, 165, 115], mask_input=two.logits[1:])
    ])  # fmt: skip
    with pytest.raises(ValueError, match="1 masks but 2 objects"):
        model(bboxes=[[20, 15, 100, 80], [90, 40, 165, 115]], masks=first.logits)
    with pytest.raises(ValueError, match="masks must be Nx64x64 low-res logits"):
        model(points=[60, 40], masks=np.zeros((1, 256, 256)))


def test_segment_everything_uses_the_generator(model, tiny, image, bgr, capsys):
    args = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1)
    records = SamAutomaticMaskGenerator(tiny, **args).generate(image)
    r = model(bgr, points_stride=2, conf_thres=0.0, stability_score_thresh=0.0, crop_n_layers=1)[0]
    assert len(records) > 0 and len(r) == len(records)
    np.testing.assert_array_equal(r.masks.data.numpy(), np.stack([rec["segmentation"] for rec in records]))
    np.testing.assert_allclose(r.scores, [rec["predicted_iou"] for rec in records], rtol=1e-6)
    with pytest.raises(ValueError, match="both given"):
        model(bgr, points_stride=4, points_per_side=4)


def test_progress_and_the_work_announced(model, bgr, capsys, monkeypatch):
    """Segment everything shows a progress bar on stderr and says what a large run will do; verbose=False: quiet."""
    import sam.api

    model(bgr, points_stride=2, conf_thres=0.0, stability_score_thresh=0.0)
    err = capsys.readouterr().err
    assert "everything" in err and "4/4" in err and "image 1/1 image0.jpg: 170x120" in err and "Speed:" in err
    assert "segment everything:" not in err  # small work is not announced
    model(bgr, points_stride=2, verbose=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sam.api, "LARGE_WORK", 40)  # instead of 4096, to keep the run short
    model(bgr, points_stride=3, crop_n_layers=1)
    err = capsys.readouterr().err
    assert "segment everything: 1 crop x 9 points + 4 crops x 9 points = 45 points" in err and "45/45" in err
    model(bgr, points_stride=3, crop_n_layers=1, progress=False)  # the bar and the announcement, off alone
    err = capsys.readouterr().err
    assert "segment everything:" not in err and "45/45" not in err and "image 1/1" in err


def test_conf_drops_low_scores(model, image, bgr):
    points = [[[x, y]] for x in range(10, 170, 30) for y in range(10, 120, 40)]
    everything = model(bgr, points=points)[0]
    conf = float(np.median(everything.scores))
    kept = model(bgr, points=points, conf=conf)[0]
    assert 0 < len(kept) == int((everything.scores > conf).sum()) < len(everything)
    np.testing.assert_array_equal(kept.masks.data, everything.masks.data[everything.scores > conf])
    # the class of a mask stays its place among all the masks, as Ultralytics' SAM numbers them
    np.testing.assert_array_equal(kept.boxes.cls.numpy(), np.flatnonzero(everything.scores > conf))


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


def test_sam_predictor(tiny, image, bgr, ref, tmp_path):
    Image.fromarray(image).save(tmp_path / "a.png")
    predictor = SAMPredictor(overrides=dict(conf=0.0, task="segment", mode="predict", imgsz=256), model=tiny)
    predictor.set_image(str(tmp_path / "a.png"))
    expect(ref, predictor(bboxes=[20, 15, 100, 80]), [dict(box=[20, 15, 100, 80])])
    predictor.set_image(bgr)
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
    assert len(high(bgr, points=[60, 40])[0]) == 0
    with pytest.raises(ValueError, match="imgsz=1024 is not supported: SAM always embeds the image with its long side"):
        SAMPredictor(overrides=dict(imgsz=1024), model=tiny)
    with pytest.raises(ValueError, match="unknown argument 'cof'"):
        SAMPredictor(overrides=dict(cof=0.2), model=tiny)
    with pytest.raises(ValueError, match="half= is not supported: fp16 is not used here"):
        SAMPredictor(overrides=dict(half=True), model=tiny)
    with pytest.raises(ValueError, match="task='segment'"):
        SAMPredictor(overrides=dict(task="detect"), model=tiny)


def test_call_arguments(model, bgr, tmp_path, monkeypatch, capsys):
    """save / save_txt to runs/segment/predict*, project / name / exist_ok, verbose, device; the rest refused."""
    monkeypatch.chdir(tmp_path)
    box = dict(bboxes=[20, 15, 100, 80])
    first = model(bgr, **box, save=True)[0]
    assert first.save_dir == str(Path("runs/segment/predict")) and "Results saved to runs/segment/predict" in (
        capsys.readouterr().err
    )
    saved = np.asarray(Image.open("runs/segment/predict/image0.jpg"))
    assert saved.shape == bgr.shape  # in RGB order in the file: the channel means of plot() reversed (JPEG blurs)
    np.testing.assert_allclose(saved.mean((0, 1)), first.plot()[..., ::-1].mean((0, 1)), atol=3)
    model(bgr, **box, save=True, save_txt=True, save_conf=True, verbose=False)
    line = Path("runs/segment/predict2/labels/image0.txt").read_text().split()
    assert line[0] == "0" and float(line[-1]) == pytest.approx(float(first.scores[0]), rel=1e-4)
    model(bgr, **box, save_txt=True, project="out", name="exp", verbose=False)
    model(bgr, **box, save_txt=True, project="out", name="exp", exist_ok=True, verbose=False)
    assert sorted(p.name for p in Path("out").iterdir()) == ["exp"]
    assert len(Path("out/exp/labels/image0.txt").read_text().splitlines()) == 2  # appended, as Ultralytics
    assert sorted(p.name for p in Path("runs/segment").iterdir()) == ["predict", "predict2"]
    assert len(model(bgr, **box, device="cpu", imgsz=[256, 256], verbose=False)) == 1
    shown = []
    monkeypatch.setattr(Image.Image, "show", lambda im, *a, **k: shown.append(im.size))
    model(bgr, **box, show=True, verbose=False)
    assert shown == [(bgr.shape[1], bgr.shape[0])]
    for key, value, reason in (
        ("imgsz", 640, "SAM always embeds the image with its long side at 256 pixels"),
        ("half", True, "load_model"),
        ("vid_stride", 2, "video is not supported"),
        ("classes", [0], "SAM's masks have no classes"),
        ("texts", ["a dog"], "text prompts are not supported here"),
    ):
        with pytest.raises(ValueError, match=f"{key}=.*{reason}"):
            model(bgr, **box, **{key: value})


@pytest.mark.parametrize(
    "name, family",
    [
        ("sam2_b.pt", "SAM 2 / SAM 2.1"),
        ("sam2.1_t.pt", "SAM 2 / SAM 2.1"),
        ("sam3.pt", "SAM 3"),
        ("FastSAM-s.pt", "FastSAM"),
        ("yolo11n-seg.pt", "an Ultralytics YOLO model"),
        ("yolov8n-seg.pt", "an Ultralytics YOLO model"),
    ],
)
def test_models_the_docs_name_that_are_not_supported(name, family, monkeypatch):
    """Each family gets its own message, until sam.weights knows the name: then it loads as any known model."""
    import sam.api
    from sam import WeightsError

    monkeypatch.setattr(sam.api, "KNOWN_MODELS", {k: v for k, v in sam.api.KNOWN_MODELS.items() if k != name})
    with pytest.raises(WeightsError, match=f"{name!r} is {family}.*it is not supported here.*sam_b.pt"):
        SAM(name)
    monkeypatch.setattr(sam.api, "KNOWN_MODELS", {**sam.api.KNOWN_MODELS, name: None})
    sam.api.check_supported(name)  # a known name is not refused


@pytest.mark.parametrize("multimask, each", [(True, "3 candidate masks each"), (False, "one mask each")])
def test_a_large_segment_everything_is_announced_with_its_masks_per_point(capsys, multimask, each):
    from types import SimpleNamespace

    from sam.api import announce_work

    grids = [np.zeros((64 * 64, 2)), np.zeros((32 * 32, 2))]
    generator = SimpleNamespace(crop_n_layers=1, crop_overlap_ratio=512 / 1500, point_grids=grids,
                                multimask_output=multimask)
    announce_work(generator, (768, 1024))
    assert capsys.readouterr().err.startswith(
        f"segment everything: 1 crop x 4096 points + 4 crops x 1024 points = 8192 points, {each} (")
    announce_work(SimpleNamespace(crop_n_layers=0, crop_overlap_ratio=0.3, point_grids=grids[1:]), (768, 1024))
    assert capsys.readouterr().err == ""  # the default work is not announced
