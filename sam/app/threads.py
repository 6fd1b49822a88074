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


class FairLock:
    """A lock taken in the order it was asked for (first come, first served), unlike threading.Lock.

    Segment-everything gives it up between batches with `yield_turn`: an embedding asked for meanwhile
    runs before its next batch, instead of waiting for the whole run.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0  # the next ticket to hand out
        self._serving = 0  # the ticket whose turn it is

    def acquire(self, blocking: bool = True) -> bool:
        """Wait for the lock (or, not blocking, take it only if nobody holds or waits for it)."""
        with self._cond:
            if not blocking and self._serving != self._next_ticket:
                return False
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._serving == ticket)
            return True

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def yield_turn(self) -> bool:
        """Let everyone who asked before now go first, then hold the lock again; True if anyone was waiting."""
        with self._cond:
            waiting = self._next_ticket - self._serving - 1
        if waiting:
            self.release()
            self.acquire()
        return waiting > 0

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
