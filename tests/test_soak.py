"""Many visitors at once for minutes: no errors, no leakage between sessions, bounded server memory.

20 gradio_client sessions loop upload -> segment on their own images with their own prompts, while 4 page
sessions (the canvas's own requests) open images, click, hover, undo and add objects. Every answer is
checked against a local SamPredictor on the same random weights: a mask that belongs to another session's
image or prompts would not match. The server's resident memory (VmRSS) is sampled throughout.

SAM_SOAK_SECONDS (default 120) sets the duration; SAM_SOAK_SESSIONS (default 20) the gradio_client sessions.
"""

import os
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from sam import SamPredictor
from sam.app.threads import torch_threads
from sam.masks import decode_coco_rle
from tests.helpers.browser import app_on_hub, app_pid, default_predictor, rss_mb
from tests.helpers.page_client import PageClient

SECONDS = float(os.environ.get("SAM_SOAK_SECONDS", "120"))
SESSIONS = int(os.environ.get("SAM_SOAK_SESSIONS", "20"))
PAGES = 4
RSS_LIMIT_MB = 1536  # the app process: torch, gradio, a tiny model and caches of small images (835 MB measured)
RSS_GROWTH_MB = 300  # from the end of the first quarter of the run to its end
DISK_LIMIT_MB = 200  # the uploads of the run (each API call uploads its image), kept for an hour


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.is_dir() else 0.0


