"""Torch thread counts per job, so that a click and an embedding share two cores well."""

import contextlib
import threading

import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch ops of the calling thread on n threads, then restore the count.

    With OpenMP the count is per calling thread: decoding on one thread leaves the other core to a
    concurrent embedding (two 2-thread jobs on 2 cores make a small decode ~10x slower).
    """
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Workload:
    """The torch jobs in flight: a decode uses every thread it is given only while nothing else runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @contextlib.contextmanager
    def job(self, threads: int, shared: bool = True):
        """Count the block as a running job, on `threads` torch threads (one if shared and another job runs)."""
        with self._lock:
            self._count += 1
            n = threads if not shared or self._count == 1 else 1
        try:
            with torch_threads(n):
                yield n
        finally:
            with self._lock:
                self._count -= 1
