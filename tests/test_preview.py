"""preview.png: written for 2-D and 3-D, of a sensible size, with the patient's directions
read from the header's direction matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import blobs
from PIL import Image

from worker.inference.preview import axis_letters, write_preview


def test_axis_letters_follow_the_direction_matrix() -> None:
    # Identity in LPS: numpy axis 0 is z (I -> S), 1 is y (A -> P), 2 is x (R -> L).
    assert axis_letters(np.eye(3).ravel(), 3) == [("I", "S"), ("A", "P"), ("R", "L")]
    # A RAS-stored image read into LPS: x and y run the other way.
    assert axis_letters(np.diag([-1.0, -1.0, 1.0]).ravel(), 3) == [
        ("I", "S"),
        ("P", "A"),
        ("L", "R"),
    ]
    # A sagittal acquisition: ITK axis 0 along -y (anterior), 1 along -z, 2 along +x.
    sagittal = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    assert axis_letters(sagittal.ravel(), 3) == [("R", "L"), ("S", "I"), ("P", "A")]
    assert axis_letters(np.eye(2).ravel(), 2) == [("A", "P"), ("R", "L")]


@pytest.mark.parametrize("shape", [(40, 48), (12, 20, 16)])
def test_preview_is_a_png_of_sensible_size(tmp_path: Path, shape: tuple[int, ...]) -> None:
    fixed, moving = blobs(shape, seed=0), blobs(shape, seed=1)
    phi = np.random.default_rng(0).normal(0, 0.5, (len(shape), *shape)).astype(np.float32)
    det = np.ones(shape, dtype=np.float32)
    det.flat[:5] = -0.5  # folding to mark
    labels = ((fixed > 0.5).astype(np.int16), (moving > 0.5).astype(np.int16))
    spacing = (3.0, 1.0, 1.0)[-len(shape) :]
    path = write_preview(
        tmp_path / "preview.png",
        fixed,
        moving,
        (fixed + moving) / 2,
        phi,
        spacing=spacing,
        direction=np.eye(len(shape)).ravel(),
        det=det,
        labels=labels,
    )
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    rows = 1 if len(shape) == 2 else 3
    assert 1000 <= width <= 2000
    assert 180 * rows <= height <= 300 * rows
    assert pixels.std() > 20  # drawn, not blank
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed


def test_preview_defaults_keep_the_old_call_working(tmp_path: Path) -> None:
    fixed = blobs((32, 32), seed=2)
    path = write_preview(tmp_path / "p.png", fixed, fixed, fixed, np.zeros((2, 32, 32)))
    assert path.stat().st_size > 5000
