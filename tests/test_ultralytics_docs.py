"""The code blocks of the Ultralytics SAM docs, run as printed but for the line that imports from ultralytics.

The blocks are copied from the docs' SAM page (the current one and an early one). The model files they
name (sam_b.pt, mobile_sam.pt) are small random checkpoints written into the working folder, where a local
file wins over a Hub name. The SAMPredictor blocks ask for imgsz=1024, which only a 1024-pixel model takes:
there the model name changes to mobile_sam_1024, a small random 1024-pixel model (one decoder head, to keep
the docs' 20480-point segment-everything under a minute). The images (ultralytics/assets/zidane.jpg,
path/to/...) are synthetic, zidane.jpg and bus.jpg of their real sizes. Every call's Results are recorded
and checked by type and shape. The last test runs a script written against Ultralytics' Results API,
unchanged but for its import.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam import SAM, Results, WeightsError
from sam.build import SamConfig, ViTConfig, build_sam
from sam.cli import main

TOY = SamConfig(
    ViTConfig(32, 1, 2, (0,), window_size=4), img_size=256, prompt_embed_dim=32, mask_in_chans=4, decoder_depth=1,
    decoder_mlp_dim=64, iou_head_hidden_dim=32,
)  # fmt: skip
# The same widths at 1024 pixels (the docs' imgsz=1024), in the transformers layout, whose config.json can say
# that the decoder has one attention head (Meta's files imply eight, three times slower here).
TOY_1024_HF = dict(
    vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, global_attn_indexes=[0],
                       window_size=4, image_size=1024, mlp_dim=64, output_channels=32, num_pos_feats=16),
    prompt_encoder_config=dict(image_size=1024, hidden_size=32, mask_input_channels=4),
    mask_decoder_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, mlp_dim=32,
                             iou_head_hidden_dim=16),
)  # fmt: skip
ZIDANE, BUS, IMAGE = (720, 1280), (1080, 810), (480, 640)  # (H, W)

PROMPTS = '''\
from ultralytics import SAM

# Load a model
model = SAM("sam_b.pt")

# Display model information (optional)
model.info()

# Run inference with bboxes prompt
results = model("ultralytics/assets/zidane.jpg", bboxes=[439, 437, 524, 709])

# Run inference with single point
results = model(points=[900, 370], labels=[1])

# Run inference with multiple points
results = model(points=[[400, 370], [900, 370]], labels=[1, 1])

# Run inference with multiple points prompt per object
results = model(points=[[[400, 370], [900, 370]]], labels=[[1, 1]])

# Run inference with negative points prompt
results = model(points=[[[400, 370], [900, 370]]], labels=[[1, 0]])
'''

EVERYTHING = '''\
from ultralytics import SAM

# Load a model
model = SAM("sam_b.pt")

# Display model information (optional)
model.info()

# Run inference
model("path/to/image.jpg")
'''

CLI = "yolo predict model=sam_b.pt source=path/to/image.jpg"

PREDICTOR = '''\
from ultralytics.models.sam import Predictor as SAMPredictor

# Create SAMPredictor
overrides = dict(conf=0.25, task="segment", mode="predict", imgsz=1024, model="mobile_sam.pt")
predictor = SAMPredictor(overrides=overrides)

# Set image
predictor.set_image("ultralytics/assets/zidane.jpg")  # set with image file
predictor.set_image(cv2.imread("ultralytics/assets/zidane.jpg"))  # set with np.ndarray
results = predictor(bboxes=[439, 437, 524, 709])

# Run inference with single point prompt
results = predictor(points=[900, 370], labels=[1])

# Run inference with multiple points prompt
results = predictor(points=[[400, 370], [900, 370]], labels=[[1, 1]])

# Run inference with negative points prompt
results = predictor(points=[[[400, 370], [900, 370]]], labels=[[1, 0]])

# Reset image
predictor.reset_image()
'''

PREDICTOR_EVERYTHING = '''\
from ultralytics.models.sam import Predictor as SAMPredictor

# Create SAMPredictor
overrides = dict(conf=0.25, task="segment", mode="predict", imgsz=1024, model="mobile_sam.pt")
predictor = SAMPredictor(overrides=overrides)

# Segment with additional args
results = predictor(source="ultralytics/assets/zidane.jpg", crop_n_layers=1, points_stride=64)
'''

PROFILE = '''\
from ultralytics import ASSETS, SAM, YOLO, FastSAM

# Profile SAM-b, MobileSAM
for file in ["sam_b.pt", "mobile_sam.pt"]:
    model = SAM(file)
    model.info()
    model(ASSETS)

# Profile FastSAM-s
model = FastSAM("FastSAM-s.pt")
model.info()
model(ASSETS)

# Profile YOLOv8n-seg
model = YOLO("yolov8n-seg.pt")
model.info()
model(ASSETS)
'''

AUTO_ANNOTATE = '''\
from ultralytics.data.annotator import auto_annotate

auto_annotate(data="path/to/images", det_model="yolo11x.pt", sam_model="sam_b.pt")
'''

FAQ = '''\
from ultralytics import SAM

# Load a model
model = SAM("sam_b.pt")

# Segment with bounding box prompt
model("ultralytics/assets/zidane.jpg", bboxes=[439, 437, 524, 709])

# Segment with points prompt
model("ultralytics/assets/zidane.jpg", points=[900, 370], labels=[1])

# Segment with multiple points prompt
model("ultralytics/assets/zidane.jpg", points=[[400, 370], [900, 370]], labels=[[1, 1]])

# Segment with multiple points prompt per object
model("ultralytics/assets/zidane.jpg", points=[[[400, 370], [900, 370]]], labels=[[1, 1]])

# Segment with negative points prompt.
model("ultralytics/assets/zidane.jpg", points=[[[400, 370], [900, 370]]], labels=[[1, 0]])
'''

FAQ_AUTO_ANNOTATE = '''\
from ultralytics.data.annotator import auto_annotate

auto_annotate(data="path/to/images", det_model="yolov8x.pt", sam_model="sam_b.pt")
'''

EARLY = """\
from ultralytics import SAM
model = SAM('sam_b.pt')
model.info() # display model information
model.predict('path/to/image.jpg') # predict
"""

EARLY_AUTO_ANNOTATE = """\
from ultralytics.yolo.data.annotator import auto_annotate
auto_annotate(data="path/to/images", det_model="yolov8x.pt", sam_model='sam_b.pt')
"""


def run_block(code: str, old: str, new: str) -> dict:
    """Run a docs block with its import line `old` replaced by `new` (nothing else changes)."""
    assert code.count(old) == 1, "the block must hold the import line it replaces"
    namespace: dict = {"__name__": "docs_block"}
    exec(compile(code.replace(old, new), "docs_block", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The files the blocks name: two toy checkpoints, the images, a folder of images and its YOLO boxes."""
    from tests.helpers.hub import write_transformers

    root = tmp_path_factory.mktemp("docs")
    for seed, name in enumerate(("sam_b.pt", "mobile_sam.pt")):
        torch.manual_seed(seed)
        torch.save(build_sam(TOY).state_dict(), root / name)
    write_transformers(root / "mobile_sam_1024", TOY_1024_HF)
    rng = np.random.default_rng(0)
    images = {"ultralytics/assets/zidane.jpg": ZIDANE, "ultralytics/assets/bus.jpg": BUS, "path/to/image.jpg": IMAGE}
    images.update({"path/to/images/a.jpg": IMAGE, "path/to/images/b.jpg": (300, 400)})
    for name, (h, w) in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name, quality=95)
    (root / "path/to/boxes").mkdir()
    (root / "path/to/boxes/a.txt").write_text("0 0.3 0.4 0.2 0.3\n2 0.7 0.6 0.3 0.2\n")
    return root


