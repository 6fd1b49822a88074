"""sam.allocator: freed tensor memory is reused without page faults (checked in fresh processes)."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from sam.allocator import reuse_freed_memory
tuned = reuse_freed_memory() if sys.argv[1] == "tuned" else None
for _ in range(3):
    torch.ones(16 << 20)  # 64 MB, allocated and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    tuned, count = out.split()
    return tuned, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings exist on Linux only")
def test_freed_memory_is_reused():
    assert faults("tuned")[0] == "True"
    assert faults("tuned")[1] < 1_000  # the 640 MB allocated after tuning come from memory already mapped
    assert faults("default")[1] > 50_000  # glibc's default maps and faults in each 64 MB block again



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings exist on Linux only")
def test_segment_everything_hands_free_memory_back_after_each_batch(monkeypatch):
    """With mmap off, resident memory crept up by ~1 MB per point (1.7 GB for a 64x64 grid) without it."""
    import sam.automatic
    from sam.allocator import release_free_memory
    from tests.helpers.oracle import oracle_sam, region_image

    assert release_free_memory() is True
    calls = []
    monkeypatch.setattr(sam.automatic, "release_free_memory", lambda: calls.append(1))
    gen = sam.automatic.SamAutomaticMaskGenerator(oracle_sam(), points_per_side=8, points_per_batch=16)
    gen.generate(region_image()[0])
    assert len(calls) == 64 // 16
