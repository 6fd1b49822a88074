"""Where segment-everything keeps its candidates' low-res logits: memory up to a budget, then a temporary file."""

import tempfile

import numpy as np
import torch


class LogitStore:
    """The candidates' low-res logits: in memory up to `budget_bytes`, beyond it in a temporary file.

    Only the masks that survive every filter and NMS are read back, at the end. A 256x256 logit map is
    256 KB, and a 64x64 grid with both thresholds at 0 makes ~12,000 candidates (3 GB): the budget keeps
    the generator's memory bounded whatever its settings, and the records stay exactly Meta's.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.rows: list[torch.Tensor] = []  # in memory, by slot
        self.where: list[int] = []  # slot -> index in rows (>= 0) or -(row of the file + 1)
        self.file, self.file_rows, self.shape = None, 0, None

    def add(self, logits: torch.Tensor) -> torch.Tensor:
        """Nxhxw float32 logits -> their N slots (int64)."""
        start = len(self.where)
        self.shape = self.shape or tuple(logits.shape[1:])
        row_bytes = logits[0].numel() * 4 if len(logits) else 0
        for row in logits.float().contiguous():
            if (len(self.rows) + 1) * row_bytes <= self.budget:
                self.where.append(len(self.rows))
                self.rows.append(row.clone())
            else:
                if self.file is None:  # closed by close(); unlinked already, so nothing is left behind
                    self.file = tempfile.TemporaryFile(prefix="sam-logits-")  # noqa: SIM115
                self.file.write(row.numpy().tobytes())
                self.file_rows += 1
                self.where.append(-self.file_rows)
        return torch.arange(start, len(self.where), dtype=torch.int64)

    def get(self, slots: torch.Tensor) -> torch.Tensor:
        """K slots -> Kxhxw float32 logits."""
        if len(slots) == 0:
            return torch.zeros((0, *(self.shape or (0, 0))))
        disk = None
        if self.file is not None:
            self.file.flush()
            disk = np.memmap(self.file, dtype=np.float32, mode="r", shape=(self.file_rows, *self.shape))
        out = []
        for s in slots.tolist():
            i = self.where[s]
            out.append(self.rows[i] if i >= 0 else torch.from_numpy(np.array(disk[-i - 1])))
        return torch.stack(out)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.rows, self.where, self.file = [], [], None
