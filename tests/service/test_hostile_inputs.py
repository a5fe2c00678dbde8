"""A corpus of hostile uploads (beyond test_upload_validation's): each gets a 4xx problem
with a clear message, nothing is recorded, queued or written — inside the storage folder or
outside it — and the gateway and the worker are still up afterwards.

The corpus size is printed: docs/reliability.md quotes it.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from support import assert_problem, files_of, wait_for

IMAGE = np.random.default_rng(0).random((16, 16)).astype(np.float32)


def _nifti(array: np.ndarray = IMAGE) -> bytearray:
    return bytearray(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4)).to_bytes())


def _patched(offset: int, fmt: str, *values: float) -> bytes:
    """A valid 16 x 16 NIfTI whose header field at ``offset`` now says ``values``."""
    data = _nifti()
    struct.pack_into("<" + fmt, data, offset, *values)
    return bytes(data)


def _sform(x: tuple[float, ...], y: tuple[float, ...], z: tuple[float, ...]) -> bytes:
    """Rows of the sform affine (srow_x/y/z at bytes 280/296/312), sform_code 1."""
    data = _nifti()
    for offset, row in zip((280, 296, 312), (x, y, z), strict=True):
        struct.pack_into("<4f", data, offset, *row)
    struct.pack_into("<hh", data, 252, 0, 1)
    return bytes(data)


NAN, INF = float("nan"), float("inf")
# The moving image of an otherwise good request -> (status, words in the detail).
BAD_MOVING: dict[str, tuple[bytes, int, str]] = {
    "1 voxel": (bytes(_nifti(np.zeros((1, 1)))), 422, "nothing to register"),
    "1x1x1 voxel": (bytes(_nifti(np.zeros((1, 1, 1)))), 422, "nothing to register"),
    "5-D": (bytes(_nifti(np.zeros((8, 8, 8, 2, 2)))), 422, "expected a 2-d"),
    "spacing 1e30 (pixdim)": (_patched(80, "3f", 1e30, 1e30, 1e30), 422, "spacing"),
    "spacing NaN (pixdim)": (_patched(80, "f", NAN), 422, "spacing"),
    "spacing 1e30 (affine)": (
        _sform((1e30, 0, 0, 0), (0, 1e30, 0, 0), (0, 0, 1, 0)),
        422,
        "voxel size",
    ),
    "spacing 1e-9 (affine)": (
        _sform((1e-9, 0, 0, 0), (0, 1e-9, 0, 0), (0, 0, 1, 0)),
        422,
        "voxel size",
    ),
    "singular affine": (_sform((1, 1, 0, 0), (1, 1, 0, 0), (0, 0, 1, 0)), 422, "affine"),
    "NaN affine": (_sform((NAN, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0)), 422, "affine"),
    "infinite origin": (_sform((1, 0, 0, INF), (0, 1, 0, 0), (0, 0, 1, 0)), 422, "affine"),
    "garbled dim[0]": (_patched(40, "h", 9), 422, "not a readable nifti"),
    "unknown data type": (_patched(70, "h", 999), 422, "not a readable nifti"),
    "data offset 1 TB": (_patched(108, "f", 1e12), 422, "damaged"),
    "claims 32767^3 voxels": (_patched(40, "4h", 3, 32767, 32767, 32767), 422, "voxels"),
    "negative dim": (_patched(42, "h", -16), 422, ""),
    "header only, gzipped": (gzip.compress(bytes(_nifti()[:352])), 422, "truncated"),
    "gzip of random bytes": (
        gzip.compress(np.random.default_rng(1).bytes(4000)),
        422,
        "not a readable nifti",
    ),
    "gzip twice": (gzip.compress(gzip.compress(bytes(_nifti()))), 422, ""),
    "a PNG": (b"\x89PNG\r\n\x1a\n" + bytes(400), 422, "not a readable nifti"),
    "NaN in the last voxel": (
        bytes(_nifti(np.where(np.arange(256).reshape(16, 16) == 255, NAN, IMAGE))),
        422,
        "nan",
    ),
}


@pytest.fixture(scope="module")
def outside(
    service_dir: Path, images: dict[str, Path], client: httpx.Client
) -> Iterator[Callable[[], set[Path]]]:
    """Files of the session's temporary root outside the storage folder (and the logs and
    Redis data the stack writes): the corpus must add none."""
    root = service_dir.parent
    kept = (service_dir / "storage", service_dir / "redis")

    def files() -> set[Path]:
        return {
            p
            for p in root.rglob("*")
            if p.is_file() and p.suffix != ".log" and not any(p.is_relative_to(k) for k in kept)
        }

    before = files()
    yield files
    assert files() == before


def _post(
    client: httpx.Client, moving: bytes, name: str = "moving.nii.gz", **data: str
) -> httpx.Response:
    good = bytes(_nifti())
    files = {
        "fixed": ("fixed.nii", good, "application/octet-stream"),
        "moving": (name, moving, "application/octet-stream"),
    }
    return client.post("/register", files=files, data={"model": "tiny-2d", **data})


@pytest.mark.parametrize("case", list(BAD_MOVING))
def test_hostile_image(
    client: httpx.Client, outside: object, nothing_queued: None, case: str
) -> None:
    content, status, words = BAD_MOVING[case]
    assert_problem(_post(client, content), status, *([words] if words else []))


def test_hostile_file_names_with_a_bad_image(
    client: httpx.Client, outside: object, nothing_queued: None
) -> None:
    for name in (
        "../../../../tmp/riir-escape.nii",
        "..\\..\\évil ☃.nii.gz",
        "/etc/passwd",
        "a\x00b.nii",
        "%2e%2e%2fescape",
    ):
        assert_problem(_post(client, b"not an image", name=name), 422, "moving image")
    # A part header past python-multipart's limit is refused while parsing.
    assert_problem(_post(client, b"not an image", name="x" * 5000), 400, "header size")
    assert not Path("/tmp/riir-escape.nii").exists()


BOUNDARY = "riirhostile"


def _raw(client: httpx.Client, body: bytes, content_type: str | None = None) -> httpx.Response:
    default = f"multipart/form-data; boundary={BOUNDARY}"
    return client.post(
        "/register",
        content=body,
        headers={"content-type": default if content_type is None else content_type},
    )


def _part(headers: str, content: bytes) -> bytes:
    return f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()
# Whole requests that are malformed -> (status, words).
BAD_REQUESTS: dict[str, tuple[bytes, str | None, int, str]] = {
    "JSON body": (b'{"fixed": "x"}', "application/json", 415, "multipart"),
    # URL-encoded forms are for series named by UID (no files): files in one are refused.
    "url-encoded form": (
        b"fixed=x&moving=y",
        "application/x-www-form-urlencoded",
        422,
        "multipart",
    ),
    "text body": (b"hello", "text/plain", 415, "multipart"),
    "no content type": (b"hello", "", 415, "multipart"),
    "no boundary": (b"--x\r\n", "multipart/form-data", 400, "boundary"),
    "empty multipart": (END, None, 422, "fixed image is missing"),
    "part without a name": (
        _part('Content-Disposition: form-data; filename="a"', b"x") + END,
        None,
        400,
        "no content-disposition name",
    ),
    "unknown field": (
        _part('Content-Disposition: form-data; name="../../x"', b"1") + END,
        None,
        422,
        "unexpected form field",
    ),
    "field sent twice": (
        _part('Content-Disposition: form-data; name="steps"', b"1") * 2 + END,
        None,
        422,
        "sent twice",
    ),
    "huge text field": (
        _part('Content-Disposition: form-data; name="model"', b"m" * 5000) + END,
        None,
        422,
        "longer than",
    ),
    "text field not UTF-8": (
        _part('Content-Disposition: form-data; name="model"', b"\xff\xfe\xfa") + END,
        None,
        422,
        "not utf-8",
    ),
    "no closing boundary": (
        _part('Content-Disposition: form-data; name="steps"', b"1"),
        None,
        400,
        "closing boundary",
    ),
    "10 000 parts": (
        _part('Content-Disposition: form-data; name="junk"', b"") * 10_000 + END,
        None,
        422,
        "unexpected form field",
    ),
    "only the moving image": (
        _part('Content-Disposition: form-data; name="moving"; filename="m.nii"', bytes(_nifti()))
        + END,
        None,
        422,
        "fixed image is missing",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_hostile_request(
    client: httpx.Client, outside: object, nothing_queued: None, case: str
) -> None:
    body, content_type, status, words = BAD_REQUESTS[case]
    assert_problem(_raw(client, body, content_type), status, words)


def test_gateway_and_worker_are_still_up(
    client: httpx.Client, images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert client.get("/ready").status_code == 200
    response = client.post(
        "/register",
        files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
        data={"model": "tiny-2d", "steps": "1"},
    )
    assert wait_for(client, response.json()["job_id"])["status"] == "succeeded"
    with capsys.disabled():
        print(
            f"\n[reliability] hostile corpus (this module): {len(BAD_MOVING)} images, "
            f"6 file names, {len(BAD_REQUESTS)} malformed requests: all 4xx"
        )
