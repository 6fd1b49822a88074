"""Simulated visitors of the app's page: what each one does and when (one schedule), and how it reaches the
app (a transport), for benchmarks/bench_capacity.py and its test.

A visitor opens a new image every `image_every_s` (a quarter of them the shared examples), and while the
image is open hovers at `hovers_per_s`, clicks every `click_every_s` where it last hovered, and adds an
object after every `add_every_clicks` clicks. Like the page, a visitor has one request in flight at a
time: a click waits for the request before it, and a hover that is overtaken by the next action is never
sent. Times are taken from when the visitor acted, so waiting in its own queue counts.

Transports (`Transport`): `ServerDecode` speaks the page's protocol without a browser (PageClient), the
server decoding every hover and click; `PageVisitor` drives the real page in headless Chromium and takes
the page's own timings (pointer event -> mask drawn). A mode where the page decodes prompts itself is
another transport with the same four methods.
"""

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.jpg"))  # in the order of the page's gallery (app.py)


@dataclass(frozen=True)
class Schedule:
    """One visitor's pace; `time_scale` < 1 runs the same actions faster (short runs and tests)."""

    image_every_s: float = 120.0
    hovers_per_s: float = 5.0
    click_every_s: float = 3.0
    add_every_clicks: int = 10
    example_every: int = 4  # every 4th image opened is a shared example (their embeddings are cached)
    time_scale: float = 1.0

    @property
    def period_s(self) -> float:
        return self.image_every_s * self.time_scale


@dataclass(frozen=True)
class Action:
    at: float  # seconds after the image is ready (open: after the visitor's start)
    kind: str  # open, hover, click, add
    x: float = 0.0  # fractions of the image's width and height (hover, click)
    y: float = 0.0


@dataclass
class Visit:
    """One image: when it is opened, which, and what is done on it once it is ready."""

    at: float
    image: "PoolImage"
    actions: list[Action]


@dataclass(frozen=True)
class PoolImage:
    name: str
    data: bytes
    width: int
    height: int
    example: int | None = None  # index into EXAMPLES, or None for an upload


def plan(schedule: Schedule, visitor: int, visitors: int, duration_s: float, seed: int = 0) -> list[Visit]:
    """The visits of visitor `visitor` of `visitors` in a run of `duration_s` (wall seconds).

    Visitors arrive evenly over the first image period, so uploads do not all come at once.
    """
    rng = np.random.default_rng([seed, visitor])
    period = schedule.period_s
    visits, k, last = [], 0, None
    while (start := (visitor / visitors + k) * period) < duration_s:
        image = pool_image(rng, (visitor + k) % schedule.example_every == schedule.example_every - 1, last)
        visits.append(Visit(start, image, activity(schedule, rng, period)))
        last, k = image, k + 1
    return visits


def activity(schedule: Schedule, rng: np.random.Generator, length_s: float) -> list[Action]:
    """Hovers along a wandering cursor; every click_every_s a click at the cursor instead of a hover."""
    step = schedule.time_scale / schedule.hovers_per_s
    ticks_per_click = max(1, round(schedule.click_every_s * schedule.hovers_per_s))
    x, y = rng.uniform(0.2, 0.8, 2)
    actions, clicks = [], 0
    for tick in range(1, int(length_s / step) + 1):
        x, y = np.clip([x, y] + rng.normal(0, 0.04, 2), 0.05, 0.95)
        at = tick * step
        if tick % ticks_per_click:
            actions.append(Action(at, "hover", float(x), float(y)))
            continue
        actions.append(Action(at, "click", float(x), float(y)))
        clicks += 1
        if clicks % schedule.add_every_clicks == 0:
            actions.append(Action(at + step / 2, "add"))
    return actions


