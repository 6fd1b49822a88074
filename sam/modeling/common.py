"""Small building blocks shared by the encoders and the decoder."""

import functools
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode


@functools.cache
def onednn_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes whose products go to oneDNN on this CPU: fp32 where it has AVX-512, bf16 where oneDNN has
    bf16 products (none without AVX-512). On an AVX2-only CPU torch's fp32 products (MKL) ran 22 to 27%
    faster than oneDNN's (ViT-B's MLP, 2 threads of an AMD EPYC: 245 against 314 ms)."""
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return (torch.float32,) * avx512 + (torch.bfloat16,) * bf16


def onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x @ weight^T can go to oneDNN: CPU, fp32 or bf16 alike, and no autograd or tracing to serve."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and weight.is_contiguous()  # a strided weight took minutes where a contiguous one took milliseconds
        and torch.backends.mkldnn.is_available()
        and x.dtype in onednn_dtypes()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and _get_current_dispatch_mode() is None  # e.g. FlopCounterMode: it counts aten's products only
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias), then exact GELU if gelu: ...xK, NxK -> ...xN in x's dtype.

    On CPUs with AVX-512 this runs as one oneDNN product with the bias and GELU applied as it writes its
    output. torch's own fp32 products go to MKL, which on AMD processors takes its AVX2 path: oneDNN's
    AVX-512 kernels ran 2.2x faster there (a 2048^3 product, 232 against 101 GFLOP/s on one core of an AMD
    EPYC). On AVX2-only CPUs MKL is the faster one (`onednn_dtypes`).
    """
    if onednn_ok(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none")
    x = F.linear(x, weight, bias)
    return F.gelu(x) if gelu else x


def version(t: torch.Tensor) -> int:
    """t's in-place version counter, which caches of values made from weights compare; -1 for an inference
    tensor (made under torch.inference_mode), which has none and is taken as unchanging."""
    return -1 if t.is_inference() else t._version


Stamp = list[tuple[torch.Tensor, int]]


def stamp(*modules: nn.Module) -> Stamp:
    """Every parameter and buffer of the modules with its version: a cache of values made from them keeps
    it, and `same_stamp` says whether the weights are still those (not replaced, not changed in place)."""
    return [(t, version(t)) for m in modules for t in itertools.chain(m.parameters(), m.buffers())]


def same_stamp(a: Stamp, b: Stamp) -> bool:
    return len(a) == len(b) and all(x is y and u == v for (x, u), (y, v) in zip(a, b))


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.act) is nn.GELU and self.act.approximate == "none":  # GELU fused into lin1's product
            return linear(linear(x, self.lin1.weight, self.lin1.bias, gelu=True), self.lin2.weight, self.lin2.bias)
        return self.lin2(self.act(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a BxCxHxW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()  # statistics in fp32 when the encoder runs in bf16
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return (self.weight[:, None, None].float() * x + self.bias[:, None, None].float()).to(dtype)


class EncoderPrecision:
    """What a model says about its image encoder's precision (a mixin of Sam and Sam2)."""

    image_encoder: nn.Module

    @property
    def encoder_dtype(self) -> torch.dtype:
        """The dtype of the image encoder's matrix products."""
        return max((p.dtype for p in self.image_encoder.parameters()), key=lambda d: d != torch.float32)

    @property
    def precision(self) -> str:
        """'float32' or 'bfloat16': the precision the image encoder runs in."""
        return str(self.encoder_dtype).removeprefix("torch.")
