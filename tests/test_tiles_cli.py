"""shared.tiles and shared.phantom command lines, on the phantom, the real EPFL subset and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from shared.phantom import PhantomConfig, phantom_stack
from shared.store import TileStore
from shared.tiff_io import read_image_stack, read_mask_stack
from shared.tiling import stitch_tiles

from .conftest import ROOT, assert_one_line_error, run_module
from .test_tiff_io import make_bad_inputs


def stitch_slice(store: TileStore, file: str, z: int, shape: tuple[int, int], masks: bool = False):
    idx = [i for i, r in enumerate(store.records) if r["file"] == file and r["slice"] == z]
    origins = [(store.records[i]["y"], store.records[i]["x"]) for i in idx]
    data = store.masks(idx) if masks else store.raw_images(idx)
    return stitch_tiles(data, origins, shape)


def test_epfl_subset_gives_324_tiles_a_z_block_split_and_exact_stitching(epfl_dir, tmp_path):
    images, masks = epfl_dir / "training.tif", epfl_dir / "training_groundtruth.tif"
    out = tmp_path / "epfl"
    proc = run_module("shared.tiles", "build", "--images", images, "--masks", masks, "--out", out)
    assert proc.returncode == 0, proc.stderr
    store = TileStore(out)
    assert len(store) == 27 * 12 == 324
    all_masks = store.masks(np.arange(len(store)))
    assert set(np.unique(all_masks)) == {0, 1}
    by_split = {s: {store.records[i]["slice"] for i in store.indices(s)} for s in ("train", "val")}
    assert by_split["train"] and by_split["val"] and not by_split["train"] & by_split["val"]
    val = sorted(by_split["val"])
    assert val == list(range(val[0], val[0] + len(val)))  # one contiguous block
    original, truth = read_image_stack(images), read_mask_stack(masks)
    for z in range(27):
        assert np.array_equal(stitch_slice(store, str(images), z, original.shape[1:]), original[z])
        assert np.array_equal(stitch_slice(store, str(images), z, truth.shape[1:], masks=True), truth[z])
    info = run_module("shared.tiles", "info", out)
    assert info.returncode == 0 and "324 real tiles" in info.stdout
    assert "train" in info.stdout and "val" in info.stdout
    js = json.loads(run_module("shared.tiles", "info", out, "--json").stdout)
    assert js["splits"]["val"]["tiles"] + js["splits"]["train"]["tiles"] == 324


def test_guard_keeps_the_neighbours_of_the_validation_block_out_of_training(tmp_path):
    images, masks = phantom_stack(10, seed=0, config=PhantomConfig(height=256, width=256))
    tifffile.imwrite(tmp_path / "i.tif", images)
    tifffile.imwrite(tmp_path / "m.tif", masks * 255)
    proc = run_module("shared.tiles", "build", "--images", tmp_path / "i.tif", "--masks", tmp_path / "m.tif",
                      "--out", tmp_path / "s", "--guard", "1")
    assert proc.returncode == 0, proc.stderr
    store = TileStore(tmp_path / "s")
    by_split = {s: sorted({store.records[i]["slice"] for i in store.indices(s)})
                for s in ("train", "val", "guard")}
    val = by_split["val"]
    assert by_split["guard"] == [z for z in (val[0] - 1, val[-1] + 1) if 0 <= z < 10]
    assert all(min(abs(z - v) for v in val) > 1 for z in by_split["train"])
    assert "guard" in run_module("shared.tiles", "info", tmp_path / "s").stdout
    bad = run_module("shared.tiles", "build", "--images", tmp_path / "i.tif", "--out", tmp_path / "t",
                     "--guard", "-1")
    assert_one_line_error(bad, "--guard", "must be >= 0")


def test_phantom_cli_and_build(tmp_path):
    proc = run_module("shared.phantom", "--out", tmp_path / "ph", "--slices", 3, "--height", 300,
                      "--width", 520)
    assert proc.returncode == 0, proc.stderr
    images = tifffile.imread(tmp_path / "ph" / "phantom_images.tif")
    assert images.shape == (3, 300, 520) and images.dtype == np.uint8
    proc = run_module("shared.tiles", "build", "--images", tmp_path / "ph" / "phantom_images.tif",
                      "--masks", tmp_path / "ph" / "phantom_masks.tif", "--out", tmp_path / "store",
                      "--val-fraction", "0.34")
    assert proc.returncode == 0, proc.stderr
    assert len(TileStore(tmp_path / "store")) == 3 * 2 * 3  # 300x520 -> 2 x 3 tiles, padded


def test_phantom_is_seeded_and_masks_mark_the_dark_textured_objects():
    config = PhantomConfig(height=512, width=512)
    a_img, a_mask = phantom_stack(2, seed=3, config=config)
    b_img, b_mask = phantom_stack(2, seed=3, config=config)
    c_img, _ = phantom_stack(2, seed=4, config=config)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert 0.005 < a_mask.mean() < 0.3
    inside, outside = a_img[a_mask == 1].mean(), a_img[a_mask == 0].mean()
    assert inside < outside - 20  # mitochondria are darker than cytoplasm


BAD = [
    ("truncated.tif", "good.tif", "truncated.tif", "not a readable TIFF"),
    ("text.tif", "good.tif", "text.tif", "not a readable TIFF"),
    ("good.tif", "two_masks.tif", "two_masks.tif", "2 mask slices"),
    ("good.tif", "wide_masks.tif", "wide_masks.tif", "masks are 80x64"),
    ("zero_pages.tif", "good.tif", "zero_pages.tif", "no pages"),
    ("dir.tif", "good.tif", "dir.tif", "is a directory"),
]


@pytest.mark.fault("ingest",
                   "truncated TIFF, text named .tif, mask count/shape mismatch, zero pages, directory",
                   "one-line error naming the file, exit 2, nothing written")
@pytest.mark.parametrize("images,masks,named,needle", BAD)
def test_build_bad_input_one_line_exit_2_nothing_written(tmp_path, images, masks, named, needle):
    make_bad_inputs(tmp_path)
    out = tmp_path / "out_store"
    proc = run_module("shared.tiles", "build", "--images", tmp_path / images, "--masks", tmp_path / masks,
                      "--out", out)
    assert_one_line_error(proc, str(tmp_path / named), needle)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out_store")]


@pytest.mark.parametrize("args,needle", [
    (["build", "--images", "a.tif"], "required"),
    (["build", "--images", "a", "--masks", "b", "--out", "c", "--val-fraction", "1.5"], "[0, 1)"),
    (["info", "s", "--bogus"], "unrecognized"),
    (["info", "/nonexistent/store"], "no such tile store"),
])
@pytest.mark.fault("CLI",
                   "shared.tiles: missing flags, out-of-range values, unknown flags, missing store",
                   "one-line error, exit 2")
def test_cli_validation(args, needle):
    assert_one_line_error(run_module("shared.tiles", *args), needle)


@pytest.mark.fault("output", "non-empty output folder", "refused, existing files untouched")
def test_build_refuses_non_empty_output_and_missing_parent(tmp_path):
    make_bad_inputs(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    proc = run_module("shared.tiles", "build", "--images", tmp_path / "good.tif", "--masks",
                      tmp_path / "good.tif", "--out", tmp_path / "full")
    assert_one_line_error(proc, "not empty")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    proc = run_module("shared.tiles", "build", "--images", tmp_path / "good.tif", "--masks",
                      tmp_path / "good.tif", "--out", tmp_path / "no" / "such" / "dir")
    assert_one_line_error(proc, "does not exist")


def test_phantom_cli_rejects_zero_slices(tmp_path):
    assert_one_line_error(run_module("shared.phantom", "--out", tmp_path, "--slices", "0"), ">= 1")


def test_help_works():
    proc = subprocess.run([sys.executable, "-m", "shared.tiles", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "build" in proc.stdout
