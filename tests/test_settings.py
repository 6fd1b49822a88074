"""The app's settings: read once from the environment, every variable documented, none read by the library."""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from sam.app.service import Service
from sam.app.settings import ENV, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_has_one_variable_and_unset_means_default():
    assert set(ENV) == {f.name for f in dataclasses.fields(Settings)}
    assert len(set(ENV.values())) == len(ENV) and all(v.startswith("SAM_") for v in ENV.values())
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({name: " " for name in ENV.values()}) == Settings()


def test_each_variable_sets_its_field():
    env = {
        "SAM_MODEL": "mobile-sam", "SAM_PRECISION": "float32", "SAM_MAX_SESSIONS": "7", "SAM_MAX_MODELS": "1",
        "SAM_EMBEDDING_CACHE_ITEMS": "3", "SAM_EMBEDDING_CACHE_MB": "64", "SAM_IMAGE_CACHE_MB": "32",
        "SAM_DECODE_THREADS": "1", "SAM_EMBED_THREADS": "2", "SAM_EVERYTHING_TIMEOUT_S": "12.5",
        "SAM_EVERYTHING": '{"points_per_side": 16}', "SAM_SHARE_EMBEDDINGS": "off",
        "SAM_BROWSER_DECODE": "0", "SAM_ORT_URL": "https://example.org/ort/",
    }
    assert set(env) == set(ENV.values())
    s = Settings.from_env(env)
    assert (s.model, s.precision, s.max_sessions, s.max_models) == ("mobile-sam", "float32", 7, 1)
    assert (s.embedding_cache_items, s.embedding_cache_mb, s.image_cache_mb) == (3, 64, 32)
    assert (s.decode_threads, s.embed_threads, s.everything_timeout_s) == (1, 2, 12.5)
    assert s.everything == {"points_per_side": 16} and s.share_embeddings is False
    assert s.browser_decode is False and s.ort_url == "https://example.org/ort/"
    service = Service.from_settings(s)
    assert (service.models.max_models, service.embeddings.max_items, service.embeddings.max_bytes) == (1, 3, 64 << 20)
    assert (service.images.max_bytes, service.decode_threads, service.embed_threads) == (32 << 20, 1, 2)
    assert service.everything_timeout_s == 12.5 and service.share_embeddings is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SAM_MAX_MODELS": "two"}, "SAM_MAX_MODELS must be an integer"),
        ({"SAM_MAX_MODELS": "0"}, "SAM_MAX_MODELS must be at least 1"),
        ({"SAM_IMAGE_CACHE_MB": "-1"}, "SAM_IMAGE_CACHE_MB must not be negative"),
        ({"SAM_PRECISION": "fp8"}, "SAM_PRECISION must be one of auto, float32, bfloat16"),
        ({"SAM_EVERYTHING": "{points_per_side: 16}"}, "SAM_EVERYTHING must be a JSON object"),
        ({"SAM_EVERYTHING": "[16]"}, "SAM_EVERYTHING must be a JSON object"),
        ({"SAM_EVERYTHING": '{"points": 16}'}, r"SAM_EVERYTHING has unknown keys \['points'\]"),
        ({"SAM_SHARE_EMBEDDINGS": "maybe"}, "SAM_SHARE_EMBEDDINGS must be 1 or 0"),
        ({"SAM_BROWSER_DECODE": "yes please"}, "SAM_BROWSER_DECODE must be 1 or 0"),
        ({"SAM_ORT_URL": "no/such/folder"}, r"SAM_ORT_URL must be an http\(s\) URL or a folder with ort.min.js"),
    ],
)
def test_a_bad_value_names_its_variable(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_the_app_refuses_a_bad_setting_at_start_with_one_line():
    out = subprocess.run(
        [sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "SAM_MAX_MODELS": "many"},
    )
    assert out.returncode != 0 and out.stderr.strip() == "error: SAM_MAX_MODELS must be an integer, got 'many'"


def test_the_library_reads_no_variable_of_ours():
    """Only sam/app/settings.py names SAM_* variables; the library reads the environment only for HF_* (and
    PYTHONPATH, which sam/scale hands on to Ray's workers)."""
    for path in (ROOT / "sam").rglob("*.py"):
        if path == ROOT / "sam" / "app" / "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith("SAM_"), f"{path.relative_to(ROOT)} names {node.value}"
            if isinstance(node, ast.Subscript | ast.Call) and "environ" in ast.unparse(node):
                code = ast.unparse(node)  # huggingface_hub's variables, or the path handed to Ray's workers
                assert "HF_" in code or "PYTHONPATH" in code, f"{path.relative_to(ROOT)}: {code}"


def test_docs_list_every_setting():
    text = (ROOT / "docs" / "deployment.md").read_text()
    assert all(f"`{name}`" in text for name in ENV.values())


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--model", "nonsense"], {}, "'nonsense' is not a known model, a local file or folder, or a Hub repo id"),
        (["--model", "random:zzz"], {}, "random:zzz is not available; choose one of: vit_b"),
        ([], {"SAM_MODEL": "sam_vit_q"}, "Known models: sam-vit-base"),
    ],
)
def test_an_unknown_model_is_refused_at_start_with_the_known_forms(args, env, message):
    out = subprocess.run(
        [sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert out.returncode == 1 and out.stderr.startswith("error: ") and message in out.stderr


def test_every_form_of_model_passes_the_start_check(tmp_path):
    for name in ("sam-vit-base", "sam_b.pt", "random:vit_t", "facebook/sam-vit-base", "owner/repo/file.pth"):
        assert Settings(model=name).model == name
    (tmp_path / "weights.pth").write_bytes(b"")
    assert Settings(model=str(tmp_path / "weights.pth")).model.endswith("weights.pth")
