"""Safety of a public app: weights never run pickled code, visitors cannot make the server read its files,
prompts from the page and the API are untrusted input, and the Hub token stays out of logs and messages."""

import ast
import json
import math
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from sam.app.settings import MAX_PROMPTS
from sam.weights import WeightsError, load_model
from tests.helpers.browser import REPO, app_on_hub, run_app
from tests.helpers.hub import LocalHub, hub_env
from tests.helpers.page_client import EventError, PageClient

COFFEE = REPO / "examples" / "coffee.jpg"  # 600 x 400
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "torch.jit.load", "eval", "exec", "os.system", "subprocess.run"}


# ---- weights ------------------------------------------------------------------------------------------------


def python_files() -> list[Path]:
    return [*sorted((REPO / "sam").rglob("*.py")), REPO / "app.py"]


def keywords_of(node: ast.Call) -> set[str | None]:
    return {k.arg for k in node.keywords}


def test_weights_are_read_only_through_safe_loaders():
    """Every torch.load in the product passes weights_only=True; nothing unpickles or evaluates code."""
    torch_loads = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), f"{path}:{node.lineno}"
                if isinstance(node, ast.ImportFrom) and node.module == "torch":
                    assert "load" not in names, f"{path}:{node.lineno}: import torch.load by name"
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if path == REPO / "sam" / "modeling" / "native.py" and name == "subprocess.run":
                # the one program the product runs: the C compiler on its own kernel, an argument list, no shell
                assert isinstance(node.args[0], ast.List) and "shell" not in keywords_of(node), where
                continue
            assert name not in UNSAFE_CALLS, f"{where} calls {name}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{where}: no weights_only"
                torch_loads.append(where)
            if name in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                assert flag is None or (isinstance(flag, ast.Constant) and flag.value is False), where
    assert torch_loads, "the scan must see the weights loader"


class RunsCode:
    """Pickles as a call to exec: whoever unpickles it without restrictions writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    state = {"image_encoder.pos_embed": torch.zeros(1), "payload": RunsCode(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_a_checkpoint_that_runs_code_is_refused(tmp_path, local_hub):
    live = hostile_checkpoint(tmp_path / "live.pth", tmp_path / "live-ran")
    torch.load(live, weights_only=False)  # what an unsafe loader would do: the payload is real
    assert (tmp_path / "live-ran").read_text() == "ran"

    marker = tmp_path / "ran"
    local = hostile_checkpoint(tmp_path / "model.pth", marker)
    with pytest.raises(WeightsError, match="holds more than tensors"):
        load_model(str(local))
    folder = tmp_path / "folder"  # the same bytes named as safetensors next to a config.json
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(local.read_bytes())
    (folder / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="could not read"):
        load_model(str(folder))
    hub_file = hostile_checkpoint(tmp_path / "hub" / "sam_vit_b_01ec64.pth", marker)
    local_hub.add("ybelkada/segment-anything", {"checkpoints/sam_vit_b_01ec64.pth": hub_file})
    with pytest.raises(WeightsError, match="holds more than tensors"):
        load_model("sam_b.pt")
    assert not marker.exists()


# ---- the running app --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(checkpoints, tmp_path_factory):
    """(url, folder): the app's log is folder / "app.log", its uploads are under folder / "gradio"."""
    folder = tmp_path_factory.mktemp("safety")
    with app_on_hub(checkpoints, folder, ["--model", "sam-vit-base"]) as url:
        yield url, folder


@pytest.fixture(scope="module")
def client(app):
    c = Client(app[0], verbose=False)
    yield c
    c.close()


@pytest.fixture
def page(app):
    p = PageClient(app[0])
    yield p
    p.close()


def secret_image(folder: Path) -> Path:
    """A valid image outside the upload folder: if the server read it, the request would succeed."""
    path = folder / "secret.png"
    if not path.exists():
        Image.new("RGB", (64, 48), (1, 2, 3)).save(path)
    return path


def test_the_api_cannot_make_the_server_read_its_files(app, page):
    url, folder = app
    secret = secret_image(folder)
    for path in (str(secret), "/etc/passwd", str(folder / "gradio" / ".." / "secret.png")):
        image = {"path": path, "meta": {"_type": "gradio.FileData"}}
        with pytest.raises(EventError) as err:
            page.event("segment", [image, [[10, 10]], [1], [], True, "sam-vit-base"])
        assert "root:" not in str(err.value)
    for route in (f"/gradio_api/file={secret}", "/gradio_api/file=/etc/passwd", "/gradio_api/file=../secret.png"):
        r = page.http.get(url + route)
        assert r.status_code in (403, 404) and b"root:" not in r.content and b"PNG" not in r.content


