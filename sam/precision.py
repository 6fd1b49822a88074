"""Choosing the precision of the image encoder: bf16 where the processor runs it fast, else fp32.

Only the image encoder changes precision: it holds ~95% of the compute. The prompt encoder and the
mask decoder stay in fp32, so masks from a bf16 embedding stay close to the fp32 ones.
"""

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matrix products beat fp32: CPUs with AMX or AVX512-BF16, GPUs with bf16 support."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """'auto' | 'float32' | 'bfloat16' (or a torch dtype) -> the torch dtype to run the encoder in."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}: use float32 or bfloat16")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use 'auto', 'float32' or 'bfloat16'")
    return DTYPES[dtype]
