"""A thread-safe LRU cache bounded in entries and in bytes (image embeddings, decoded images)."""

import threading
from collections import OrderedDict
from collections.abc import Callable


class LRU:
    """Thread-safe LRU bounded by entry count and by total bytes (`size_of(value)`)."""

    def __init__(self, max_items: int, max_bytes: int, size_of: Callable[[object], int]) -> None:
        self.max_items, self.max_bytes, self.size_of = max_items, max_bytes, size_of
        self._data: OrderedDict[object, object] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: object) -> object | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: object, value: object) -> None:
        size = self.size_of(value)
        with self._lock:
            if key in self._data:
                self._bytes -= self.size_of(self._data.pop(key))
            if size > self.max_bytes or self.max_items < 1:
                return  # too large to keep at all
            self._data[key] = value
            self._bytes += size
            while len(self._data) > self.max_items or self._bytes > self.max_bytes:
                _, old = self._data.popitem(last=False)
                self._bytes -= self.size_of(old)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes
