"""One visitor's state in the app: which image, the prompts of the current object, its candidate masks, objects.

Plain Python and numpy: the model is reached through a decoder passed to each call (`sam.app.service.Decoder`
or anything with the same `decode` / `masks` methods), so all of this is tested without a browser.
A session holds only small things: keys into the shared caches, the prompts, the current candidates'
low-res logits (at most 3x256x256 float32, 0.8 MB; the first prompt's three, the last decode's answer and
mask input are kept too, at most three times that) and finished objects as compressed COCO RLE.

The flow follows Meta's predictor notebook: one point -> three candidates, the best selected; each
further prompt is decoded with the selected candidate's low-res logits as `mask_input` and one output.
The first prompt's three candidates stay on offer: choosing another one replays the later prompts on it.
Undo replays the remaining prompts (with the candidates picked at each step), so it gives back exactly
the earlier masks. A hover preview asks the decoder exactly what a click at the same place would ask, so
a click where the preview is shown reuses its answer instead of decoding again, as in Meta's demo.
"""

import re
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..export import hex_color
from ..masks import area, decode_coco_rle, encode_coco_rle, mask_to_box
from .settings import MAX_EVERYTHING_MASKS, MAX_NAME, MAX_OBJECTS, MAX_PROMPTS


class DecoderLike(Protocol):
    original_size: tuple[int, int]

    def decode(self, points, labels, box, mask_input, multimask: bool) -> tuple[np.ndarray, np.ndarray]: ...

    def masks(self, low_res: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray: ...


@dataclass
class Prompt:
    """A point (x, y, label 1 = positive, 0 = negative) or a box (x0, y0, x1, y1), in image pixels."""

    kind: str  # "point" or "box"
    coords: tuple[float, ...]
    label: int = 1
    choice: int | None = None  # the candidate picked after this prompt (None: the best one)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "coords": [round(c, 2) for c in self.coords], "label": self.label}


@dataclass
class SessionObject:
    name: str
    color: str
    rle: dict[str, Any]  # compressed COCO RLE at image size
    score: float  # predicted IoU
    area: int
    box: list[int]  # x0, y0, x1, y1 (pixel edges)
    id: int = 0  # unique within the image: the page keeps each object's display settings by it

    def mask(self) -> np.ndarray:
        return decode_coco_rle(self.rle)


@dataclass
class ImageRef:
    key: str  # content hash (see sam.app.service.image_key)
    width: int
    height: int
    name: str = "image"
    path: str | None = None  # where it can be reread if it leaves the server's image cache
    shared: bool = False  # an example: its embedding is shared by every visitor whatever the setting


@dataclass(eq=False)
class AppSession:
    """Per-visitor state; `lock` serialises requests of one page. Never holds the model or the embedding."""

    model_name: str = ""
    image: ImageRef | None = None
    prompts: list[Prompt] = field(default_factory=list)
    low_res: np.ndarray | None = None  # Cxhxw logits of the current candidates
    scores: np.ndarray | None = None  # C predicted IoUs
    selected: int = 0
    # The first prompt's three candidates (3xhxw logits, 3 IoUs), still offered while later prompts refine one
    first: tuple[np.ndarray, np.ndarray] | None = None
    first_version: int = 0
    objects: list[SessionObject] = field(default_factory=list)
    objects_version: int = 0
    next_id: int = 0  # the next object's id and colour
    everything: list[SessionObject] = field(default_factory=list)  # masks from "segment everything"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    touched: float = field(default_factory=time.monotonic)
    job: str | None = None  # "image" or "everything" while one runs; the page's other requests wait for it
    progress: tuple[int, int] | None = None  # (done, total) of the running job
    cancel_run: int | None = None  # the run of segment everything that the page asked to stop
    _last: tuple | None = field(default=None, repr=False)  # the last decode: (inputs, mask_input, low_res, scores)
    stale: bool = False  # the page decoded the prompts itself: candidates are computed here only when needed

    # image and model ---------------------------------------------------------------------------------
    def set_image(self, image: ImageRef, model_name: str) -> None:
        """A new image: prompts, candidates and objects (which belong to the old image) are dropped."""
        self.image, self.model_name = image, model_name
        self.clear()
        self.objects = []
        self.everything = []
        self.objects_version += 1
        self.next_id = 0

    def require_image(self) -> ImageRef:
        if self.image is None:
            raise ValueError("upload an image or pick an example first")
        return self.image

    # prompts --------------------------------------------------------------------------------------------
    def add_point(self, decoder: DecoderLike, x: float, y: float, label: int) -> None:
        self._push(decoder, Prompt("point", (x, y), label))

    def set_box(self, decoder: DecoderLike, box: tuple[float, float, float, float]) -> None:
        """A box for the current object; it replaces an earlier box and combines with the points."""
        self._push(decoder, Prompt("box", tuple(box)))

    def _push(self, decoder: DecoderLike, prompt: Prompt) -> None:
        self.require_image()
        if len(self.prompts) >= MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per object: add the object or undo")
        self.prompts.append(prompt)
        try:
            self._step(decoder, len(self.prompts))
        except Exception:
            self.prompts.pop()
            raise

    def _inputs(self, prompts: list[Prompt]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        points = [p.coords for p in prompts if p.kind == "point"]
        labels = [p.label for p in prompts if p.kind == "point"]
        boxes = [p.coords for p in prompts if p.kind == "box"]
        return (
            np.asarray(points, dtype=np.float64).reshape(-1, 2) if points else None,
            np.asarray(labels, dtype=np.int64) if labels else None,
            np.asarray(boxes[-1], dtype=np.float64) if boxes else None,
        )

    def _step(self, decoder: DecoderLike, n: int) -> None:
        """Decode the first n prompts, refining the candidate selected after prompt n - 1."""
        prompts = self.prompts[:n]
        points, labels, box = self._inputs(prompts)
        mask_input = self.low_res[self.selected] if n > 1 and self.low_res is not None else None
        multimask = n == 1 and prompts[0].kind == "point"
        low_res, scores = self._decode(decoder, points, labels, box, mask_input, multimask)
        self.low_res, self.scores = low_res, scores
        if n == 1:
            self.first = (low_res, scores) if multimask else None
            self.first_version += 1
        choice = prompts[-1].choice
        self.selected = choice if choice is not None and 0 <= choice < len(scores) else int(np.argmax(scores))

    def replay(self, decoder: DecoderLike) -> None:
        """Recompute the candidates from the prompts (after undo, or with another model)."""
        self.low_res = self.scores = self.first = None
        self.stale = False
        self.selected = 0
        for n in range(1, len(self.prompts) + 1):
            self._step(decoder, n)

    def choose(self, index: int) -> None:
        if self.scores is None or not 0 <= index < len(self.scores):
            raise ValueError(f"no candidate {index}")
        self.selected = index
        self.prompts[-1].choice = index

    def choose_first(self, decoder: DecoderLike, index: int) -> None:
        """Another of the first prompt's candidates; the later prompts refine that one instead."""
        if self.first is None or not 0 <= index < len(self.first[1]):
            raise ValueError(f"no candidate {index}")
        self.prompts[0].choice = index
        self.replay(decoder)

    def first_selected(self) -> int:
        """Which of the first prompt's candidates the current mask grew from."""
        choice = self.prompts[0].choice if self.prompts else None
        return choice if choice is not None else int(np.argmax(self.first[1])) if self.first else 0

    def undo(self, decoder: DecoderLike) -> None:
        if not self.prompts:
            return
        self.prompts.pop()
        self.replay(decoder)

    def clear(self) -> None:
        self.prompts = []
        self.low_res = self.scores = self.first = None
        self.selected = 0
        self.stale = False

    # prompts the page decodes itself (static/decoder.js) --------------------------------------------------
    # Only recorded here, with the page's choices of candidate: `sync` decodes them, with the same steps as
    # the page, when the server needs the mask (an object is added) or decodes again itself.
    def record(self, kind: str, prompt: Prompt | None = None, index: int = 0) -> None:
        """A "point" or "box" `prompt`, an "undo", or a "choose" / "choose_first" of candidate `index`."""
        self.require_image()
        if kind in ("point", "box"):
            if len(self.prompts) >= MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per object: add the object or undo")
            self.prompts.append(prompt)
        elif kind == "undo":
            if self.prompts:
                self.prompts.pop()
        elif kind in ("choose", "choose_first"):
            target = self.prompts[-1 if kind == "choose" else 0] if self.prompts else None
            offered = 3 if self.prompts and self.prompts[0].kind == "point" and (
                kind == "choose_first" or len(self.prompts) == 1) else 1
            if target is None or not 0 <= index < offered:
                raise ValueError(f"no candidate {index}")
            target.choice = index
        else:
            raise ValueError(f"{kind} is not recorded")
        self.low_res = self.scores = self.first = None
        self.selected = 0
        self.stale = True

    def sync(self, decoder: DecoderLike) -> None:
        """Decode the prompts that were only recorded."""
        if self.stale:
            self.replay(decoder)

    def clear_all(self) -> None:
        """Prompts and objects (the everything masks stay)."""
        self.clear()
        self.objects = []
        self.objects_version += 1

    def preview(self, decoder: DecoderLike, x: float, y: float) -> tuple[np.ndarray, float]:
        """The mask the current prompts plus a positive point at (x, y) would give (state is unchanged).

        Returns hxw low-res logits and the predicted IoU.
        """
        self.require_image()
        prompts = [*self.prompts, Prompt("point", (x, y), 1)][-MAX_PROMPTS:]
        points, labels, box = self._inputs(prompts)
        mask_input = self.low_res[self.selected] if self.low_res is not None else None
        low_res, scores = self._decode(decoder, points, labels, box, mask_input, len(prompts) == 1)
        best = int(np.argmax(scores))
        return low_res[best], float(scores[best])

    def _decode(
        self,
        decoder: DecoderLike,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """decoder.decode as float32 arrays; the last answer again when the inputs are the same."""
        inputs = (self.model_name, self.image and self.image.key, multimask,
                  *(None if a is None else (a.shape, a.tobytes()) for a in (points, labels, box)))
        last = self._last
        if last is not None and last[0] == inputs and _same(last[1], mask_input):
            return last[2], last[3]
        low_res, scores = decoder.decode(points, labels, box, mask_input, multimask)
        low_res, scores = np.asarray(low_res, dtype=np.float32), np.asarray(scores, dtype=np.float32)
        self._last = (inputs, mask_input, low_res, scores)
        return low_res, scores

    # objects ----------------------------------------------------------------------------------------------
    def add_object(self, decoder: DecoderLike, name: str = "") -> SessionObject:
        """The selected candidate becomes a named object; the next prompts start a new object."""
        if self.low_res is None or self.scores is None:
            raise ValueError("click on the image first: there is no mask to add")
        mask = decoder.masks(self.low_res[self.selected : self.selected + 1])[0]
        obj = self._new_object(name, encode_coco_rle(mask), float(self.scores[self.selected]), area(mask),
                               mask_to_box(mask))
        self.clear()
        return obj

    def _new_object(self, name: str, rle: dict[str, Any], score: float, size: int, box: list[int]) -> SessionObject:
        if len(self.objects) >= MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} objects per image")
        n = self.next_id
        obj = SessionObject(clean_name(name) or f"object {n + 1}", hex_color(n), rle, score, size, box, id=n)
        self.next_id += 1
        self.objects.append(obj)
        self.objects_version += 1
        return obj

    def set_everything(self, masks: list[tuple[np.ndarray, float]]) -> None:
        """Masks from "segment everything" (HxW bool, predicted IoU), best first; at most MAX_EVERYTHING_MASKS."""
        self.everything = [
            SessionObject("", "", encode_coco_rle(m), float(score), area(m), mask_to_box(m))
            for m, score in masks[:MAX_EVERYTHING_MASKS]
        ]

    def pick(self, index: int, name: str = "") -> SessionObject:
        """Everything mask `index` becomes an object."""
        if not 0 <= index < len(self.everything):
            raise ValueError(f"no mask {index} from segment everything")
        source = self.everything[index]
        return self._new_object(name, source.rle, source.score, source.area, source.box)

    def delete_object(self, index: int) -> None:
        if not 0 <= index < len(self.objects):
            raise ValueError(f"no object {index}")
        del self.objects[index]
        self.objects_version += 1

    def rename_object(self, index: int, name: str) -> SessionObject:
        if not 0 <= index < len(self.objects):
            raise ValueError(f"no object {index}")
        obj = self.objects[index]
        obj.name = clean_name(name) or obj.name
        self.objects_version += 1
        return obj

    def close(self) -> None:
        """Drop the arrays (called when the session expires)."""
        self.clear()
        self._last = None
        self.objects = []
        self.everything = []
        self.image = None


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is b or (a is not None and b is not None and np.array_equal(a, b))


def clean_name(name: Any) -> str:
    """Untrusted object name -> one printable line of at most MAX_NAME characters."""
    text = re.sub(r"[\x00-\x1f\x7f<>]+", " ", str(name or ""))
    return " ".join(text.split())[:MAX_NAME].strip()


class SessionRegistry:
    """token -> session, for requests that bypass Gradio's queue. Weak: gr.State owns the sessions, so a
    session that Gradio drops (expiry, eviction) disappears here as well."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakValueDictionary[str, AppSession] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def add(self, session: AppSession) -> None:
        with self._lock:
            self._sessions[session.token] = session

    def get(self, token: Any) -> AppSession | None:
        if not isinstance(token, str) or len(token) > 64:
            return None
        with self._lock:
            return self._sessions.get(token)

    def remove(self, session: AppSession) -> None:
        with self._lock:
            if self._sessions.get(session.token) is session:
                del self._sessions[session.token]

    def __len__(self) -> int:
        return len(self._sessions)
