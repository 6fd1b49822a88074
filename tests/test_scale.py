"""Batch jobs on Ray Data (`engine="ray"`, `--ray`): the same files as one process, resumable, fault-tolerant.

One local Ray (2 CPUs) for the whole module; a tiny checkpoint file that every worker loads by path; 20 images,
some with YOLO box labels, one unreadable.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from sam import auto_annotate
from sam.annotate import AnnotateJob
from sam.build import SamConfig, ViTConfig, build_sam
from sam.cli import main
from sam.scale import SUMMARY_NAME, read_summary, segment_everything
from sam.scale.ray_engine import RETRIES, connect, run_job

TINY = SamConfig(ViTConfig(64, 2, 4, (1,), window_size=4), img_size=256)
EVERYTHING = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
BROKEN = "broken.jpg"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    assert connect(num_cpus=2)  # started here; every job of the module runs on it
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get CrashingJob by value
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """tiny.pth; images/ (19 PNGs of several sizes and broken.jpg); boxes/ (labels for 10 of them and broken)."""
    root = tmp_path_factory.mktemp("scale")
    torch.manual_seed(0)
    torch.save(build_sam(TINY).state_dict(), root / "tiny.pth")
    for name in ("images", "boxes", "readable"):
        (root / name).mkdir()
    rng = np.random.default_rng(0)
    for i in range(19):
        image = rng.integers(0, 256, (int(rng.integers(40, 120)), int(rng.integers(40, 120)), 3), dtype=np.uint8)
        for folder in ("images", "readable"):
            Image.fromarray(image).save(root / folder / f"im{i:02d}.png")
        if i % 2 == 0:
            (root / "boxes" / f"im{i:02d}.txt").write_text(f"0 0.5 0.5 0.4 0.6\n{i % 3} 0.3 0.3 0.2 0.25\n")
    (root / "images" / BROKEN).write_bytes(b"not an image")
    (root / "boxes" / "broken.txt").write_text("0 0.5 0.5 0.4 0.6\n")
    return root


def files(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by relative path -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def outputs(folder: Path) -> dict[str, bytes]:
    return {name: data for name, data in files(folder).items() if name != SUMMARY_NAME}


def assert_broken_reported(summary, images: int = 20) -> None:
    assert summary.images == images and summary.failed == 1
    assert summary.failures[0]["path"].endswith(BROKEN) and "cannot read image" in summary.failures[0]["error"]


@pytest.fixture(scope="module")
def labels_here(data, tmp_path_factory) -> Path:
    """The single-process labels of the readable images: what the Ray runs must write."""
    out = tmp_path_factory.mktemp("labels_here")
    auto_annotate(data / "readable", data / "boxes", str(data / "tiny.pth"), device="cpu", output_dir=out)
    assert len(list(out.iterdir())) == 10
    return out


def test_annotate_on_ray_writes_the_same_labels_and_resumes(data, labels_here, tmp_path):
    out = tmp_path / "labels"
    args = dict(device="cpu", output_dir=out, engine="ray", actors=2, cpus_per_actor=1)
    assert auto_annotate(data / "images", data / "boxes", str(data / "tiny.pth"), **args) == out
    assert outputs(out) == outputs(labels_here)  # byte-identical label files, and no others
    summary = read_summary(out)
    assert_broken_reported(summary)
    assert (summary.done, summary.skipped, summary.workers) == (19, 0, 2)
    assert summary.seconds > 0 and summary.images_per_second == pytest.approx(19 / summary.seconds)
    assert not list(out.glob(".*"))  # no temporary file left

    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.txt")}
    (out / "im04.txt").unlink()  # as if the job had stopped before this image
    auto_annotate(data / "images", data / "boxes", str(data / "tiny.pth"), **args)
    again = read_summary(out)
    assert_broken_reported(again)
    assert (again.done, again.skipped) == (10, 9)  # 9 complete; im04 and the 9 images without boxes are redone
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.txt") if p.name != "im04.txt"} == {
        name: t for name, t in written.items() if name != "im04.txt"
    }  # complete outputs were not written again
    assert outputs(out) == outputs(labels_here)


def test_everything_on_ray_writes_the_same_masks_and_records(data, tmp_path):
    model = str(data / "tiny.pth")
    for format in ("png", "coco"):
        here = segment_everything(data / "images", tmp_path / f"here_{format}", model, format=format, **EVERYTHING)
        assert_broken_reported(here)
        assert here.done == 19 and not (tmp_path / f"here_{format}" / SUMMARY_NAME).exists()
        out = tmp_path / f"ray_{format}"
        rows = []
        on_ray = segment_everything(
            data / "images", out, model, format=format, engine="ray", actors=2, cpus_per_actor=1,
            on_image=rows.append, **EVERYTHING,
        )  # fmt: skip
        assert_broken_reported(on_ray)
        assert on_ray.to_json() == read_summary(out).to_json()
        assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in (data / "images").iterdir())
        assert sum(r["masks"] for r in rows) == 19 * 12  # 4 points x 3 masks, none dropped
        assert outputs(out) == outputs(tmp_path / f"here_{format}")
    records = json.loads((tmp_path / "ray_coco" / "im03.json").read_text())
    assert {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "crop_box"} <= set(records[0])
    assert len(records) == len(list((tmp_path / "ray_png" / "im03").glob("*.png"))) == 12


class CrashingJob(AnnotateJob):
    """An AnnotateJob whose worker process dies on `once` the first time it meets it, and on `always` every time."""

    def __init__(self, *args, marker: Path, once: str, always: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.marker, self.once, self.always = marker, once, always

    def run(self, path: Path, image: np.ndarray, target: str) -> int:
        if path.name == self.always:
            os._exit(1)
        if path.name == self.once:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))  # only the first worker to get here
                os._exit(1)
            except FileExistsError:
                pass
        return super().run(path, image, target)


def test_a_worker_that_dies_is_retried_and_the_job_goes_on(data, labels_here, tmp_path):
    out = tmp_path / "labels"
    marker = tmp_path / "crashed"
    job = CrashingJob(out, data / "boxes", data / "tiny.pth", "cpu", marker=marker, once="im06.png", always="im08.png")
    paths = sorted((data / "images").iterdir())
    summary = run_job(job, paths, actors=2, cpus_per_actor=1)
    assert marker.exists()  # a worker died on im06.png
    errors = {Path(f["path"]).name: f["error"] for f in summary.failures}
    assert set(errors) == {BROKEN, "im08.png"} and summary.done == 18
    assert errors["im08.png"] == f"lost: the worker running its batch died {RETRIES + 1} times (out of memory?)"
    want = outputs(labels_here)
    del want["im08.txt"]
    assert outputs(out) == want  # im06 retried on a new worker: complete and identical


def test_cli_on_ray(data, labels_here, tmp_path, capsys):
    model = str(data / "tiny.pth")
    annotate = ["annotate", str(data / "images"), "--det-labels", str(data / "boxes"), "--model", model]
    assert main([*annotate, "--output", str(tmp_path / "l"), "--ray", "--actors", "1"]) == 4  # one unreadable
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "l")
    assert "20 images: 19 done, 0 skipped (complete), 1 failed in" in err and "images/s (Ray, 1 actor)" in err
    assert f"error: 1 of 20 images failed (listed in {tmp_path / 'l' / SUMMARY_NAME})" in err
    assert outputs(tmp_path / "l") == outputs(labels_here)

    everything = ["everything", str(data / "readable"), "--output", str(tmp_path / "e"), "--model", model]
    settings = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--format", "coco"]
    assert main([*everything, *settings, "--ray", "local", "--cpus-per-actor", "2"]) == 0
    out, err = capsys.readouterr()
    assert "19 images: 19 done" in err and "(Ray, 1 actor)" in err
    assert out.count(" masks -> ") == 19
    assert main([*everything, *settings, "--ray"]) == 0  # a rerun skips the complete outputs
    assert "19 images: 0 done, 19 skipped (complete), 0 failed" in capsys.readouterr().err

    assert main([*annotate, "--actors", "2"]) == 2  # Ray's options without --ray
    assert "error: --actors and --cpus-per-actor go with --ray" in capsys.readouterr().err
    assert main([*everything, "--ray", "--cpus-per-actor", "0"]) == 2
    assert "error: --cpus-per-actor must be >= 1" in capsys.readouterr().err
