"""The capacity benchmark's visitors (tests/helpers/visitors.py, benchmarks/bench_capacity.py): their schedule,
and a short run of one visitor, protocol and real page, against the app with tiny random weights."""

import math

import numpy as np
import pytest

from benchmarks.bench_capacity import decode_env, markdown, measure, search
from tests.helpers.browser import app_on_hub, node_package
from tests.helpers.visitors import EXAMPLES, LocalDecode, Schedule, activity, new_rows, plan


def test_a_visitor_clicks_every_3_s_adds_after_10_clicks_and_opens_examples_for_a_quarter():
    actions = activity(Schedule(), np.random.default_rng(0), 120)
    kinds = [a.kind for a in actions]
    clicks = [a.at for a in actions if a.kind == "click"]
    assert kinds.count("hover") == 5 * 120 - 40 and len(clicks) == 40 and kinds.count("add") == 4
    assert np.allclose(np.diff(clicks), 3) and kinds[kinds.index("add") - 1] == "click"
    assert kinds[: kinds.index("add")].count("click") == 10
    assert all(0.05 <= a.x <= 0.95 and 0.05 <= a.y <= 0.95 for a in actions if a.kind != "add")
    visits = [v for i in range(4) for v in plan(Schedule(), i, 4, 480)]
    assert len(visits) == 4 * 4 and sum(v.image.example is not None for v in visits) == 4
    starts = sorted(v.at for v in visits if v.at < 120)
    assert np.allclose(starts, np.arange(4) * 30)  # arrivals spread over the first two minutes
    uploads = [v.image for v in visits if v.image.example is None]
    assert all(1024 <= s <= 1600 for im in uploads for s in (im.width, im.height))
    assert all(im.data[:2] == b"\xff\xd8" for im in uploads) and 0 <= visits[3].image.example < len(EXAMPLES)


def test_the_time_scale_runs_the_same_actions_faster():
    slow = activity(Schedule(), np.random.default_rng(1), 60)
    fast = activity(Schedule(time_scale=0.1), np.random.default_rng(1), 6)
    assert [a.kind for a in slow] == [a.kind for a in fast]
    assert math.isclose(fast[-1].at * 10, slow[-1].at)


def test_new_rows_finds_what_the_page_added_after_dropping_its_oldest():
    rows = [{"ms": float(i)} for i in range(6)]
    assert new_rows([], rows[:3]) == rows[:3]
    assert new_rows(rows[:3], rows[:5]) == rows[3:5]
    assert new_rows(rows[:4], rows[2:6]) == rows[4:6]  # the page kept its last 4


def test_capacity_search_doubles_then_bisects():
    seen = []

    def fake(n):
        seen.append(n)
        return {"n": n, "pass": n <= 5}

    capacity, rows = search(fake, 64)
    assert capacity == 5 and seen == [1, 2, 4, 8, 6, 5] and [r["n"] for r in rows] == [1, 2, 4, 5, 6, 8]


@pytest.fixture(scope="module")
def app_url(checkpoints, tmp_path_factory):
    """The app on tiny random weights, from a loopback Hub (tests/helpers/browser.py app_on_hub)."""
    env = decode_env("server")  # as bench_capacity --decode server
    with app_on_hub(checkpoints, tmp_path_factory.mktemp("app"), ["--model", "sam-vit-base"], extra_env=env) as url:
        yield url


@pytest.mark.parametrize("pages", [0, 1], ids=["protocol", "page"])
def test_one_visitor_for_a_few_seconds_reports_every_figure(app_url, pages):
    row = measure(app_url, 1, pages, Schedule(add_every_clicks=3, time_scale=0.2), duration_s=8)
    assert row["errors"] == 0, row["error_examples"]
    click, hover = ("click_drawn_ms", "hover_drawn_ms") if pages else ("click_answered_ms", "hover_answered_ms")
    other = "click_answered_ms" if pages else "click_drawn_ms"
    assert row[other] is None and row["n"] == 1 and row["page_visitors"] == pages
    assert row["page_decode"] == (["server"] if pages else [])
    assert row[click]["n"] == row["sent"]["point"] >= 3 and row["add_ms"]["n"] == row["sent"]["add"] >= 1
    assert row["upload_ready_s"]["n"] == row["sent"]["upload"] == 1
    for key in (click, hover, "add_ms", "upload_ready_s"):
        assert 0 < row[key]["p50"] <= row[key]["p95"] < 60_000, (key, row[key])
    assert row["upload_ready_s"]["p95"] < 60
    assert 0 < row["server_cpu_cores"] <= 4 and 100 < row["server_rss_mb"] < 8000
    assert len(row["load_before"]) == len(row["load_after"]) == 3 and isinstance(row["pass"], bool)
    assert row["pass"] == (not row["why"])
    table = markdown({"models": {"sam-vit-base": {"capacity": int(row["pass"]), "rows": [row]}}})
    assert table.count("\n| 1 |") == 1 and "errors" in table


@pytest.fixture(scope="module")
def local_app_url(checkpoints, tmp_path_factory):
    """The same app with the page's own decoding on, ONNX Runtime Web from node_modules (bench_capacity
    --decode browser)."""
    node_package("onnxruntime-web")
    env = decode_env("browser")
    assert env.get("SAM_ORT_URL"), "onnxruntime-web is not in node_modules"
    with app_on_hub(checkpoints, tmp_path_factory.mktemp("local-app"), ["--model", "sam-vit-base"],
                    extra_env=env) as url:
        yield url


@pytest.mark.parametrize("pages", [0, 1], ids=["protocol", "page"])
def test_visitors_that_decode_themselves_send_no_hovers_and_fetch_each_embedding(local_app_url, pages):
    row = measure(local_app_url, 1, pages, Schedule(add_every_clicks=3, time_scale=0.2), duration_s=8,
                  protocol=LocalDecode)
    assert row["errors"] == 0, row["error_examples"]
    assert row["sent"]["point"] >= 3 and row["sent"]["add"] >= 1 and row["sent"]["hover"] > 0
    if pages:
        assert row["page_decode"] == ["browser"] and row["click_drawn_ms"]["n"] == row["sent"]["point"]
        assert 0 < row["click_decode_ms"]["p50"] < row["click_drawn_ms"]["p50"]
        assert row["received_bytes"] == {"graph": 0, "embedding": 0}  # the page's own fetches are not counted
    else:
        assert row["hover_answered_ms"] is None  # the server heard of no hover
        assert row["click_answered_ms"]["n"] == row["sent"]["point"] and row["add_ms"]["n"] == row["sent"]["add"]
        assert row["embedding_ms"]["n"] == row["sent"]["upload"] == 1
        assert row["received_bytes"]["graph"] > 0 and row["received_bytes"]["embedding"] > 0
