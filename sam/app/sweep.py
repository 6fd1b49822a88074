"""Files the app leaves on disk, removed once they are old: partial uploads and export zips.

Gradio keeps every upload until it restarts; the app asks it to delete them (and its copies of the
exports) an hour after they arrive (`gr.Blocks(delete_cache=...)`). Two kinds of file escape that: an
upload that was cut off halfway stays in Gradio's upload folder under a temporary name, and the export
zips the app writes before Gradio copies them. `Sweeper` removes those on a timer.
"""

import logging
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def sweep(folder: Path, max_age_s: float, recursive: bool = False, now: float | None = None) -> int:
    """Delete the regular files in `folder` (and below it, if recursive) not modified for max_age_s, then the
    folders below it left empty; returns the bytes freed. Links are not followed."""
    now = time.time() if now is None else now
    freed = 0
    if not folder.is_dir():
        return 0
    for path in folder.rglob("*") if recursive else folder.iterdir():
        try:
            info = path.lstat()
            if path.is_file() and not path.is_symlink() and now - info.st_mtime > max_age_s:
                path.unlink()
                freed += info.st_size
        except FileNotFoundError:  # removed meanwhile (Gradio's own sweep, a download finishing)
            continue
    if recursive:
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
            try:
                sub.rmdir()  # only empty ones go
            except OSError:
                continue
    return freed


class Sweeper:
    """Every `every_s` seconds: partial uploads older than `upload_age_s` (top level of the upload folder,
    where Gradio streams them before moving them into a folder of their own) and export files older than
    `export_age_s` (anywhere in the export folder)."""

    def __init__(
        self, upload_dir: Path, export_dir: Path, every_s: float = 300, upload_age_s: float = 900,
        export_age_s: float = 600,
    ) -> None:
        self.upload_dir, self.export_dir = Path(upload_dir), Path(export_dir)
        self.every_s, self.upload_age_s, self.export_age_s = every_s, upload_age_s, export_age_s
        self._stop = threading.Event()

    def run_once(self) -> int:
        return sweep(self.upload_dir, self.upload_age_s) + sweep(self.export_dir, self.export_age_s, recursive=True)

    def start(self) -> "Sweeper":
        def loop() -> None:
            while not self._stop.wait(self.every_s):
                try:
                    freed = self.run_once()
                    if freed:
                        logger.info("swept %.1f MB of old uploads and exports", freed / 2**20)
                except Exception:  # a sweep that fails must not stop the next ones
                    logger.exception("sweeping old files failed")

        threading.Thread(target=loop, name="sweeper", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
