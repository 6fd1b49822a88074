"""The app's disk use is bounded: upload requests capped whole, upload budgets per client and in all, refused
files deleted, cut-off uploads and old exports swept."""

import asyncio
import os
import socket
import time
import urllib.parse

import httpx
import pytest

from sam.app.body_limit import BodyLimit, UploadBudget
from sam.app.sweep import Sweeper, sweep
from tests.helpers.browser import app_on_hub
from tests.helpers.page_client import PageClient

MB = 1 << 20


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_counts_each_client_and_everyone_over_its_window():
    clock = Clock()
    budget = UploadBudget(per_client=10 * MB, total=15 * MB, window_s=3600, clock=clock)
    budget.add("a", 8 * MB)
    assert budget.refusal("a", 2 * MB) is None
    assert "You uploaded 8 MB in the last 1 hour" in budget.refusal("a", 3 * MB)
    budget.add("b", 6 * MB)
    assert "This server took all the uploads it can in 1 hour (15 MB)" in budget.refusal("c", 2 * MB)
    clock.now += 3601  # an hour later both are forgotten
    assert budget.refusal("a", 10 * MB) is None and budget.refusal("c", 10 * MB) is None


def upload(app: BodyLimit, chunks: list[bytes], length: int | None, client: str = "1.2.3.4") -> tuple[int, bytes]:
    headers = [(b"x-forwarded-for", f"{client}, 10.0.0.1".encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "headers": headers, "client": ("::1", 9)}
    sent, pulled = [], []

    async def receive():
        pulled.append(1)
        i = len(pulled) - 1
        if i < len(chunks):
            return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def reader(scope, receive, send):  # stands in for Gradio's upload route: reads it all, answers 200
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    asyncio.run(BodyLimit(reader, 1000, upload_max_bytes=app.upload_max_bytes, budget=app.budget)(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_upload_requests_are_capped_whole_and_budgeted_per_client():
    limits = BodyLimit(None, 1000, upload_max_bytes=3 * MB, budget=UploadBudget(5 * MB, 8 * MB))
    assert upload(limits, [b"x" * MB] * 2, 2 * MB) == (200, b"ok")
    status, body = upload(limits, [b"x" * MB] * 4, 4 * MB)  # three files of 1.3 MB say the same
    assert status == 413 and b"at most 3145728 bytes" in body
    assert upload(limits, [b"x" * MB] * 4, None)[0] == 413  # no length: cut off as it passes the cap
    status, body = upload(limits, [b"x" * MB] * 3, 3 * MB)  # 2 + 4 (what the cut-off one sent) + 3 > 5
    assert status == 429 and b"You uploaded 6 MB" in body
    assert upload(limits, [b"x" * MB] * 2, 2 * MB, client="5.6.7.8") == (200, b"ok")  # another address
    assert upload(limits, [b"x" * MB], MB, client="9.9.9.9")[0] == 429  # 9 MB in all is past 8


def test_sweep_removes_old_files_and_empty_folders_only(tmp_path):
    now = time.time()
    old, new, nested = tmp_path / "old.part", tmp_path / "new.part", tmp_path / "a" / "b" / "old.zip"
    nested.parent.mkdir(parents=True)
    for path, age in ((old, 1000), (new, 10), (nested, 1000)):
        path.write_bytes(b"x" * 100)
        os.utime(path, (now - age, now - age))
    (tmp_path / "link").symlink_to(old)
    assert sweep(tmp_path, 500) == 100 and not old.exists() and new.exists() and nested.exists()
    assert sweep(tmp_path, 500, recursive=True) == 100 and not (tmp_path / "a").exists() and new.exists()
    assert sweep(tmp_path / "missing", 0) == 0


@pytest.fixture(scope="module")
def app(checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("disk")
    with app_on_hub(checkpoints, folder, ["--model", "sam-vit-base"]) as url:
        yield url, folder / "gradio"


def test_the_app_refuses_one_request_of_three_files_over_the_cap(app):
    url, _ = app
    files = [("files", (f"part{i}.png", b"\0" * (20 * MB), "image/png")) for i in range(3)]
    r = httpx.post(f"{url}/gradio_api/upload", files=files, timeout=60)
    assert r.status_code == 413 and "at most" in r.text


def test_a_refused_file_is_not_kept(app):
    url, upload_dir = app
    page = PageClient(url)
    try:
        view, _ = page.open_image(b"%PDF-1.4 not an image", "doc.pdf")
        assert "not a JPEG" in view["error"]
        kept = [p for p in upload_dir.rglob("doc.pdf")]
        assert kept == []
    finally:
        page.close()


def test_a_cut_off_upload_is_swept(app):
    url, upload_dir = app
    before = {p for p in upload_dir.iterdir() if p.is_file()}
    parts = urllib.parse.urlsplit(url)
    body = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n\r\n" + b"x" * 300_000
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(
            b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {10 * MB}\r\n\r\n".encode() + body
        )
        time.sleep(1.0)  # the server streams what came to a temporary file, then the client goes away
    deadline = time.monotonic() + 10
    while not ({p for p in upload_dir.iterdir() if p.is_file()} - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    partial = {p for p in upload_dir.iterdir() if p.is_file()} - before
    assert partial, "no partial upload was left to sweep"
    Sweeper(upload_dir, upload_dir.parent / "exports", upload_age_s=0).run_once()
    assert not any(p.exists() for p in partial)
