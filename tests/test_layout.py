"""The code's layout: only sam/app/ imports the web stack, only sam/scale/ray_engine.py imports ray, and building the
app writes nothing into the package."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEB = ("gradio", "gradio_client", "starlette", "fastapi", "uvicorn")
RAY_ENGINE = ROOT / "sam" / "scale" / "ray_engine.py"  # the one module that imports ray (an optional extra)


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_app_package_imports_the_web_stack():
    library = [p for p in (ROOT / "sam").rglob("*.py") if "app" not in p.relative_to(ROOT / "sam").parts[:1]]
    assert len(library) > 20
    for path in library:
        assert not imported(path) & set(WEB), f"{path.relative_to(ROOT)} imports {imported(path) & set(WEB)}"
    assert "gradio" in imported(ROOT / "sam" / "app" / "canvas.py")  # the scan sees imports where they are


def test_only_the_ray_engine_imports_ray():
    code = [*(ROOT / "sam").rglob("*.py"), ROOT / "app.py"]
    for path in code:
        if path != RAY_ENGINE:
            assert "ray" not in imported(path), f"{path.relative_to(ROOT)} imports ray"
    assert "ray" in imported(RAY_ENGINE)  # inside its functions: the scan sees those too


def test_building_the_app_writes_no_stub_into_the_package():
    import app
    from sam.app.settings import Settings

    before = set((ROOT / "sam").rglob("*.pyi"))
    app.build_demo(Settings(model="random:vit_b"))
    assert set((ROOT / "sam").rglob("*.pyi")) == before == set()


def test_a_sessions_state_copies_no_model():
    """Gradio deep-copies every session's State with its delete_callback: a bound method of the handlers would
    copy the service and every loaded model with it (20 API clients took the server from 0.8 to 2.2 GB)."""
    import copy

    import gradio as gr

    import app
    from sam.app.settings import Settings

    demo = app.build_demo(Settings(model="random:vit_b"))
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert states and all(copy.deepcopy(s.delete_callback) is s.delete_callback for s in states)


def test_only_model_loads_show_gradios_progress_on_the_status_line():
    """A new image shows its progress on the canvas; Gradio's on the status line as well cost the browser
    about 1 s of CPU per upload. Loading a model keeps it there: it shows the download."""
    import app
    from sam.app.settings import Settings

    config = app.build_demo(Settings(model="random:vit_b")).config
    shown = {d["api_name"]: d["show_progress"] for d in config["dependencies"]}
    assert shown["on_image"] == shown["on_example"] == shown["on_everything"] == "hidden"
    assert shown["on_load"] == shown["on_model"] == "full"
