"""load_model against a Hugging Face Hub on loopback: downloads, cache, offline mode, revisions, errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants, snapshot_download

from sam.build_sam2 import TINY
from sam.modeling.sam2 import Sam2
from sam.weights import KNOWN_MODELS, WeightsError, load_model
from tests.helpers.hub import BASE, WEIGHTS, commit_hash, hub_env, same_weights


@pytest.fixture
def base_hub(local_hub, checkpoints):
    """facebook/sam-vit-base served with a tiny transformers-format model."""
    local_hub.add(BASE, checkpoints.transformers("tiny"))
    return local_hub


def test_first_load_downloads_then_the_cache_serves(base_hub, checkpoints, monkeypatch):
    model = load_model("sam-vit-base")
    assert base_hub.downloads(WEIGHTS) == 1 and base_hub.downloads("config.json") == 1
    assert model.weights_source == "sam-vit-base (facebook/sam-vit-base)"
    assert same_weights(model, load_model(str(checkpoints.transformers("tiny"))))
    assert any(Path(base_hub.home, "hub").rglob(WEIGHTS))  # in the isolated HF cache

    again = load_model("facebook/sam-vit-base")  # same repo by id: checked with HEAD, not downloaded again
    assert base_hub.downloads(WEIGHTS) == 1 and same_weights(model, again)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(base_hub.requests)
    offline = load_model("sam-vit-base")
    assert len(base_hub.requests) == seen  # no request at all
    assert same_weights(model, offline)


def test_offline_in_a_fresh_process(base_hub):
    """What a user does: download once, then HF_HUB_OFFLINE=1 with the Hub gone."""
    load_model("sam-vit-base")
    base_hub.stop()
    env = {**hub_env(base_hub.url, base_hub.home), "HF_HUB_OFFLINE": "1"}
    code = "from sam.weights import load_model; print(load_model('sam-vit-base').weights_source)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sam-vit-base (facebook/sam-vit-base)"
    base_hub.start()  # the fixture stops it again


def test_offline_without_cache_says_so(base_hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set and config.json from facebook/sam-vit-base"):
        load_model("sam-vit-base")


def test_revision_pinning(base_hub, checkpoints):
    v1 = base_hub.add(BASE, checkpoints.transformers("tiny", seed=7), revision="v1")
    main = load_model(BASE)
    pinned = load_model(BASE, revision="v1")
    by_commit = load_model(BASE, revision=v1)
    assert same_weights(pinned, load_model(str(checkpoints.transformers("tiny", seed=7))))
    assert same_weights(pinned, by_commit) and not same_weights(main, pinned)
    assert pinned.weights_source == "facebook/sam-vit-base@v1"
    assert v1 == commit_hash(BASE, "v1")
    with pytest.raises(WeightsError, match="revision 'v2' not found in facebook/sam-vit-base"):
        load_model(BASE, revision="v2")


def test_interrupted_download_resumes(base_hub, checkpoints):
    base_hub.faults[(BASE, WEIGHTS)] = "drop"  # closes the connection after 3/4 of the file, once
    model = load_model(BASE)
    size = (checkpoints.transformers("tiny") / WEIGHTS).stat().st_size
    assert base_hub.downloads(WEIGHTS) == 2 and len(base_hub.ranges) == 1
    assert 0 < int(base_hub.ranges[0].removeprefix("bytes=").rstrip("-")) <= size * 3 // 4  # picks up from there
    assert same_weights(model, load_model(str(checkpoints.transformers("tiny"))))


@pytest.mark.parametrize("fault", ["truncate", "corrupt"])
def test_broken_download_is_caught_and_removed(base_hub, fault):
    base_hub.faults[(BASE, WEIGHTS)] = fault
    with pytest.raises(WeightsError, match="is corrupted or truncated .* removed from the cache, try again"):
        load_model(BASE)
    assert not [p for p in Path(base_hub.home, "hub").rglob("blobs/*") if p.stat().st_size > 100_000]
    del base_hub.faults[(BASE, WEIGHTS)]
    load_model(BASE)  # the next try downloads it again


def test_damaged_cache_file_names_it_and_force_download_repairs(base_hub):
    load_model(BASE)
    blob = max(Path(base_hub.home, "hub").rglob("blobs/*"), key=lambda p: p.stat().st_size)
    blob.write_bytes(blob.read_bytes()[:1000])
    with pytest.raises(WeightsError) as err:
        load_model(BASE)
    assert "model.safetensors" in str(err.value) and "force_download=True" in str(err.value)
    load_model(BASE, force_download=True)
    assert base_hub.downloads(WEIGHTS) == 2


def test_missing_repo_and_file(base_hub):
    with pytest.raises(WeightsError, match="repository nobody/nothing not found on http://127.0.0.1:.*HTTP 404"):
        load_model("nobody/nothing")
    with pytest.raises(WeightsError, match="checkpoint.pth not found in facebook/sam-vit-base .*HTTP 404"):
        load_model("facebook/sam-vit-base/checkpoint.pth")


def test_repo_without_config_json_asks_for_a_file(local_hub, checkpoints):
    local_hub.add("ybelkada/segment-anything", {"checkpoints/sam_vit_b_01ec64.pth": checkpoints.meta("tiny")})
    with pytest.raises(WeightsError, match="name the file: owner/name/path/to/file"):
        load_model("ybelkada/segment-anything")
    model = load_model("ybelkada/segment-anything/checkpoints/sam_vit_b_01ec64.pth")
    assert model.weights_source == "ybelkada/segment-anything:checkpoints/sam_vit_b_01ec64.pth"


def test_gated_repo_needs_a_token(local_hub, checkpoints, monkeypatch):
    local_hub.add("someone/gated-sam", checkpoints.transformers("tiny"), token="hf_secret")
    with pytest.raises(WeightsError, match=r"someone/gated-sam is gated \(HTTP 401\).*set HF_TOKEN"):
        load_model("someone/gated-sam")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert load_model("someone/gated-sam").weights_source == "someone/gated-sam"


def test_unreachable_hub_says_how_to_fix_it(base_hub, monkeypatch):
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())  # skip ~25 s of retries with backoff
    base_hub.stop()
    with pytest.raises(WeightsError) as err:
        load_model("sam-vit-base")
    base_hub.start()
    message = str(err.value)
    assert message.startswith(f"could not reach the Hub at {base_hub.url.rsplit(':', 1)[0]}")
    for hint in ("network", "HF_ENDPOINT", "HF_TOKEN", "local file or folder"):
        assert hint in message


def test_every_known_name_loads_from_its_published_files(local_hub, checkpoints):
    published = checkpoints.published()
    for repo_id, files in published.items():
        local_hub.add(repo_id, files)
    sources = {}
    for name, known in KNOWN_MODELS.items():
        model = load_model(name)
        assert model.weights_source == f"{name} ({known.repo_id}" + (
            ")" if known.format == "transformers" else f":{known.files[0]})"
        )
        sources[name] = model
        if known.config == "tiny_vit":
            assert model.config.name == "tiny_vit"
        assert isinstance(model, Sam2) == (known.config or "").startswith("hiera_"), name
    assert same_weights(sources["mobile-sam"], sources["mobile_sam.pt"])
    assert not same_weights(sources["sam_b.pt"], sources["sam_l.pt"])
    assert same_weights(sources["sam2.1-hiera-tiny"], sources["sam2.1_t.pt"])
    assert same_weights(sources["sam2-hiera-large"], sources["sam2_l.pt"])
    assert not same_weights(sources["sam2.1-hiera-tiny"], sources["sam2-hiera-tiny"])
    assert sources["sam2.1_b.pt"].config == TINY  # the tests' Hiera, recognised by its widths and blocks


def test_sam2_repo_in_transformers_layout_holds_the_same_weights(local_hub, checkpoints):
    """facebook/sam2.1-hiera-* hold both layouts: Meta's .pt and transformers' Sam2VideoModel safetensors.
    Loaded by repo id (config.json + model.safetensors) and by name (the .pt), they are one model."""
    for repo_id, files in checkpoints.published().items():
        local_hub.add(repo_id, files)
    by_repo = load_model("facebook/sam2.1-hiera-small")
    assert local_hub.downloads("config.json") == 1 and local_hub.downloads("sam2.1_hiera_small.pt") == 0
    by_name = load_model("sam2.1-hiera-small")
    assert by_repo.weights_source == "facebook/sam2.1-hiera-small"
    assert by_repo.config == by_name.config == TINY and same_weights(by_repo, by_name)


def test_snapshot_download_sees_the_repo(base_hub):
    """The server also answers the repo API that snapshot_download uses (Spaces' preload does the same)."""
    folder = Path(snapshot_download(BASE))
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert load_model(str(folder)).config.encoder.embed_dim == 64