@pytest.fixture
def calls(workdir, monkeypatch):
    """Every SAM call made in the working folder: (keyword arguments, what it returned)."""
    monkeypatch.chdir(workdir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small decoder calls: one thread is several times faster on a busy CPU
    record = []
    original = SAM.__call__

    def call(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        record.append((kwargs, out))
        return out

    monkeypatch.setattr(SAM, "__call__", call)
    monkeypatch.setattr(SAM, "predict", call)
    yield record
    torch.set_num_threads(threads)


def check(results: list, shape: tuple[int, int], objects: int | None = None, at_most: int | None = None) -> None:
    """A list of Results for images of this (H, W), each with Ultralytics' types and shapes."""
    assert isinstance(results, list) and results
    for r in results:
        assert isinstance(r, Results) and r.orig_shape == shape
        assert isinstance(r.orig_img, np.ndarray) and r.orig_img.shape == (*shape, 3) and r.orig_img.dtype == np.uint8
        data = r.masks.data
        assert isinstance(data, torch.Tensor) and data.dtype == torch.bool and data.shape[1:] == shape
        n = len(data)
        assert objects is None or n == objects
        assert at_most is None or n <= at_most
        assert r.boxes.xyxy.shape == (n, 4) and r.boxes.conf.shape == (n,) and r.boxes.cls.shape == (n,)
        assert len(r.masks.xy) == n and len(r) == n and isinstance(r.path, str)


def test_segment_with_prompts(calls, capsys):
    run_block(PROMPTS, "from ultralytics import SAM", "from sam import SAM")
    assert "sam_b.pt: " in capsys.readouterr().out  # model.info()
    assert [kw.get("bboxes", kw.get("points")) is not None for kw, _ in calls] == [True] * 5
    for (_, results), n in zip(calls, (1, 1, 2, 1, 1), strict=True):
        check(results, ZIDANE, objects=n)
    assert calls[1][1][0].path.endswith("zidane.jpg")  # no source: the image of the call before
    calls.clear()
    run_block(FAQ, "from ultralytics import SAM", "from sam import SAM")
    for (_, results), n in zip(calls, (1, 1, 2, 1, 1), strict=True):
        check(results, ZIDANE, objects=n)


def test_segment_everything(calls):
    run_block(EVERYTHING, "from ultralytics import SAM", "from sam import SAM")
    run_block(EARLY, "from ultralytics import SAM", "from sam import SAM")
    assert len(calls) == 2
    for _, results in calls:
        check(results, IMAGE)


def test_cli_block(workdir, calls):
    argv = CLI.split()
    assert argv[0] == "yolo"  # the one word that changes: `sam` instead of `yolo`
    assert main(argv[1:]) == 0
    out = workdir / "runs" / "segment" / "predict" / "image"
    assert Image.open(out / "overlay.png").size == IMAGE[::-1]
    assert json.loads((out / "annotations.json").read_text())["images"][0]["width"] == IMAGE[1]


def docs_predictor(code: str) -> str:
    """A SAMPredictor block with the 1024-pixel test model as its model file (its imgsz=1024 kept)."""
    assert code.count('model="mobile_sam.pt"') == 1
    return code.replace('model="mobile_sam.pt"', 'model="mobile_sam_1024"')


def test_predictor_block(calls, monkeypatch):
    import sam.predictor

    embedded = []
    original = sam.predictor.SamPredictor.set_image

    def set_image(predictor, *args, **kwargs):
        embedded.append(1)
        return original(predictor, *args, **kwargs)

    monkeypatch.setattr(sam.predictor.SamPredictor, "set_image", set_image)
    ns = run_block(docs_predictor(PREDICTOR), "from ultralytics.models.sam import Predictor as SAMPredictor",
                   "import cv2\nfrom sam import SAMPredictor")  # fmt: skip
    # cv2.imread's BGR array is the file's image: it is recognised, not embedded a second time
    assert len(embedded) == 1
    for (_, results), n in zip(calls, (1, 1, 2, 1), strict=True):
        check(results, ZIDANE, at_most=n)  # conf=0.25 drops masks with a lower predicted IoU
    assert ns["predictor"].sam.model.img_size == 1024


def test_predictor_segment_everything_block(calls, capsys):
    """The docs' crop_n_layers=1, points_stride=64: 5 crops x 4096 points, announced, with a progress bar."""
    run_block(docs_predictor(PREDICTOR_EVERYTHING), "from ultralytics.models.sam import Predictor as SAMPredictor",
              "from sam import SAMPredictor")  # fmt: skip
    (_, results), = calls
    check(results, ZIDANE)
    err = capsys.readouterr().err
    assert "segment everything: 1 crop x 4096 points + 4 crops x 4096 points = 20480 points" in err
    assert "20480/20480" in err  # the progress bar, done


def test_profile_block(calls, capsys):
    with pytest.raises(WeightsError, match=r"'FastSAM-s.pt' is FastSAM .* it is not supported here"):
        run_block(PROFILE, "from ultralytics import ASSETS, SAM, YOLO, FastSAM",
                  "from pathlib import Path; ASSETS = Path('ultralytics/assets'); "
                  "from sam import SAM, SAM as YOLO, SAM as FastSAM")  # fmt: skip
    assert len(calls) == 2  # sam_b.pt and mobile_sam.pt, each over both assets; then FastSAM is refused
    for _, results in calls:
        assert [Path(r.path).name for r in results] == ["bus.jpg", "zidane.jpg"]
        check(results[:1], BUS)
        check(results[1:], ZIDANE)
    with pytest.raises(WeightsError, match=r"'yolov8n-seg.pt' is an Ultralytics YOLO model"):
        SAM("yolov8n-seg.pt")  # the block's last model


@pytest.mark.parametrize(
    "code, old",
    [
        (AUTO_ANNOTATE, "from ultralytics.data.annotator import auto_annotate"),
        (FAQ_AUTO_ANNOTATE, "from ultralytics.data.annotator import auto_annotate"),
        (EARLY_AUTO_ANNOTATE, "from ultralytics.yolo.data.annotator import auto_annotate"),
    ],
)
def test_auto_annotate_blocks(workdir, calls, monkeypatch, code, old):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # not installed (it is not a dependency)
    with pytest.raises(ImportError, match="needs `pip install ultralytics`"):
        run_block(code, old, "from sam import auto_annotate")
    det = next(n for n in ("yolo11x.pt", "yolov8x.pt") if n in code)
    run_block(code.replace(f'"{det}"', '"path/to/boxes"'), old, "from sam import auto_annotate")  # a model name
    labels = workdir / "path" / "to" / "images_auto_annotate_labels"
    assert sorted(p.name for p in labels.iterdir()) == ["a.txt"]  # b has no boxes
    assert [line.split()[0] for line in (labels / "a.txt").read_text().splitlines()] == ["0", "2"]
    (_, results), = calls
    check(results, IMAGE, objects=2)


RESULTS_SCRIPT = """\
import json

import cv2
from ultralytics import SAM

model = SAM("sam_b.pt")
results = model("ultralytics/assets/zidane.jpg", bboxes=[[439, 437, 524, 709], [100, 100, 400, 600]])
for result in results:
    print(result.path, result.orig_shape, len(result), sorted(result.speed))
    for box in result.boxes:
        x1, y1, x2, y2 = box.xyxy[0].tolist()
        print(f"{result.names[int(box.cls)]} {float(box.conf):.2f} {x1:.0f} {y1:.0f} {x2:.0f} {y2:.0f}")
    masks = result.masks.data.cpu().numpy()  # N x H x W
    areas = [int(m.sum()) for m in masks]
    outlines = [len(xy) for xy in result.masks.xy]
    print("areas", areas, "outline points", outlines)
    cv2.imwrite("annotated.png", result.plot())  # plot() is BGR, as cv2 writes it
    result.save(filename="result.jpg")
    with open("result.json", "w") as f:
        f.write(result.to_json())
    x1, y1, x2, y2 = result.boxes.xyxy[0].int().tolist()
    cv2.imwrite("crop.png", result.orig_img[y1:y2, x1:x2])  # orig_img is BGR too
"""


def test_a_script_written_for_ultralytics_results(workdir, calls, capsys, tmp_path, monkeypatch):
    zidane = np.asarray(Image.open(workdir / "ultralytics/assets/zidane.jpg").convert("RGB"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sam_b.pt").symlink_to(workdir / "sam_b.pt")
    (tmp_path / "ultralytics").symlink_to(workdir / "ultralytics")
    run_block(RESULTS_SCRIPT, "from ultralytics import SAM", "from sam import SAM")
    out = capsys.readouterr().out.splitlines()
    (_, results), = calls
    r = results[0]
    assert out[0] == f"ultralytics/assets/zidane.jpg {ZIDANE} 2 ['inference', 'postprocess', 'preprocess']"
    assert [line.split()[0] for line in out[1:3]] == ["0", "1"] and out[3].startswith("areas [")
    annotated = np.asarray(Image.open("annotated.png"))  # RGB, read back from what cv2 wrote
    np.testing.assert_array_equal(annotated, r.plot()[..., ::-1])
    np.testing.assert_array_equal(r.plot(masks=False, boxes=False, labels=False)[..., ::-1], zidane)
    assert Image.open("result.jpg").size == ZIDANE[::-1]
    summary = json.loads(Path("result.json").read_text())
    assert [d["box"]["x1"] for d in summary] == r.boxes.xyxy[:, 0].tolist()
    x1, y1, x2, y2 = r.boxes.xyxy[0].int().tolist()
    np.testing.assert_array_equal(np.asarray(Image.open("crop.png")), zidane[y1:y2, x1:x2])
