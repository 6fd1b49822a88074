"""Hub faults that tests/test_hub.py does not cover: server errors, a Hub that never answers, a download cut off
by a killed process, a wrong token, and the app itself facing a broken, gated, missing, silent or absent Hub
(page up, clear status).
"""

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from huggingface_hub import constants

from sam.weights import WeightsError, load_model
from tests.helpers.browser import REPO, run_app
from tests.helpers.hub import BASE, WEIGHTS, LocalHub, hub_env, same_weights
from tests.helpers.page_client import PageClient

COFFEE = REPO / "examples" / "coffee.jpg"


@pytest.fixture
def no_retries(monkeypatch):
    """huggingface_hub retries 5xx answers and network errors for ~25 s with backoff; tests need one try."""
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())
    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_STATUS_CODES", ())


def failing_server(status: int) -> ThreadingHTTPServer:
    """Answers every request with `status` and a JSON body, as a Hub behind a failing proxy would."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            body = b'{"error": "upstream unavailable"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@contextmanager
def silent_server() -> Iterator[str]:
    """A Hub behind a stuck proxy: accepts connections on loopback and never answers; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def point_hub_at(monkeypatch, url: str) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_give_a_clear_error_and_are_not_remembered(
    local_hub, checkpoints, monkeypatch, no_retries, status
):
    local_hub.add(BASE, checkpoints.transformers("tiny"))
    broken = failing_server(status)
    try:
        point_hub_at(monkeypatch, f"http://127.0.0.1:{broken.server_address[1]}")
        with pytest.raises(WeightsError) as err:
            load_model("sam-vit-base")
    finally:
        broken.shutdown()
        broken.server_close()
    message = str(err.value)
    assert "facebook/sam-vit-base" in message and "127.0.0.1" in message and f"answered HTTP {status}" in message
    assert "network" in message and "local file or folder" in message
    point_hub_at(monkeypatch, local_hub.url)  # the Hub is back: the next try downloads
    assert load_model("sam-vit-base").weights_source == "sam-vit-base (facebook/sam-vit-base)"


@pytest.mark.parametrize("timeout", [None, 2])
def test_a_hub_that_never_answers_fails_in_bounded_time(local_hub, checkpoints, monkeypatch, timeout):
    """huggingface_hub alone retries a silent Hub for about 6.5 minutes (six tries of 60 s); sam.hub gives up
    after one try of HF_HUB_ETAG_TIMEOUT (default 10 s)."""
    local_hub.add(BASE, checkpoints.transformers("tiny"))
    if timeout is not None:
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", timeout)
    expected = timeout or constants.HF_HUB_ETAG_TIMEOUT
    with silent_server() as url:
        point_hub_at(monkeypatch, url)
        start = time.monotonic()
        with pytest.raises(WeightsError) as err:
            load_model("sam-vit-base")
        seconds = time.monotonic() - start
    assert expected - 0.5 < seconds < expected + 10, seconds
    message = str(err.value)
    assert message.startswith(f"the Hub at {url} did not answer within {expected} s (HF_HUB_ETAG_TIMEOUT)")
    assert "config.json from facebook/sam-vit-base" in message and "HF_HUB_OFFLINE=1" in message
    point_hub_at(monkeypatch, local_hub.url)  # the Hub answers again: the next try downloads
    assert load_model("sam-vit-base").weights_source == "sam-vit-base (facebook/sam-vit-base)"


