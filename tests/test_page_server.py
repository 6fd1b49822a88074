"""The server side of the page's requests that a visitor cannot see fail: a click aimed at an image the page
no longer shows, requests while a job runs, segment everything's progress and Cancel, the first click's
candidates, a model that cannot be loaded. Tiny random models, no browser."""

import threading

import gradio as gr
import numpy as np
import pytest
import torch

from sam.app.canvas import Cancelled, CanvasServer
from sam.app.handlers import Handlers, size_text
from sam.app.service import Models, Service
from sam.app.session import SessionRegistry
from tests.helpers.loaders import CountingLoader


@pytest.fixture
def service():
    return Service(Models(CountingLoader()), cache_items=4, cache_mb=64, image_cache_mb=64,
                   decode_threads=torch.get_num_threads())


@pytest.fixture
def server(service):
    return CanvasServer(service, SessionRegistry())


def blocks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((20, 20, 1))).astype(np.uint8)  # 120x160


def test_a_click_meant_for_the_previous_image_is_dropped(server):
    view, session, _ = server.open_image(None, "m0", blocks(0), "a.png", None, False)
    old = view["image"]["key"]
    view, _, _ = server.open_image(session, "m0", blocks(1), "b.png", None, False)
    new = view["image"]["key"]
    out = server.sam_act({"token": session.token, "key": old, "type": "point", "x": 50, "y": 60})
    assert out["stale"] and "candidates" not in out and session.prompts == []
    out = server.sam_act({"token": session.token, "key": new, "type": "point", "x": 50, "y": 60})
    assert len(out["candidates"]) == 3 and out["model"] == "m0" and len(session.prompts) == 1


def test_everything_reports_progress_refuses_clicks_and_stops_on_cancel(server):
    _, session, _ = server.open_image(None, "m0", blocks(0), "a.png", None, False)
    token = session.token
    server.sam_act({"token": token, "type": "point", "x": 50, "y": 60})
    first_batch, go_on = threading.Event(), threading.Event()

    def progress(done: int, total: int) -> None:
        first_batch.set()
        go_on.wait(30)

    outcome = []

    def run() -> None:
        args = dict(points_per_side=4, points_per_batch=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        try:
            outcome.append(server.everything(session, progress, run=7, **args))
        except Exception as e:
            outcome.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    assert first_batch.wait(60)
    out = server.sam_act({"token": token, "type": "point", "x": 10, "y": 10})  # answered now, not after the run
    assert out["busy"] == "everything" and "segment everything is running" in out["error"]
    assert server.sam_act({"token": token, "type": "progress"})["progress"] == (4, 16)
    for start in (lambda: server.open_image(session, "m0", blocks(1), "b.png", None, False),
                  lambda: server.everything(session, None, run=8)):
        with pytest.raises(ValueError, match="segment everything is running"):  # at once, not after the run
            start()
    assert server.sam_act({"token": token, "type": "cancel", "run": "x"})["error"] == "run must be an integer"
    server.sam_act({"token": token, "type": "cancel", "run": 7})
    go_on.set()
    worker.join(60)
    assert isinstance(outcome[0], Cancelled) and "nothing was changed" in str(outcome[0])
    assert session.job is None and session.everything == [] and len(session.prompts) == 1
    assert server.sam_act({"token": token, "type": "progress"}) == {"job": None, "progress": None, "seq": None}
    assert len(server.sam_act({"token": token, "type": "point", "x": 10, "y": 10})["prompts"]) == 2


def test_the_first_clicks_candidates_are_sent_while_refining_only_when_the_page_lacks_them(server):
    _, session, _ = server.open_image(None, "m0", blocks(0), "a.png", None, False)
    t = session.token
    out = server.sam_act({"token": t, "type": "point", "x": 50, "y": 60})
    assert "first" not in out  # the candidates are the first click's
    version = out["first_version"]
    out = server.sam_act({"token": t, "type": "point", "x": 90, "y": 20, "label": 0, "first_version": -1})
    assert len(out["candidates"]) == 1 and len(out["first"]) == 3 and out["first_selected"] == session.first_selected()
    out = server.sam_act({"token": t, "type": "point", "x": 30, "y": 30, "label": 0, "first_version": version})
    assert "first" not in out and out["first_selected"] == session.first_selected()
    other = (session.first_selected() + 1) % 3
    out = server.sam_act({"token": t, "type": "choose_first", "index": other, "first_version": version})
    assert out["first_selected"] == other and len(out["prompts"]) == 3


def test_a_model_that_cannot_be_loaded_is_said_once_and_the_picker_goes_back(service):
    h = Handlers(service, "m0")
    h.choices += ["broken", "m1"]
    view, session, _ = h.canvas.open_image(None, "m0", blocks(0), "a.png", None, False)
    said = []
    view, status = h.on_model(session, "broken", progress=lambda share, desc: said.append(desc))
    assert view["error"] == "cannot fetch broken: check the network" and view["in_status"]
    assert "WeightsError" not in view["error"] + status and status.count("cannot fetch broken") == 1
    assert "Still using **m0**" in status and said == ["Loading broken…"] * len(said) and said
    assert h.model_in_use("broken", "m0") == ("m0", "m0") and session.model_name == "m0"
    view, status = h.on_model(session, "m1", progress=lambda *a, **k: None)
    assert view["job"] == "model" and "**m1**" in status and h.model_in_use("m1", "m0") == ("m1", "m1")


def test_the_model_in_use_chosen_again_changes_nothing(service):
    """Gradio's dropdown sends `input` on every blur, the value unchanged when nothing was chosen: no switch."""
    h = Handlers(service, "m0")
    h.choices += ["m1"]
    _, session, _ = h.canvas.open_image(None, "m0", blocks(0), "a.png", None, False)
    h.canvas.sam_act({"token": session.token, "type": "point", "x": 50, "y": 60})
    switched = []
    h.canvas.switch_model = lambda *args: switched.append(args) or ({}, "switched")
    view, status = h.on_model(session, "m0", progress=lambda *a, **k: None)
    assert view == status == gr.skip()  # the page and the status line stay as they are
    assert switched == [] and session.model_name == "m0" and len(session.prompts) == 1
    view, status = h.on_model(session, "m1", progress=lambda *a, **k: None)  # another model does switch
    assert [args[1] for args in switched] == ["m1"] and status == "switched"


def test_sizes_in_words():
    assert [size_text(n) for n in (900, 2048, 375 << 20, 5 << 30)] == ["900 bytes", "2.0 KB", "375.0 MB", "5.0 GB"]
