"""What the app's page sends, without a browser: uploads, the canvas's queued events and its server function.

gradio_client reaches only the named API endpoints; the page also triggers private events with event data
(the canvas's `image` event carries the uploaded path) and calls `sam_act` directly. `PageClient` speaks
the same HTTP (Gradio's sse_v3 queue protocol) so tests can drive many page sessions at once, and send
what a hostile page could send.
"""

import json
import secrets
import urllib.request
import uuid
from typing import Any

import httpx

JSON = {"Content-Type": "application/json"}  # bodies are written by json.dumps, so NaN and Infinity go through


class PageClient:
    """One page session (one Gradio session hash) against the app at `url`."""

    def __init__(self, url: str, timeout_s: float = 120) -> None:
        self.url = url.rstrip("/")
        self.session_hash = secrets.token_hex(6)
        self.http = httpx.Client(timeout=timeout_s)
        self.config = config(self.url)
        self.canvas_id = element_id(self.config, "sam-canvas")
        self.model = next(c for c in self.config["components"] if c["type"] == "dropdown")["props"]["value"]
        self.token: str | None = None

    def close(self) -> None:
        self.http.close()

    def upload(self, data: bytes, name: str = "image.png") -> str:
        """POST the bytes as the page's upload does; returns the server path."""
        r = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (name, data)})
        r.raise_for_status()
        return r.json()[0]

    def event(self, api_name: str, data: list, event_data: Any = None) -> list:
        """Run a queued event (by its api_name, public or private) and return its outputs."""
        fn = next(i for i, d in enumerate(self.config["dependencies"]) if d.get("api_name") == api_name)
        dep = self.config["dependencies"][fn]
        body = {
            "data": data,
            "event_data": event_data,
            "fn_index": fn,
            "trigger_id": dep["targets"][0][0] if dep["targets"] else None,
            "session_hash": self.session_hash,
        }
        r = self.http.post(f"{self.url}/gradio_api/queue/join", content=json.dumps(body).encode(), headers=JSON)
        r.raise_for_status()
        event_id = r.json()["event_id"]
        params = {"session_hash": self.session_hash}
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params=params) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") != event_id or msg.get("msg") != "process_completed":
                    continue
                if not msg.get("success"):
                    raise EventError(str((msg.get("output") or {}).get("error")))
                return msg["output"]["data"]
        raise EventError("the queue stream ended without an answer")

    def open_image(self, data: bytes, name: str = "image.png") -> tuple[dict, str]:
        """Upload and open an image as the canvas does -> (canvas view, status line)."""
        path = self.upload(data, name)
        rid = uuid.uuid4().int % 1_000_000
        view, _, status = self.event("on_image", [None, self.model], {"path": path, "name": name, "rid": rid})
        if isinstance(view, dict) and view.get("token"):
            self.token = view["token"]
        return view, status

    def act(self, data: Any, with_token: bool = True) -> Any:
        """Call the canvas's server function `sam_act` (a click, box, hover...) with the session's token."""
        if with_token and isinstance(data, dict):
            data = {"token": self.token, **data}
        body = {"data": data, "component_id": self.canvas_id, "fn_name": "sam_act", "session_hash": self.session_hash}
        r = self.http.post(f"{self.url}/gradio_api/component_server/", content=json.dumps(body).encode(), headers=JSON)
        r.raise_for_status()
        return r.json()


class EventError(RuntimeError):
    """A queued event ended with an error (the text Gradio sends to the page)."""


def config(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/config", timeout=30) as r:
        return json.loads(r.read())


def element_id(cfg: dict, elem_id: str) -> int:
    return next(c["id"] for c in cfg["components"] if c.get("props", {}).get("elem_id") == elem_id)
