"""Intensity normalisation: the one rule that training and inference share."""

from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def normalize(values: np.ndarray) -> np.ndarray:
    """Map robust intensity range [p0.5, p99.5] to [0, 1] and clip, as float32.

    Percentiles rather than min/max so a few hot voxels (fat wrap-around in MOLLI, vessels)
    do not compress the anatomy into a narrow band. A constant image maps to zeros.
    """
    values = np.asarray(values, dtype=np.float32)
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high - low <= 1e-12 * max(1.0, abs(float(high))):
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