def test_the_canvas_cannot_make_the_server_read_its_files(app, page):
    _, folder = app
    secret = secret_image(folder)
    link = folder / "gradio" / "innocent.png"  # a link inside the upload folder, to a file outside it
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    real = [
        str(secret),
        "/etc/passwd",
        str(folder / "gradio" / "x" / ".." / ".." / "secret.png"),
        str(link),
        str(folder / "gradio"),
    ]
    for path in [*real, "", None, ["/etc/passwd"], {"path": "/etc/passwd"}, "\x00", "x" * 100_000]:
        try:
            view, _, _ = page.event("on_image", [None, page.model], {"path": path, "name": "x.png", "rid": 1})
        except EventError as e:  # Gradio itself checks paths in event data: outside its cache, refused
            assert "root:" not in str(e)
            continue
        assert "token" not in view and "image" not in view and len(view["error"]) < 300
        if path in real:
            assert view["error"] == "the upload is not a file this server received"
    for index in (99, -99, "../../etc/passwd", None, 1e9):
        view, _, _ = page.event("on_example", [None, page.model], {"index": index, "value": None})
        assert "error" in view and "token" not in view and "root:" not in json.dumps(view)


def test_upload_names_cannot_leave_the_upload_folder(app, page):
    _, folder = app
    for name in ("../../../escape.png", "/etc/escape.png", "..\\..\\escape.png"):
        path = Path(page.upload(COFFEE.read_bytes(), name))
        assert path.resolve().is_relative_to((folder / "gradio").resolve()), path
    assert not list(folder.glob("escape*")) and not list(folder.parent.glob("escape*"))


def test_untrusted_canvas_requests(app, page):
    url, _ = app
    page.open_image(COFFEE.read_bytes(), "coffee.jpg")
    raw = page.http.post(
        f"{url}/gradio_api/component_server/", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert raw.status_code in (400, 422)
    hostile = [
        {"type": "point", "x": math.inf, "y": 1},
        {"type": "point", "x": float("nan"), "y": 1},
        {"type": "point", "x": 1e308, "y": 1},
        {"type": "point", "x": -0.5, "y": 1},
        {"type": "point", "x": [1], "y": 1},
        {"type": "box", "box": [10, 10, 10, 300]},
        {"type": "box", "box": [700, 10, 900, 300]},
        {"type": "box", "box": [[0, 0], [1, 1]]},
        {"type": "x" * 1_000_000},
        {"type": "add", "name": {"$gt": ""}},
        {"type": "choose", "index": 10**30},
        {"type": "delete", "index": "0; rm -rf /"},
    ]
    for data in hostile:
        out = page.act(data)
        assert isinstance(out.get("error"), str) and len(json.dumps(out)) < 1000, (data, out)
    deep = "[" * 100_000 + "1" + "]" * 100_000  # deeper than any JSON parser recurses
    body = json.dumps(
        {
            "component_id": page.canvas_id,
            "fn_name": "sam_act",
            "session_hash": page.session_hash,
            "data": {"token": page.token, "type": "point", "x": "DEEP"},
        }
    ).replace('"DEEP"', deep)
    r = page.http.post(
        f"{url}/gradio_api/component_server/", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert b"Traceback" not in r.content  # refused one way or another; the requests below show the server is fine
    accepted = [page.act({"type": "point", "x": 10 + i, "y": 20, "label": i % 2}) for i in range(MAX_PROMPTS + 5)]
    assert all("error" not in a for a in accepted[:MAX_PROMPTS])
    assert all(f"at most {MAX_PROMPTS} prompts" in a["error"] for a in accepted[MAX_PROMPTS:])
    assert len(page.act({"type": "undo"})["prompts"]) == MAX_PROMPTS - 1  # the session is intact
    assert "hover" in page.act({"type": "hover", "x": 300, "y": 200})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(points=[[700, 200]], labels=[1]), r"point \(700, 200\) is outside the 600x400 image"),
        (dict(points=[[-1, 200]], labels=[1]), "outside"),
        (dict(points=[[1e30, 2]], labels=[1]), "outside"),
        (dict(box=[300, 200, 100, 50]), "empty or inverted"),
        (dict(box=[100, 50, 100, 300]), "empty or inverted"),
        (dict(box=[700, 500, 900, 600]), "outside the 600x400 image"),
        (dict(points=[[5, 5]] * 5000, labels=[1] * 5000), f"at most {MAX_PROMPTS} points"),
        (dict(points={"x": 1}, labels=[1]), "points must be"),
        (dict(points=[[1, 2]], labels=[1], model="../../etc/passwd"), "not in the list of choices"),
    ],
)
def test_bad_prompts_through_the_api(client, kwargs, message):
    with pytest.raises(AppError, match=message):
        client.predict(image=handle_file(str(COFFEE)), api_name="/segment", **kwargs)


