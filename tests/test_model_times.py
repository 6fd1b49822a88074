"""The model picker's embedding times (sam.app.timings): measured on this server, else estimated from the
FLOPs of each model and the rate measured for the others; never from a calibration run."""

import re

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sam.app.handlers import Handlers, model_choices
from sam.app.service import Models, Service
from sam.app.settings import Settings
from sam.app.timings import GFLOP, RECENT, EmbeddingTimes, gflop, seconds_text
from sam.build import build_sam
from sam.build_sam2 import build_sam2
from sam.weights import KNOWN_MODELS
from tests.helpers.loaders import CountingLoader


def encode_gflop(config: str) -> float:
    """GFLOP of `model.encode` at 1024 px for a config name, counted on the meta device (no weights, no work)."""
    build = build_sam2 if config.startswith("hiera") else build_sam
    with torch.device("meta"):
        model = build(config).eval()
        x = torch.zeros(1, 3, 1024, 1024)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode(x)
    return counter.get_total_flops() / 1e9


@pytest.mark.parametrize("config", sorted(GFLOP))
def test_the_flop_table_is_the_count(config):
    assert encode_gflop(config) == pytest.approx(GFLOP[config], abs=0.06)


def test_every_known_model_but_slimsam_has_its_flops():
    missing = sorted(n for n in KNOWN_MODELS if gflop(n) is None)
    assert missing == ["slimsam-50", "slimsam-77"]
    assert gflop("sam2.1-hiera-tiny") == gflop("sam2-hiera-tiny") == gflop("sam2.1_t.pt") == GFLOP["hiera_tiny"]
    assert gflop("random:vit_b") is None and gflop("facebook/sam-vit-base") is None


def test_the_measured_time_is_the_median_of_the_recent_embeddings_per_precision():
    times = EmbeddingTimes("bfloat16")
    assert times.measured("sam-vit-base") is None
    for s in [100.0] * 4 + [float(i) for i in range(1, RECENT + 1)]:  # the first four are pushed out
        times.record("sam-vit-base", "bfloat16", s)
    times.record("sam-vit-base", "float32", 50.0)
    assert times.measured("sam-vit-base") == (RECENT + 1) / 2
    assert times.measured("sam-vit-base", "float32") == 50.0
    assert times.measured("mobile-sam") is None


def test_a_model_not_run_here_is_estimated_from_the_rate_of_those_that_ran():
    times = EmbeddingTimes("float32")
    assert times.estimate("mobile-sam") is None  # nothing measured yet: no guess
    times.record("sam-vit-base", "float32", GFLOP["vit_b"] * 0.01)  # 0.01 s per GFLOP
    times.record("sam2.1-hiera-tiny", "float32", GFLOP["hiera_tiny"] * 0.03)  # 0.03 s per GFLOP
    times.record("sam-vit-large", "bfloat16", 1.0)  # another precision: not used for fp32 estimates
    times.record("random:vit_h", "float32", 1.0)  # FLOPs unknown: no rate from it
    assert times.seconds_per_gflop() == pytest.approx(0.02)
    assert times.estimate("mobile-sam") == pytest.approx(GFLOP["tiny_vit"] * 0.02)
    assert times.estimate("sam-vit-large", "bfloat16") == pytest.approx(1.0)
    assert times.estimate("slimsam-50") is None


def test_labels_say_measured_or_estimated():
    times = EmbeddingTimes("float32")
    names = ["sam-vit-base", "mobile-sam", "sam-vit-huge", "slimsam-77"]
    assert times.choices(names) == [(n, n) for n in names]  # before any embedding: the names alone
    times.record("sam-vit-base", "float32", 2.08)
    assert times.choices(names) == [
        ("sam-vit-base · 2.1 s measured here", "sam-vit-base"),
        ("mobile-sam · ~0.2 s, estimated", "mobile-sam"),  # 77.8 / 972.1 * 2.08 = 0.17
        ("sam-vit-huge · ~13 s, estimated", "sam-vit-huge"),  # 5961.1 / 972.1 * 2.08 = 12.8
        ("slimsam-77", "slimsam-77"),
    ]
    assert [seconds_text(s) for s in (0.0123, 0.456, 2.08, 12.6)] == ["0.012 s", "0.46 s", "2.1 s", "13 s"]
    estimates = [seconds_text(s, estimate=True) for s in (0.0123, 0.456, 0.97, 2.6, 9.6)]
    assert estimates == ["~0.01 s", "~0.5 s", "~1 s", "~3 s", "~10 s"]


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((20, 20, 1))).astype(np.uint8)  # 120x160


def test_the_service_records_the_embeddings_it_computes_not_the_cached_ones(image):
    service = Service(Models(CountingLoader()), cache_items=4, cache_mb=64, image_cache_mb=64)
    key = service.add_image(image)
    first = service.embed("sam-vit-base", key)
    assert not first.cached and service.times.measured("sam-vit-base", "float32") == first.seconds > 0
    assert service.embed("sam-vit-base", key).cached
    assert list(service.times._seconds[("sam-vit-base", "float32")]) == [first.seconds]


def test_the_service_labels_in_the_precision_its_models_load_in():
    assert Service.from_settings(Settings(precision="bfloat16")).times.precision == "bfloat16"
    assert Service.from_settings(Settings(precision="float32")).times.precision == "float32"


def test_the_picker_keeps_the_names_as_values_and_labels_them_after_an_embedding(image):
    service = Service(Models(CountingLoader()), cache_items=4, cache_mb=64, image_cache_mb=64)
    h = Handlers(service, "sam-vit-base")
    assert h.model_labels() == [(n, n) for n in model_choices("sam-vit-base")]
    h.canvas.open_image(None, "sam-vit-base", image, "a.png", None, False)
    choices = h.picker().choices
    assert [value for _, value in choices] == model_choices("sam-vit-base") == h.choices
    labels = dict((value, label) for label, value in choices)
    assert re.fullmatch(r"sam-vit-base · [0-9.e-]+ s measured here", labels["sam-vit-base"])
    assert re.fullmatch(r"sam2\.1-hiera-tiny · ~[0-9.e-]+ s, estimated", labels["sam2.1-hiera-tiny"])
    assert labels["slimsam-50"] == "slimsam-50"
