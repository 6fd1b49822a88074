"""Small building blocks shared by the encoders and the decoder."""

import torch
import torch.nn as nn


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
