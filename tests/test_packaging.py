"""Packaging: `pip install .` in a fresh venv gives a working `sam` command; `import sam` stays free of the web stack.

The install test builds from a copy of the repository (so no build/ or *.egg-info lands in the checkout) into a
venv made with --system-site-packages, so torch and the other dependencies already installed are reused, with
--no-index so nothing is downloaded: a dependency that pyproject.toml declares but requirements*.txt do not
install makes it fail.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam.build import SamConfig, ViTConfig, build_sam

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TINY = SamConfig(ViTConfig(64, 2, 4, (1,), window_size=4), img_size=256)
WEB_STACK = ("gradio", "gradio_client", "starlette", "fastapi")
OPTIONAL = ("ray",)  # the `scale` extra: only `engine="ray"` / `--ray` imports it
SOURCES = ("pyproject.toml", "README.md", "sam")  # what the build reads


def _env() -> dict[str, str]:
    """The environment without PYTHONPATH (the checkout must not be importable), offline, no pip chatter."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return dict(env, HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")


def _run(*cmd: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv into which `pip install .` installed a copy of the repository."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    venv = root / "venv"
    r = _run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=root)
    assert r.returncode == 0, r.stderr
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    # This interpreter's pip, run for the venv (--python): the venv gets no pip or setuptools of its own, so the
    # build uses the installed setuptools instead of the older one that `ensurepip` would put first on its path.
    pip = (sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "-q")
    r = _run(*pip, "--no-index", "--no-build-isolation", src, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    return bin_dir


def test_installed_package_is_the_one_imported_and_ships_static_files(installed):
    code = (
        "import json, importlib.metadata as md, sam; "
        "print(json.dumps([sam.__file__, [str(f) for f in md.files('sam-app')], md.requires('sam-app')]))"
    )
    r = _run(installed / "python", "-c", code, cwd=installed)
    assert r.returncode == 0, r.stderr
    module_file, files, requires = json.loads(r.stdout)
    venv = installed.parent.resolve()
    assert Path(module_file).resolve().is_relative_to(venv), module_file
    static = Path(module_file).parent / "app" / "static"
    assert (static / "canvas.js").stat().st_size > 0 and (static / "canvas.css").stat().st_size > 0
    shipped = {"sam/app/static/canvas.js", "sam/app/static/canvas.css", "sam/modeling/tiny_vit.py"}
    shipped.add("sam/modeling/softmax.c")  # the attention kernel, built where it runs
    assert shipped <= set(files)
    assert not [f for f in files if f.endswith(".pyi") or f.startswith("tests/")]
    unconditional = [r for r in requires if ";" not in r]
    assert "torch==2.14.1" in unconditional and not [r for r in unconditional if r.startswith("gradio")]
    assert 'gradio==6.31.0; extra == "app"' in requires


def test_console_script_help_and_predict(installed, tmp_path):
    r = _run(installed / "sam", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "predict" in r.stdout and "annotate" in r.stdout

    torch.manual_seed(0)
    torch.save(build_sam(TINY).state_dict(), tmp_path / "tiny.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    r = _run(
        installed / "sam", "predict", "photo.png", "--points", "30,40", "--model", "tiny.pth", "--output", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "photo" in r.stdout and "1 masks" in r.stdout
    folder = tmp_path / "out" / "photo"
    assert Image.open(folder / "overlay.png").size == (120, 90)
    mask = np.asarray(Image.open(folder / "masks" / "0.png"))
    assert mask.shape == (90, 120) and set(np.unique(mask)) <= {0, 255}
    coco = json.loads((folder / "annotations.json").read_text())
    assert len(coco["annotations"]) == 1 and coco["images"][0]["width"] == 120


def test_import_sam_does_not_import_the_web_stack_or_ray():
    code = (
        "import json, sys\n"
        "import sam, sam.cli, sam.api, sam.automatic, sam.export, sam.weights, sam.scale, sam.scale.ray_engine\n"
        "sam.cli.build_parser()\n"
        f"names = {WEB_STACK + OPTIONAL!r}\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.split('.')[0] in names)\n"
        "before = loaded()\n"
        "import sam.app.canvas\n"  # the app does import the web stack, never ray
        "app = loaded()\n"
        "sam.scale.ray_engine.ray_module()\n"  # engine='ray' does: shows the check can see it
        "print(json.dumps([before, app, loaded()]))\n"
    )
    env = dict(_env(), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    before, app, after = json.loads(r.stdout)
    assert before == []
    assert "gradio" in app and "ray" not in app
    assert "ray" in after


def _requirements(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_requirements_files_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert _requirements(ROOT / "requirements.txt") == project["dependencies"] + extras["app"]
    dev = _requirements(ROOT / "requirements-dev.txt")
    assert dev[0] == "-r requirements.txt" and extras["dev"][0] == f"{project['name']}[app]"
    assert dev[1:] == extras["dev"][1:]
    assert project["scripts"] == {"sam": "sam.cli:main"}
