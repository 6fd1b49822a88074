"""Model loaders for the app's service tests: tiny random models, and a loader that counts its loads."""

import functools
import threading

from sam.build import build_sam
from sam.hub import WeightsError
from tests.helpers.reference import TINY, random_state_dict


@functools.cache  # models are only read: build each once
def tiny_model(seed: int = 0):
    model = build_sam(TINY)
    model.load_state_dict(random_state_dict(model, seed))
    model.weights_source = f"tiny seed {seed}"
    return model


class CountingLoader:
    def __init__(self):
        self.loads: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, name: str):
        if name == "broken":
            raise WeightsError("cannot fetch broken: check the network")
        with self.lock:
            self.loads.append(name)
        return tiny_model(int(name[-1]) if name[-1].isdigit() else 0)
