"""The Python API: ``riir register`` from a script or a notebook.

    from riir import register

    result = register("fixed.nii.gz", "moving.nii.gz")  # or SimpleITK images, or arrays
    result.warped                                        # SimpleITK image on the fixed grid
    result.metrics["jacobian"]["std_log_jacobian"]
    result.save("result/")                               # the files `riir register` writes

The same code path as the command line and the service (``worker.inference.pipeline``), so
the result is what they return, file for file. Torch is imported when ``register`` runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conventions import artifacts
from conventions.errors import InputError
from conventions.options import Init, Interpolation, RegistrationOptions, Similarity, check

if TYPE_CHECKING:
    import numpy as np
    import SimpleITK as sitk

    ImageLike = str | Path | sitk.Image | np.ndarray


@dataclass
class Result:
    """What a registration wrote (``folder``), read on demand. Images are SimpleITK images
    in the layout of the inputs; ``metrics`` is ``metrics.json``."""

    folder: Path
    metrics: dict[str, Any]
    _scratch: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def path(self, name: str) -> Path:
        """The file of artifact ``name`` (``displacement``, ``warped``, …)."""
        path = self.folder / artifacts.filename(name)
        if not path.is_file():
            raise FileNotFoundError(f"this registration wrote no {name} ({path.name})")
        return path

    def _read(self, name: str) -> sitk.Image:
        import SimpleITK as sitk

        return sitk.ReadImage(str(self.path(name)))

    @cached_property
    def displacement(self) -> sitk.Image:
        """The displacement field: fixed grid, LPS mm, fixed point -> moving point."""
        return self._read("displacement")

    @cached_property
    def transform(self) -> sitk.Transform:
        """The field as a SimpleITK transform in the fixed image's dimension, ready for
        ``sitk.Resample(moving, fixed, result.transform)``."""
        import SimpleITK as sitk

        return sitk.ReadTransform(str(self.path("transform")))

    @cached_property
    def inverse_displacement(self) -> sitk.Image:
        """The inverse field: moving grid, moving point -> fixed point."""
        return self._read("inverse_displacement")

    @cached_property
    def warped(self) -> sitk.Image:
        return self._read("warped")

    @cached_property
    def jacobian(self) -> sitk.Image:
        return self._read("jacobian")

    @cached_property
    def warped_labels(self) -> sitk.Image:
        return self._read("labels")

    def save(self, folder: str | Path) -> Path:
        """Copy every artifact into ``folder`` (created if missing)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in artifacts.present(self.folder):
            if name in artifacts.ARTIFACTS:
                shutil.copy2(self.folder / artifacts.filename(name), folder)
        return folder


def _as_file(image: ImageLike, role: str, scratch: Path, spacing: Sequence[float] | None) -> Path:
    """A path to read ``image`` from: a path as it is; a SimpleITK image or an array written
    as NIfTI. An array's axes are numpy's (z, y, x) as ``sitk.GetArrayFromImage`` gives them,
    ``spacing`` in the same order (mm; default 1)."""
    if isinstance(image, str | Path):
        return Path(image)
    import numpy as np
    import SimpleITK as sitk

    if isinstance(image, np.ndarray):
        array = image
        image = sitk.GetImageFromArray(array)
        if spacing is not None:
            if len(spacing) != array.ndim:
                raise InputError(
                    f"{role}: spacing {tuple(spacing)} does not match the array's {array.ndim} axes"
                )
            image.SetSpacing([float(s) for s in reversed(spacing)])
    elif not isinstance(image, sitk.Image):
        raise InputError(f"{role}: expected a path, a SimpleITK image or a numpy array")
    from conventions import imageio

    return imageio.write_image(image, scratch / f"{role.replace(' ', '_')}.nii.gz")


def register(
    fixed: ImageLike,
    moving: ImageLike,
    *,
    fixed_labels: ImageLike | None = None,
    moving_labels: ImageLike | None = None,
    spacing: Sequence[float] | None = None,
    model: str | None = None,
    steps: int | None = None,
    init: Init | None = None,
    similarity: Similarity | None = None,
    refine: int | None = None,
    refine_native: int | None = None,
    interpolation: Interpolation | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """Register ``moving`` to ``fixed``; the options mean what ``riir register``'s flags do.

    Images are paths (NIfTI), SimpleITK images, or numpy arrays with ``spacing`` (mm, per
    array axis; the same for all four arrays). The artifacts are written into ``out``, or a
    temporary folder that lives as long as the result. Bad input raises
    ``conventions.errors.InputError`` with the reason.
    """
    from worker.inference.pipeline import register_files

    options = check(
        RegistrationOptions,
        {
            "model": model,
            "steps": steps,
            "init": init,
            "similarity": similarity,
            "refine": refine,
            "refine_native": refine_native,
            "interpolation": interpolation,
        },
    )
    scratch = tempfile.TemporaryDirectory(prefix="riir-")
    inputs = Path(scratch.name) / "inputs"
    inputs.mkdir()

    def optional(image: ImageLike | None, role: str) -> Path | None:
        return None if image is None else _as_file(image, role, inputs, spacing)

    folder = Path(out) if out is not None else Path(scratch.name) / "out"
    register_files(
        _as_file(fixed, "fixed", inputs, spacing),
        _as_file(moving, "moving", inputs, spacing),
        folder,
        options,
        device=device,
        fixed_labels=optional(fixed_labels, "fixed labels"),
        moving_labels=optional(moving_labels, "moving labels"),
        progress=progress,
    )
    metrics = json.loads((folder / artifacts.filename("metrics")).read_text())
    return Result(folder, metrics, scratch if out is None else None)
