"""What the app shares between visitors (sam.app.service) and the server side of the canvas (sam.app.canvas)."""

import base64
import io
import json
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from sam import SamPredictor
from sam.app.canvas import CanvasServer, display_size, label_data_url, mask_data_url
from sam.app.everything import everything, everything_json
from sam.app.lru import LRU
from sam.app.service import (
    Decoder,
    Models,
    Service,
    image_key,
    read_image,
    segment,
)
from sam.app.session import AppSession, SessionRegistry
from sam.app.threads import Workload, torch_threads
from sam.automatic import SamAutomaticMaskGenerator
from sam.export import color
from sam.hub import WeightsError
from sam.masks import decode_coco_rle
from sam.weights import load_model
from tests.helpers.loaders import CountingLoader


@pytest.fixture
def loader():
    return CountingLoader()


@pytest.fixture
def service(loader):
    # Decoding on as many threads as the predictor below, so that results compare bit for bit.
    threads = torch.get_num_threads()
    return Service(Models(loader), cache_items=4, cache_mb=64, image_cache_mb=64, decode_threads=threads)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((20, 20, 1))).astype(np.uint8)  # 120x160 blocks
    return base


def predictor_for(model, image):
    p = SamPredictor(model)
    p.set_image(image)
    return p


def test_lru_bounds_items_and_bytes():
    lru = LRU(max_items=3, max_bytes=100, size_of=len)
    for k in "abc":
        lru.put(k, "x" * 30)
    assert lru.get("a") is not None  # a is now the most recent
    lru.put("d", "x" * 30)  # over 100 bytes: b (the oldest) goes
    assert lru.get("b") is None and len(lru) == 3 and lru.nbytes == 90
    lru.put("e", "x" * 101)  # larger than the whole cache: not kept
    assert lru.get("e") is None and len(lru) == 3
    lru.put("a", "x" * 70)  # replaced: c and d go to make room
    assert lru.nbytes <= 100 and lru.get("a") == "x" * 70


def test_image_key_depends_on_content_and_shape():
    a = np.zeros((4, 6, 3), np.uint8)
    assert image_key(a) == image_key(a.copy())
    assert image_key(a) != image_key(a.reshape(6, 4, 3))
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_key(a) != image_key(b)


