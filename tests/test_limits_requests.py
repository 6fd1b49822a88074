"""Limits on what one request may cost: segment-everything's time limit and the request-body size limit.

The deadline and the middleware are tested on their own (a fake clock, a bare ASGI app), then in the app
started as users start it: a too-large JSON body gets HTTP 413 before it is read, segment-everything past
its limit says so, and the app, the API and the page's session go on working afterwards.
"""

import asyncio
import json
import socket
import time
import urllib.parse

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import sam.deadline
from sam.app import settings
from sam.app.body_limit import BodyLimit
from sam.app.everything import everything
from sam.app.service import Models, Service
from sam.app.settings import Settings
from sam.automatic import SamAutomaticMaskGenerator
from sam.deadline import Deadline, TimeLimitError
from tests.helpers.browser import REPO, app_on_hub
from tests.helpers.loaders import CountingLoader
from tests.helpers.oracle import oracle_sam, region_image
from tests.helpers.page_client import PageClient

COFFEE = REPO / "examples" / "coffee.jpg"
LIMIT = settings.MAX_BODY_KB << 10


class StepClock:
    """Stands in for the `time` module in sam.deadline: every reading is one second after the previous one."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


# ---- the deadline ---------------------------------------------------------------------------------------


def test_a_deadline_passes_until_its_limit_then_says_what_stopped(monkeypatch):
    monkeypatch.setattr(sam.deadline, "time", StepClock())
    deadline = Deadline(2.5, "the job", "JOB_TIMEOUT_S", "try less")  # started at 1 s
    deadline.check()  # 2 s: 1 s elapsed
    deadline.check()  # 3 s: 2 s elapsed
    with pytest.raises(TimeLimitError) as err:
        deadline.check("3 of 9 steps done")  # 4 s: 3 s elapsed
    assert str(err.value) == (
        "the job stopped after 3.0 s, its time limit (2.5 s, JOB_TIMEOUT_S), with 3 of 9 steps done: try less"
    )
    assert isinstance(err.value, ValueError)  # the app shows ValueErrors' messages as they are


def test_the_generator_stops_between_batches_and_between_masks(monkeypatch):
    image, _ = region_image()
    gen = SamAutomaticMaskGenerator(oracle_sam(), points_per_side=4, points_per_batch=4)
    full = gen.generate(image)
    assert len(full) >= 3
    clock = StepClock()
    monkeypatch.setattr(sam.deadline, "time", clock)
    calls = []
    # Readings: start, before the crop, after each of the 4 batches, then before each mask.
    with pytest.raises(TimeLimitError, match=r"stopped after 3\.0 s, its time limit \(2\.5 s\), with 8 of 16 points"):
        gen.generate(image, progress=lambda done, total: calls.append(done), deadline=Deadline(2.5, "stopped"))
    assert calls == [4, 8]  # nothing ran past the batch that overran
    clock.now = 0.0
    message = rf"every point done and 1 of {len(full)} masks written"
    with pytest.raises(TimeLimitError, match=message):
        gen.generate(image, deadline=Deadline(6.5, "stopped"))
    assert [r["bbox"] for r in gen.generate(image, deadline=Deadline(1e9, "x"))] == [r["bbox"] for r in full]


def test_segment_everything_past_its_limit_leaves_the_service_usable():
    """A tiny limit on the tiny random model: the first batch already overruns it."""
    service = Service(Models(CountingLoader()), cache_items=2, cache_mb=16, everything_timeout_s=1e-3)
    key = service.add_image(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    args = dict(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    start = time.monotonic()
    with pytest.raises(TimeLimitError) as err:
        everything(service, "m0", key, **args)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert message.startswith("segment everything stopped after ")
    assert "its time limit (0.001 s, SAM_EVERYTHING_TIMEOUT_S), with 64 of 256 points done" in message
    assert "nothing was changed" in message and "fewer points per side" in message
    assert service._embed_lock.acquire(blocking=False)  # released: embeddings and clicks go on
    service._embed_lock.release()
    service.everything_timeout_s = 300
    assert len(everything(service, "m0", key, **args)) > 0


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf"])
def test_a_bad_everything_timeout_is_refused_at_startup(value):
    with pytest.raises(ValueError, match="SAM_EVERYTHING_TIMEOUT_S must be a"):
        Settings.from_env({"SAM_EVERYTHING_TIMEOUT_S": value})


# ---- the body limit on its own ----------------------------------------------------------------------------


def call(app: BodyLimit, path: str, chunks: list[bytes], length: int | None = None) -> tuple[int, bytes, int]:
    """One HTTP request through `app` -> (status, response body, request chunks the server pulled)."""
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    pulled, sent = [], []

    async def receive():
        i = len(pulled)
        pulled.append(i)
        if i < len(chunks):
            return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert sum(m["type"] == "http.response.start" for m in sent) == 1
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), len(pulled)


def json_app(on_error: str = "raise"):
    """A JSON route as FastAPI's: reads the whole body, answers its length; on_error='400' answers 400 instead."""

    async def app(scope, receive, send):
        body = b""
        try:
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        except Exception:
            if on_error == "raise":
                raise
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"There was an error parsing the body"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    return app


