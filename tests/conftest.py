"""Shared fixtures: random checkpoints written once per session, and a Hugging Face Hub on loopback."""

import pytest

from tests.helpers.hub import Checkpoints, LocalHub


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    """Random checkpoints in the published formats, each written once per test session."""
    return Checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A LocalHub on 127.0.0.1 that huggingface_hub in this process (and subprocesses) talks to.

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE into `huggingface_hub.constants` at
    import, so the fixture patches those constants as well as the environment (which subprocesses
    inherit). The cache is a fresh folder (tmp_path / "hf"), no token is set, and offline mode is off.
    Set `constants.HF_HUB_OFFLINE` (in-process) or the HF_HUB_OFFLINE variable (subprocesses) to go offline.
    """
    from huggingface_hub import constants

    hub = LocalHub()
    url = hub.start()
    home = tmp_path / "hf"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    patched = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "HF_HUB_OFFLINE": False,
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    hub.home = home
    yield hub
    hub.stop()
