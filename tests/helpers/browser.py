"""Helpers for tests that run the app: `python app.py` as a subprocess on loopback, headless Chromium.

The app is started the way users start it (`python app.py --model NAME`), with HF_ENDPOINT pointing at a
LocalHub (tests/hub.py) that serves random checkpoints under the published repo ids. The accessibility
audit runs axe-core (npm), installed into the repository's git-ignored node_modules by .ci/run.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.hub import Checkpoints, LocalHub, hub_env

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
CANVAS = ".sam-canvas"
DEBUG = "document.querySelector('.sam-canvas').samDebug"
AXE_VERSION = "4.14.1"  # the same in .ci/run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def published_hub(checkpoints: Checkpoints, overrides: dict[str, Path] | None = None) -> Iterator[str]:
    """A LocalHub serving every known repo with tiny random checkpoints (`overrides`: repo id -> folder)."""
    hub = LocalHub()
    for repo_id, files in {**checkpoints.published(), **(overrides or {})}.items():
        hub.add(repo_id, files)
    url = hub.start()
    try:
        yield url
    finally:
        hub.stop()


def served_default(checkpoints: Checkpoints) -> Path:
    """The checkpoint `published_hub` serves as the app's default model, sam-vit-base (first known model: seed 0)."""
    return checkpoints.transformers("tiny", 0)


class Expected:
    """What Meta's predictor API gives for prompts on one image, with the checkpoint the app downloaded."""

    def __init__(self, folder, image_path):
        from sam import SamPredictor
        from sam.app.service import read_image
        from sam.weights import load_model

        self.predictor = SamPredictor(load_model(str(folder)))
        self.predictor.set_image(read_image(image_path))

    def predict(self, prompts, mask_input=None, multimask=None):
        """Prompts as the page lists them -> (masks, scores, low-res logits) of SamPredictor.predict."""
        import numpy as np

        from sam.app.threads import torch_threads

        points = [p["coords"] for p in prompts if p["kind"] == "point"]
        labels = [p["label"] for p in prompts if p["kind"] == "point"]
        boxes = [p["coords"] for p in prompts if p["kind"] == "box"]
        if multimask is None:
            multimask = len(prompts) == 1 and prompts[0]["kind"] == "point"
        with torch_threads(1):  # as the app decodes (SAM_DECODE_THREADS), so that masks compare exactly
            return self.predictor.predict(
                np.array(points) if points else None,
                np.array(labels) if labels else None,
                np.array(boxes[-1]) if boxes else None,
                mask_input=mask_input,
                multimask_output=multimask,
            )


def assert_drawn(page, which, mask) -> None:
    """The page's mask layer equals HxW bool `mask` (pixel count and extent), and it is painted on the overlay."""
    import numpy as np

    info = mask_info(page, which)
    ys, xs = np.nonzero(mask)
    assert (info["width"], info["height"]) == (mask.shape[1], mask.shape[0])
    assert info["count"] == int(mask.sum())
    assert info["box"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]
    assert page.evaluate(f"{DEBUG}.pixelAt({x + 0.5}, {y + 0.5})")[3] > 0  # painted where the mask is


def default_predictor(checkpoints: Checkpoints):
    """A SamPredictor on the weights the app loads as sam-vit-base from `published_hub`."""
    from sam import SamPredictor
    from sam.weights import load_model

    return SamPredictor(load_model(str(served_default(checkpoints))))


