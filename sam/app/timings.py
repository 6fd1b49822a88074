"""How long each model's image embeddings take on this server, for the page's model picker.

The service records every embedding it computes (not the ones served from its cache) by model and by
precision. The picker then labels each model with the median of its recent embeddings ("2.1 s measured
here"), and a model that has not run here yet with an estimate: its FLOPs per embedding times the seconds
per GFLOP that the models which did run here took in the same precision ("~3 s, estimated"). Nothing is
run to calibrate: until a first embedding is done, the picker shows the names alone.
"""

import statistics
import threading
from collections import deque
from collections.abc import Iterable

from ..weights import KNOWN_MODELS

# FLOPs of one image embedding at 1024 px, in GFLOP, by the config of KNOWN_MODELS: torch's FlopCounterMode
# over `model.encode` with the math attention kernel, so attention counts too (tests/test_model_times.py
# recounts them on the meta device). SlimSAM's pruned widths come from its config.json: not listed.
GFLOP = {
    "vit_b": 972.1,
    "vit_l": 2985.7,
    "vit_h": 5961.1,
    "tiny_vit": 77.8,
    "hiera_tiny": 292.4,
    "hiera_small": 360.1,
    "hiera_base_plus": 646.8,
    "hiera_large": 1822.8,
}
RECENT = 16  # embeddings kept per model and precision; the label shows their median


def gflop(name: str) -> float | None:
    """GFLOP of one embedding by known model `name`; None for other names and SlimSAM."""
    known = KNOWN_MODELS.get(name)
    return GFLOP.get(known.config) if known is not None and known.config else None


def seconds_text(seconds: float, estimate: bool = False) -> str:
    """2.1 s, 13 s, 0.45 s; estimates rounded further (~3 s, ~0.8 s): they are rougher."""
    if estimate:
        return f"~{seconds:.1g} s" if seconds < 0.95 else f"~{seconds:.0f} s"
    return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


class EmbeddingTimes:
    """Seconds of the embeddings computed on this server, by (model, precision); thread-safe.

    precision: the one the server loads its models in ('float32' or 'bfloat16'): the one its labels speak of.
    """

    def __init__(self, precision: str = "float32") -> None:
        self.precision = precision
        self._seconds: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def record(self, model: str, precision: str, seconds: float) -> None:
        with self._lock:
            self._seconds.setdefault((model, precision), deque(maxlen=RECENT)).append(seconds)

    def measured(self, model: str, precision: str | None = None) -> float | None:
        """Median seconds of `model`'s recent embeddings in `precision` (default: the server's); None if none."""
        with self._lock:
            times = list(self._seconds.get((model, precision or self.precision), ()))
        return statistics.median(times) if times else None

    def seconds_per_gflop(self, precision: str | None = None) -> float | None:
        """Median over the models measured in `precision` whose FLOPs are known; None before any."""
        precision = precision or self.precision
        with self._lock:
            models = [m for m, p in self._seconds if p == precision]
        rates = [self.measured(m, precision) / gflop(m) for m in models if gflop(m)]
        return statistics.median(rates) if rates else None

    def estimate(self, model: str, precision: str | None = None) -> float | None:
        """Seconds an embedding by `model` should take here, from the other models' measured rate."""
        rate, work = self.seconds_per_gflop(precision), gflop(model)
        return rate * work if rate is not None and work is not None else None

    def label(self, model: str) -> str:
        """The picker's label of `model`: its measured time, else an estimate, else its name alone."""
        seconds = self.measured(model)
        if seconds is not None:
            return f"{model} · {seconds_text(seconds)} measured here"
        seconds = self.estimate(model)
        return model if seconds is None else f"{model} · {seconds_text(seconds, estimate=True)}, estimated"

    def choices(self, names: Iterable[str]) -> list[tuple[str, str]]:
        """(label, name) pairs for a gr.Dropdown: the names stay the values."""
        return [(self.label(name), name) for name in names]