def test_nan_and_infinity_through_the_api(page):
    """gradio_client refuses to send them; a hand-written request can."""
    image = {"path": page.upload(COFFEE.read_bytes(), "coffee.jpg"), "meta": {"_type": "gradio.FileData"}}
    for points, box in [([[math.nan, 2]], []), ([[1, math.inf]], []), ([], [0, 0, math.inf, 5])]:
        with pytest.raises(EventError, match="coordinates must be finite numbers"):
            page.event("segment", [image, points, [1] * len(points), box, True, page.model])


def test_the_api_still_answers_after_bad_requests(client):
    out = client.predict(image=handle_file(str(COFFEE)), points=[[600, 400]], labels=[1], api_name="/segment")
    assert out["size"] == [400, 600] and len(out["masks"]) == 3  # the far corner is on the image
    out = client.predict(image=handle_file(str(COFFEE)), box=[-50, -50, 100, 100], api_name="/segment")
    assert len(out["masks"]) == 3  # a box overlapping the image is fine


def test_bad_prompts_through_segment(tmp_path):
    """The same rules for the Python function behind the endpoint."""
    from sam.app.service import Models, Service, segment
    from tests.helpers.loaders import CountingLoader

    service = Service(Models(CountingLoader()), cache_items=2, cache_mb=16, image_cache_mb=16)
    image = np.zeros((40, 60, 3), np.uint8)
    assert len(segment(service, "m0", image, [[60, 40]], [1])["masks"]) == 3
    for kwargs, message in [
        (dict(points=[[61, 1]], labels=[1]), r"point \(61, 1\) is outside the 60x40 image"),
        (dict(points=np.full((MAX_PROMPTS + 1, 2), 5.0), labels=[1] * (MAX_PROMPTS + 1)), "at most"),
        (dict(box=[5, 5, 5, 5]), "empty or inverted"),
        (dict(box=[-10, -10, -1, 30]), "outside"),
    ]:
        with pytest.raises(ValueError, match=message):
            segment(service, "m0", image, **kwargs)


# ---- tokens -------------------------------------------------------------------------------------------------


def test_the_hub_token_never_reaches_logs_or_messages(checkpoints, tmp_path):
    """HF_TOKEN opens a gated default model; another model refuses it (401): the token appears nowhere."""
    marker = "hf_" + secrets.token_hex(16)
    hub = LocalHub()
    for repo_id, files in checkpoints.published().items():
        hub.add(repo_id, files)
    hub.add("facebook/sam-vit-base", checkpoints.transformers("tiny", 0), token=marker)
    hub.add("facebook/sam-vit-large", checkpoints.transformers("tiny", 1), token="hf_" + "someone-else")
    hub_url = hub.start()
    env = {**hub_env(hub_url, tmp_path / "hf"), "HF_TOKEN": marker}
    seen = []
    try:
        with run_app(["--model", "sam-vit-base"], env, tmp_path / "app.log") as url:
            page = PageClient(url)
            (status,) = page.event("on_load", [])
            assert "**sam-vit-base** (facebook/sam-vit-base)" in status and "Could not load" not in status
            view, status = page.open_image(COFFEE.read_bytes(), "coffee.jpg")
            assert view["token"]  # the gated model was loaded with the token
            view, status = page.event("on_model", [None, "sam-vit-large"])
            assert "gated" in view["error"] and "HF_TOKEN" in status
            seen += [json.dumps(view), status, page.http.get(url + "/config").text, page.http.get(url + "/").text]
            client = Client(url, verbose=False)
            with pytest.raises(AppError) as err:
                client.predict(
                    image=handle_file(str(COFFEE)),
                    points=[[1, 1]],
                    labels=[1],
                    model="sam-vit-large",
                    api_name="/segment",
                )
            seen.append(str(err.value))
            client.close()
            page.close()
    finally:
        hub.stop()
    seen.append((tmp_path / "app.log").read_text())
    assert "Loaded sam-vit-base" in seen[-1]
    for text in seen:
        assert marker not in text and marker[3:] not in text


def test_cli_errors_do_not_print_the_token(tmp_path):
    marker = "hf_" + secrets.token_hex(16)
    env = {**hub_env("http://127.0.0.1:9", tmp_path / "hf"), "HF_TOKEN": marker, "HF_HUB_OFFLINE": "1"}
    code = "from sam.weights import load_model; load_model('sam-vit-base')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode != 0 and "HF_HUB_OFFLINE" in out.stderr
    assert marker not in out.stdout + out.stderr


def test_uploads_over_the_size_limit_are_refused(app, page):
    from sam.app.settings import MAX_UPLOAD_MB

    url, folder = app
    r = page.http.post(f"{url}/gradio_api/upload", files={"files": ("big.png", b"\0" * ((MAX_UPLOAD_MB << 20) + 1))})
    assert r.status_code == 413 and f"maximum allowed size of {MAX_UPLOAD_MB << 20} bytes" in r.text
    assert not [p for p in (folder / "gradio").rglob("big.png")]
