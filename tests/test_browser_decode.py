"""Decoding in the browser (static/decoder.js, sam/app/browser_decode.py), in headless Chromium.

ONNX Runtime Web comes from the repository's node_modules (installed by .ci/run; npm here when missing),
served by the app through SAM_ORT_URL, on its wasm backend. The masks the page draws from its own decode
are compared pixel by pixel with the server's masks for the same prompts (SamPredictor on the same
checkpoint, drawn at the display size as the server draws them); with decoding forced off, and when ORT
Web cannot load, the page decodes on the server and draws exactly the server's masks.
"""


import numpy as np
import pytest
import torch
from PIL import Image

from sam.app.canvas import display_size
from tests.helpers.browser import (
    DEBUG,
    Expected,
    act,
    app_on_hub,
    assert_drawn,
    browser_fixture,  # noqa: F401  (a fixture)
    free_port,
    image_to_page,
    node_package,
    open_app,
    served_default,
    state,
    upload,
)

pytestmark = pytest.mark.browser
# At most this share of the display's pixels differ from the server's mask: the page decodes from the
# float16 embedding it was sent, the server from float32, so pixels whose logits are within about 1e-3 of
# the threshold may fall either way.
TOLERANCE = 0.0005


def ort_folder():
    """onnxruntime-web's dist/ in node_modules (npm installs it when it is not there yet)."""
    return node_package("onnxruntime-web") / "dist"


def _app(checkpoints, tmp_path_factory, **env):
    tmp = tmp_path_factory.mktemp("app")
    return app_on_hub(checkpoints, tmp, ["--model", "sam-vit-base"], extra_env=env)


@pytest.fixture(scope="module")
def local_url(checkpoints, tmp_path_factory):
    with _app(checkpoints, tmp_path_factory, SAM_BROWSER_DECODE="1", SAM_ORT_URL=str(ort_folder())) as url:
        yield url


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A 600x420 picture: its display size is its own, its model input 256x179 (tiny model, 256 px)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (21, 30, 3), dtype=np.uint8).repeat(20, 0).repeat(20, 1)
    path = tmp_path_factory.mktemp("img") / "blocks.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def expected(checkpoints, image):
    return Expected(served_default(checkpoints), image)


def server_mask(expected, prompts, mask_input=None, multimask=None, pick=None):
    """The server's display-size mask for prompts: SamPredictor's low-res logits drawn as
    CanvasServer draws them (Decoder.masks at display_size). Returns (mask, low-res logits, chosen index)."""
    _, scores, low_res = expected.predict(prompts, mask_input, multimask)
    p = expected.predictor
    i = int(np.argmax(scores)) if pick is None else pick
    size = display_size(*p.original_size)
    logits = p.model.postprocess_masks(torch.as_tensor(low_res[i : i + 1])[None], p.input_size, size)
    return (logits[0, 0] > p.model.mask_threshold).numpy(), low_res, i


def drawn(page, which):
    info = page.evaluate(f"{DEBUG}.maskInfo({which!r})")
    bits = page.evaluate(f"{DEBUG}.maskBits({which!r})")
    return np.frombuffer(bits.encode(), np.uint8).reshape(info["height"], info["width"]) == ord("1")


def assert_close(got, want):
    assert got.shape == want.shape
    assert want.sum() > 0 and got.sum() > 0
    differ = int((got != want).sum())
    assert differ <= TOLERANCE * want.size, f"{differ} of {want.size} pixels differ"


def hover(page, x, y):
    px, py = image_to_page(page, x, y)
    act(page, "hover", lambda: page.mouse.move(px, py, steps=2))


def click(page, x, y):
    px, py = image_to_page(page, x, y)
    act(page, "point", lambda: page.mouse.click(px, py))


def sam_requests(page):
    """The canvas requests the page sends to the server (their JSON bodies), collected from now on."""
    seen = []

    def on_request(request):
        body = request.post_data or ""
        if request.method == "POST" and "sam_act" in body:
            seen.append(body)

    page.on("request", on_request)
    return seen


