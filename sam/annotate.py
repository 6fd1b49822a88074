"""auto_annotate: a detector's boxes become SAM masks, written as YOLO-seg labels (as the Ultralytics docs)."""

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .api import SAM
from .images import list_images
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
) -> Path:
    """Label every image of `data` (folder, glob or file) with YOLO-seg polygons; returns the label folder.

    det_model: a callable image (HxWx3 uint8 BGR, as cv2.imread gives and Ultralytics' models take) ->
    (boxes Nx4 xyxy pixels, classes N); a folder of YOLO detection labels (`class cx cy w h`, one .txt per
    image stem); or an Ultralytics YOLO model name (needs ultralytics; conf, iou, imgsz and max_det go to
    it). classes: keep only these ids.
    Each image with detections gets output_dir/<stem>.txt with one line `class x1 y1 x2 y2 ...`
    (normalised outline of the mask's largest region) per detection, in the detector's order (a
    detection whose mask is empty gets no line). output_dir defaults to <data>_auto_annotate_labels beside data.
    """
    data = Path(data)
    paths = list_images(data)
    if output_dir is None:
        output_dir = data.parent / f"{data.stem}_auto_annotate_labels"
    output_dir = Path(output_dir)
    if callable(det_model):
        detect = lambda image, path: det_model(image)  # noqa: E731
    elif Path(det_model).is_dir():
        detect = label_folder_detector(det_model)
    else:
        yolo = ultralytics_detector(str(det_model), device, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det)
        detect = lambda image, path: yolo(image)  # noqa: E731
    sam = sam_model if isinstance(sam_model, SAM) else SAM(sam_model, device=device)
    keep_classes = None if classes is None else {int(c) for c in classes}
    output_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        from tqdm import tqdm

        paths = tqdm(paths, desc="annotate", unit="image", file=sys.stderr)
    for path in paths:
        image = read_file(path)  # RGB
        boxes, cls = _detections(*detect(np.ascontiguousarray(image[..., ::-1]), path))
        if keep_classes is not None:
            wanted = np.isin(cls, list(keep_classes))
            boxes, cls = boxes[wanted], cls[wanted]
        if len(boxes) == 0:
            continue
        lines = sam(Decoded(image, str(path)), bboxes=boxes, verbose=False)[0].to_yolo(cls)
        (output_dir / f"{path.stem}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return output_dir
