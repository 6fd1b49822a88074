"""auto_annotate: a detector's boxes become SAM masks, written as YOLO-seg labels (as the Ultralytics docs)."""

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .api import SAM
from .images import list_images
from .scale.files import write_atomic
from .sources import Decoded, read_file

Detector = Callable[[np.ndarray], tuple[Any, Any]]


def read_yolo_boxes(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A YOLO detection label file (`class cx cy w h` normalised) -> boxes Nx4 xyxy pixels, classes N.

    A missing file means no objects. Lines with more than 5 numbers (segments) take their first 5.
    """
    path = Path(path)
    h, w = size
    if not path.is_file():
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError as e:
            raise ValueError(f"{path}:{n}: expected `class cx cy w h`, got {line!r}") from e
        if len(values) < 5:
            raise ValueError(f"{path}:{n}: expected `class cx cy w h`, got {line!r}")
        rows.append(values[:5])
    if not rows:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    a = np.array(rows)
    cx, cy, bw, bh = a[:, 1] * w, a[:, 2] * h, a[:, 3] * w, a[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    return np.clip(boxes, 0, [w, h, w, h]), a[:, 0].astype(np.int64)


def label_folder_detector(folder: str | Path) -> Callable[[np.ndarray, Path], tuple[np.ndarray, np.ndarray]]:
    """A detector that reads FOLDER/<image stem>.txt (YOLO boxes) for each image."""
    folder = Path(folder)

    def detect(image: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return read_yolo_boxes(folder / f"{path.stem}.txt", image.shape[:2])

    return detect


def ultralytics_detector(name: str, device: str, **predict_args: Any) -> Callable[[np.ndarray], tuple]:
    """An Ultralytics YOLO detector, when the ultralytics package is installed (it is not a dependency)."""
    try:
        from ultralytics import YOLO
    except ImportError as e:
        raise ImportError(
            f"det_model={name!r} names an Ultralytics YOLO model, which needs `pip install ultralytics`; "
            "or pass a callable image -> (boxes, classes), or a folder of YOLO box labels"
        ) from e
    yolo = YOLO(name)

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = yolo(image, verbose=False, device=device or None, **predict_args)[0]
        return result.boxes.xyxy.cpu().numpy(), result.boxes.cls.cpu().numpy().astype(np.int64)

    return detect


def _detections(boxes: Any, classes: Any) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(getattr(boxes, "cpu", lambda: boxes)(), dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(getattr(classes, "cpu", lambda: classes)()).reshape(-1).astype(np.int64)
    if len(boxes) != len(classes):
        raise ValueError(f"the detector gave {len(boxes)} boxes but {len(classes)} classes")
    return boxes, classes


class AnnotateJob:
    """auto_annotate for one image at a time, in this process or on each Ray worker (sam.scale.ray_engine.Job).

    det_model and sam_model as auto_annotate takes them (a SAM is sent to Ray workers as its Sam module);
    detector_args go to an Ultralytics detector. Picklable without its models: each worker loads its own.
    """

    def __init__(
        self,
        output: str | Path,
        det_model: "str | Path | Detector",
        sam_model: "str | Path | SAM",
        device: str = "",
        classes: Iterable[int] | None = None,
        **detector_args: Any,
    ) -> None:
        self.output = Path(output).absolute()
        self.det_model = _absolute(det_model)
        self.sam_model = _absolute(sam_model)
        self.device = device
        self.classes = None if classes is None else sorted({int(c) for c in classes})
        self.detector_args = detector_args
        self.sam: SAM | None = None
        self.detect: Callable[[np.ndarray, Path], tuple[Any, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        sam = self.sam_model.model if isinstance(self.sam_model, SAM) else self.sam_model
        return dict(self.__dict__, sam_model=sam, sam=None, detect=None)

    def targets(self, paths: list[Path]) -> list[str]:
        return [f"{p.stem}.txt" for p in paths]

    def complete(self, target: str) -> bool:
        return (self.output / target).is_file()

    def load(self) -> None:
        det = self.det_model
        if callable(det):
            self.detect = lambda image, path: det(image)
        elif Path(det).is_dir():
            self.detect = label_folder_detector(det)
        else:
            yolo = ultralytics_detector(str(det), self.device, **self.detector_args)
            self.detect = lambda image, path: yolo(image)
        sam = self.sam_model
        self.sam = sam if isinstance(sam, SAM) else SAM(sam, device=self.device)

    def run(self, path: Path, image: np.ndarray, target: str) -> int:
        """Labels of one HxWx3 uint8 RGB image to target (none without detections); returns the lines."""
        if self.sam is None:
            self.load()
        boxes, cls = _detections(*self.detect(np.ascontiguousarray(image[..., ::-1]), path))
        if self.classes is not None:
            wanted = np.isin(cls, self.classes)
            boxes, cls = boxes[wanted], cls[wanted]
        if len(boxes) == 0:
            return 0
        lines = self.sam(Decoded(image, str(path)), bboxes=boxes, verbose=False)[0].to_yolo(cls)
        write_atomic(self.output / target, "".join(line + "\n" for line in lines))
        return len(lines)


def _absolute(model: Any) -> Any:
    """A local path made absolute (Ray workers run elsewhere); other names and objects as they are."""
    if isinstance(model, str | Path) and Path(model).expanduser().exists():
        return str(Path(model).expanduser().absolute())
    return model


def auto_annotate(
    data: str | Path,
    det_model: "str | Path | Detector" = "yolo11x.pt",
    sam_model: "str | Path | SAM" = "sam_b.pt",
    device: str = "",
    conf: float = 0.25,
    iou: float = 0.45,
    imgsz: int = 640,
    max_det: int = 300,
    classes: Iterable[int] | None = None,
    output_dir: str | Path | None = None,
    progress: bool = False,
    *,
    engine: str = "local",
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Label every image of `data` (folder, glob or file) with YOLO-seg polygons; returns the label folder.

    det_model: a callable image (HxWx3 uint8 BGR, as cv2.imread gives and Ultralytics' models take) ->
    (boxes Nx4 xyxy pixels, classes N); a folder of YOLO detection labels (`class cx cy w h`, one .txt per
    image stem); or an Ultralytics YOLO model name (needs ultralytics; conf, iou, imgsz and max_det go to
    it). classes: keep only these ids.
    Each image with detections gets output_dir/<stem>.txt with one line `class x1 y1 x2 y2 ...`
    (normalised outline of the mask's largest region) per detection, in the detector's order (a
    detection whose mask is empty gets no line). output_dir defaults to <data>_auto_annotate_labels beside data.
    engine "ray": the same on Ray Data (`pip install .[scale]`): at `address` (None: a local Ray started for
    the job, or the one this process has), `actors` actors of `cpus_per_actor` CPUs, each loading the
    models once (a callable det_model must pickle). A rerun skips images whose label file exists (unless
    overwrite); an unreadable image is reported in output_dir/_summary.json and the others are done.
    """
    data = Path(data)
    paths = list_images(data)
    if output_dir is None:
        output_dir = data.parent / f"{data.stem}_auto_annotate_labels"
    detector_args = dict(conf=conf, iou=iou, imgsz=imgsz, max_det=max_det)
    job = AnnotateJob(output_dir, det_model, sam_model, device, classes, **detector_args)
    if engine == "ray":
        from .scale.ray_engine import run_job

        run_job(job, paths, address, actors, cpus_per_actor, overwrite)
        return Path(output_dir)
    if engine != "local":
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    job.load()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    items = list(zip(paths, job.targets(paths)))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="annotate", unit="image", file=sys.stderr)
    for path, target in items:
        job.run(path, read_file(path), target)  # RGB
    return Path(output_dir)
