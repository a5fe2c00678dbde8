"""Pseudo-labels: label maps of unlabelled images from a model's segmentation head.

A c2f model with a head (``--segmentation-classes``) segments every image it registers. Its
label maps of images that have no expert labels can train a next model as if they were
labels (self-training): ``riir pseudo-label`` writes them as ``OUT/label/NAME`` beside links
to the images in ``OUT/img/``, the layout ``riir train --unlabelled OUT`` reads.

An image is seen as inference sees it: on the model's working grid (``Preprocessing.grid``),
intensities by ``normalize``. The head's label map (``train.label_map``, upsampled from the
head's grid) is resampled back onto the image's own grid by nearest neighbour, so it lies on
the image's voxels, as ``imageio.read_labels`` wants.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from conventions import imageio
from conventions.errors import InputError
from conventions.grid import Grid
from conventions.intensity import normalize
from model.training.datasets import Preprocessing, nifti_files
from model.training.train import label_map


def segment(
    model: torch.nn.Module, image: sitk.Image, pre: Preprocessing, labels: Sequence[int]
) -> sitk.Image:
    """The head's label map of ``image``, on the image's own grid (values ``labels``, 0 for
    background)."""
    grid = pre.grid(image)
    array = normalize(sitk.GetArrayFromImage(grid.resample(image)))
    with torch.no_grad():
        _, logits = model.encode(torch.from_numpy(array)[None, None].float())
    segmented = label_map(logits, array.shape, labels)
    assert segmented is not None  # the caller checked the head
    return Grid.of(image).resample(
        grid.image(segmented.astype(np.int16)),
        interpolator=sitk.sitkNearestNeighbor,
        extrapolate=False,
    )


def write_pseudo_labels(
    model: torch.nn.Module,
    meta: dict[str, Any],
    images: str | os.PathLike,
    out: str | os.PathLike,
    progress: bool = True,
) -> int:
    """Label every NIfTI image of the folder ``images`` with the model's head: ``out/img/NAME``
    (a link to the image) and ``out/label/NAME``. Returns the number of images."""
    if getattr(model, "segmentation", None) is None:
        raise InputError("the model has no segmentation head to label images with")
    labels = meta.get("training", {}).get("label_values")
    if not labels:
        raise InputError("the model's card does not list its label values")
    files = nifti_files(Path(images))
    if not files:
        raise InputError(f"'{images}' holds no NIfTI images")
    pre = Preprocessing.of_meta(meta)
    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "label").mkdir(exist_ok=True)
    model.eval()
    for name, path in tqdm(sorted(files.items()), desc="pseudo-labels", disable=not progress):
        image = imageio.read_image(path, f"image {name}")
        imageio.write_image(segment(model, image, pre, labels), out / "label" / path.name)
        link = out / "img" / path.name
        if link.is_symlink() or link.exists():  # a rerun on other images replaces the link
            link.unlink()
        link.symlink_to(path.resolve())
    return len(files)
