"""The segment commands' shared output writer: instance labels counted by hand, 32-bit ids, layout."""

import numpy as np
import pytest
import tifffile

from shared.outputs import instance_labels, write_segmentation
from shared.pixel_size import PixelSize
from shared.tiff_io import read_pixel_size


def two_slices() -> np.ndarray:
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[0, 1:3, 1:3] = 255   # object A
    mask[0, 5:7, 5:7] = 255   # object B
    mask[1, 2:4, 2:4] = 255   # touches A across slices (overlap at (2, 2))
    mask[1, 6, 0] = 255       # alone
    mask[0, 0, 3] = 255       # diagonal to A only: its own object (face connectivity)
    return mask


def test_instance_labels_2d_number_each_slice_on():
    labels = instance_labels(two_slices(), "2d")
    assert labels.dtype == np.uint16
    assert len(np.unique(labels[0])) - 1 == 3 and len(np.unique(labels[1])) - 1 == 2
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}  # ids run on across slices
    assert np.array_equal(labels > 0, two_slices() > 0)


def test_instance_labels_3d_join_objects_touching_across_slices():
    labels = instance_labels(two_slices(), "3d")
    assert labels.max() == 4  # A + its continuation, B, the diagonal pixel, the lone pixel
    assert labels[0, 1, 1] == labels[1, 3, 3] != labels[0, 0, 3]
    assert np.array_equal(labels > 0, two_slices() > 0)


def test_more_than_65535_objects_keep_exact_32_bit_ids(tmp_path):
    probs = np.zeros((1, 512, 512), np.float32)
    probs[0, ::2, ::2] = 1.0  # 256 * 256 = 65536 isolated pixels
    written = write_segmentation(tmp_path / "out", probs, 0.5, PixelSize(5.0, 5.0), "2d")
    labels = tifffile.imread(written[-1])
    assert written[-1].name == "instances.tif" and labels.dtype == np.uint32 and labels.max() == 65536
    assert read_pixel_size(written[-1]) == PixelSize(5.0, 5.0)


def test_no_instances_file_unless_asked(tmp_path):
    written = write_segmentation(tmp_path / "out", np.zeros((1, 8, 8), np.float32), 0.5)
    assert [p.name for p in written] == ["probability.tif", "mask.tif"]
    assert not (tmp_path / "out" / "instances.tif").exists()
    with pytest.raises(ValueError, match="instance mode"):
        instance_labels(np.zeros((1, 4, 4)), "4d")