@contextmanager
def run_app(args: list[str], env: dict[str, str], log: Path, timeout_s: float = 180) -> Iterator[str]:
    """Start `python app.py ARGS` on a free loopback port; yields its URL once it answers, then stops it."""
    port = free_port()
    env = {**env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    env.update(GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", GRADIO_TEMP_DIR=str(log.parent / "gradio"))
    env.setdefault("SAM_PRECISION", "float32")  # masks are compared with an fp32 SamPredictor
    env.setdefault("SAM_DECODE_THREADS", "1")  # ... decoding on one thread, so that masks compare exactly
    env.setdefault("SAM_BROWSER_DECODE", "0")  # ... by the server (a page that reaches the CDN would decode itself)
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(url + "/", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not answer in {timeout_s} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


@contextmanager
def app_on_hub(checkpoints: Checkpoints, tmp: Path, args: list[str], overrides: dict[str, Path] | None = None,
               extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """The app, started with `args`, downloading from a LocalHub of random checkpoints into its own cache."""
    with published_hub(checkpoints, overrides) as hub_url:
        env = {**hub_env(hub_url, tmp / "hf"), **(extra_env or {})}
        with run_app(args, env, tmp / "app.log") as url:
            yield url


def app_fixture(**env: str):
    """A module-scoped fixture giving the URL of `python app.py --model sam-vit-base` on a loopback Hub of
    tiny random checkpoints, with `env` added to its environment. Assign it to `app_url` in a test module."""

    @pytest.fixture(scope="module")
    def app_url(checkpoints, tmp_path_factory):
        tmp = tmp_path_factory.mktemp("app")
        with app_on_hub(checkpoints, tmp, ["--model", "sam-vit-base"], extra_env=env) as url:
            yield url

    return app_url


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    """`browser`: headless Chromium, one per test module that imports this."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(name="page")
def page_fixture(browser, app_url):
    """`page`: the module's app (its app_url fixture) in a fresh 1280x900 page, with no page errors at the end."""
    page = open_app(browser, app_url, viewport=(1280, 900))
    yield page
    assert page.errors == []
    page.context.close()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def open_app(browser, url: str, viewport=(1200, 1000), **context_args):
    """A new context and page on the app, with page errors collected in page.errors."""
    size = {"width": viewport[0], "height": viewport[1]}
    context = browser.new_context(**{"viewport": size, "accept_downloads": True, **context_args})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector(CANVAS)
    return page


def open_phone(browser, url: str):
    """The app in a 390x844 touch screen (a phone), with page errors collected in page.errors."""
    return open_app(browser, url, viewport=(390, 844), has_touch=True, is_mobile=True)


def upload(page, path: Path | str, timeout_ms: int = 120_000) -> None:
    """Upload through the canvas's file picker and wait until the page shows this image with its embedding.

    Waiting for the page to be ready is not enough after an earlier image: it is still ready with the old one
    until it has read the new file.
    """
    before = page.evaluate(f"{DEBUG}.state().images")
    page.set_input_files(".sam-file", str(path))
    page.wait_for_function(f"{DEBUG}.state().images > {before}", timeout=timeout_ms, polling=50)
    page.wait_for_selector(f"{CANVAS}[data-ready='1']", timeout=timeout_ms)


def image_to_page(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y)."""
    box = page.locator(".sam-overlay").bounding_box()
    w, h = page.evaluate(f"[{DEBUG}.state().width, {DEBUG}.state().height]")
    return box["x"] + x * box["width"] / w, box["y"] + y * box["height"] / h


def count(page, kind: str) -> int:
    return sum(1 for t in page.evaluate(f"{DEBUG}.timings()") if t["type"] == kind)


def act(page, kind: str, fn, timeout_ms: int = 60_000) -> None:
    """Run fn (a click, a drag...) and wait until the answer to that kind of request has been drawn.

    The page times itself; waiting checks every 50 ms rather than every frame, so that the waiting does
    not take the CPU from the server that the browser shares in tests and benchmarks.
    """
    n = count(page, kind)
    fn()
    page.wait_for_function(
        f"{DEBUG}.timings().filter(t => t.type === '{kind}').length > {n}", timeout=timeout_ms, polling=50
    )


def click(page, x: float, y: float, button: str = "left") -> None:
    px, py = image_to_page(page, x, y)
    act(page, "point", lambda: page.mouse.click(px, py, button=button))


def state(page) -> dict:
    return page.evaluate(f"{DEBUG}.state()")


def mask_info(page, which) -> dict | None:
    return page.evaluate(f"{DEBUG}.maskInfo({which!r})" if isinstance(which, str) else f"{DEBUG}.maskInfo({which})")


def choose_model(page, name: str) -> None:
    """Pick `name` in the page's model picker, whose labels are the name, then its embedding time."""
    page.locator("#sam-model input").click()
    page.locator(f"#sam-model li[role=option]:is([aria-label='{name}'], [aria-label^='{name} · '])").click()


class Held:
    """Requests to URLs matching `pattern`, held (not sent) until release(): what the page does meanwhile."""

    def __init__(self, page, pattern: str) -> None:
        self.page, self.pattern, self.routes, self.released = page, pattern, [], False
        page.route(pattern, self._hold)

    def _hold(self, route) -> None:
        route.continue_() if self.released else self.routes.append(route)

    def wait(self, n: int = 1, timeout_ms: int = 30_000) -> None:
        """Wait until n requests are held."""
        deadline = time.monotonic() + timeout_ms / 1000
        while len(self.routes) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.routes)} of {n} requests to {self.pattern} in {timeout_ms} ms")
            self.page.wait_for_timeout(50)

    def release(self) -> None:
        self.released = True
        for route in self.routes:
            route.continue_()
        self.page.unroute(self.pattern, self._hold)


def node_package(name: str) -> Path:
    """The folder of npm package `name` (axe-core or onnxruntime-web) in the repository's node_modules, at
    the pinned version; both are installed together when either is missing, so neither install removes the
    other (as .ci/run does)."""
    from sam.app.settings import ORT_VERSION

    versions = {"axe-core": AXE_VERSION, "onnxruntime-web": ORT_VERSION}
    folder = REPO / "node_modules" / name
    package = folder / "package.json"
    if not package.is_file() or json.loads(package.read_text())["version"] != versions[name]:
        specs = [f"{n}@{v}" for n, v in versions.items()]
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"the browser tests need {name}: npm install --no-save {' '.join(specs)}")
        subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", *specs], cwd=REPO, check=True,
                       capture_output=True, timeout=600)
    return folder


def axe_script() -> str:
    """axe-core's browser script, pinned."""
    return (node_package("axe-core") / "axe.min.js").read_text()


def axe_violations(page, impacts: tuple[str, ...] = ("serious", "critical"), context: str | None = None) -> list[dict]:
    """Accessibility violations of these impacts in the page (or the elements matching `context`), by
    axe-core: [{id, impact, help, nodes}]."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(content=axe_script())
    return page.evaluate(
        """async ([impacts, context]) => (await axe.run(context || document, { resultTypes: ['violations'] }))
            .violations
            .filter((v) => impacts.includes(v.impact))
            .map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                           nodes: v.nodes.map((n) => n.target.join(' ')) }))""",
        [list(impacts), context],
    )


def env_without_hub() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HF_")}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def app_pid(url: str) -> int:
    """The `python app.py` child of this process serving on url's port."""
    port = url.rsplit(":", 1)[1].strip("/")
    me = os.getpid()
    for tid in os.listdir(f"/proc/{me}/task"):
        for pid in Path(f"/proc/{me}/task/{tid}/children").read_text().split():
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if b"app.py" in cmd and f"GRADIO_SERVER_PORT={port}".encode() in env:
                return int(pid)
    raise RuntimeError(f"no app.py child serving {url}")
