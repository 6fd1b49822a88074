"""The page's requests to the canvas's server function, checked: types, ranges and image bounds.

Everything here comes from an untrusted page; a bad request raises ValueError with a reason the page shows.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..prompts import check_boxes, check_points
from .session import ImageRef, clean_name

ACTIONS = ("point", "box", "undo", "clear", "clear_all", "choose", "choose_first", "add", "delete", "rename",
           "hover", "pick")


@dataclass(frozen=True)
class Action:
    type: str
    x: float = 0.0
    y: float = 0.0
    label: int = 1
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    index: int = 0
    name: str = ""


def _number(data: Mapping, key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {str(value)[:20]!r}")
    return float(value)


def _index(data: Mapping, key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {str(value)[:20]!r}")
    return value


def parse_action(data: Any, image: ImageRef | None) -> Action:
    """Validate a request from the page (types, ranges, image bounds); raises ValueError with the reason."""
    if not isinstance(data, Mapping):
        raise ValueError("the request must be a JSON object")
    kind = data.get("type")
    if kind not in ACTIONS:
        raise ValueError(f"unknown action {str(kind)[:20]!r}; expected one of {', '.join(ACTIONS)}")
    if kind in ("point", "box", "hover") and image is None:
        raise ValueError("upload an image or pick an example first")
    if kind in ("point", "hover"):
        x, y = _number(data, "x"), _number(data, "y")
        check_points([x, y], [1], (image.height, image.width))
        label = data.get("label", 1)
        if kind == "point" and label not in (0, 1):
            raise ValueError(f"label must be 1 (positive) or 0 (negative), got {str(label)[:20]!r}")
        return Action(kind, x=x, y=y, label=int(label) if kind == "point" else 1)
    if kind == "box":
        box = data.get("box")
        if not isinstance(box, list | tuple) or len(box) != 4:
            raise ValueError("box must be [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (_number({"box": v}, "box") for v in box)
        (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))  # a drag may go either way
        return Action(kind, box=tuple(float(v) for v in check_boxes([x0, y0, x1, y1], (image.height, image.width))[0]))
    if kind in ("choose", "choose_first", "delete", "pick"):
        return Action(kind, index=_index(data, "index"))
    if kind in ("add", "rename"):
        name = data.get("name", "")
        if not isinstance(name, str):
            raise ValueError("name must be text")
        return Action(kind, index=_index(data, "index") if kind == "rename" else 0, name=clean_name(name))
    return Action(kind)