@pytest.mark.parametrize("on_error", ["raise", "400"])
def test_body_limit_without_a_server(on_error):
    app = BodyLimit(json_app(on_error), max_bytes=1000)
    assert call(app, "/gradio_api/queue/join", [b"x" * 600, b"x" * 400], 1000)[:2] == (200, b"1000")
    status, body, pulled = call(app, "/gradio_api/queue/join", [b"x" * 10] * 1000, 10_000)
    assert (status, pulled) == (413, 0) and b"at most 1000 bytes" in body  # refused before reading anything
    status, body, pulled = call(app, "/gradio_api/run/segment", [b"x" * 300] * 100)  # chunked: no length
    assert (status, pulled) == (413, 4) and b"at most 1000 bytes" in body  # stopped at the first chunk over
    assert call(app, "/gradio_api/upload", [b"x" * 300] * 10, 3000)[:2] == (200, b"3000")  # uploads: their own limit
    assert call(app, "/prefix/gradio_api/upload/", [b"x" * 300] * 10)[:2] == (200, b"3000")
    assert call(app, "/gradio_api/uploads", [b"x" * 3000], 3000)[0] == 413


# ---- the running app ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_url(checkpoints, tmp_path_factory):
    """The app with a segment-everything limit that any run overruns (its first batch takes longer)."""
    folder = tmp_path_factory.mktemp("limits")
    env = {"SAM_EVERYTHING_TIMEOUT_S": "0.001"}
    with app_on_hub(checkpoints, folder, ["--model", "sam-vit-base"], extra_env=env) as url:
        yield url


def raw_post(url: str, path: str, length: int, sent: bytes = b"{") -> tuple[str, float]:
    """Announce `length` bytes of JSON, send only `sent`, and read the answer -> (status line, seconds)."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=30) as s:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
        s.sendall(head.encode() + b"\r\n" + sent)
        answer = b""
        while b"\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode(), time.monotonic() - start


@pytest.mark.parametrize(
    "path",
    ["/gradio_api/queue/join", "/gradio_api/run/segment", "/gradio_api/call/segment", "/gradio_api/component_server/"],
)
def test_a_huge_json_body_is_refused_before_it_is_sent(app_url, path):
    status, seconds = raw_post(app_url, path, 100 << 20)  # 100 MB announced, one byte sent
    assert status.startswith("HTTP/1.1 413 ") and seconds < 10


def test_a_streamed_body_over_the_limit_is_cut_off_and_the_app_goes_on(app_url):
    prompts = json.dumps({"data": [None, [[1, 2]] * 400_000], "fn_index": 0, "session_hash": "abc"}).encode()
    assert len(prompts) > LIMIT

    def chunks():
        for i in range(0, len(prompts), 64 << 10):
            yield prompts[i : i + (64 << 10)]

    with httpx.Client(timeout=60) as http:
        join, headers = app_url + "/gradio_api/queue/join", {"Content-Type": "application/json"}
        r = http.post(join, content=chunks(), headers=headers)
        assert r.status_code == 413 and f"at most {LIMIT} bytes" in r.text
        r = http.post(join, content=prompts, headers=headers)
        assert r.status_code == 413
        upload = http.post(app_url + "/gradio_api/upload", files={"files": ("big.png", b"\0" * (LIMIT * 2))})
        assert upload.status_code == 200  # uploads keep their own, larger limit
    client = Client(app_url, verbose=False)
    out = client.predict(image=handle_file(str(COFFEE)), points=[[300, 200]], labels=[1], api_name="/segment")
    assert out["size"] == [400, 600] and len(out["masks"]) == 3
    client.close()


def test_segment_everything_past_its_limit_in_the_app(app_url):
    client = Client(app_url, verbose=False)
    with pytest.raises(AppError, match=r"segment everything stopped after [0-9.]+ s, its time limit \(0.001 s"):
        client.predict(image=handle_file(str(COFFEE)), points_per_side=8, api_name="/everything")
    out = client.predict(image=handle_file(str(COFFEE)), box=[150, 50, 500, 380], api_name="/segment")
    assert len(out["masks"]) == 3
    client.close()

    page = PageClient(app_url)
    view, _ = page.open_image(COFFEE.read_bytes(), "coffee.jpg")
    assert view["token"]
    assert len(page.act({"type": "point", "x": 300, "y": 200})["candidates"]) == 3
    (view,) = page.event("on_everything", [None, page.model])
    assert view["error"].startswith("segment everything stopped after ") and "of 1024 points done" in view["error"]
    after = page.act({"type": "point", "x": 100, "y": 80, "label": 0})  # the session kept its prompt
    assert len(after["prompts"]) == 2 and len(after["candidates"]) == 1
    assert "error" in page.act({"type": "pick", "index": 0})  # and no everything masks were kept
    page.close()