def test_a_download_cut_off_by_a_killed_process_starts_again_cleanly(base_hub_with_blob):
    """huggingface_hub 2.x writes each download to a file of its own and resumes only within one process
    (tests/test_hub.py: a dropped connection); a killed process leaves partial files that are never reused."""
    hub, checkpoints, blob, size = base_hub_with_blob
    stale = [blob.with_name(blob.name + ".incomplete"), blob.with_name(blob.name + ".0badc0de.incomplete")]
    for path in stale:
        path.write_bytes(bytes(reversed(blob.read_bytes()[: size // 3])))  # partial and wrong: must not be used
    blob.unlink()
    for link in Path(hub.home, "hub").rglob(WEIGHTS):
        link.unlink()
    model = load_model(BASE)
    assert hub.downloads(WEIGHTS) == 2 and hub.ranges == []  # fetched whole again
    assert same_weights(model, load_model(str(checkpoints.transformers("tiny"))))
    assert blob.stat().st_size == size


@pytest.fixture
def base_hub_with_blob(local_hub, checkpoints):
    """The tiny model downloaded once; yields (hub, checkpoints, blob path of the weights, its size)."""
    local_hub.add(BASE, checkpoints.transformers("tiny"))
    load_model(BASE)
    blob = max(Path(local_hub.home, "hub").rglob("blobs/*"), key=lambda p: p.stat().st_size)
    local_hub.ranges.clear()
    return local_hub, checkpoints, blob, blob.stat().st_size


def test_a_wrong_token_is_named_but_not_shown(local_hub, checkpoints, monkeypatch):
    local_hub.add("someone/gated-sam", checkpoints.transformers("tiny"), token="hf_right")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_4f2a9c")
    with pytest.raises(WeightsError, match=r"gated \(HTTP 401\)") as err:
        load_model("someone/gated-sam")
    assert "hf_wrong_4f2a9c" not in str(err.value) and "4f2a9c" not in repr(err.value.__cause__)


# ---- the app ------------------------------------------------------------------------------------------------


def test_the_app_with_a_broken_gated_and_missing_hub(checkpoints, tmp_path):
    """Default model corrupted in transit, one model gated, one missing: the page loads, each status line says
    what is wrong, another model works meanwhile, and once the Hub is fixed the default model loads."""
    hub = LocalHub()
    for repo_id, files in checkpoints.published().items():
        if repo_id != "facebook/sam-vit-huge":
            hub.add(repo_id, files)
    hub.add("facebook/sam-vit-large", checkpoints.transformers("tiny", 1), token="hf_not_yours")
    hub.faults[(BASE, WEIGHTS)] = "corrupt"
    hub_url = hub.start()
    try:
        with run_app(["--model", "sam-vit-base"], hub_env(hub_url, tmp_path / "hf"), tmp_path / "app.log") as url:
            page = PageClient(url)
            assert page.http.get(url + "/").status_code == 200
            (status,) = page.event("on_load", [])
            assert "Could not load **sam-vit-base**" in status and "corrupted or truncated" in status
            assert "--model" in status
            view, _ = page.open_image(COFFEE.read_bytes(), "coffee.jpg")
            assert "corrupted" in view["error"]
            view, status = page.event("on_model", [None, "sam-vit-large"])
            assert "gated (HTTP 401)" in view["error"] and "HF_TOKEN" in status
            view, status = page.event("on_model", [None, "sam-vit-huge"])
            assert "facebook/sam-vit-huge not found" in view["error"] and "HTTP 404" in status
            client = Client(url, verbose=False)
            out = client.predict(
                image=handle_file(str(COFFEE)), points=[[300, 200]], labels=[1], model="mobile-sam", api_name="/segment"
            )
            assert out["model"] == "mobile-sam" and len(out["masks"]) == 3
            client.close()
            del hub.faults[(BASE, WEIGHTS)]  # the Hub is fixed: a reload of the page loads the model
            (status,) = page.event("on_load", [])
            assert "**sam-vit-base** (facebook/sam-vit-base)" in status and "Could not" not in status
            view, _ = page.open_image(COFFEE.read_bytes(), "coffee.jpg")
            assert view["token"] and len(page.act({"type": "point", "x": 300, "y": 200})["candidates"]) == 3
            page.close()
    finally:
        hub.stop()


def test_the_app_offline_with_a_warm_cache(checkpoints, tmp_path):
    hub = LocalHub()
    hub.add(BASE, checkpoints.transformers("tiny", 0))
    env = hub_env(hub.start(), tmp_path / "hf")
    try:
        warm = "from sam.weights import load_model; load_model('sam-vit-base')"
        subprocess.run([sys.executable, "-c", warm], env=env, cwd=REPO, check=True, capture_output=True, timeout=180)
    finally:
        hub.stop()  # from now on nothing answers at HF_ENDPOINT
    with run_app(["--model", "sam-vit-base"], {**env, "HF_HUB_OFFLINE": "1"}, tmp_path / "app.log") as url:
        page = PageClient(url)
        (status,) = page.event("on_load", [])
        assert "**sam-vit-base** (facebook/sam-vit-base)" in status
        client = Client(url, verbose=False)
        out = client.predict(image=handle_file(str(COFFEE)), points=[[300, 200]], labels=[1], api_name="/segment")
        assert out["size"] == [400, 600] and len(out["masks"]) == 3
        view, status = page.event("on_model", [None, "mobile-sam"])  # not cached: says so, the rest works on
        assert "HF_HUB_OFFLINE is set" in view["error"]
        client.close()
        page.close()


def test_the_app_with_a_hub_that_never_answers(tmp_path):
    """The page loads at once and its status line says the Hub did not answer, within the timeout's bound."""
    with silent_server() as hub_url:
        env = {**hub_env(hub_url, tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "3"}
        with run_app(["--model", "sam-vit-base"], env, tmp_path / "app.log") as url:
            page = PageClient(url)
            assert page.http.get(url + "/").status_code == 200
            start = time.monotonic()
            (status,) = page.event("on_load", [])
            assert time.monotonic() - start < 15
            assert "Could not load **sam-vit-base**" in status and f"{hub_url} did not answer within 3 s" in status
            view, status = page.event("on_model", [None, "mobile-sam"])  # another model: the same, as quickly
            assert "did not answer within 3 s" in view["error"] and time.monotonic() - start < 30
            page.close()
