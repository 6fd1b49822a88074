"""The app's API for scripts, through gradio_client, against `python app.py` on a loopback Hub."""

import contextlib
import io
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from pycocotools import mask as mask_utils

from sam.app.service import read_image
from sam.app.threads import torch_threads
from sam.automatic import SamAutomaticMaskGenerator
from sam.masks import mask_to_box
from tests.helpers.browser import REPO, app_on_hub, default_predictor

COFFEE = REPO / "examples" / "coffee.jpg"


@pytest.fixture(scope="module")
def app_url(checkpoints, tmp_path_factory):
    with app_on_hub(checkpoints, tmp_path_factory.mktemp("api"), ["--model", "sam-vit-base"]) as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    c = Client(app_url, verbose=False)
    yield c
    c.close()


@pytest.fixture(scope="module")
def predictor(checkpoints):
    p = default_predictor(checkpoints)
    p.set_image(read_image(COFFEE))
    return p


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_only_the_script_endpoints_are_public(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/segment", "/everything"}
    assert not api["unnamed_endpoints"]


def test_segment_points_and_labels(client, predictor):
    points, labels = [[300, 200], [450, 100]], [1, 0]
    out = client.predict(image=handle_file(str(COFFEE)), points=points, labels=labels, api_name="/segment")
    with torch_threads(1):  # as the app decodes
        masks, scores, _ = predictor.predict(np.array(points), np.array(labels))
    order = np.argsort(-scores, kind="stable")
    assert out["size"] == [400, 600] and out["model"] == "sam-vit-base"
    assert out["scores"] == pytest.approx(scores[order].tolist(), abs=1e-5)
    for rle, box, i in zip(out["masks"], out["boxes"], order, strict=True):
        np.testing.assert_array_equal(decode(rle), masks[i])
        assert box == mask_to_box(masks[i])


def test_segment_box_single_mask(client, predictor):
    box = [150, 50, 500, 380]
    out = client.predict(image=handle_file(str(COFFEE)), box=box, multimask=False, api_name="/segment")
    with torch_threads(1):
        masks, scores, _ = predictor.predict(box=np.array(box), multimask_output=False)
    assert len(out["masks"]) == 1 and out["scores"][0] == pytest.approx(float(scores[0]), abs=1e-5)
    np.testing.assert_array_equal(decode(out["masks"][0]), masks[0])


def test_segment_with_another_known_model(client):
    args = dict(image=handle_file(str(COFFEE)), points=[[300, 200]], labels=[1], api_name="/segment")
    base = client.predict(**args)
    large = client.predict(**args, model="sam-vit-large")
    assert large["model"] == "sam-vit-large" and "facebook/sam-vit-large" in large["weights"]
    assert large["scores"] != base["scores"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(points=[[300, 200]], labels=[1, 0]), "1 points but 2 labels"),
        (dict(points=[[300, 200]], labels=[7]), "labels must be 1"),
        (dict(box=[1, 2, 3]), "box must be"),
        (dict(), "at least one point or a box"),
        (dict(points="many", labels=[1]), "points must be"),
    ],
)
def test_segment_bad_input_gets_a_message(client, kwargs, message):
    with pytest.raises(AppError, match=message):
        client.predict(image=handle_file(str(COFFEE)), api_name="/segment", **kwargs)


def test_everything(client, predictor):
    args = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    out = client.predict(image=handle_file(str(COFFEE)), **args, api_name="/everything")
    generator = SamAutomaticMaskGenerator(predictor.model, **args)
    records = sorted(generator.generate(read_image(COFFEE)), key=lambda r: -r["predicted_iou"])
    assert out["size"] == [400, 600] and len(out["masks"]) == len(records) > 0
    for rle, bbox, record in zip(out["masks"], out["bbox"], records, strict=True):
        np.testing.assert_array_equal(decode(rle), record["segmentation"])
        assert bbox == record["bbox"]
    # pred_iou_thresh left out: the model's own default (SAM's 0.88), as the generator picks it
    out = client.predict(image=handle_file(str(COFFEE)), points_per_side=4, stability_score_thresh=0.0,
                         api_name="/everything")
    default = SamAutomaticMaskGenerator(predictor.model, points_per_side=4, stability_score_thresh=0.0)
    assert default.pred_iou_thresh == 0.88
    assert len(out["masks"]) == len(default.generate(read_image(COFFEE))) < len(records)
    assert all(score > 0.88 for score in out["scores"])
    with pytest.raises(AppError, match="points_per_side must be an integer from 1 to 32"):
        client.predict(image=handle_file(str(COFFEE)), points_per_side=500, api_name="/everything")


def test_readme_client_example_runs(app_url, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## App\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in code
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.replace("http://127.0.0.1:7860/", app_url), {})
    assert "(400, 600)" in out.getvalue()


def test_the_canvas_server_function_answers_garbage_with_a_message(app_url):
    config = json.loads(urllib.request.urlopen(app_url + "/config", timeout=10).read())
    (canvas,) = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "sam-canvas"]
    for data in (None, "x", [1, 2], {"token": "guess", "type": "point", "x": 1, "y": 1}, {"token": {"a": 1}}):
        body = json.dumps({"data": data, "component_id": canvas["id"], "fn_name": "sam_act", "session_hash": "abc"})
        request = urllib.request.Request(
            app_url + "/gradio_api/component_server/", body.encode(), {"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert answer["expired"] and "session has expired" in answer["error"]


def test_command_line_help():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--model" in out.stdout and "SAM_MODEL" in out.stdout
    assert "sam-vit-base" in out.stdout


def test_readme_front_matter_is_a_gradio_space():
    front = (REPO / "README.md").read_text().split("---\n")[1]
    assert "sdk: gradio\n" in front and "app_file: app.py\n" in front and "suggested_hardware: cpu-basic" in front
    import gradio

    assert f"sdk_version: {gradio.__version__}\n" in front
    assert "facebook/sam-vit-base config.json,model.safetensors" in front
    assert Path(REPO / "requirements.txt").read_text().count(f"gradio=={gradio.__version__}") == 1
