"""Bad uploads get a 4xx problem response, and nothing is recorded, stored or queued."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from support import assert_problem, files_of, wait_for, write_nifti

from conventions.errors import InputError
from conventions.header import inspect_header
from jobs.settings import Settings


def _nifti_bytes(array: np.ndarray, dtype: type = np.float32) -> bytes:
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.eye(4))
    return image.to_bytes()


def _gzip_bomb(declared: tuple[int, ...], payload_mib: int) -> bytes:
    """A valid header for a small float32 image, followed by far more (zero) data."""
    header = nib.Nifti1Image(np.zeros(declared, np.float32), np.eye(4)).header
    header["vox_offset"] = 352
    raw = io.BytesIO()
    header.write_to(raw)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    out = [compressor.compress(raw.getvalue().ljust(352, b"\0"))]
    zeros = bytes(1 << 20)
    out += [compressor.compress(zeros) for _ in range(payload_mib)]
    out.append(compressor.flush())
    return b"".join(out)


@pytest.fixture(scope="module")
def good(images: dict[str, Path]) -> bytes:
    return images["fixed2"].read_bytes()


def _post(client: httpx.Client, fixed: bytes, moving: bytes, **data: str) -> httpx.Response:
    files = {
        "fixed": ("fixed.nii.gz", fixed, "application/octet-stream"),
        "moving": ("moving.nii.gz", moving, "application/octet-stream"),
    }
    return client.post("/register", files=files, data={"model": "tiny-2d", **data})


BAD_FILES = {
    "random bytes": (np.random.default_rng(0).bytes(5000), "not a readable nifti"),
    "empty": (b"", "empty"),
    "nan": (gzip.compress(_nifti_bytes(np.full((16, 16), np.nan))), "nan"),
    "infinite": (_nifti_bytes(np.full((16, 16), np.inf)), "nan or infinite"),
    "4-D": (_nifti_bytes(np.zeros((16, 16, 4, 3))), "4-d"),
    "tiny": (_nifti_bytes(np.zeros((2, 16))), "too small"),
    "complex": (_nifti_bytes(np.zeros((16, 16)), np.complex64), "not a scalar"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_refused(
    client: httpx.Client, good: bytes, nothing_queued: None, case: str
) -> None:
    content, words = BAD_FILES[case]
    assert_problem(_post(client, good, content), 422, words)


def test_truncated_gzip(client: httpx.Client, good: bytes, nothing_queued: None) -> None:
    assert_problem(_post(client, good, good[: len(good) // 2]), 422, "truncated")


def test_header_that_lies_about_its_size(
    client: httpx.Client, good: bytes, nothing_queued: None
) -> None:
    """The header says 64 x 64 float32; the file holds 100 voxels."""
    data = _nifti_bytes(np.zeros((64, 64)))
    assert_problem(_post(client, good, data[: 352 + 400]), 422, "truncated")


def test_gzip_bomb_is_stopped(client: httpx.Client, good: bytes, nothing_queued: None) -> None:
    """16 x 16 declared, 64 MiB inside a ~64 KiB gzip: refused without inflating it all."""
    bomb = _gzip_bomb((16, 16), 64)
    assert len(bomb) < 200_000
    assert_problem(_post(client, good, bomb), 422)


def test_voxel_check_stops_decompressing_past_the_declared_size(tmp_path: Path) -> None:
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(_gzip_bomb((16, 16), 64))
    with pytest.raises(InputError, match="more data than its header declares"):
        inspect_header(path, "moving image")


def test_voxel_check_reads_every_voxel(tmp_path: Path) -> None:
    """NaN in the very last voxel: the data starts at the header's offset, not at 0."""
    image = np.zeros((16, 16), np.float32)
    image[-1, -1] = np.nan
    path = write_nifti(tmp_path / "last.nii", image)
    with pytest.raises(InputError, match="NaN"):
        inspect_header(path, "moving image")
    image[-1, -1] = 0.5
    inspect_header(write_nifti(tmp_path / "fine.nii", image), "moving image")


