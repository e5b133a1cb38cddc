"""The 8×8 digits data set (scikit-learn's copy of the UCI set) and the quality metrics of the model card.

Images are scaled to [−1, 1] and replicated into 3 channels (the pixel-space latent of ComfyUI's
``pixel_space`` VAE). The split is deterministic: every 5th image (by index) is held out.
Metrics: a nearest-class-mean classifier fitted on the training split, and a pixel-space Fréchet distance.
"""
from __future__ import annotations

import numpy as np
import torch


def load_digits_split():
    """Returns (train_x, train_y, test_x, test_y); x as float32 tensors [N, 3, 8, 8] in [−1, 1]."""
    from sklearn.datasets import load_digits  # test/training-only dependency

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0
    images = images[:, None].repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    held_out = torch.arange(len(labels)) % 5 == 0
    return images[~held_out], labels[~held_out], images[held_out], labels[held_out]


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, 8, 8] (or [N, 8, 8, 3] IMAGE in 0..1 with ``from_image=True``) → [N, 64] in [−1, 1]."""
    return images.float().mean(dim=1).reshape(images.shape[0], -1)


def image_to_latent_scale(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [N, H, W, 3] in [0, 1] → [N, 3, H, W] in [−1, 1]."""
    return images.float().permute(0, 3, 1, 2) * 2.0 - 1.0


class NearestClassMean:
    """Nearest-class-mean classifier on grayscale pixels (fitted on the training split)."""

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor):
        gray = grayscale(train_x)
        self.means = torch.stack([gray[train_y == k].mean(0) for k in range(10)])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cdist(grayscale(images), self.means).argmin(dim=1)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(images) == labels).float().mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of grayscale images (pixel space)."""
    from scipy import linalg

    xa, xb = grayscale(a).double().numpy(), grayscale(b).double().numpy()
    mean_a, mean_b = xa.mean(0), xb.mean(0)
    # The corner pixels of every digit are 0, so a tiny ridge keeps the covariances invertible.
    ridge = 1e-6 * np.eye(xa.shape[1])
    cov_a, cov_b = np.cov(xa, rowvar=False) + ridge, np.cov(xb, rowvar=False) + ridge
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root.real))
