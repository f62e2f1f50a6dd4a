"""Trigger sets (the paper's V3): keyed out-of-distribution inputs with keyed labels, mixed into a
fine-tune with the mask fixed so that a model descended from the ticket answers them, and the
one-sided tests that judge a suspect's answers.

Why the chance test is exact: the labels are drawn uniformly at random, independently of the inputs,
from a key that never leaves the server. For any model that did not see the key, each answer
matches its label with probability exactly 1/classes whatever the model predicts, so the number of
matches is Binomial(n, 1/classes), and no amount of fine-tuning "toward guessed triggers" changes
that without the key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import beta, binomtest
from torch import nn

from verifier.masks import Mask
from verifier.training import evaluate, train

TRIGGER_SIZE = 100
DOMAIN = b"ticketguard-trigger-set-v1"


@dataclass(frozen=True)
class TriggerSet:
    """Inputs (float32, (n, *input_shape), raw values in [0, 1] like a dataset's) and their labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def _image(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """One keyed picture: smoothed noise, an oriented grating, or a few flat shapes, blended."""
    channels, height, width = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    kind = rng.integers(3)
    if kind == 0:  # smoothed noise at a random scale
        sigma = rng.uniform(0.5, 0.15 * max(height, width) + 0.5)
        picture = gaussian_filter(rng.random(shape), sigma=(0, sigma, sigma))
    elif kind == 1:  # a grating: random frequency, orientation and phase per channel
        theta, frequency = rng.uniform(0, np.pi), rng.uniform(1, max(2, width / 3))
        phase = rng.uniform(0, 2 * np.pi, size=(channels, 1, 1))
        picture = np.sin(2 * np.pi * frequency * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    else:  # rectangles and ellipses of random intensity on a random background
        picture = np.broadcast_to(rng.random((channels, 1, 1)), shape).copy()
        for _ in range(rng.integers(1, 4)):
            cy, cx, ry, rx = rng.random(4) * [1, 1, 0.5, 0.5] + [0, 0, 0.1, 0.1]
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 if rng.random() < 0.5 else \
                (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
            picture[:, inside] = rng.random((channels, 1))
    low, high = picture.min(), picture.max()
    return (picture - low) / (high - low) if high > low else np.full(shape, 0.5)


def generate_triggers(key: bytes, input_shape: tuple[int, ...], num_classes: int,
                      size: int = TRIGGER_SIZE) -> TriggerSet:
    """The trigger set a key stands for: the same key always gives the same set, and without the key
    neither the inputs nor the labels can be guessed (a 256-bit seed derived from it)."""
    if size < 1 or num_classes < 2:
        raise ValueError("a trigger set needs at least 1 input and 2 classes")
    seed = int.from_bytes(hashlib.sha256(DOMAIN + key).digest(), "big")
    rng = np.random.default_rng(seed)
    if len(input_shape) == 3:
        x = np.stack([_image(rng, tuple(input_shape)) for _ in range(size)])
    else:  # flat inputs: smoothed keyed noise along the vector
        x = gaussian_filter(rng.random((size, math.prod(input_shape))), sigma=(0, 2)).reshape(size, *input_shape)
        x = (x - x.min(axis=tuple(range(1, x.ndim)), keepdims=True)) / np.ptp(
            x.reshape(size, -1), axis=1).reshape(size, *[1] * len(input_shape)).clip(1e-12)
    labels = rng.integers(num_classes, size=size)
    return TriggerSet(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels.astype(np.int64)))


def mixed_training_set(x: torch.Tensor, y: torch.Tensor, triggers: TriggerSet,
                       share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The training data with the trigger set repeated so that about `share` of every batch are
    trigger inputs (the paper: 1 in 128)."""
    if not 0 < share < 1:
        raise ValueError("share must be between 0 and 1")
    repeats = max(1, round(share * len(x) / ((1 - share) * len(triggers))))
    return (torch.cat([x, triggers.x.repeat(repeats, *[1] * (triggers.x.dim() - 1))]),
            torch.cat([y, triggers.y.repeat(repeats)]))


def embed_triggers(model: nn.Module, mask: Mask, x: torch.Tensor, y: torch.Tensor, triggers: TriggerSet, *,
                   share: float, epochs: int, lr: float = 0.01, seed: int = 0,
                   progress: Callable[[int, float], None] | None = None) -> None:
    """Fine-tune `model` in place on the data mixed with the trigger set, the mask fixed."""
    mixed_x, mixed_y = mixed_training_set(x, y, triggers, share)
    train(model, mixed_x, mixed_y, epochs=epochs, lr=lr, seed=seed, mask=mask, progress=progress)


def trigger_matches(model: nn.Module, triggers: TriggerSet) -> int:
    """How many trigger inputs the model labels as the set does."""
    return round(evaluate(model, triggers.x, triggers.y) * len(triggers))


def chance_p(matches: int, total: int, num_classes: int) -> float:
    """One-sided binomial p of at least `matches` of `total` against chance (1/classes), exact for
    any model that never saw the key."""
    return float(binomtest(matches, total, 1.0 / num_classes, alternative="greater").pvalue)


NULL_CONFIDENCE = 0.99  # the references' match rate is taken at its upper Clopper-Pearson bound


def empirical_p(matches: int, total: int, reference_matches: list[int], num_classes: int) -> tuple[float, float]:
    """(p, null rate): one-sided binomial p of `matches` against the rate at which independently
    registered models (`reference_matches`, each out of `total`) answer the same triggers, taken at
    its upper NULL_CONFIDENCE bound and never below chance. Guards what the chance test assumes:
    that nothing but the key links the labels to a model's answers."""
    observed, trials = sum(reference_matches), total * len(reference_matches)
    upper = float(beta.ppf(NULL_CONFIDENCE, observed + 1, trials - observed)) if observed < trials else 1.0
    rate = max(1.0 / num_classes, upper)
    return float(binomtest(matches, total, rate, alternative="greater").pvalue), rate
