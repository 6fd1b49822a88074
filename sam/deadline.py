"""Time limits for long work, checked between its steps (nothing is interrupted mid-step)."""

import time


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
