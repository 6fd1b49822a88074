"""Segment everything in the app's service: it gives the embedding lock up between batches, and runs are capped
(one per visitor, EVERYTHING_RUNS in all) with a "busy" answer at once beyond."""

import contextlib
import threading
import time

import numpy as np
import pytest

from sam.app.everything import Busy, everything, everything_slot
from sam.app.service import Models, Service
from sam.app.settings import EVERYTHING_RUNS
from sam.app.threads import FairLock
from tests.helpers.loaders import CountingLoader

ARGS = dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def random_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_the_fair_lock_serves_in_order_and_yields_to_those_waiting():
    lock, order = FairLock(), []
    lock.acquire()
    assert not lock.acquire(blocking=False) and not lock.yield_turn()  # nobody waits: no turn given up
    threads = [threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release())) for i in range(3)]
    for t in threads:
        t.start()
        while lock._next_ticket - lock._serving < 2 + threads.index(t):  # it is queued before the next starts
            time.sleep(0.001)
    assert lock.yield_turn() and order == [0, 1, 2]  # the three ran, in the order they asked, then it was ours
    lock.release()
    assert lock.acquire(blocking=False)
    lock.release()


def test_an_embedding_asked_for_during_segment_everything_runs_before_its_next_batch():
    service = Service(Models(CountingLoader()), cache_items=4, cache_mb=16)
    key, other = service.add_image(random_image(0)), service.add_image(random_image(1))
    service.embed("m0", key)
    events, asker = [], []

    def progress(done: int, total: int) -> None:
        events.append(f"batch {done // 16}")
        if done == 16:  # after the first batch: another visitor's image arrives
            t = threading.Thread(target=lambda: (service.embed("m0", other), events.append("embedded")))
            asker.append(t)
            t.start()
            while service._embed_lock._next_ticket - service._embed_lock._serving < 2:  # it waits for the lock
                time.sleep(0.001)

    records = everything(service, "m0", key, progress=progress, **ARGS)
    asker[0].join()
    assert len(records) > 0 and events.index("embedded") == 1  # right after batch 1, before batch 2
    assert events[-1] == "batch 4"


def test_runs_beyond_the_cap_and_a_second_run_of_one_visitor_are_told_busy_at_once():
    service = Service(Models(CountingLoader()), cache_items=4, cache_mb=16)
    key = service.add_image(random_image(0))
    with everything_slot(service, "visitor a"):
        start = time.monotonic()
        with pytest.raises(Busy, match="your segment-everything is still running"):
            everything(service, "m0", key, owner="visitor a", **ARGS)
        assert len(everything(service, "m0", key, owner="visitor b", **ARGS)) > 0  # others go on
        with contextlib.ExitStack() as stack:
            for i in range(EVERYTHING_RUNS - 1):
                stack.enter_context(everything_slot(service, f"other {i}"))
            with pytest.raises(Busy, match="busy with other visitors' images: try again"):
                everything(service, "m0", key, owner="visitor c", **ARGS)
        assert time.monotonic() - start < 30
    assert not service._everything  # every slot given back, also after the refusals
    assert len(everything(service, "m0", key, owner="visitor a", max_masks=3, **ARGS)) == 3


@pytest.mark.parametrize("share", [True, False])
def test_embeddings_are_shared_between_visitors_only_when_the_setting_says_so(share):
    service = Service(Models(CountingLoader()), cache_items=8, cache_mb=16, share_embeddings=share)
    key = service.add_image(random_image(0))
    assert not service.embed("m0", key, owner="a").cached
    assert service.embed("m0", key, owner="a").cached  # a visitor's own image again: from the cache
    assert service.embed("m0", key, owner="b").cached is share  # what another visitor could tell
    assert service.embed("m0", key).cached is share  # examples (no owner) are always shared
    assert service.embed("m0", key).cached


def test_the_page_keeps_uploads_apart_when_embeddings_are_not_shared_but_shares_the_examples():
    from sam.app.canvas import CanvasServer
    from sam.app.session import SessionRegistry

    server = CanvasServer(Service(Models(CountingLoader()), cache_items=8, cache_mb=16, share_embeddings=False),
                          SessionRegistry())
    upload, example = random_image(0), random_image(1)
    _, first, _ = server.open_image(None, "m0", upload, "a.png", None, False)
    _, second, status = server.open_image(None, "m0", upload, "a.png", None, False)
    assert "embedding cached" not in status  # the second visitor cannot tell that the first sent it
    assert server.sam_act({"token": second.token, "type": "point", "x": 5, "y": 5, "image": second.image.key})
    _, _, status = server.open_image(first, "m0", upload, "a.png", None, False)
    assert "embedding cached" in status  # a visitor's own image again
    server.open_image(None, "m0", example, "ex.jpg", None, True, shared=True)
    assert "embedding cached" in server.open_image(None, "m0", example, "ex.jpg", None, True, shared=True)[2]


def test_the_status_line_names_random_weights_with_balanced_brackets():
    from sam.app.canvas import CanvasServer
    from sam.app.session import SessionRegistry
    from sam.build import build_sam
    from tests.helpers.reference import TINY

    def loader(name):
        source = {"random:vit_b": "random weights (vit_b)"}.get(name, f"{name} (owner/{name})")
        return build_sam(TINY, weights_source=source).eval()

    server = CanvasServer(Service(Models(loader)), SessionRegistry())
    assert "**random:vit_b** (random weights (vit_b))" in server.status("random:vit_b")
    assert "**m0** (owner/m0)" in server.status("m0")