def test_mismatched_dimensionality(
    client: httpx.Client, good: bytes, images: dict[str, Path], nothing_queued: None
) -> None:
    response = _post(client, good, images["fixed3"].read_bytes())
    assert_problem(response, 422, "mismatched dimensionality")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"model": "nope"}, "unknown model"),
        ({"model": "/etc/passwd"}, "unknown model"),
        ({"model": "tiny-3d"}, "3-d images"),
        ({"steps": "0"}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"steps": "51"}, "steps"),
        ({"init": "random"}, "init"),
        ({"similarity": "ssim"}, "similarity"),
        ({"colour": "blue"}, "unexpected form field"),
    ],
)
def test_bad_parameters(
    client: httpx.Client, good: bytes, nothing_queued: None, data: dict[str, str], words: str
) -> None:
    assert_problem(_post(client, good, good, **data), 422, words)


def test_missing_file(client: httpx.Client, good: bytes, nothing_queued: None) -> None:
    response = client.post(
        "/register", files={"fixed": ("f.nii.gz", good)}, data={"model": "tiny-2d"}
    )
    assert_problem(response, 422, "moving image is missing")


def test_only_one_label_map(
    client: httpx.Client, images: dict[str, Path], nothing_queued: None
) -> None:
    files = files_of(
        fixed=images["fixed2"], moving=images["moving2"], fixed_labels=images["fixed2_labels"]
    )
    assert_problem(
        client.post("/register", files=files, data={"model": "tiny-2d"}),
        422,
        "both fixed_labels and moving_labels",
    )


def test_labels_must_be_whole_numbers(
    client: httpx.Client, images: dict[str, Path], tmp_path: Path, nothing_queued: None
) -> None:
    fractional = write_nifti(tmp_path / "labels.nii.gz", np.full((48, 48), 0.5))
    files = files_of(
        fixed=images["fixed2"],
        moving=images["moving2"],
        fixed_labels=fractional,
        moving_labels=images["moving2_labels"],
    )
    assert_problem(
        client.post("/register", files=files, data={"model": "tiny-2d"}), 422, "whole numbers"
    )


@pytest.mark.parametrize(
    ("series", "data", "words"),
    [
        ("fixed2", {}, "4-d"),
        ("series2", {"template": "3"}, "outside the series"),
        ("series2", {"template": "-4"}, "outside the series"),
    ],
)
def test_bad_series(
    client: httpx.Client,
    images: dict[str, Path],
    nothing_queued: None,
    series: str,
    data: dict[str, str],
    words: str,
) -> None:
    response = client.post(
        "/register-series", files=files_of(series=images[series]), data={"model": "tiny-2d", **data}
    )
    assert_problem(response, 422, words)


def test_not_multipart(client: httpx.Client, nothing_queued: None) -> None:
    assert_problem(client.post("/register", json={"fixed": "x"}), 415, "multipart")


def test_oversize_upload_is_413(
    client: httpx.Client, good: bytes, settings: Settings, nothing_queued: None
) -> None:
    big = bytes(settings.max_upload_bytes + 1)
    assert_problem(_post(client, good, big), 413, "limit")


def test_oversize_chunked_upload_is_413(
    client: httpx.Client, good: bytes, settings: Settings, nothing_queued: None
) -> None:
    """No Content-Length (chunked): the gateway counts bytes as they arrive."""
    boundary = b"riirtestboundary"
    head = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="fixed"; '
        b'filename="f.nii"\r\n\r\n'
    )

    def body() -> Iterator[bytes]:
        yield head
        chunk = bytes(1 << 20)
        for _ in range(settings.max_upload_bytes // len(chunk) + 2):
            yield chunk

    response = client.post(
        "/register",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary.decode()}"},
    )
    assert_problem(response, 413, "limit")


def test_malformed_multipart(client: httpx.Client, nothing_queued: None) -> None:
    response = client.post(
        "/register",
        content=b"--x\r\nnot a part",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert_problem(response, 400)


def test_client_file_name_is_never_used(
    client: httpx.Client, images: dict[str, Path], settings: Settings
) -> None:
    """A path-traversal file name is accepted as data but stored under our own name."""
    files = {
        "fixed": ("../../../evil.nii.gz", images["fixed2"].read_bytes()),
        "moving": ("..\\..\\moving", images["moving2"].read_bytes()),
    }
    response = client.post("/register", files=files, data={"model": "tiny-2d", "steps": "1"})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    inputs = settings.storage_dir / "jobs" / job_id / "inputs"
    assert sorted(p.name for p in inputs.iterdir()) == ["fixed.nii.gz", "moving.nii.gz"]
    assert not list(settings.storage_dir.rglob("evil*"))
    assert not list(settings.storage_dir.parent.rglob("evil*"))
    assert wait_for(client, job_id)["status"] == "succeeded"
