import numpy as np
import pytest
import torch
from helpers import as_tensor, blobs, shifted

from model.networks.warp import identity_grid, resize_displacement, warp

SHAPES = [(24, 20), (16, 18, 14)]


@pytest.mark.parametrize("shape", SHAPES)
def test_zero_displacement_is_identity(shape):
    image = as_tensor(blobs(shape))
    phi = torch.zeros(1, len(shape), *shape)
    torch.testing.assert_close(warp(image, phi), image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_integer_shift_samples_at_x_plus_phi(shape):
    image = as_tensor(blobs(shape))
    phi = torch.zeros(1, len(shape), *shape)
    phi[:, 0] = 2.0  # moving sampled two voxels further along axis 0
    warped = warp(image, phi)
    inner = tuple([slice(0, shape[0] - 2)] + [slice(None)] * (len(shape) - 1))
    source = tuple([slice(2, None)] + [slice(None)] * (len(shape) - 1))
    torch.testing.assert_close(warped[(0, 0, *inner)], image[(0, 0, *source)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_each_channel_moves_along_its_own_axis(shape):
    image = blobs(shape)
    for axis in range(len(shape)):
        shift = [0.0] * len(shape)
        shift[axis] = 1.5
        phi = torch.zeros(1, len(shape), *shape)
        phi[:, axis] = 1.5
        expected = shifted(image, tuple(shift))
        np.testing.assert_allclose(warp(as_tensor(image), phi)[0, 0].numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_nearest_mode_keeps_label_values(shape):
    labels = torch.randint(0, 4, (1, 1, *shape)).float()
    phi = torch.rand(1, len(shape), *shape) * 3
    values = set(warp(labels, phi, mode="nearest").unique().tolist())
    assert values <= {0.0, 1.0, 2.0, 3.0}


def test_identity_grid_is_voxel_coordinates():
    grid = identity_grid((3, 4))
    assert grid.shape == (1, 2, 3, 4)
    assert grid[0, 0, 2, 1] == 2 and grid[0, 1, 2, 1] == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_resize_displacement_keeps_physical_motion(shape):
    # A constant shift of 3 voxels on a grid of n voxels is 3 * m / n voxels on a grid of m
    # voxels covering the same field of view (voxel cells aligned, as average pooling is).
    phi = torch.full((1, len(shape), *shape), 3.0)
    big = tuple(2 * n + d for d, n in enumerate(shape))
    resized = resize_displacement(phi, big)
    assert resized.shape[2:] == big
    for d, n in enumerate(shape):
        torch.testing.assert_close(resized[0, d], torch.full(big, 3.0 * big[d] / n))
    torch.testing.assert_close(resize_displacement(resized, shape), phi)  # and back
