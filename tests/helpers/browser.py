"""Helpers for tests that run the app: `python app.py` as a subprocess on loopback, headless Chromium.

The app is started the way users start it (`python app.py --model NAME`), with HF_ENDPOINT pointing at a
LocalHub (tests/hub.py) that serves random checkpoints under the published repo ids.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.hub import Checkpoints, LocalHub, hub_env

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
CANVAS = ".sam-canvas"
DEBUG = "document.querySelector('.sam-canvas').samDebug"


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


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def open_app(browser, url: str, viewport=(1200, 1000)):
    """A new context and page on the app, with page errors collected in page.errors."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector(CANVAS)
    return page


def upload(page, path: Path | str, timeout_ms: int = 120_000) -> None:
    """Upload through the canvas's file picker and wait until the embedding is there."""
    page.set_input_files(".sam-file", str(path))
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
