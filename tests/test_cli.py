"""`python -m sam`: outputs, exit codes and messages (a tiny random checkpoint saved as a local file)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
import torch
from PIL import Image

from sam.build import SamConfig, ViTConfig, build_sam
from sam.cli import main
from sam.cli.common import results_on_stdout

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

ROOT = Path(__file__).resolve().parents[1]
TINY = SamConfig(ViTConfig(64, 2, 4, (1,), window_size=4), img_size=256)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint file and a folder with two images."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    torch.save(build_sam(TINY).state_dict(), root / "tiny.pth")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (90, 120)), ("b.jpg", (100, 70))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / name)
    return root


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """In-process runs write their default outputs (runs/segment/...) under tmp_path."""
    monkeypatch.chdir(tmp_path)


def sam_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "sam", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_predict_writes_masks_overlay_and_coco(files, tmp_path):
    out = tmp_path / "out"
    r = sam_cli(
        "predict", str(files / "images"), "--points", "30,40", "60,50", "--labels", "1", "0",
        "--model", str(files / "tiny.pth"), "--output", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    for stem, (h, w) in (("a", (90, 120)), ("b", (100, 70))):
        folder = out / stem
        assert Image.open(folder / "overlay.png").size == (w, h)
        mask = np.asarray(Image.open(folder / "masks" / "0.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert not (folder / "masks" / "1.png").exists()  # the points describe one object
        coco = json.loads((folder / "annotations.json").read_text())
        seg = coco["annotations"][0]["segmentation"]
        decoded = coco_mask.decode(dict(seg, counts=seg["counts"].encode()))
        np.testing.assert_array_equal(decoded * 255, mask)
        assert f"{stem}" in r.stdout and "1 masks" in r.stdout


def test_bad_arguments_exit_2(files, tmp_path, capsys):
    r = sam_cli("predict", str(files / "images"), "--points", "1,2,3", "--output", "o", cwd=tmp_path)
    assert r.returncode == 2 and "expected X,Y, got '1,2,3'" in r.stderr
    base = ["predict", str(files / "images"), "--model", str(files / "tiny.pth")]
    with pytest.raises(SystemExit) as e:
        main(["predict", "--model", str(files / "tiny.pth")])  # a source is required
    assert e.value.code == 2
    assert main([*base, "--output", "o", "--points", "1,2", "3,4", "--labels", "1"]) == 2
    assert "error: 2 points but 1 labels" in capsys.readouterr().err
    assert main([*base, "--output", "o", "--labels", "1"]) == 2
    assert "error: --labels needs --points" in capsys.readouterr().err
    assert main([*base, "--output", "o", "--bboxes", "5,5,1,1"]) == 2
    assert "empty or inverted" in capsys.readouterr().err
    assert main([*base, "--output", "o", "--points", "1,2", "--bboxes", "0,0,9,9", "1,1,8,8"]) == 2
    assert not (tmp_path / "o").exists()


def test_model_that_cannot_load_exits_3(files, tmp_path):
    r = sam_cli("predict", str(files / "images"), "--model", "no-such-model", "--output", "o", cwd=tmp_path)
    assert r.returncode == 3
    assert r.stderr.startswith("error: cannot load model 'no-such-model'")


def test_missing_and_unreadable_images_exit_4(files, tmp_path, capsys):
    model = str(files / "tiny.pth")
    assert main(["predict", str(tmp_path / "nothing.png"), "--model", model, "--output", str(tmp_path / "o")]) == 4
    assert "error: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--model", model, "--output", str(tmp_path / "o")]) == 4
    assert "error: no images" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "broken.png").write_bytes(b"not a png")
    Image.open(files / "images" / "a.png").save(mixed / "good.png")
    code = main(["predict", str(mixed), "--bboxes", "10,10,60,50", "--model", model, "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 4 and "warning: cannot read image" in err and "error: 1 of 2 images could not be read" in err
    assert (tmp_path / "o" / "good" / "masks" / "0.png").exists()  # the readable image is still done


def test_annotate_with_label_folder(files, tmp_path):
    labels = tmp_path / "det"
    labels.mkdir()
    (labels / "a.txt").write_text("2 0.3 0.4 0.2 0.3\n0 0.7 0.6 0.3 0.2\n")
    out = tmp_path / "seg"
    r = sam_cli(
        "annotate", str(files / "images"), "--det-labels", str(labels), "--model", str(files / "tiny.pth"),
        "--output", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # b has no boxes
    classes = [int(line.split()[0]) for line in (out / "a.txt").read_text().splitlines()]
    assert classes == [2, 0]  # one line per box, in the label file's order


def test_annotate_errors(files, tmp_path, capsys, monkeypatch):
    model = str(files / "tiny.pth")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if it were not installed
    assert main(["annotate", str(files / "images"), "--det-model", "yolo11n.pt", "--model", model]) == 3
    assert "pip install ultralytics" in capsys.readouterr().err
    assert main(["annotate", str(files / "images"), "--det-labels", str(tmp_path / "nope"), "--model", model]) == 2
    assert "error: --det-labels: no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["annotate", str(files / "images"), "--model", model])  # a detector is required
    assert e.value.code == 2


def test_predict_key_value_form(files, tmp_path):
    """`sam predict model=... source=... points=[[x,y],[x,y]] labels=[1,0]`: the Python call's nesting and
    Ultralytics' default output folder, runs/segment/predict, then predict2."""
    model = str(files / "tiny.pth")
    image = str(files / "images" / "a.png")
    pairs = [f"model={model}", f"source={image}", "points=[[30,40],[60,50]]", "labels=[1,0]"]
    r = sam_cli("predict", *pairs, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = tmp_path / "runs" / "segment" / "predict" / "a"
    assert sorted(p.name for p in (first / "masks").iterdir()) == ["0.png", "1.png"]  # one object per point
    assert f"-> {Path('runs/segment/predict/a')}" in r.stdout
    assert main(["predict", image, "--model", model, "--points", "30,40", "60,50", "--labels", "1", "0"]) == 0
    second = tmp_path / "runs" / "segment" / "predict2" / "a"  # the flags: both points, one object
    assert sorted(p.name for p in (second / "masks").iterdir()) == ["0.png"]
    boxes = ["bboxes=[[10,10,60,50],[40,30,110,80]]", "multimask_output=True", "project=out", "name=exp"]
    assert main(["predict", f"model={model}", image, *boxes]) == 0
    assert len(list((tmp_path / "out" / "exp" / "a" / "masks").iterdir())) == 6
    everything = ["points_stride=3", "conf_thres=0", "stability_score_thresh=0", "verbose=False", "conf=0.0"]
    assert main(["predict", f"model={model}", f"source={image}", *everything, "project=out", "name=all"]) == 0
    assert len(list((tmp_path / "out" / "all" / "a" / "masks").iterdir())) > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["points=[[1,2]]", "--points", "1,2"], "as flags or as key=value, not both"),
        (["--model", "x.pth"], "--model and model= were both given"),
        (["save=False"], "the command line always writes its outputs"),
        (["imgsz=640"], "imgsz=640 is not supported: SAM always embeds the image with its long side at 256"),
        (["half=True"], "half= is not supported: fp16 is not used here"),
        (["show=True"], "show= is not taken by `sam predict`"),
        (["crop_layers=1"], "unknown argument 'crop_layers'"),
        (["points=[[1,2]]", "crop_n_layers=1"], "crop_n_layers: segment-everything settings"),
        (["points=[[500,40]]"], "point (500, 40) is outside the 120x90 image"),
        (["source=other.png"], "give one source"),
        (["--output", "o", "project=p"], "--output and project= / name= were both given"),
    ],
)
def test_predict_key_value_mistakes_exit_2(files, capsys, extra, message):
    code = main(["predict", f"model={files / 'tiny.pth'}", str(files / "images" / "a.png"), *extra])
    assert code == 2 and message in capsys.readouterr().err