def test_page_decodes_hovers_and_clicks_as_the_server_does(browser, local_url, image, expected):
    page = open_app(browser, local_url)
    sent = sam_requests(page)
    upload(page, image)
    page.wait_for_function(f"{DEBUG}.state().decode === 'browser'", timeout=60_000)
    isolated, cores = page.evaluate("[crossOriginIsolated, navigator.hardwareConcurrency]")
    assert isolated and state(page)["decodeThreads"] == min(4, cores)  # sam/app/isolation.py: wasm threads

    hover(page, 300, 200)
    want, _, _ = server_mask(expected, [{"kind": "point", "coords": [300, 200], "label": 1}])
    assert_close(drawn(page, "hover"), want)

    click(page, 300, 200)
    first = [{"kind": "point", "coords": [300, 200], "label": 1}]
    want, low_res, best = server_mask(expected, first)
    assert state(page)["selected"] == best and len(state(page)["scores"]) == 3
    assert_close(drawn(page, "candidate"), want)

    click(page, 120, 330)  # refines the chosen candidate (its low-res logits as mask_input)
    prompts = [*first, {"kind": "point", "coords": [120, 330], "label": 1}]
    want, _, _ = server_mask(expected, prompts, mask_input=low_res[best][None])
    assert state(page)["prompts"] == prompts
    assert_close(drawn(page, "candidate"), want)

    timings = page.evaluate(f"{DEBUG}.timings()")
    assert {t["decode"] for t in timings if t["type"] in ("hover", "point")} == {"browser"}
    assert not any('"hover"' in body for body in sent)  # hovers never reach the server
    assert sum('"local":true' in body for body in sent) == 2  # the clicks were only recorded there

    # Add object: the server decodes the recorded prompts itself; its object is the page's mask.
    act(page, "add", lambda: page.locator(".sam-add").click())
    assert state(page)["objects"][0]["name"] == "object 1" and state(page)["prompts"] == []
    assert_close(drawn(page, 0), want)
    assert page.errors == []
    page.context.close()


def test_box_and_undo_decode_in_the_page(browser, local_url, image, expected):
    page = open_app(browser, local_url)
    upload(page, image)
    page.wait_for_function(f"{DEBUG}.state().decode === 'browser'", timeout=60_000)
    x0, y0 = image_to_page(page, 150, 100)
    x1, y1 = image_to_page(page, 420, 300)

    def drag():
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, y1, steps=5)
        page.mouse.up()

    act(page, "box", drag)
    box = state(page)["prompts"][0]
    want, low_res, _ = server_mask(expected, [box])
    assert_close(drawn(page, "candidate"), want)
    click(page, 200, 150)
    act(page, "undo", lambda: page.locator(".sam-undo").click())
    assert state(page)["prompts"] == [box]
    assert_close(drawn(page, "candidate"), want)
    assert page.errors == []
    page.context.close()


def test_a_long_list_of_prompts_decodes_once_per_click(browser, local_url, image):
    """Each step of the prompts shown is kept, however many there are: the 30th click decodes once, not its 30
    steps again (the cache of 24 decodes alone would have lost the first steps)."""
    page = open_app(browser, local_url)
    upload(page, image)
    page.wait_for_function(f"{DEBUG}.state().decode === 'browser'", timeout=60_000)
    rng = np.random.default_rng(0)
    runs = []
    for x, y in rng.uniform(20, 380, (30, 2)):
        click(page, x, y)
        runs.append(state(page)["decodeRuns"])
    assert len(state(page)["prompts"]) == 30
    assert max(np.diff(runs)) <= 2  # the click's own decode (and at most one hover preview on the way)
    assert page.errors == []
    page.context.close()


def hold_requests(page):
    """Routes the page's canvas requests to a list instead of the server: the test answers them (route.continue_
    or route.fulfill) when it chooses."""
    held = []

    def route(r):
        if "sam_act" in (r.request.post_data or ""):
            held.append(r)
        else:
            r.continue_()

    page.route("**/*", route)
    return held


