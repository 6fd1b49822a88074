"""Hub faults that tests/test_hub.py does not cover: server errors, a download cut off by a killed process,
a wrong token, and the app itself facing a broken, gated, missing or absent Hub (page up, clear status).
"""

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from huggingface_hub import constants

from sam.weights import WeightsError, load_model
from tests.browser import REPO, run_app
from tests.hub import LocalHub, hub_env
from tests.page_client import PageClient
from tests.test_hub import BASE, WEIGHTS, same_weights

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
    assert "facebook/sam-vit-base" in message and "127.0.0.1" in message
    assert "network" in message and "local file or folder" in message
    point_hub_at(monkeypatch, local_hub.url)  # the Hub is back: the next try downloads
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
