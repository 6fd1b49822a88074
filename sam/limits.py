"""Every limit the app sets on what visitors send, in one place.

README, "Limits and failure modes", says what a visitor sees when one is reached. The cache and session
sizes can be changed through the environment variables named beside them (read by sam.app.service and app.py).
`Deadline` stops long work between its steps (Gradio has no time limit for a running request).
"""

import time

MAX_UPLOAD_MB = 50  # Gradio's max_file_size: larger uploads are refused before they are stored
MAX_PIXELS = 40_000_000  # width x height, read from the file header before anything is decoded
MAX_ASPECT = 32  # long side / short side: SAM sees the long side at 1024 px, so the short side keeps >= 32 px
MAX_PROMPTS = 64  # points and boxes per object (the page), points per request (the /segment API)
MAX_OBJECTS = 64  # objects per image
MAX_NAME = 40  # characters of an object name

SESSION_TTL_S = 3600  # a visitor's state is dropped this long after their last request
MAX_SESSIONS = 500  # SAM_MAX_SESSIONS: the oldest sessions are evicted beyond this many
QUEUE_SIZE = 64  # queued image embeddings and API calls; more get "the queue is full"
PAGE_TIMEOUT_S = 120  # the page stops waiting for an answer after this long (static/canvas.js, TIMEOUT_MS)
EVERYTHING_TIMEOUT_S = 300  # SAM_EVERYTHING_TIMEOUT_S: one "segment everything" request stops after this long
MAX_BODY_KB = 1024  # request bodies other than uploads (JSON of the queue, API and canvas routes): HTTP 413 beyond

EMBEDDING_CACHE_MB = 512  # SAM_EMBEDDING_CACHE_MB: image embeddings shared by all visitors (LRU)
EMBEDDING_CACHE_ITEMS = 64  # SAM_EMBEDDING_CACHE_ITEMS
IMAGE_CACHE_MB = 512  # SAM_IMAGE_CACHE_MB: decoded images kept for re-embedding and exports (LRU)
MAX_MODELS = 2  # SAM_MAX_MODELS: models loaded at once (least recently used is dropped)


class TimeLimitError(ValueError):
    """Work stopped at its time limit; the message says what, after how long and how far it got."""


class Deadline:
    """A time limit for one request, checked between the steps of its work (nothing is interrupted mid-step)."""

    def __init__(self, seconds: float, what: str, setting: str = "", hint: str = "") -> None:
        """seconds from now; `what` stopped after ... (`setting`: where the limit is set; `hint`: what to do)."""
        self.seconds, self.what, self.setting, self.hint = float(seconds), what, setting, hint
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def check(self, done: str = "") -> None:
        """Raise TimeLimitError once the limit has passed; `done` says how far the work got (for the message)."""
        elapsed = self.elapsed()
        if elapsed <= self.seconds:
            return
        limit = f"{self.seconds:g} s" + (f", {self.setting}" if self.setting else "")
        message = f"{self.what} stopped after {elapsed:.1f} s, its time limit ({limit})"
        message += (f", with {done}" if done else "") + (f": {self.hint}" if self.hint else "")
        raise TimeLimitError(message)