def test_info_and_unsupported_models(files, tmp_path, capsys):
    assert main(["info", f"model={files / 'tiny.pth'}"]) == 0
    out = capsys.readouterr().out
    assert "parameters: " in out and "img_size: 256" in out and f"files: {files / 'tiny.pth'}" in out
    assert main(["info", str(files / "tiny.pth")]) == 0 and "precision: float32" in capsys.readouterr().out
    assert main(["info", "model=a.pt", "b.pt"]) == 2 and "give one model" in capsys.readouterr().err
    r = sam_cli("info", "model=sam3.pt", cwd=tmp_path)
    assert r.returncode == 3 and "SAM 3" in r.stderr and "not supported here" in r.stderr
    r = sam_cli("predict", "model=FastSAM-s.pt", f"source={files / 'images'}", cwd=tmp_path)
    assert r.returncode == 3 and "FastSAM" in r.stderr


def test_only_the_main_threads_lines_reach_stdout(capsys):
    """Results go to stdout; what another thread prints meanwhile (Ray's driver, when a worker dies) to stderr."""
    with results_on_stdout():
        print("result")
        thread = threading.Thread(target=print, args=("(raylet) A worker died",))
        thread.start()
        thread.join()
        assert sys.stdout.encoding
    print("after")
    out, err = capsys.readouterr()
    assert out == "result\nafter\n" and err == "(raylet) A worker died\n"
