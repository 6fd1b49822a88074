"""The script API against out-of-range input: boxes checked against the image like the page's, numbers
checked before use, a model that cannot load, all answered with one line that names what to change and no
path of the server."""

import re
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.helpers.browser import REPO, run_app
from tests.helpers.hub import WEIGHTS, LocalHub, hub_env
from tests.helpers.page_client import EventError, PageClient

COFFEE = REPO / "examples" / "coffee.jpg"  # 600x400
HUGE = "facebook/sam-vit-huge"


@pytest.fixture(scope="module")
def app_url(checkpoints, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-hardening")
    hub = LocalHub()
    for repo_id, files in checkpoints.published().items():
        hub.add(repo_id, files)
    hub.faults[(HUGE, WEIGHTS)] = "corrupt"
    env = hub_env(hub.start(), tmp / "hf")
    try:
        with run_app(["--model", "sam-vit-base"], env, tmp / "app.log") as url:
            yield url
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def client(app_url):
    c = Client(app_url, verbose=False)
    yield c
    c.close()


def raw_refusal(app_url: str, api: str, data: list) -> str:
    """What gradio_client cannot send (NaN, infinities: JSON has no such numbers, Python's parser takes them)."""
    page = PageClient(app_url)
    try:
        image = {"path": page.upload(COFFEE.read_bytes(), "coffee.jpg"), "meta": {"_type": "gradio.FileData"}}
        with pytest.raises(EventError) as err:
            page.event(api, [image, *data])
    finally:
        page.close()
    message = str(err.value)
    assert "\n" not in message.strip() and not re.search(r"(^|[\s'\"])/\w+/", message), message
    return message


def refusal(client: Client, **kwargs) -> str:
    api = "/everything" if "points_per_side" in kwargs else "/segment"
    with pytest.raises(AppError) as err:
        client.predict(image=handle_file(str(COFFEE)), api_name=api, **kwargs)
    message = str(err.value)
    assert "\n" not in message.strip() and not re.search(r"(^|[\s'\"])/\w+/", message), message
    return message


def test_a_box_past_the_edge_is_clipped_like_the_pages(client):
    out = client.predict(image=handle_file(str(COFFEE)), box=[0, 0, 1e39, 1e39], api_name="/segment")
    assert len(out["masks"]) == 3 and all(isinstance(s, float) for s in out["scores"])
    clipped = client.predict(image=handle_file(str(COFFEE)), box=[0, 0, 600, 400], api_name="/segment")
    assert out["scores"] == clipped["scores"] and out["masks"] == clipped["masks"]
    assert "embedding_seconds" not in out  # nothing that tells whether someone else sent the same image


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(box=[700, 500, 900, 600]), "outside the 600x400 image"),
        (dict(points_per_side=None), "points_per_side must be an integer from 1 to 32, got None"),
        (dict(points_per_side=64), "points_per_side must be an integer from 1 to 32, got 64"),
        (dict(points_per_side=8, pred_iou_thresh=-1), "pred_iou_thresh must be a number from 0 to 1"),
    ],
)
def test_out_of_range_input_names_what_to_change(client, kwargs, message):
    assert message in refusal(client, **kwargs)


@pytest.mark.parametrize(
    ("api", "data", "message"),
    [
        ("segment", [[[float("inf"), 2]], [1], [], True, "sam-vit-base"], "coordinates must be finite numbers"),
        ("segment", [[], [], [0, 0, float("nan"), 9], True, "sam-vit-base"], "coordinates must be finite numbers"),
        ("everything", [float("nan"), 0.88, 0.95, "sam-vit-base"], "points_per_side must be an integer from 1 to 32"),
        ("everything", [float("inf"), 0.88, 0.95, "sam-vit-base"], "points_per_side must be an integer from 1 to 32"),
        ("everything", [8, float("nan"), 0.95, "sam-vit-base"], "pred_iou_thresh must be a number from 0 to 1"),
    ],
)
def test_numbers_json_cannot_hold_are_refused(app_url, api, data, message):
    assert message in raw_refusal(app_url, api, data)


def test_a_model_that_cannot_load_says_why_without_server_paths(client):
    message = refusal(client, points=[[300, 200]], labels=[1], model="sam-vit-huge")
    assert "sam-vit-huge" in message or "corrupted" in message
    assert Path.home().as_posix() not in message and "AppError" not in message
