"""Networks of the shipped demo models: a class-conditional residual MLP on 3×8×8 pixel-space images.

The same architecture serves the rectified-flow model (predicts the velocity v = ε − x0) and the
EPS diffusion model (predicts ε from the VP input). Time enters as the common flow time
t ∈ [0, 1] (t = σ for flow models, t = σ_ve/(1+σ_ve) for VE/EPS models), so both nets see the same range.
The conditioning vector is an 11-way one-hot: digits 0–9 and index 10 for "no label" (used for CFG).
"""
from __future__ import annotations

import math

import torch
from torch import nn

NUM_CLASSES = 10
NULL_CLASS = 10
CONDITION_DIM = NUM_CLASSES + 1
IMAGE_SHAPE = (3, 8, 8)


def condition_vector(digit: int | None) -> torch.Tensor:
    """One-hot conditioning of shape [1, 1, 11]; ``None`` means unconditional."""
    index = NULL_CLASS if digit is None else int(digit)
    if not 0 <= index <= NULL_CLASS:
        raise ValueError(f"digit must be 0–9 or None, got {digit!r}")
    vector = torch.zeros(1, 1, CONDITION_DIM)
    vector[0, 0, index] = 1.0
    return vector


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of 1000·t (Vaswani et al. 2017 / DDPM), t of shape [B]."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, ops=nn):
        super().__init__()
        self.norm = ops.LayerNorm(width)
        self.fc1 = ops.Linear(width, width * 2)
        self.fc2 = ops.Linear(width * 2, width)

    def forward(self, h, conditioning):
        scale, shift = conditioning.chunk(2, dim=1)  # FiLM (Perez et al. 2018)
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h) * (1 + scale) + shift)))


class DigitsMLP(nn.Module):
    """``ops`` supplies Linear/LayerNorm: torch.nn for training, ComfyUI's ``comfy.ops`` classes in the pack
    (they check ComfyUI's cancel flag on every layer and handle weight casting)."""

    def __init__(self, width: int = 256, depth: int = 3, time_dim: int = 64, ops=nn):
        super().__init__()
        features = math.prod(IMAGE_SHAPE)
        self.time_dim = time_dim
        self.config = {"width": width, "depth": depth, "time_dim": time_dim}
        self.inp = ops.Linear(features, width)
        self.cond = nn.Sequential(ops.Linear(time_dim + CONDITION_DIM, width * 2), nn.SiLU(),
                                  ops.Linear(width * 2, width * 2))
        self.blocks = nn.ModuleList(ResidualBlock(width, ops) for _ in range(depth))
        self.out_norm = ops.LayerNorm(width)
        self.out = ops.Linear(width, features)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, 8, 8]; t: [B] flow time in [0, 1]; label: [B, 11] conditioning vector."""
        batch = x.shape[0]
        conditioning = self.cond(torch.cat([time_embedding(t, self.time_dim), label.float()], dim=1))
        h = self.inp(x.reshape(batch, -1))
        for block in self.blocks:
            h = block(h, conditioning)
        return self.out(self.out_norm(h)).reshape(x.shape)


def sd15_alphas_cumprod(timesteps: int = 1000, linear_start: float = 0.00085,
                        linear_end: float = 0.012) -> torch.Tensor:
    """SD1.5's discrete "scaled linear" beta schedule (ComfyUI's beta_schedule='linear'), float64."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)
