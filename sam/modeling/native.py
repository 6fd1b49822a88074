"""The attention's bias, softmax and cast as one C kernel (softmax.c), for the ViT and TinyViT.

The kernel is compiled on first use with the system's C compiler for the CPU it runs on (`cc -O3
-march=native`, a fixed argument list, no shell) into CACHE (~/.cache/sam/native), keyed on the source,
the flags and the CPU's features, and loaded with ctypes. Where it cannot be built or loaded (no
compiler, not Linux on x86-64) or USE is False, `rel_pos_softmax` and `table_softmax` return None and
the caller uses torch's ops: the same results to float rounding, slower. Nothing is built on import.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

SOURCE = Path(__file__).with_name("softmax.c")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC"]
COMPILERS = ("cc", "gcc")  # the first found on PATH
CACHE: Path | None = None  # where the build is kept; None: ~/.cache/sam/native
USE = True  # False: torch's ops everywhere, the kernel never built or called

_lock = threading.Lock()
_lib: ctypes.CDLL | None | bool = None  # None: not tried yet; False: cannot be used here


def enabled() -> bool:
    """Whether the kernel may be used: USE, Linux on x86-64, and torch threads with OpenMP."""
    return (
        USE
        and sys.platform == "linux"
        and platform.machine() == "x86_64"
        and "OpenMP" in torch.__config__.parallel_info()
    )


def library() -> ctypes.CDLL | None:
    """The loaded kernel, built on the first call; None where it cannot be used (warned once)."""
    global _lib
    if not USE:
        return None
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib = _load() or False
    return _lib or None


def _cpu_features() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def _load() -> ctypes.CDLL | None:
    if not enabled():
        return None
    cc = next(filter(None, map(shutil.which, COMPILERS)), None)
    try:
        if cc is None:
            raise OSError("no C compiler (cc) on PATH")
        source = SOURCE.read_bytes()
        key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), _cpu_features().encode()]))
        path = (CACHE or Path.home() / ".cache" / "sam" / "native") / f"softmax-{key.hexdigest()[:16]}.so"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # built aside, then moved in whole
                built = Path(tmp) / path.name
                subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], check=True, capture_output=True,
                               timeout=120)
                os.replace(built, path)
        lib = ctypes.CDLL(str(path))
        ptr, flag, size, threads = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int
        lib.rel_pos_softmax.argtypes = [ptr, flag, ptr, ptr, size, size, size, threads]
        lib.table_softmax.argtypes = [ptr, flag, ptr, size, size, size, threads]
        lib.rel_pos_softmax.restype = lib.table_softmax.restype = None
        return lib
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:  # RuntimeError: no home
        detail = getattr(e, "stderr", b"") or b""
        warnings.warn(f"sam: the C attention kernel is not used ({e} {detail.decode(errors='replace')[:500]}); "
                      "torch's ops run instead", RuntimeWarning, stacklevel=3)
        return None


def _runnable(scores: torch.Tensor, *biases: torch.Tensor) -> bool:
    return (
        scores.device.type == "cpu"
        and scores.dtype in (torch.float32, torch.bfloat16)
        and all(b.device.type == "cpu" and b.dtype == torch.float32 and b.is_contiguous() for b in biases)
        and scores.is_contiguous()
        and not (torch.is_grad_enabled() and scores.requires_grad)
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and _get_current_dispatch_mode() is None
    )


def rel_pos_softmax(scores: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor | None:
    """softmax(scores + rel_h[..., :, None] + rel_w[..., None, :]) over each row, written over scores.

    scores: ... x n x (h*w), float32 or bfloat16; rel_h: ... x n x h and rel_w: ... x n x w, float32.
    Returns scores, or None (scores untouched) where the kernel cannot run: not built here, tensors
    not contiguous CPU tensors of these dtypes, or autograd, tracing or a dispatch mode to serve.
    """
    if not (
        _runnable(scores, rel_h, rel_w)
        and scores.shape[:-1] == rel_h.shape[:-1] == rel_w.shape[:-1]
        and scores.shape[-1] == rel_h.shape[-1] * rel_w.shape[-1]
    ) or (lib := library()) is None:
        return None
    rows = scores.numel() // max(1, scores.shape[-1])
    lib.rel_pos_softmax(scores.data_ptr(), int(scores.dtype == torch.bfloat16), rel_h.data_ptr(), rel_w.data_ptr(),
                        rows, rel_h.shape[-1], rel_w.shape[-1], torch.get_num_threads())
    return scores


def table_softmax(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor | None:
    """softmax(scores + bias) over each row, bias broadcast over scores' leading dims, written over scores.

    scores: ... x n x N, float32 or bfloat16; bias: the trailing dims of scores (e.g. heads x n x N), float32.
    Returns scores, or None (scores untouched) where the kernel cannot run, as rel_pos_softmax.
    """
    if not (_runnable(scores, bias) and 0 < bias.dim() <= scores.dim() and scores.shape[-bias.dim():] == bias.shape
            ) or (lib := library()) is None:
        return None
    n = scores.shape[-1]
    lib.table_softmax(scores.data_ptr(), int(scores.dtype == torch.bfloat16), bias.data_ptr(),
                      scores.numel() // max(1, n), n, bias.numel() // max(1, n), torch.get_num_threads())
    return scores
