"""The header check reads the voxels where the header says they start; the transform file
is compressed and reads back as written."""

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conventions import header, imageio
from conventions.errors import InputError


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("where", [0, -1])
def test_nan_anywhere_in_the_voxels_is_found(tmp_path, suffix, where):
    data = np.random.default_rng(0).random((12, 10, 8), dtype=np.float32)
    data.flat[where] = np.nan
    path = tmp_path / f"x{suffix}"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(InputError, match="NaN"):
        header.inspect_header(path, "fixed")


def test_voxels_after_a_header_extension_are_checked(tmp_path):
    data = np.random.default_rng(1).random((12, 10, 8), dtype=np.float32)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 500))
    path = tmp_path / "ext.nii"
    nib.save(image, path)
    assert nib.load(path).dataobj.offset > 352
    assert header.inspect_header(path, "fixed").shape == (12, 10, 8)

    data[-1, -1, -1] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4), header=image.header), path)
    with pytest.raises(InputError, match="NaN or infinite"):
        header.inspect_header(path, "fixed")


def test_a_file_cut_inside_the_voxels_is_truncated(tmp_path):
    data = np.ones((12, 10, 8), np.float32)
    path = tmp_path / "cut.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(InputError, match="truncated"):
        header.inspect_header(path, "fixed")


def _patched(tmp_path, offset: int, fmt: str, *values) -> str:
    """A valid 16×16 float32 NIfTI with bytes of its header overwritten."""
    import struct

    path = tmp_path / "patched.nii"
    nib.save(nib.Nifti1Image(np.ones((16, 16), np.float32), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, offset, *values)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "offset, fmt, values, words",
    [
        (40, "h", (9,), "not a readable NIfTI"),  # dim[0] = 9
        (70, "h", (999,), "not a readable NIfTI"),  # unknown datatype code
        (108, "f", (1e12,), "voxel data at byte"),  # vox_offset 1 TB
    ],
)
def test_headers_that_lie_are_refused_in_one_line(tmp_path, offset, fmt, values, words):
    with pytest.raises(InputError, match=words):
        header.inspect_header(_patched(tmp_path, offset, fmt, *values), "moving image")


def test_an_affine_with_an_absurd_voxel_size_is_refused(tmp_path):
    """pixdim says 1 mm, the sform (which ITK follows) says 1e30 mm."""
    path = _patched(tmp_path, 280, "4f", 1e30, 0.0, 0.0, 0.0)  # srow_x
    assert nib.load(path).header.get_zooms()[0] == 1.0
    with pytest.raises(InputError, match="affine's voxel size"):
        header.inspect_header(path, "fixed image")


def test_messages_name_the_file_but_not_its_folder(tmp_path):
    """Errors reach remote clients: the server's storage layout stays out of them."""
    folder = tmp_path / "storage" / "jobs" / "secret-id"
    folder.mkdir(parents=True)
    path = folder / "fixed.nii"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(InputError) as caught:
        header.inspect_header(path, "fixed image")
    assert "fixed.nii" in str(caught.value)
    assert str(folder) not in str(caught.value) and "secret-id" not in str(caught.value)


def test_the_transform_file_is_shuffled_gzip_that_itk_reads_back(tmp_path):
    values = np.random.default_rng(2).normal(size=(6, 7, 8, 3)).astype(np.float32)
    field = sitk.GetImageFromArray(values.astype(np.float64), isVector=True)
    field.SetSpacing((1.5, 1.0, 2.0))
    path = imageio.write_transform(field, tmp_path / "transform.h5")
    with h5py.File(path) as h5:
        large = []
        h5.visititems(lambda _, n: large.append(n) if getattr(n, "size", 0) > 64 else None)
        assert large and all(d.compression == "gzip" and d.shuffle for d in large)
    read = sitk.DisplacementFieldTransform(sitk.ReadTransform(str(path)))
    back = sitk.GetArrayFromImage(read.GetDisplacementField())
    np.testing.assert_array_equal(back, values)
