"""Small synthetic images shared by the tests (never real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def blobs(shape: tuple[int, ...], seed: int = 0, count: int = 4) -> np.ndarray:
    """A smooth image: a sum of Gaussian blobs, values in about [0, 1], float32."""
    rng = np.random.default_rng(seed)
    coords = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    image = np.zeros(shape)
    for _ in range(count):
        centre = [rng.uniform(0.3 * n, 0.7 * n) for n in shape]
        width = rng.uniform(0.12, 0.2) * min(shape)
        r2 = sum((c - m) ** 2 for c, m in zip(coords, centre, strict=True))
        image += rng.uniform(0.5, 1.0) * np.exp(-r2 / (2 * width**2))
    return (image / image.max()).astype(np.float32)


def labelled_folder(root: Path, shape: tuple[int, ...], count: int = 8) -> Path:
    """A folder dataset (img/, label/) of ``count`` subjects: smooth blobs in uint8 like some
    hippocampus files, labels 1 and 2 where they are bright."""
    import SimpleITK as sitk

    (root / "img").mkdir(parents=True)
    (root / "label").mkdir()
    for k in range(count):
        image = blobs(shape, seed=k)
        labels = (image > 0.45).astype(np.int16) + (image > 0.7)
        for array, kind in (((image * 200).astype(np.uint8), "img"), (labels, "label")):
            path = root / kind / f"case_{k:03d}.nii.gz"
            sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return root


def as_tensor(image: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(image, dtype=dtype)[None, None]


def shifted(image: np.ndarray, shift: tuple[float, ...]) -> np.ndarray:
    """``image`` sampled at x + shift (linear interpolation, edges repeated)."""
    from scipy.ndimage import shift as nd_shift

    return nd_shift(image, [-s for s in shift], order=1, mode="nearest").astype(np.float32)
