"""Per-visitor state of the app (sam.app.session), with a decoder that records its calls."""

import gc

import numpy as np
import pytest

from sam.app.actions import Action, parse_action
from sam.app.session import (
    MAX_OBJECTS,
    MAX_PROMPTS,
    AppSession,
    ImageRef,
    SessionRegistry,
    clean_name,
)
from sam.export import hex_color

H, W = 40, 60


class FakeDecoder:
    """Deterministic masks from prompts: candidate c is a disc of radius 6 + 6c around the mean positive
    point, minus discs around negative points, intersected with the box, plus the mask input."""

    original_size = (H, W)

    def __init__(self):
        self.calls = []

    def decode(self, points, labels, box, mask_input, multimask):
        self.calls.append(dict(points=points, labels=labels, box=box, mask_input=mask_input, multimask=multimask))
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        logits = np.zeros((3, H, W), np.float32) - 1
        if points is not None:
            pos = points[labels == 1]
            cx, cy = pos.mean(0) if len(pos) else (W / 2, H / 2)
            d = np.hypot(xx - cx, yy - cy)
            logits = np.stack([6 + 6 * c - d for c in range(3)])
            for x, y in points[labels == 0]:
                logits -= 20 * (np.hypot(xx - x, yy - y) < 4)
        if box is not None:
            inside = (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])
            logits = np.where(inside, np.maximum(logits, 1), -5)
        if mask_input is not None:
            logits = logits + 0.5 * mask_input
        scores = np.array([0.5, 0.9, 0.7], np.float32)
        return (logits, scores) if multimask else (logits[1:2], scores[1:2])

    def masks(self, low_res, size=None):
        assert size in (None, (H, W))
        return low_res > 0


@pytest.fixture
def session():
    s = AppSession()
    s.set_image(ImageRef("k", W, H, "img.png"), "m")
    return s


def test_first_point_gives_three_candidates_best_selected(session):
    dec = FakeDecoder()
    session.add_point(dec, 30, 20, 1)
    (call,) = dec.calls
    assert call["multimask"] and call["mask_input"] is None
    np.testing.assert_array_equal(call["points"], [[30, 20]])
    assert session.low_res.shape == (3, H, W) and session.selected == 1  # the highest score


def test_later_prompts_refine_the_selected_candidate(session):
    dec = FakeDecoder()
    session.add_point(dec, 30, 20, 1)
    session.choose(2)
    chosen = session.low_res[2].copy()
    session.add_point(dec, 10, 10, 0)
    call = dec.calls[-1]
    assert not call["multimask"]
    np.testing.assert_array_equal(call["mask_input"], chosen)
    np.testing.assert_array_equal(call["labels"], [1, 0])
    assert session.low_res.shape == (1, H, W) and session.selected == 0


def test_the_first_candidates_stay_offered_and_another_one_can_be_refined(session):
    dec = FakeDecoder()
    session.add_point(dec, 30, 20, 1)
    first = session.first[0].copy()
    version = session.first_version
    session.add_point(dec, 10, 10, 0)
    assert session.low_res.shape == (1, H, W) and session.first_selected() == 1  # the best one was refined
    np.testing.assert_array_equal(session.first[0], first)
    assert session.first_version == version  # unchanged by later prompts: the page keeps its copy
    session.choose_first(dec, 2)
    assert session.first_selected() == 2 and len(session.prompts) == 2
    np.testing.assert_array_equal(dec.calls[-1]["mask_input"], first[2])  # the later prompt refines mask 2
    undone = session.low_res.copy()
    session.add_point(dec, 5, 5, 0)
    session.undo(dec)
    np.testing.assert_array_equal(session.low_res, undone)  # the choice is kept through undo
    with pytest.raises(ValueError, match="no candidate 3"):
        session.choose_first(dec, 3)
    session.undo(dec)
    session.undo(dec)
    assert session.first is None  # nothing to offer once the prompts are gone
    session.set_box(dec, (5, 5, 20, 20))
    assert session.first is None  # a box alone gives one mask


def test_box_replaces_the_earlier_box_and_combines_with_points(session):
    dec = FakeDecoder()
    session.set_box(dec, (5, 5, 20, 20))
    assert not dec.calls[-1]["multimask"] and dec.calls[-1]["points"] is None
    session.add_point(dec, 10, 10, 1)
    session.set_box(dec, (0, 0, 30, 30))
    call = dec.calls[-1]
    np.testing.assert_array_equal(call["box"], [0, 0, 30, 30])
    np.testing.assert_array_equal(call["points"], [[10, 10]])


def test_undo_replays_to_exactly_the_earlier_state(session):
    dec = FakeDecoder()
    session.add_point(dec, 30, 20, 1)
    session.choose(0)
    session.add_point(dec, 40, 25, 1)
    after_two = session.low_res.copy()
    session.add_point(dec, 35, 22, 0)
    session.undo(dec)
    assert len(session.prompts) == 2
    np.testing.assert_array_equal(session.low_res, after_two)  # the choice of candidate 0 was replayed
    session.undo(dec)
    session.undo(dec)
    session.undo(dec)  # nothing left: a no-op
    assert session.prompts == [] and session.low_res is None