def test_read_image_follows_exif_and_refuses_bad_files(tmp_path):
    im = Image.new("RGB", (30, 20), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: browsers show it 20 wide, 30 high
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(tmp_path / "rot.jpg").shape == (30, 20, 3)
    Image.new("L", (8, 8)).save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png").shape == (8, 8, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="could not read the image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at most 0 megapixels"):
        read_image(tmp_path / "gray.png", max_pixels=10)


def test_models_load_once_per_name_across_threads(loader):
    models = Models(loader, max_models=2)
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.get("m1"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.loads == ["m1"] and all(m is got[0] for m in got)
    models.get("m2")
    models.get("m1")
    models.get("m3")  # m2 is the least recently used: it goes
    assert models.loaded() == ["m1", "m3"]
    with pytest.raises(WeightsError, match="check the network"):
        models.get("broken")
    with pytest.raises(WeightsError):  # a later request tries again (the network may be back)
        models.get("broken")


def test_embeddings_are_computed_once_and_shared(service, loader, image):
    key = service.add_image(image)
    calls = []
    encoder = service.models.get("m0").image_encoder
    hook = encoder.register_forward_hook(lambda *a: calls.append(1))
    results = []
    threads = [threading.Thread(target=lambda: results.append(service.embed("m0", key))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hook.remove()
    assert len(calls) == 1 and sum(not r.cached for r in results) == 1
    again = service.embed("m0", key)
    assert again.cached and again.seconds == 0 and again.embedding is results[0].embedding
    expected = predictor_for(service.models.get("m0"), image).features
    torch.testing.assert_close(again.embedding.features, expected, rtol=0, atol=0)
    assert not service.embed("m1", key).cached  # another model, another embedding


def test_image_leaves_the_cache_and_is_reread_from_its_path(tmp_path, image):
    service = Service(Models(CountingLoader()), image_cache_mb=0)  # keeps no image in memory
    Image.fromarray(image).save(tmp_path / "im.png")
    key = service.add_image(read_image(tmp_path / "im.png"))
    np.testing.assert_array_equal(service.image(key, str(tmp_path / "im.png")), image)
    with pytest.raises(LookupError, match="upload it again"):
        service.image(key)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        service.add_image(np.zeros((4, 4), np.uint8))


def test_decoder_matches_meta_predictor_api(service, image):
    model = service.models.get("m0")
    p = predictor_for(model, image)
    dec = service.decoder("m0", service.embed("m0", service.add_image(image)).embedding)
    pts, labels, box = np.array([[50.0, 60.0], [120.0, 30.0]]), np.array([1, 0]), np.array([20.0, 10.0, 140.0, 100.0])
    masks, scores, low = p.predict(pts, labels, box)
    low2, scores2 = dec.decode(pts, labels, box, None, True)
    np.testing.assert_array_equal(low2, low)
    np.testing.assert_array_equal(scores2, scores)
    np.testing.assert_array_equal(dec.masks(low2), masks)
    masks, scores, _ = p.predict(pts[:1], labels[:1], mask_input=low[:1], multimask_output=False)
    low3, scores3 = dec.decode(pts[:1], labels[:1], None, low[0], False)
    np.testing.assert_array_equal(dec.masks(low3), masks)
    np.testing.assert_array_equal(scores3, scores)


def test_decoding_on_one_thread(loader, image):
    service = Service(Models(loader), decode_threads=1)
    before = torch.get_num_threads()
    dec = service.decoder("m0", service.embed("m0", service.add_image(image)).embedding)
    low, scores = dec.decode(np.array([[50.0, 60.0]]), np.array([1]), None, None, True)
    assert torch.get_num_threads() == before  # the calling thread's count is restored
    _, expected_scores, expected_low = predictor_for(service.models.get("m0"), image).predict(
        np.array([[50.0, 60.0]]), np.array([1])
    )
    np.testing.assert_allclose(low, expected_low, rtol=1e-4, atol=1e-5)  # summation order differs
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_segment_for_scripts(service, image):
    out = segment(service, "m0", image, [[50, 60]], [1])
    masks, scores, _ = predictor_for(service.models.get("m0"), image).predict(np.array([[50, 60]]), np.array([1]))
    order = np.argsort(-scores, kind="stable")
    assert out["size"] == [120, 160] and out["scores"] == pytest.approx(scores[order].tolist(), abs=1e-6)
    for rle, i in zip(out["masks"], order, strict=True):
        np.testing.assert_array_equal(decode_coco_rle(rle), masks[i])
    out = segment(service, "m0", image, box=[10, 10, 100, 90], multimask=False)
    assert len(out["masks"]) == 1 and out["weights"] == "tiny seed 0"
    for kwargs, message in [
        (dict(points=[[1, 2]], labels=[1, 0]), "1 points but 2 labels"),
        (dict(points=[[1, 2]], labels=[3]), "labels must be 1"),
        (dict(points=[[1, "a"]], labels=[1]), "points must be"),
        (dict(box=[1, 2, 3]), "box must be"),
        (dict(points=[[np.nan, 2]], labels=[1]), "finite"),
        (dict(), "at least one point or a box"),
    ]:
        with pytest.raises(ValueError, match=message):
            segment(service, "m0", image, **kwargs)


# ---- the canvas's server side ------------------------------------------------------------------------------


def decode_png(url: str) -> np.ndarray:
    """A mask data URL -> HxW bool (opaque where the mask is)."""
    data = base64.b64decode(url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA"))[..., 3] > 0


def test_mask_data_url_and_display_size():
    mask = np.zeros((5, 13), bool)
    mask[1:4, 2:11] = True
    np.testing.assert_array_equal(decode_png(mask_data_url(mask)), mask)
    assert display_size(400, 600) == (400, 600) and display_size(3000, 4000) == (768, 1024)
    assert display_size(5000, 10) == (1024, 2)


@pytest.fixture
def server(service):
    return CanvasServer(service, SessionRegistry())


def opened(server, image, model="m0"):
    view, session, status = server.open_image(None, model, image, "blocks.png", None, True, rid=7)
    return view, session, status


def test_open_image_and_click(server, image):
    view, session, status = opened(server, image)
    assert view["token"] == session.token and view["rid"] == 7 and view["candidates"] == []
    assert view["image"]["width"] == 160 and view["image"]["src"].startswith("data:image/jpeg;base64,")
    assert "**m0** (tiny seed 0)" in status and "fp32" in status and "embedding" in status
    _, _, status2 = server.open_image(None, "m0", image, "again.png", None, False)
    assert "embedding cached" in status2
    out = server.sam_act({"token": session.token, "seq": 3, "type": "point", "x": 50, "y": 60, "objects_version": -1})
    p = predictor_for(server.service.models.get("m0"), image)
    masks, scores, _ = p.predict(np.array([[50, 60]]), np.array([1]))
    assert out["seq"] == 3 and out["selected"] == int(np.argmax(scores)) and "objects" in out
    for cand, mask, score in zip(out["candidates"], masks, scores, strict=True):
        np.testing.assert_array_equal(decode_png(cand["png"]), mask)
        assert cand["score"] == pytest.approx(float(score), abs=1e-4)
    out = server.sam_act({"token": session.token, "type": "choose", "index": 0})
    assert out == {"selected": 0, "seq": None, "ms": out["ms"]}
    hover = server.sam_act({"token": session.token, "type": "hover", "x": 10, "y": 10})
    assert decode_png(hover["hover"]["png"]).shape == (120, 160) and len(session.prompts) == 1


def test_a_click_on_the_previewed_point_draws_the_preview_without_decoding(server, image, monkeypatch):
    _, session, _ = opened(server, image)
    hover = server.sam_act({"token": session.token, "type": "hover", "x": 50, "y": 60})
    calls = []
    decode = Decoder.decode
    monkeypatch.setattr(Decoder, "decode", lambda self, *a: calls.append(a) or decode(self, *a))
    out = server.sam_act({"token": session.token, "type": "point", "x": 50, "y": 60})
    assert calls == [] and out["candidates"][out["selected"]]["png"] == hover["hover"]["png"]
    p = predictor_for(server.service.models.get("m0"), image)
    masks, scores, _ = p.predict(np.array([[50, 60]]), np.array([1]))
    for cand, mask in zip(out["candidates"], masks, strict=True):
        np.testing.assert_array_equal(decode_png(cand["png"]), mask)
    server.sam_act({"token": session.token, "type": "point", "x": 50, "y": 60, "label": 0})
    assert len(calls) == 1


def test_objects_are_sent_only_when_the_page_is_out_of_date(server, image):
    _, session, _ = opened(server, image)
    t = session.token
    server.sam_act({"token": t, "type": "point", "x": 50, "y": 60, "objects_version": session.objects_version})
    out = server.sam_act({"token": t, "type": "add", "name": "thing", "objects_version": session.objects_version})
    assert out["message"] == "Added thing." and out["objects"][0]["name"] == "thing"
    assert out["objects_version"] == session.objects_version and out["candidates"] == []
    np.testing.assert_array_equal(decode_png(out["objects"][0]["png"]), session.objects[0].mask())
    out = server.sam_act({"token": t, "type": "point", "x": 5, "y": 6, "objects_version": session.objects_version})
    assert "objects" not in out


@pytest.mark.parametrize(
    "data",
    [
        None,
        "point",
        [1, 2],
        {"type": "point", "x": 1, "y": 2},  # no token
        {"token": 5, "type": "point"},
    ],
)
def test_requests_without_a_session_get_an_error(server, data):
    out = server.sam_act(data)
    assert out["expired"] and "expired" in out["error"]


@pytest.mark.parametrize(
    "extra",
    [
        {"type": "point", "x": 1e9, "y": 2},
        {"type": "point", "x": None, "y": 2},
        {"type": "box", "box": [[1], 2, 3, 4]},
        {"type": "box", "box": [0, 0, 1e400, 5]},
        {"type": "choose", "index": 99},
        {"type": "delete", "index": -1},
        {"type": "add"},
        {"type": "<img src=x>"},
        {"type": "hover", "x": {"a": 1}, "y": 2},
    ],
)
def test_bad_requests_get_a_message_never_an_exception(server, image, extra):
    _, session, _ = opened(server, image)
    out = server.sam_act({"token": session.token, "seq": 1, **extra})
    assert isinstance(out["error"], str) and out["seq"] == 1 and "Traceback" not in out["error"]
    json.dumps(out)


def test_internal_errors_are_reported_without_details(server, image, monkeypatch):
    _, session, _ = opened(server, image)
    monkeypatch.setattr(Decoder, "decode", lambda *a: 1 / 0)
    out = server.sam_act({"token": session.token, "type": "point", "x": 1, "y": 2})
    assert out["error"] == "Internal error (ZeroDivisionError); see the server log."
    assert session.prompts == []


def test_switch_model_replays_the_prompts(server, image):
    _, session, _ = opened(server, image)
    server.sam_act({"token": session.token, "type": "point", "x": 50, "y": 60})
    server.sam_act({"token": session.token, "type": "point", "x": 90, "y": 20})
    view, status = server.switch_model(session, "m1")
    assert session.model_name == "m1" and "**m1**" in status and len(view["prompts"]) == 2
    p = predictor_for(server.service.models.get("m1"), image)
    _, scores, low = p.predict(np.array([[50, 60]]), np.array([1]))
    masks, _, _ = p.predict(np.array([[50, 60], [90, 20]]), np.array([1, 1]), mask_input=low[[np.argmax(scores)]],
                            multimask_output=False)
    np.testing.assert_array_equal(decode_png(view["candidates"][0]["png"]), masks[0])
    with pytest.raises(WeightsError):
        server.switch_model(session, "broken")
    assert session.model_name == "m1"
    assert "Could not load **broken**" in server.status("broken")


def test_export_zip(server, image, tmp_path):
    _, session, _ = opened(server, image)
    with pytest.raises(ValueError, match="no objects yet"):
        server.export(session, tmp_path)
    for x, name in ((50, "a/../b"), (120, "")):
        server.sam_act({"token": session.token, "type": "point", "x": x, "y": 60})
        server.sam_act({"token": session.token, "type": "add", "name": name})
    path = server.export(session, tmp_path)
    assert path.name == "blocks_objects.zip"
    with zipfile.ZipFile(path) as zf:
        coco = json.loads(zf.read("annotations.json"))
        assert [a["name"] for a in coco["annotations"]] == ["a/../b", "object 2"]
        assert all(not n.startswith(("/", "..")) and "/../" not in n for n in zf.namelist())
    with pytest.raises(ValueError, match="upload an image"):
        server.export(AppSession(), tmp_path)


def test_expired_session_is_gone_from_the_registry(server, image):
    _, session, _ = opened(server, image)
    token = session.token
    server.registry.remove(session)
    session.close()
    assert server.sam_act({"token": token, "type": "undo"})["expired"]


def test_label_image_and_palette():
    colors = [color(i) for i in range(256)]
    assert len(set(colors[:255])) == 255 and (0, 0, 0) not in colors
    big = np.zeros((6, 8), bool)
    big[:, :6] = True
    small = np.zeros((6, 8), bool)
    small[2:4, 4:7] = True
    data = base64.b64decode(label_data_url([small, big], colors[:2]).split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as im:
        labels = np.asarray(im)
        rgba = np.asarray(im.convert("RGBA"))
    assert labels[3, 5] == 1 and labels[0, 0] == 2 and labels[0, 7] == 0  # the smaller mask is on top
    assert tuple(rgba[3, 5, :3]) == colors[0] and rgba[0, 7, 3] == 0
    with pytest.raises(ValueError, match="at most 255"):
        label_data_url([big] * 256, colors)


def test_everything_then_pick(server, image):
    _, session, _ = opened(server, image)
    args = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    done = []
    view = server.everything(session, lambda a, b: done.append((a, b)), **args)
    generator = SamAutomaticMaskGenerator(server.service.models.get("m0"), **args)
    records = sorted(generator.generate(image), key=lambda r: -r["predicted_iou"])
    assert records and done[-1] == (16, 16)
    assert len(view["everything"]["colors"]) == len(records) == len(session.everything)
    assert view["everything"]["scores"] == pytest.approx([r["predicted_iou"] for r in records], abs=1e-4)
    out = server.sam_act({"token": session.token, "type": "pick", "index": 0, "objects_version": -1})
    np.testing.assert_array_equal(session.objects[0].mask(), records[0]["segmentation"])
    assert out["objects"][0]["name"] == "object 1" and out["message"] == "Added object 1."
    assert "no mask 99" in server.sam_act({"token": session.token, "type": "pick", "index": 99})["error"]
    as_json = everything_json(everything(server.service, "m0", session.image.key, **args), "m0")
    assert as_json["size"] == [120, 160] and len(as_json["masks"]) == len(records)
    np.testing.assert_array_equal(decode_coco_rle(as_json["masks"][0]), records[0]["segmentation"])
    assert as_json["bbox"][0] == records[0]["bbox"] and as_json["areas"][0] == records[0]["area"]


def test_bfloat16_encoder_is_shown_in_the_status(image):
    service = Service(Models(lambda name: load_model(name, dtype="bfloat16")))
    server = CanvasServer(service, SessionRegistry())
    status = server.status("random:tiny_vit")
    assert "bf16" in status and "RANDOM WEIGHTS" in status


def test_workload_gives_every_thread_to_a_job_alone():
    workload = Workload()
    with workload.job(2) as alone:
        assert alone == 2 and torch.get_num_threads() == 2
        with workload.job(2) as beside:  # a second decode while one runs: one thread
            assert beside == 1 and torch.get_num_threads() == 1
        with workload.job(2, shared=False) as embedding:  # an embedding keeps its threads
            assert embedding == 2
    with workload.job(2) as again:
        assert again == 2
