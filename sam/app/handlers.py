"""The page's event handlers: what each upload, button and picker does, wired to the page by app.py.

Every handler turns a failure into a message for the visitor (the status line or the canvas's message);
the work itself is in `CanvasServer` (the page's requests) and `service`. The script API is sam/app/api.py.
"""

import itertools
import logging
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import gradio as gr

from ..images import ImageError, frame_count
from ..weights import KNOWN_MODELS, WeightsError
from .canvas import Cancelled, CanvasServer, model_error
from .service import Service, read_image
from .session import AppSession, SessionRegistry
from .settings import EXPORT_DIR

logger = logging.getLogger(__name__)


def model_choices(default: str) -> list[str]:
    """The picker's models: the known names (not their .pt aliases), with `default` first if it is not one."""
    names = [n for n in KNOWN_MODELS if not n.endswith(".pt")]
    return names if default in names else [default, *names]


def upload_path(path: Any) -> str:
    """A path the page says it uploaded: it must be a file in Gradio's upload folder."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    if not isinstance(path, str) or not path:
        raise ValueError("the upload did not give a file")
    real = Path(path).resolve()
    if not is_in_or_equal(real, Path(get_upload_folder()).resolve()) or not real.is_file():
        raise ValueError("the upload is not a file this server received")
    return str(real)


_answers = itertools.count()


def tagged(view: dict[str, Any], job: str) -> dict[str, Any]:
    """A view for the canvas, naming the event it answers (`job`) and numbered, so that the page sees each
    answer as a change (two equal answers in a row would not wake its watcher)."""
    return {**view, "job": job, "n": next(_answers)}


def error_text(e: Exception) -> str:
    return str(e) if isinstance(e, ValueError | LookupError | WeightsError) else f"{type(e).__name__}: {e}"


def download_size(name: str) -> int | None:
    """Bytes still to download for known model `name` (0 when cached); None when the Hub does not say."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    known = KNOWN_MODELS.get(name)
    if known is None or constants.is_offline_mode():
        return None
    total = 0
    try:
        for filename in known.files:
            if not isinstance(try_to_load_from_cache(known.repo_id, filename), str):
                url = hf_hub_url(known.repo_id, filename)
                total += get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT).size or 0
    except Exception:  # the load that follows says what is wrong
        return None
    return total