def images_for(worker: int, folder: Path) -> list[tuple[Path, np.ndarray]]:
    """Three images of its own per worker (different sizes, random blocks)."""
    out = []
    for j in range(3):
        rng = np.random.default_rng(1000 * worker + j)
        h, w = int(rng.integers(90, 240)), int(rng.integers(90, 320))
        blocks = rng.integers(0, 255, (h // 15 + 1, w // 15 + 1, 3)).astype(np.uint8)
        image = np.kron(blocks, np.ones((15, 15, 1), np.uint8))[:h, :w]
        path = folder / f"w{worker}-{j}.png"
        Image.fromarray(image).save(path)
        out.append((path, image))
    return out


class Soak:
    def __init__(self, url: str, folder: Path, deadline: float) -> None:
        self.url, self.folder, self.deadline = url, folder, deadline
        self.errors: list[str] = []
        self.api_calls: list[tuple[int, np.ndarray, dict, dict]] = []  # (worker, image, request, answer)
        self.page_calls: list[tuple[np.ndarray, tuple[float, float], dict]] = []  # (image, first point, answer)
        self.latencies: list[float] = []
        self.lock = threading.Lock()

    @contextmanager
    def recording(self, who: str) -> Iterator[None]:
        """A worker's loop: an exception ends it and is kept in self.errors (the test fails on any)."""
        try:
            yield
        except Exception as e:
            with self.lock:
                self.errors.append(f"{who}: {type(e).__name__}: {e}")

    def api_worker(self, worker: int) -> None:
        images = images_for(worker, self.folder)
        rng = np.random.default_rng(worker)
        with self.recording(f"api worker {worker}"), closing(Client(self.url, verbose=False)) as client:
            i = 0
            while time.monotonic() < self.deadline:
                path, image = images[i % len(images)]
                h, w = image.shape[:2]
                n = int(rng.integers(1, 4))
                x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
                box = [x0, y0, x0 + int(rng.integers(5, w // 2)), y0 + int(rng.integers(5, h // 2))]
                request = dict(
                    points=np.round(rng.uniform(0, 1, (n, 2)) * (w - 1, h - 1), 1).tolist(),
                    labels=rng.integers(0, 2, n).tolist(),
                    box=box if i % 3 == 0 else [],
                    multimask=bool(i % 2),
                )
                start = time.perf_counter()
                answer = client.predict(image=handle_file(str(path)), api_name="/segment", **request)
                with self.lock:
                    self.latencies.append(time.perf_counter() - start)
                    self.api_calls.append((worker, image, request, answer))
                i += 1

    def page_worker(self, worker: int) -> None:
        images = images_for(100 + worker, self.folder)
        rng = np.random.default_rng(100 + worker)
        with self.recording(f"page worker {worker}"), closing(PageClient(self.url)) as page:
            i = 0
            while time.monotonic() < self.deadline:
                path, image = images[i % len(images)]
                h, w = image.shape[:2]
                view, _ = page.open_image(path.read_bytes(), path.name)
                assert view.get("token") and view["objects"] == [], view
                first = (float(rng.integers(0, w)), float(rng.integers(0, h)))
                out = page.act({"type": "point", "x": first[0], "y": first[1]})
                assert out["prompts"] == [{"kind": "point", "coords": list(first), "label": 1}], out
                with self.lock:
                    self.page_calls.append((image, first, out))
                page.act({"type": "hover", "x": float(rng.integers(0, w)), "y": float(rng.integers(0, h))})
                out = page.act({"type": "point", "x": 1.0, "y": 1.0, "label": 0})
                assert [p["coords"] for p in out["prompts"]] == [list(first), [1, 1]], out
                out = page.act({"type": "undo"})
                assert len(out["prompts"]) == 1, out
                name = f"p{worker}-{i}"
                out = page.act({"type": "add", "name": name, "objects_version": -1})
                assert [o["name"] for o in out["objects"]] == [name], out  # only this session's object
                i += 1


def check_api_answer(predictor: SamPredictor, image: np.ndarray, request: dict, answer: dict) -> None:
    box = np.array(request["box"]) if request["box"] else None
    masks, scores, _ = predictor.predict(
        np.array(request["points"]), np.array(request["labels"]), box, multimask_output=request["multimask"]
    )
    order = np.argsort(-scores, kind="stable")
    assert answer["size"] == list(image.shape[:2])
    assert answer["scores"] == pytest.approx(scores[order].tolist(), abs=1e-4)
    for rle, i in zip(answer["masks"], order, strict=True):
        assert (decode_coco_rle(rle) != masks[i]).sum() <= 5  # one thread in the app, all here: edge pixels


def test_soak(checkpoints, tmp_path):
    with app_on_hub(checkpoints, tmp_path, ["--model", "sam-vit-base"]) as url:
        pid = app_pid(url)
        start_rss = rss_mb(pid)
        soak = Soak(url, tmp_path, time.monotonic() + SECONDS)
        threads = [threading.Thread(target=soak.api_worker, args=(w,)) for w in range(SESSIONS)]
        threads += [threading.Thread(target=soak.page_worker, args=(w,)) for w in range(PAGES)]
        for t in threads:
            t.start()
        samples: list[tuple[float, float]] = []
        disk: list[float] = []  # MB under the app's Gradio folder: uploads and copies of outputs
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic(), rss_mb(pid)))
            disk.append(folder_mb(tmp_path / "gradio"))
            time.sleep(1)
        for t in threads:
            t.join(timeout=SECONDS + 300)
        assert not any(t.is_alive() for t in threads)
    rss = np.array([r for _, r in samples])
    settled = rss[len(rss) // 4 :]
    latency = np.array(soak.latencies or [0.0])
    print(
        f"\nsoak {SECONDS:.0f} s: {len(soak.api_calls)} /segment calls ({SESSIONS} clients, "
        f"p50 {np.median(latency):.2f} s, p95 {np.percentile(latency, 95):.2f} s), "
        f"{len(soak.page_calls)} page loops ({PAGES} pages); server RSS start "
        f"{start_rss:.0f} MB, max {rss.max():.0f} MB, growth after the first quarter {settled[-1] - settled[0]:+.0f} "
        f"MB; disk {max(disk):.1f} MB at most"
    )
    assert soak.errors == []
    per_client = np.bincount([w for w, *_ in soak.api_calls], minlength=SESSIONS)
    assert per_client.min() >= 1 and len(soak.page_calls) >= PAGES, (per_client, len(soak.page_calls))  # nobody starved
    assert rss.max() < RSS_LIMIT_MB
    assert max(disk) < DISK_LIMIT_MB
    assert settled.max() - settled[0] < RSS_GROWTH_MB

    predictor = default_predictor(checkpoints)  # the app's sam-vit-base
    with torch_threads(1):  # on a busy machine two threads can be 30x slower than one for these tiny ops
        check_answers(predictor, soak)


def check_answers(predictor: SamPredictor, soak: Soak) -> None:
    """Every answer against the predictor, one embedding per distinct image."""
    import base64
    import io

    by_image: dict[bytes, list] = {}
    for _, image, request, answer in soak.api_calls:
        by_image.setdefault(image.tobytes(), []).append((image, request, answer))
    for image, first, out in soak.page_calls:
        by_image.setdefault(image.tobytes(), []).append((image, first, out))
    for calls in by_image.values():
        predictor.set_image(calls[0][0])
        for image, request, answer in calls:
            if isinstance(request, dict):
                check_api_answer(predictor, image, request, answer)
                continue
            masks, scores, _ = predictor.predict(np.array([request]), np.array([1]))
            assert answer["selected"] == int(np.argmax(scores))
            for cand, mask in zip(answer["candidates"], masks, strict=True):
                with Image.open(io.BytesIO(base64.b64decode(cand["png"].split(",", 1)[1]))) as im:
                    drawn = np.asarray(im.convert("RGBA"))[..., 3] > 0
                assert (drawn != mask).sum() <= 5
