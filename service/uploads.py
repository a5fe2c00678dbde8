"""Validating uploads before anything is queued: a bad file gets a 422 the user can act on.

Per file: ``conventions.header.inspect_header``, the same check ``riir register`` makes: the header
(dimensions, sizes, spacings, the affine's own voxel size, the data offset), then the voxels
streamed once in bounded chunks: exactly as long as the header says (decompression stops a
little past it, so a gzip bomb costs no disk and a few MiB of memory), finite, and whole
numbers for label maps.

A ``fixed`` or ``moving`` upload that is a zip is a DICOM series: ``conventions.dicom``
unpacks and checks it (zip bomb, member names, one series or the one chosen, a regular grid, a
decodable transfer syntax) and converts it to the NIfTI that is then checked like an upload.
A series may also be named by Study/Series Instance UID instead of uploaded: the configured
PACS is asked (QIDO-RS) whether it holds it, and the worker retrieves it.

Then the files are checked against each other (same dimensionality, label grids equal to
their images) and against the model the client asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from conventions import catalog, dicom
from conventions.errors import InputError, ModelNotFoundError
from conventions.header import HeaderInfo, Limits, inspect_header
from conventions.options import DicomRequest
from jobs.pacs import Pacs

ROLES = {
    "fixed": "fixed image",
    "moving": "moving image",
    "fixed_labels": "fixed labels",
    "moving_labels": "moving labels",
    "series": "series",
}
PAIR_FILES = ("fixed", "moving", "fixed_labels", "moving_labels")
SERIES_FILES = ("series",)
GZIP_MAGIC = b"\x1f\x8b"


def name_by_content(received: Path, role: str) -> Path:
    """Rename a received file to ``{role}.nii.gz`` or ``{role}.nii`` by its first bytes.

    The client's file name is never used: it may hold ``../``, the wrong suffix, or nothing.
    """
    with open(received, "rb") as f:
        magic = f.read(2)
    target = received.with_name(f"{role}.nii.gz" if magic == GZIP_MAGIC else f"{role}.nii")
    received.rename(target)
    return target


def inspect(
    path: Path, role: str, limits: Limits, *, series: bool = False, whole_numbers: bool = False
) -> HeaderInfo:
    return inspect_header(
        path, ROLES[role], series=series, limits=limits, whole_numbers=whole_numbers
    )


def check_model(
    requested: str | None, spatial_dims: int, voxels: int, series: bool = False
) -> None:
    """Only a shipped model name is accepted (never a path), and it must fit the images.

    With no name the worker picks by ``catalog.resolve(None, ...)``; the gateway asks the
    same function now, so a server without a model for these images refuses the upload.
    """
    cards = {card["name"]: card for card in catalog.list_models()}
    available = ", ".join(cards) or "none installed"
    if requested is None:
        try:
            catalog.resolve(None, spatial_dims, voxels, series)  # the cards only: no torch
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"no model for {spatial_dims}-D images is installed on "
                f"this server (available: {available})"
            ) from None
        return
    card = cards.get(requested)
    if card is None:
        raise ModelNotFoundError(f"unknown model '{requested[:100]}' (available: {available})")
    dims = card.get("spatial_dims")
    if dims is not None and int(dims) != spatial_dims:
        raise InputError(
            f"model '{requested}' registers {dims}-D images; these are {spatial_dims}-D"
        )


def _voxels(info: HeaderInfo) -> int:
    return int(np.prod(info.spatial_shape, dtype=np.int64))


def _in_pacs(pacs: Pacs, role: str, study_uid: str, series_uid: str) -> None:
    if pacs.count_instances(study_uid, series_uid) == 0:
        raise InputError(
            f"the {ROLES[role]}: the PACS holds no series {series_uid} in study {study_uid}"
        )


def _receive_image(path: Path, role: str, request: DicomRequest, limits: Limits) -> dict[str, str]:
    """An uploaded image: a NIfTI renamed by content, or a DICOM zip converted to NIfTI."""
    if not dicom.is_zip(path):
        return {role: name_by_content(path, role).name}
    try:
        return dicom.prepare_source(
            path,
            path.parent,
            role,
            f"{ROLES[role]} (DICOM zip)",
            series_uid=request.series_uid(role),
            choose_with=f"the form field '{role}_series_uid'",
            limits=limits,
        )
    finally:
        path.unlink()


def validate_pair(
    files: dict[str, Path],
    limits: Limits,
    model: str | None,
    request: DicomRequest | None = None,
    pacs: Callable[[], Pacs] | None = None,
) -> dict[str, str]:
    """Check a pair (and optional labels); return role -> file name for the job record.
    Images named by UID in ``request`` are checked with the PACS ``pacs()`` connects to."""
    request = request or DicomRequest()
    referenced = {}
    for role in ("fixed", "moving"):
        reference = request.reference(role)
        if role in files and reference is not None:
            raise InputError(
                f"the {ROLES[role]} was both uploaded and named by {role}_study_uid: send one"
            )
        if reference is not None:
            referenced[role] = reference
        elif role not in files:
            raise InputError(
                f"the {ROLES[role]} is missing: send it as the form field '{role}' (NIfTI or "
                f"a zip of one DICOM series), or name it with {role}_study_uid and "
                f"{role}_series_uid"
            )
    if request.store and len(referenced) < 2:
        raise InputError("store=true needs both series named by UID (from the PACS)")
    if ("fixed_labels" in files) != ("moving_labels" in files):
        raise InputError("give both fixed_labels and moving_labels, or neither")
    if referenced:
        connection = pacs() if pacs is not None else None
        if connection is None:
            raise InputError("series named by UID need a PACS; none is configured")
        for role, (study_uid, series_uid) in referenced.items():
            _in_pacs(connection, role, study_uid, series_uid)
    inputs: dict[str, str] = {}
    info: dict[str, HeaderInfo] = {}
    for role, path in files.items():
        if role in ("fixed", "moving"):
            inputs.update(_receive_image(path, role, request, limits))
        else:
            inputs[role] = name_by_content(path, role).name
        # A converted DICOM series is checked as the NIfTI upload it became.
        received = path.with_name(inputs[role])
        info[role] = inspect(received, role, limits, whole_numbers=role.endswith("_labels"))
    for image in ("fixed", "moving"):
        labels = info.get(f"{image}_labels")
        if labels is not None and image in info and labels.shape != info[image].shape:
            raise InputError(
                f"the {ROLES[image + '_labels']} grid {labels.shape} differs from "
                f"the {ROLES[image]} grid {info[image].shape}"
            )
    if referenced:
        return inputs  # the grids are known once the worker has the series
    fixed, moving = info["fixed"], info["moving"]
    if fixed.spatial_dims != moving.spatial_dims:
        raise InputError(
            f"mismatched dimensionality: the fixed image is {fixed.spatial_dims}-D "
            f"{fixed.shape}, the moving image {moving.spatial_dims}-D "
            f"{moving.shape}"
        )
    check_model(model, fixed.spatial_dims, _voxels(fixed))
    return inputs


def validate_series(
    files: dict[str, Path], limits: Limits, model: str | None, template: int
) -> dict[str, str]:
    if "series" not in files:
        raise InputError(
            "the series is missing: send the 4-D NIfTI, or a zip of one DICOM series of 2-D "
            "frames, as the form field 'series'"
        )
    received = files["series"]
    if dicom.is_zip(received):  # a DICOM series of 2-D frames
        try:
            dicom.prepare_frames(received, received.parent, "series (DICOM zip)", limits)
        finally:
            received.unlink()
        path = received.with_name("series.nii.gz")
    else:
        path = name_by_content(received, "series")
    info = inspect(path, "series", limits, series=True)
    frames = info.shape[3]
    if not -frames <= template < frames:
        raise InputError(f"template frame {template} is outside the series' {frames} frames")
    check_model(model, info.spatial_dims, _voxels(info), series=True)
    return {"series": path.name}
