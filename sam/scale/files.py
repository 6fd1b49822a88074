"""Output files of batch jobs: written under a temporary name and renamed, and the job's summary file.

A file that exists under its final name is complete: a rerun skips the image it belongs to. Temporary
names start with a dot, which no output name does (`sam.export.safe_name` strips leading dots).
"""

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_NAME = "_summary.json"  # no output name starts with "_" (safe_name strips it)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write data to a hidden file beside path, then rename it to path (readers see all of it or nothing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Summary:
    """What a batch job did: counts, failures ({"path", "error"} each), time and throughput."""

    output: str
    engine: str
    images: int = 0
    done: int = 0  # processed in this run (outputs written, or nothing to write)
    skipped: int = 0  # complete outputs of an earlier run
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        where = f"Ray, {self.workers} actor{'s' * (self.workers != 1)}" if self.engine == "ray" else "one process"
        return (
            f"{self.images} images: {self.done} done, {self.skipped} skipped (complete), {self.failed} failed "
            f"in {self.seconds:.1f} s, {self.images_per_second:.2f} images/s ({where})"
        )

    def to_json(self) -> dict[str, Any]:
        return dict(asdict(self), failed=self.failed, images_per_second=round(self.images_per_second, 4))


def write_summary(summary: Summary) -> Path:
    """OUTPUT/_summary.json, replacing the one of an earlier run."""
    path = Path(summary.output) / SUMMARY_NAME
    write_atomic(path, json.dumps(summary.to_json(), indent=1) + "\n")
    return path


def read_summary(output: str | os.PathLike) -> Summary:
    """The summary a Ray job wrote in its output folder (OUTPUT/_summary.json)."""
    saved = json.loads((Path(output) / SUMMARY_NAME).read_text(encoding="utf-8"))
    return Summary(**{name: saved[name] for name in Summary.__dataclass_fields__})