def cached_bytes(repo_id: str) -> int:
    """Bytes of `repo_id`'s files in the local Hub cache, downloaded or on their way (huggingface_hub's layout)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    blobs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"
    try:
        return sum(f.stat().st_size for f in blobs.iterdir())
    except OSError:
        return 0


def size_text(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class Handlers:
    """The page's handlers for one app: one service, one registry of visitor sessions."""

    def __init__(
        self,
        service: Service,
        model_name: str,
        examples: Sequence[Path] = (),
        everything_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.model_name = model_name
        self.choices = model_choices(model_name)
        self.examples = list(examples)
        self.everything_args = dict(everything_args or {})
        self.registry = SessionRegistry()
        self.canvas = CanvasServer(service, self.registry)

    # the page ------------------------------------------------------------------------------------------
    def expire(self, session: AppSession | None) -> None:
        if isinstance(session, AppSession):
            self.registry.remove(session)
            session.close()

    def model_labels(self) -> list[tuple[str, str]]:
        """The picker's (label, name) pairs: each model's embedding time on this server, measured or estimated."""
        return self.service.times.choices(self.choices)

    def picker(self) -> gr.Dropdown:
        """The picker's labels brought up to date (after an embedding); its value stays as it is."""
        return gr.Dropdown(choices=self.model_labels())

    def on_load(self, progress=gr.Progress()):  # noqa: B008 (Gradio's way of asking for a progress bar)
        progress(0, desc=f"Loading {self.model_name}")
        return self.canvas.status(self.model_name)

    def on_image(self, session, name, evt: gr.EventData):
        data = evt._data if isinstance(evt._data, dict) else {}
        rid = data.get("rid")
        try:
            path = upload_path(data.get("path"))
            try:
                image, title = read_image(path), str(data.get("name") or "image")[:100]
            except ImageError:
                Path(path).unlink(missing_ok=True)  # not an image we take: nothing to keep it for
                raise
            animated = frame_count(path) > 1  # the page shows the frame we segment, not the animation
            view, session, status = self.canvas.open_image(session, name, image, title, path, animated, rid)
            return tagged(view, "image"), session, status
        except Exception as e:
            return tagged({"error": error_text(e), "rid": rid}, "image"), session, self._status(name, e)

    def on_example(self, session, name, evt: gr.SelectData):
        try:
            path = self.examples[int(evt.index)]
            view, session, status = self.canvas.open_image(
                session, name, read_image(path), path.name, str(path), True, shared=True
            )
            return tagged(view, "image"), session, status
        except Exception as e:
            return tagged({"error": error_text(e)}, "image"), session, self._status(name, e)

    def on_model(self, session, name, progress=gr.Progress()):  # noqa: B008
        """Switch to model `name`: "Downloading NAME (size)..." while it downloads; on failure one message
        in the status line (the page shows no other) and the session keeps its model."""
        if name not in self.choices:
            return tagged({"error": f"unknown model {name!r}"}, "model"), gr.skip()
        if isinstance(session, AppSession) and session.image is not None and session.model_name == name:
            # Gradio's dropdown sends `input` whenever it loses focus, also when nothing was chosen (opened,
            # then a click on the image): switching to the model in use would redraw the page under that click.
            return gr.skip(), gr.skip()
        try:
            if name not in self.service.models.loaded():
                self._load(name, progress)
            view, status = self.canvas.switch_model(session, name)
            return tagged(view, "model"), status
        except Exception as e:
            in_use = session.model_name if isinstance(session, AppSession) and session.model_name else None
            status = self._status(name, e)
            if in_use and in_use != name:
                status += f"\n\nStill using **{in_use}**."
            return tagged({"error": error_text(e), "in_status": True}, "model"), status

    def _load(self, name: str, progress) -> None:
        """Load model `name`, saying how much it downloads and how far it is; raises the load's error."""
        progress(0, desc=f"Loading {name}…")
        size = download_size(name)
        desc = f"Downloading {name} ({size_text(size)})…" if size else f"Loading {name}…"
        repo = KNOWN_MODELS[name].repo_id if size else ""
        start = cached_bytes(repo) if size else 0
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(self.service.models.get, name)
            while not wait([future], timeout=0.25).done:
                progress(min(0.99, (cached_bytes(repo) - start) / size) if size else 0, desc=desc)
            future.result()

    def model_in_use(self, name: str, in_use: str):
        """The picker after a switch: the model asked for once it is loaded, else back to the one in use."""
        name = name if name in self.service.models.loaded() else in_use
        return name, name

    def on_everything(self, session, name, evt: gr.EventData):
        """Segment everything; the page shows its progress and can cancel it (sam_act's progress and cancel)."""
        data = evt._data if isinstance(evt._data, dict) else {}
        run = data.get("run") if isinstance(data.get("run"), int) else None
        try:
            return tagged(self.canvas.everything(session, None, run, **self.everything_args), "everything")
        except Cancelled as e:
            return tagged({"cancelled": True, "message": str(e)}, "everything")
        except Exception as e:
            return tagged({"error": error_text(e)}, "everything")

    def on_export(self, session):
        try:
            EXPORT_DIR.mkdir(parents=True, exist_ok=True)
            return str(self.canvas.export(session, tempfile.mkdtemp(prefix="export-", dir=EXPORT_DIR)))
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def _status(self, name: str, error: Exception) -> str:
        return self.canvas.status(name) if isinstance(error, ValueError) else model_error(name, error)