def test_preview_does_not_change_the_object(session):
    dec = FakeDecoder()
    low, score = session.preview(dec, 10, 10)
    assert low.shape == (H, W) and score == pytest.approx(0.9) and session.prompts == []
    session.add_point(dec, 30, 20, 1)
    before = session.low_res.copy()
    session.preview(dec, 5, 5)
    np.testing.assert_array_equal(dec.calls[-1]["points"], [[30, 20], [5, 5]])
    np.testing.assert_array_equal(dec.calls[-1]["mask_input"], before[1])
    np.testing.assert_array_equal(session.low_res, before)
    assert len(session.prompts) == 1


def test_a_click_where_the_preview_is_shown_reuses_its_decode(session):
    dec, fresh = FakeDecoder(), AppSession()
    fresh.set_image(session.image, "m")
    session.preview(dec, 30, 20)
    session.add_point(dec, 30, 20, 1)  # the same question as the preview: answered without the decoder
    fresh.add_point(FakeDecoder(), 30, 20, 1)
    assert len(dec.calls) == 1
    np.testing.assert_array_equal(session.low_res, fresh.low_res)
    np.testing.assert_array_equal(session.scores, fresh.scores)
    assert session.selected == fresh.selected == 1

    session.preview(dec, 40, 25)
    session.add_point(dec, 40, 25, 0)  # a negative point there is another question
    assert len(dec.calls) == 3 and dec.calls[-1]["labels"].tolist() == [1, 0]


def test_a_preview_is_not_reused_once_another_candidate_is_chosen(session):
    dec = FakeDecoder()
    session.add_point(dec, 30, 20, 1)
    candidates = session.low_res.copy()
    session.preview(dec, 10, 10)  # refines the selected candidate 1
    np.testing.assert_array_equal(dec.calls[-1]["mask_input"], candidates[1])
    session.choose(0)
    session.add_point(dec, 10, 10, 1)
    assert len(dec.calls) == 3
    np.testing.assert_array_equal(dec.calls[-1]["mask_input"], candidates[0])


def test_objects_are_named_coloured_and_start_a_new_object(session):
    dec = FakeDecoder()
    session.add_point(dec, 30, 20, 1)
    expected = dec.masks(session.low_res)[session.selected]
    obj = session.add_object(dec, "  cup\n<b> ")
    assert obj.name == "cup b" and obj.color == hex_color(0)
    np.testing.assert_array_equal(obj.mask(), expected)
    assert obj.area == int(expected.sum()) and obj.score == pytest.approx(0.9)
    assert session.prompts == [] and session.low_res is None  # the next click starts a new object
    session.add_point(dec, 10, 10, 1)
    assert session.add_object(dec).name == "object 2" and session.objects[1].color == hex_color(1)
    version = session.objects_version
    session.delete_object(0)
    assert [o.name for o in session.objects] == ["object 2"] and session.objects_version == version + 1
    with pytest.raises(ValueError, match="no object 5"):
        session.delete_object(5)
    with pytest.raises(ValueError, match="click on the image first"):
        session.add_object(dec)


def test_objects_are_renamed_cleared_and_never_share_a_colour(session):
    dec = FakeDecoder()
    for _ in range(3):
        session.add_point(dec, 30, 20, 1)
        session.add_object(dec)
    session.delete_object(1)
    session.add_point(dec, 30, 20, 1)
    obj = session.add_object(dec)
    assert [o.id for o in session.objects] == [0, 2, 3]  # a new object after a deletion takes a new colour
    assert obj.name == "object 4" and obj.color == hex_color(3) and len({o.color for o in session.objects}) == 3
    version = session.objects_version
    assert session.rename_object(0, " mug\n").name == "mug" and session.objects_version == version + 1
    assert session.rename_object(0, "  ").name == "mug"  # an empty name keeps the old one
    with pytest.raises(ValueError, match="no object 9"):
        session.rename_object(9, "x")
    session.add_point(dec, 30, 20, 1)
    session.clear()
    assert len(session.objects) == 3  # Clear: the prompts only
    session.add_point(dec, 30, 20, 1)
    session.clear_all()
    assert session.objects == [] and session.prompts == [] and session.low_res is None


def test_limits_and_failures_leave_the_state_as_it_was(session, monkeypatch):
    dec = FakeDecoder()
    for i in range(MAX_PROMPTS):
        session.add_point(dec, i % W, 1, 1)
    with pytest.raises(ValueError, match="at most"):
        session.add_point(dec, 1, 1, 1)
    session.clear()
    session.add_point(dec, 30, 20, 1)
    before = session.low_res.copy()

    def boom(*args):
        raise RuntimeError("decoder failed")

    monkeypatch.setattr(dec, "decode", boom)
    with pytest.raises(RuntimeError):
        session.add_point(dec, 1, 1, 0)
    assert len(session.prompts) == 1
    np.testing.assert_array_equal(session.low_res, before)
    with pytest.raises(ValueError, match="no candidate"):
        session.choose(3)