def test_a_click_is_drawn_before_the_answer_and_taken_back_when_refused(browser, local_url, image, expected):
    """The page draws a click's masks as soon as it has decoded them; the server's answer confirms them (no
    second decode, the time recorded is the early drawing's), or an error puts back the masks before it."""
    page = open_app(browser, local_url)
    upload(page, image)
    page.wait_for_function(f"{DEBUG}.state().decode === 'browser'", timeout=60_000)
    held = hold_requests(page)
    first = [{"kind": "point", "coords": [300, 200], "label": 1}]
    page.mouse.click(*image_to_page(page, 300, 200))
    page.wait_for_function(f"{DEBUG}.state().scores.length === 3", timeout=30_000)
    assert len(held) == 1 and state(page)["busy"] and state(page)["prompts"] == first  # no answer yet
    want, low_res, best = server_mask(expected, first)
    assert_close(drawn(page, "candidate"), want)
    runs = state(page)["decodeRuns"]
    held[0].continue_()
    page.wait_for_function(f"!{DEBUG}.state().busy && {DEBUG}.timings().some(t => t.type === 'point')")
    timing = page.evaluate(f"{DEBUG}.timings()").pop()
    assert timing["ms"] < timing["answer_ms"] and state(page)["decodeRuns"] == runs
    assert state(page)["prompts"] == first and state(page)["selected"] == best
    assert_close(drawn(page, "candidate"), want)

    page.mouse.click(*image_to_page(page, 120, 330))
    page.wait_for_function(f"{DEBUG}.state().prompts.length === 2", timeout=30_000)  # drawn, not answered
    assert len(held) == 2 and state(page)["busy"]
    held[1].fulfill(status=500, body="")
    page.wait_for_function(f"!{DEBUG}.state().busy")
    shown = state(page)
    assert shown["prompts"] == first and shown["selected"] == best and shown["error"]
    assert shown["message"].startswith("The server did not answer")
    assert_close(drawn(page, "candidate"), want)
    assert page.errors == []
    page.context.close()


def server_decoding(page, image, expected):
    """Clicks decoded on the server: the page draws exactly the server's masks."""
    upload(page, image)
    click(page, 300, 200)
    first = [{"kind": "point", "coords": [300, 200], "label": 1}]
    masks, scores, low_res = expected.predict(first)
    assert_drawn(page, "candidate", masks[int(np.argmax(scores))])
    assert state(page)["decode"] == "server"
    assert {t["decode"] for t in page.evaluate(f"{DEBUG}.timings()") if t["type"] != "image"} == {"server"}


def test_decoding_forced_off(browser, checkpoints, tmp_path_factory, image, expected):
    with _app(checkpoints, tmp_path_factory, SAM_BROWSER_DECODE="0", SAM_ORT_URL=str(ort_folder())) as url:
        page = open_app(browser, url)
        fetched = []
        page.on("request", lambda r: fetched.append(r.url) if "/sam/" in r.url else None)
        server_decoding(page, image, expected)
        assert fetched == []  # neither ORT Web, nor a decoder, nor an embedding
        assert page.evaluate("crossOriginIsolated") is False  # the headers come with browser decoding only
        assert page.errors == []


def test_unreachable_runtime_falls_back_to_the_server(browser, checkpoints, tmp_path_factory, image, expected):
    closed = f"http://127.0.0.1:{free_port()}/ort/"  # nothing listens there
    with _app(checkpoints, tmp_path_factory, SAM_BROWSER_DECODE="1", SAM_ORT_URL=closed) as url:
        page = open_app(browser, url)
        server_decoding(page, image, expected)
        page.wait_for_timeout(500)
        server_decoding(page, image, expected)  # still on the server once the runtime has failed
        assert page.errors == []


# ---- the server's side, without a browser -------------------------------------------------------------------

