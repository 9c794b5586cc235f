"""TIFF stacks: formats in, validation errors out, masks binarized."""

import struct
import warnings

import numpy as np
import pytest
import tifffile

from shared.errors import UserError
from shared.tiff_io import binarize, read_image_stack, read_mask_stack, read_pair, write_stack


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("pages", [1, 3])
def test_reads_multi_and_single_page_stacks(tmp_path, dtype, pages):
    rng = np.random.default_rng(0)
    data = (rng.random((pages, 40, 50)) * (1 if dtype == np.float32 else 200)).astype(dtype)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data if pages > 1 else data[0], photometric="minisblack")
    out = read_image_stack(path)
    assert out.dtype == dtype and out.shape == (pages, 40, 50)
    assert np.array_equal(out, data)


def test_separate_pages_read_as_a_stack(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(4):
            tw.write(np.full((8, 9), k, np.uint8), contiguous=False, photometric="minisblack")
    assert read_image_stack(path)[:, 0, 0].tolist() == [0, 1, 2, 3]


def test_rgb_is_converted_to_gray_with_a_warning(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    with pytest.warns(UserWarning, match="RGB"):
        assert read_image_stack(planar).shape == (1, 10, 12)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    with pytest.warns(UserWarning, match="RGB"):
        gray = read_image_stack(path)
    assert gray.shape == (1, 10, 12)
    assert int(gray[0, 0, 0]) == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)


@pytest.mark.parametrize("encoding", ["0/255", "0/1", "antialiased", "bool-float"])
def test_masks_are_binarized_whatever_the_encoding(tmp_path, encoding):
    truth = np.zeros((2, 16, 16), np.uint8)
    truth[:, 4:12, 4:12] = 1
    if encoding == "0/255":
        data = truth * 255
    elif encoding == "0/1":
        data = truth
    elif encoding == "antialiased":
        data = truth * 255
        data[:, 3, 4:12] = 60   # faint edge: background
        data[:, 12, 4:12] = 40
        data[:, 4:12, 3] = 100
    else:
        data = truth.astype(np.float32)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data)
    mask = read_mask_stack(path)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert np.array_equal(mask, truth)


def test_binarize_all_zero():
    assert binarize(np.zeros((3, 3), np.uint16)).sum() == 0


@pytest.mark.fault("ingest", "NaN pixels in an image stack", "rejected naming file and slice")
def test_nan_is_rejected_naming_file_and_slice(tmp_path):
    data = np.full((4, 8, 8), 0.5, np.float32)
    data[2, 3, 3] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    with pytest.raises(UserError, match=r"nan\.tif: slice 2 contains NaN or Inf"):
        read_image_stack(path)


@pytest.mark.fault("ingest", "Inf in a mask stack", "rejected naming file and slice")
def test_inf_in_mask_is_rejected(tmp_path):
    data = np.zeros((2, 8, 8), np.float32)
    data[1, 0, 0] = np.inf
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(UserError, match="slice 1"):
        read_mask_stack(path)


def test_float_images_outside_unit_range_are_rejected(tmp_path):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, np.full((1, 4, 4), 3.0, np.float32))
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        read_image_stack(path)


def test_unsupported_dtype(tmp_path):
    path = tmp_path / "i.tif"
    tifffile.imwrite(path, np.zeros((1, 4, 4), np.int32))
    with pytest.raises(UserError, match="int32 is not supported"):
        read_image_stack(path)


def make_bad_inputs(tmp_path):
    """The bad files of the foundation issue, by name."""
    good = np.zeros((3, 64, 64), np.uint8)
    tifffile.imwrite(tmp_path / "good.tif", good, photometric="minisblack")
    raw = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "truncated.tif").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.tif").write_text("this is not a tiff\n")
    (tmp_path / "zero_pages.tif").write_bytes(b"II*\x00" + struct.pack("<I", 0))
    (tmp_path / "dir.tif").mkdir()
    tifffile.imwrite(tmp_path / "two_masks.tif", np.zeros((2, 64, 64), np.uint8))
    tifffile.imwrite(tmp_path / "wide_masks.tif", np.zeros((3, 64, 80), np.uint8), photometric="minisblack")
    return tmp_path


@pytest.mark.parametrize("name,needle", [
    ("truncated.tif", "not a readable TIFF"),
    ("text.tif", "not a readable TIFF"),
    ("zero_pages.tif", "no pages"),
    ("dir.tif", "is a directory"),
    ("missing.tif", "no such file"),
])
def test_bad_files_raise_user_errors_naming_the_file(tmp_path, name, needle):
    make_bad_inputs(tmp_path)
    with pytest.raises(UserError, match=needle) as info:
        read_image_stack(tmp_path / name)
    assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)


def test_pair_mismatches(tmp_path):
    make_bad_inputs(tmp_path)
    with pytest.raises(UserError, match="2 mask slices but"):
        read_pair(tmp_path / "good.tif", tmp_path / "two_masks.tif")
    with pytest.raises(UserError, match="masks are 80x64 but images"):
        read_pair(tmp_path / "good.tif", tmp_path / "wide_masks.tif")


def test_write_stack_is_uncompressed_imagej_and_memory_mappable(tmp_path):
    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    path = tmp_path / "w.tif"
    write_stack(path, data)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.pages[0].compression == 1
    assert np.array_equal(tifffile.memmap(path, mode="r"), data)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.fault("TIFF writer", "write fails midway (no space)", "previous file intact, no temp left")
def test_write_stack_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.tif"
    write_stack(path, np.ones((1, 8, 8), np.uint8))

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(UserError, match=r"w\.tif: write failed, is the disk full\? \(No space"):
        write_stack(path, np.zeros((1, 8, 8), np.uint8))
    assert read_image_stack(path).max() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["w.tif"]


def test_no_warning_for_gray(tmp_path):
    path = tmp_path / "g.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image_stack(path)