def test_too_many_objects(session):
    dec = FakeDecoder()
    for _ in range(MAX_OBJECTS):
        session.add_point(dec, 30, 20, 1)
        session.add_object(dec)
    session.add_point(dec, 30, 20, 1)
    with pytest.raises(ValueError, match=f"at most {MAX_OBJECTS} objects"):
        session.add_object(dec)


def test_a_new_image_drops_prompts_and_objects(session):
    dec = FakeDecoder()
    session.add_point(dec, 30, 20, 1)
    session.add_object(dec)
    session.add_point(dec, 30, 20, 1)
    session.set_image(ImageRef("other", 10, 10), "m")
    assert session.prompts == [] and session.objects == [] and session.low_res is None
    with pytest.raises(ValueError, match="upload an image"):
        AppSession().add_point(dec, 1, 1, 1)


IMAGE = ImageRef("k", W, H)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("point", "JSON object"),
        ({"type": "explode"}, "unknown action"),
        ({"type": "point", "x": "1", "y": 2}, "x must be a finite number"),
        ({"type": "point", "x": True, "y": 2}, "x must be a finite number"),
        ({"type": "point", "x": float("nan"), "y": 2}, "finite"),
        ({"type": "point", "x": 1e308 * 10, "y": 2}, "finite"),
        ({"type": "point", "x": 1}, "y must be"),
        ({"type": "point", "x": W + 1, "y": 2}, "outside the 60x40 image"),
        ({"type": "point", "x": -1, "y": 2}, "outside"),
        ({"type": "point", "x": 1, "y": 2, "label": 2}, "label must be"),
        ({"type": "point", "x": 1, "y": 2, "label": "1"}, "label must be"),
        ({"type": "box", "box": [1, 2, 3]}, "box must be"),
        ({"type": "box", "box": "0,0,5,5"}, "box must be"),
        ({"type": "box", "box": [1, 2, 1.5, 9]}, "empty"),
        ({"type": "box", "box": [1, None, 3, 4]}, "finite number"),
        ({"type": "choose", "index": 1.0}, "index must be an integer"),
        ({"type": "delete"}, "index must be an integer"),
        ({"type": "add", "name": ["x"]}, "name must be text"),
        ({"type": "rename", "name": "x"}, "index must be an integer"),
        ({"type": "rename", "index": 0, "name": 5}, "name must be text"),
        ({"type": "choose_first", "index": "1"}, "index must be an integer"),
    ],
)
def test_parse_action_rejects_bad_requests(data, message):
    with pytest.raises(ValueError, match=message):
        parse_action(data, IMAGE)


def test_parse_action_normalises_good_requests():
    assert parse_action({"type": "point", "x": 3, "y": 4.5, "label": 0}, IMAGE) == Action("point", 3, 4.5, 0)
    assert parse_action({"type": "hover", "x": 0, "y": H}, IMAGE) == Action("hover", 0, H, 1)
    box = parse_action({"type": "box", "box": [50, 30, -10, 100]}, IMAGE).box  # any corner order, clamped
    assert box == (0, 30, 50, H)
    assert parse_action({"type": "add", "name": "a\x00b" * 30}, IMAGE).name == clean_name("a b" * 30)
    assert parse_action({"type": "undo", "extra": object()}, None) == Action("undo")
    assert parse_action({"type": "rename", "index": 1, "name": "a<b"}, IMAGE) == Action("rename", index=1, name="a b")
    assert parse_action({"type": "choose_first", "index": 2}, IMAGE) == Action("choose_first", index=2)
    assert parse_action({"type": "clear_all"}, None) == Action("clear_all")
    with pytest.raises(ValueError, match="upload an image"):
        parse_action({"type": "point", "x": 1, "y": 1}, None)


def test_clean_name():
    assert clean_name(None) == "" and clean_name("  a\tb\r\n c ") == "a b c"
    assert clean_name("<script>x</script>") == "script x /script"
    assert len(clean_name("x" * 1000)) == 40


def test_registry_is_weak_and_checks_tokens():
    reg = SessionRegistry()
    s = AppSession()
    reg.add(s)
    assert reg.get(s.token) is s and len(s.token) >= 24
    assert reg.get(None) is None and reg.get(["x"]) is None and reg.get("x" * 1000) is None
    assert AppSession().token != s.token
    token = s.token
    del s
    gc.collect()
    assert reg.get(token) is None and len(reg) == 0
    s2 = AppSession()
    reg.add(s2)
    reg.remove(s2)
    assert reg.get(s2.token) is None


def test_everything_masks_become_objects(session):
    a = np.zeros((H, W), bool)
    a[:10, :10] = True
    b = ~a
    session.set_everything([(a, 0.9), (b, 0.5)])
    obj = session.pick(1, "rest")
    assert obj.name == "rest" and obj.score == 0.5 and obj.area == int(b.sum())
    np.testing.assert_array_equal(obj.mask(), b)
    assert session.pick(0).name == "object 2"
    with pytest.raises(ValueError, match="no mask 2"):
        session.pick(2)
    session.set_image(ImageRef("new", W, H), "m")
    assert session.everything == []
    assert parse_action({"type": "pick", "index": 3}, IMAGE) == Action("pick", index=3)
