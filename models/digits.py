"""scikit-learn's digits: the split every digits model uses, and the MLP they share."""

from __future__ import annotations

import numpy as np
import torch


def digits_split(seed: int):
    """scikit-learn's digits, pixels / 16, 75/25 stratified split: x_train, x_test, y_train, y_test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return train_test_split((digits.data / 16.0).astype(np.float32), digits.target, test_size=0.25,
                            random_state=seed, stratify=digits.target)


def digits_mlp(width: int) -> torch.nn.Sequential:
    """64 -> width -> ReLU -> width -> ReLU -> 10 (parameters ``0.*``, ``2.*``, ``4.*``), PyTorch's default init
    from torch's global generator."""
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))
