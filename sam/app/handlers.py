"""The page's event handlers: what each upload, button and picker does, wired to the page by app.py.

Every handler turns a failure into a message for the visitor (the status line or the canvas's message);
the work itself is in `CanvasServer` (the page's requests) and `service`. The script API is sam/app/api.py.
"""

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from ..images import ImageError, frame_count
from ..weights import KNOWN_MODELS
from .canvas import CanvasServer, model_error
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


def error_text(e: Exception) -> str:
    return str(e) if isinstance(e, ValueError | LookupError) else f"{type(e).__name__}: {e}"


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
            return self.canvas.open_image(session, name, image, title, path, animated, rid)
        except Exception as e:
            return {"error": error_text(e), "rid": rid}, session, self._status(name, e)

    def on_example(self, session, name, evt: gr.SelectData):
        try:
            path = self.examples[int(evt.index)]
            return self.canvas.open_image(session, name, read_image(path), path.name, str(path), True)
        except Exception as e:
            return {"error": error_text(e)}, session, self._status(name, e)

    def on_model(self, session, name):
        if name not in self.choices:
            return {"error": f"unknown model {name!r}"}, gr.skip()
        try:
            return self.canvas.switch_model(session, name)
        except Exception as e:
            return {"error": error_text(e)}, self._status(name, e)

    def on_everything(self, session, name, progress=gr.Progress()):  # noqa: B008
        def report(done: int, total: int) -> None:
            progress(done / max(total, 1), desc="Segmenting everything")

        try:
            return self.canvas.everything(session, report, **self.everything_args)
        except Exception as e:
            return {"error": error_text(e)}

    def on_export(self, session):
        try:
            EXPORT_DIR.mkdir(parents=True, exist_ok=True)
            return str(self.canvas.export(session, tempfile.mkdtemp(prefix="export-", dir=EXPORT_DIR)))
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def _status(self, name: str, error: Exception) -> str:
        return self.canvas.status(name) if isinstance(error, ValueError) else model_error(name, error)