def pool_image(rng: np.random.Generator, example: bool, last: PoolImage | None) -> PoolImage:
    """An example, or a fresh JPEG of 1024-1600 px a side (smooth noise and shapes), sized unlike `last`."""
    if example:
        choices = [i for i in range(len(EXAMPLES)) if last is None or last.example != i]
        i = int(rng.choice(choices))
        with Image.open(EXAMPLES[i]) as im:
            return PoolImage(EXAMPLES[i].name, b"", im.width, im.height, example=i)
    while True:
        w, h = (int(v) for v in rng.integers(1024, 1601, 2))
        if last is None or (w, h) != (last.width, last.height):
            break
    base = Image.fromarray(rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8))
    im = base.resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
        box = [x0, y0, x0 + rng.uniform(80, w / 3), y0 + rng.uniform(80, h / 3)]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(1))
    grain = rng.normal(0, 6, (h, w, 3))
    im = Image.fromarray(np.clip(np.asarray(im) + grain, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return PoolImage(f"photo-{w}x{h}.jpg", buf.getvalue(), w, h)


@dataclass
class Samples:
    """What one visitor measured: milliseconds per kind (click, hover, add, upload) and its errors."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)  # bytes by kind (the decoder graph, embeddings)
    decode: set[str] = field(default_factory=set)  # where the page decoded (its data-decode: server, browser)

    def add(self, kind: str, ms: float) -> None:
        self.ms.setdefault(kind, []).append(ms)

    def count(self, kind: str) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + 1


class Transport(Protocol):
    """How a visitor reaches the app. Each call gets `due`, the time.perf_counter() at which the visitor
    acted; a blocking transport returns once answered and records the time from `due`."""

    samples: Samples
    blocking: bool

    def open(self, image: PoolImage, due: float) -> bool: ...  # False: the image could not be opened
    def hover(self, x: float, y: float, due: float) -> None: ...
    def click(self, x: float, y: float, due: float) -> None: ...
    def add(self, due: float) -> None: ...
    def close(self) -> None: ...


def run_visitor(transport: Transport, visits: list[Visit], t0: float, end: float) -> Samples:
    """Play `visits` (times from t0, perf_counter seconds) until `end`; actions due while the image loads are
    dropped, and a hover is dropped when the next action is already due (the page coalesces them too)."""
    try:
        for n, visit in enumerate(visits):
            stop = min(end, t0 + visits[n + 1].at) if n + 1 < len(visits) else end
            if not _sleep_until(t0 + visit.at, end):
                break
            if not transport.open(visit.image, t0 + visit.at):
                continue
            ready = time.perf_counter()
            acts = visit.actions
            for i, a in enumerate(acts):
                due = ready + a.at
                if due >= stop:
                    break
                _sleep_until(due, stop)
                if a.kind == "hover":
                    if transport.blocking and i + 1 < len(acts) and time.perf_counter() >= ready + acts[i + 1].at:
                        continue
                    transport.hover(a.x, a.y, due)
                elif a.kind == "click":
                    transport.click(a.x, a.y, due)
                else:
                    transport.add(due)
    except Exception as e:  # a visitor that breaks is an error of the run, not a crash of the benchmark
        transport.samples.errors.append(f"visitor stopped: {type(e).__name__}: {e}"[:300])
    finally:
        transport.close()
    return transport.samples


def _sleep_until(t: float, end: float) -> bool:
    """Sleep until perf_counter t; False when t is at or past `end`."""
    if t >= end:
        return False
    time.sleep(max(0.0, t - time.perf_counter()))
    return True


class ServerDecode:
    """The page's requests without a browser: uploads and examples through the queue, hovers, clicks and
    adds through the canvas's server function; "answered" is the response received (no PNG decoding)."""

    blocking = True

    def __init__(self, url: str) -> None:
        from tests.helpers.page_client import PageClient

        self.client = PageClient(url, timeout_s=300)
        self.samples = Samples()
        self.image: PoolImage | None = None
        self.key: str | None = None
        self.versions = {"objects_version": -1, "first_version": -1}  # what the page has: unchanged parts not resent

    def open(self, image: PoolImage, due: float) -> bool:
        self.samples.count("upload")
        try:
            if image.example is None:
                view, _ = self.client.open_image(image.data, image.name)
            else:
                view, _, _ = self.client.event("on_example", [None, self.client.model],
                                               {"index": image.example, "value": None})
                self.client.token = view.get("token") if isinstance(view, dict) else None
        except Exception as e:
            self.samples.errors.append(f"upload: {type(e).__name__}: {e}"[:300])
            return False
        if not isinstance(view, dict) or view.get("error") or not view.get("token"):
            self.samples.errors.append(f"upload: {view.get('error') if isinstance(view, dict) else view}"[:300])
            return False
        self.samples.add("upload", (time.perf_counter() - due) * 1000)
        self.image, self.key, self.view = image, view["image"]["key"], view
        self.versions = {"objects_version": view.get("objects_version", -1), "first_version": -1}
        return True

    def _act(self, kind: str, due: float, **data: Any) -> None:
        self.samples.count(kind)
        body = {"type": kind, "key": self.key, **self.versions, **data}
        try:
            out = self.client.act(body)
        except Exception as e:
            self.samples.errors.append(f"{kind}: {type(e).__name__}: {e}"[:300])
            return
        if not isinstance(out, dict) or out.get("error") or out.get("stale"):
            self.samples.errors.append(f"{kind}: {out}"[:300])
            return
        self.samples.add(kind, (time.perf_counter() - due) * 1000)
        self.versions.update((k, out[k]) for k in self.versions if k in out)

    def hover(self, x: float, y: float, due: float) -> None:
        self._act("hover", due, x=round(x * self.image.width), y=round(y * self.image.height))

    def click(self, x: float, y: float, due: float) -> None:
        self._act("point", due, x=round(x * self.image.width), y=round(y * self.image.height), label=1)

    def add(self, due: float) -> None:
        self._act("add", due, name="")

    def close(self) -> None:
        self.client.close()


class LocalDecode(ServerDecode):
    """The page's requests when it decodes itself, without a browser: after each image it fetches the image's
    embedding (and the two graphs, once per visitor, as the browser's cache keeps them); hovers stay in the
    page, so nothing is sent; clicks are only recorded by the server (`local`). The decode itself runs on the
    visitor's device, so it is not run here: the page visitors measure it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.graphs: set[str] = set()

    def open(self, image: PoolImage, due: float) -> bool:
        if not super().open(image, due):
            return False
        local = self.view.get("local")
        if not local:
            self.samples.errors.append("upload: the view has no `local` part: the app does not let pages decode")
            return False
        try:
            for graph in (local["graph"], local["image_graph"]):
                if graph not in self.graphs:
                    self._get("graph", graph)
                    self.graphs.add(graph)
            t = time.perf_counter()
            self._get("embedding", local["embedding"], params={"key": self.key, "model": local["model"]},
                      headers={"X-Sam-Token": self.client.token})
            self.samples.add("embedding", (time.perf_counter() - t) * 1000)
        except Exception as e:
            self.samples.errors.append(f"embedding: {type(e).__name__}: {e}"[:300])
            return False
        return True

    def _get(self, kind: str, path: str, **kwargs: Any) -> None:
        r = self.client.http.get(self.client.url + path, **kwargs)
        r.raise_for_status()
        self.samples.received[kind] = self.samples.received.get(kind, 0) + len(r.content)

    def hover(self, x: float, y: float, due: float) -> None:
        self.samples.count("hover")  # decoded in the page: the server hears nothing

    def click(self, x: float, y: float, due: float) -> None:
        self._act("point", due, x=round(x * self.image.width), y=round(y * self.image.height), label=1, local=True)


def new_rows(before: list[dict], now: list[dict]) -> list[dict]:
    """The rows of `now` that were not in `before`: the page keeps its last 1000 timings, so `now` may have
    lost rows from its start (found by where `before`'s tail begins in `now`)."""
    for shift in range(len(before) + 1):
        kept = before[shift:]
        if now[: len(kept)] == kept:
            return now[len(kept):]
    return now


class PageVisitor:
    """The real page in its own headless Chromium (create it in the thread that uses it: Playwright's sync
    API belongs to one thread). Times are the page's own: pointer event -> answer drawn (its samDebug)."""

    blocking = False
    LOCK = threading.Lock()  # Playwright's driver start is not safe to run in several threads at once

    def __init__(self, url: str) -> None:
        from playwright.sync_api import sync_playwright

        from tests.helpers.browser import launch_chromium, open_app

        with self.LOCK:
            self.playwright = sync_playwright().start()
            self.browser = launch_chromium(self.playwright)
        self.page = open_app(self.browser, url, viewport=(1280, 900))
        self.samples = Samples()
        self.box: dict[str, float] | None = None
        self.rows: list[dict] = []  # the page's timings seen so far
        self.missing = {"point": 0, "add": 0}

    def open(self, image: PoolImage, due: float) -> bool:
        from tests.helpers.browser import DEBUG

        self._collect(settle_s=10)  # a visitor looks at the last mask before opening the next image
        self.samples.count("upload")
        page = self.page
        try:
            if image.example is None:
                page.set_input_files(".sam-file", files=[{"name": image.name, "mimeType": "image/jpeg",
                                                          "buffer": image.data}])
            else:
                page.locator("#sam-examples button.thumbnail-item").nth(image.example).click()
            shown = f"s.width === {image.width} && s.height === {image.height}"  # sizes differ from the last image
            page.wait_for_function(f"(s => s.ready && !s.job && {shown})({DEBUG}.state())", timeout=600_000,
                                   polling=100)
        except Exception as e:
            self.samples.errors.append(f"upload (page): {type(e).__name__}: {e}"[:300])
            return False
        self.samples.add("upload", (time.perf_counter() - due) * 1000)
        self.box = page.locator(".sam-overlay").bounding_box()
        return True

    def _at(self, x: float, y: float) -> tuple[float, float]:
        return self.box["x"] + x * self.box["width"], self.box["y"] + y * self.box["height"]

    def hover(self, x: float, y: float, due: float) -> None:
        self.samples.count("hover")
        self.page.mouse.move(*self._at(x, y), steps=2)

    def click(self, x: float, y: float, due: float) -> None:
        self.samples.count("point")
        self.page.mouse.move(*self._at(x, y))
        self.page.mouse.down()
        self.page.mouse.up()

    def add(self, due: float) -> None:
        self.samples.count("add")
        self.page.keyboard.press("Enter")

    def _collect(self, settle_s: float) -> None:
        """Move the page's new timings into the samples, once its requests are answered (or settle_s has
        passed); clicks and adds it did not draw (an error, or no answer yet) are errors."""
        from tests.helpers.browser import DEBUG

        page = self.page
        deadline = time.monotonic() + settle_s
        while page.evaluate(f"{DEBUG}.state().busy") and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        rows, message, mode = page.evaluate(
            f"(d => [d.timings(), d.state().message, document.querySelector('.sam-canvas').dataset.decode])({DEBUG})"
        )
        if self.samples.sent.get("upload"):
            self.samples.decode.add(mode or "server")
        for t in new_rows(self.rows, rows):
            self.samples.add(t["type"], t["ms"])
            if t.get("decode") == "browser" and t.get("decode_ms") is not None:
                self.samples.add(t["type"] + "_decode", t["decode_ms"])  # of it, in ONNX Runtime
        self.rows = rows
        for kind in ("point", "add"):
            missing = self.samples.sent.get(kind, 0) - len(self.samples.ms.get(kind, [])) - self.missing[kind]
            if missing > 0:
                self.missing[kind] += missing
                self.samples.errors.append(f"{kind} (page): {missing} not drawn; the page says {message!r}"[:300])
        self.samples.errors.extend(f"page error: {e}"[:300] for e in page.errors)
        page.errors.clear()

    def close(self) -> None:
        try:
            self._collect(settle_s=30)
        finally:
            self.browser.close()
            self.playwright.stop()