def test_recorded_prompts_decode_as_decoded_ones():
    """Prompts the page only reported give, once the server needs them, the masks it would have decoded."""
    from sam.app.session import AppSession, ImageRef, Prompt
    from tests.test_app_session import FakeDecoder, H, W

    direct, recorded, dec = AppSession(), AppSession(), FakeDecoder()
    for s in (direct, recorded):
        s.set_image(ImageRef("k", W, H, "img.png"), "m")
    direct.add_point(dec, 30, 20, 1)
    direct.choose(2)
    direct.add_point(dec, 10, 10, 0)
    direct.set_box(dec, (5, 5, 50, 35))
    direct.choose_first(dec, 0)
    direct.undo(dec)
    for kind, prompt, index in [("point", Prompt("point", (30, 20), 1), 0), ("choose", None, 2),
                                ("point", Prompt("point", (10, 10), 0), 0), ("box", Prompt("box", (5, 5, 50, 35)), 0),
                                ("choose_first", None, 0), ("undo", None, 0)]:
        recorded.record(kind, prompt, index)
    assert recorded.stale and recorded.low_res is None
    assert [p.choice for p in recorded.prompts] == [p.choice for p in direct.prompts] == [0, None]
    calls = len(dec.calls)
    recorded.sync(dec)
    assert len(dec.calls) == calls + 2 and not recorded.stale
    np.testing.assert_array_equal(recorded.low_res, direct.low_res)
    assert recorded.selected == direct.selected
    with pytest.raises(ValueError, match="no candidate 1"):
        recorded.record("choose", None, 1)  # the second prompt has one mask


def test_routes_serve_the_decoder_and_only_the_sessions_embedding(checkpoints, tmp_path):
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from sam.app.browser_decode import BrowserDecode
    from sam.app.canvas import CanvasServer
    from sam.app.service import Models, Service
    from sam.app.session import SessionRegistry
    from sam.weights import load_model

    folder = str(served_default(checkpoints))
    service = Service(Models(lambda name: load_model(folder, dtype="float32")))
    canvas = CanvasServer(service, SessionRegistry())
    browser = BrowserDecode(service, str(ort_folder()), tmp_path)
    canvas.use_browser(browser)
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    view, session, _ = canvas.open_image(None, "sam-vit-base", pixels, "a.png", None, False)
    local = view["local"]
    assert local["ort"] == "/sam/ort/" and local["integrity"] is None and local["display"] == [30, 40]
    client = TestClient(Starlette(routes=browser.routes()))
    graph = client.get(local["graph"])
    assert graph.status_code == 200 and "immutable" in graph.headers["cache-control"]
    assert graph.content == (tmp_path / local["graph"].rsplit("/", 1)[1]).read_bytes()
    image_graph = client.get(local["image_graph"])
    assert image_graph.status_code == 200 and "immutable" in image_graph.headers["cache-control"]
    assert local["image_graph"].rsplit("/", 1)[1] == "image-" + local["graph"].rsplit("-", 1)[1]
    query = {"key": view["image"]["key"], "model": "sam-vit-base"}
    got = client.get(local["embedding"], params=query, headers={"X-Sam-Token": session.token})
    c, h, w = local["shape"]
    assert got.status_code == 200 and got.headers["x-sam-shape"] == f"{c},{h},{w}"
    features = service.embed("sam-vit-base", query["key"], owner=session.token).embedding.features[0]
    sent = np.frombuffer(got.content, "<f2").reshape(c, h, w)
    np.testing.assert_array_equal(sent, features.half().numpy())
    assert client.get(local["embedding"], params=query, headers={"X-Sam-Token": "someone else"}).status_code == 404
    assert client.get(local["embedding"], params={**query, "key": "0" * 32},
                      headers={"X-Sam-Token": session.token}).status_code == 404
    assert client.get("/sam/decoder/decoder-0123456789abcdef.onnx").status_code == 404
    assert client.get("/sam/decoder/encoder-" + local["graph"].rsplit("-", 1)[1]).status_code == 404
    assert client.get("/sam/ort/ort.min.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/sam/ort/..%2Fpackage.json").status_code == 404
