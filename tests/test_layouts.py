"""Composed mask layouts: objects never overlap or touch, layouts follow the labelled set's object
count and size statistics, a seed fixes them, records say how each mask was made."""

import numpy as np
import pytest
from scipy import ndimage

from generation_torch.layouts import ComposeConfig, compose_masks, instances, layout_stats
from shared.phantom import PhantomConfig, phantom_stack
from shared.tiff_io import read_pair
from shared.tiles import tile_stack

from .conftest import EPFL


def labelled_tiles(images, masks):
    _, tiles, _ = tile_stack(images, masks, "t", dict.fromkeys(range(len(images)), "train"))
    return (tiles > 0).astype(np.uint8)


@pytest.fixture(scope="module")
def phantom_masks():
    images, masks = phantom_stack(2, seed=1, config=PhantomConfig(height=512, width=512))
    return labelled_tiles(images, masks)


def components(mask):
    return ndimage.label(mask, structure=np.ones((3, 3)))[1]


def test_instances_are_the_connected_components():
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 10:20, 10:20] = 1          # interior, 100 px
    mask[0, 0:8, 40:50] = 1            # cut by the border, 80 px
    mask[0, 50:53, 50:53] = 1          # 9 px: noise
    found = instances(mask, ComposeConfig(min_area=30))
    assert sorted((int(i.patch.sum()), i.interior) for i in found) == [(80, False), (100, True)]


def test_objects_never_overlap_or_touch(phantom_masks):
    masks, records = compose_masks(phantom_masks, 24, seed=0)
    assert masks.shape == (24, *phantom_masks.shape[1:]) and set(np.unique(masks)) <= {0, 1}
    placed = np.array([len(r["objects"]) for r in records])
    found = np.array([components(m) for m in masks])
    # every placed object is its own component: overlapping or touching objects would merge (a
    # deformed object cut by the tile border may rarely show as two pieces, never as fewer)
    assert np.mean(found == placed) >= 0.9 and np.all(found >= placed)
    assert all(r["mask_layout"] == "composed" and r["layout_seed"] == 0 for r in records)
    assert all({"from_tile", "angle", "scale", "y", "x"} <= set(o) for r in records for o in r["objects"])


def test_a_seed_fixes_the_layouts(phantom_masks):
    a, _ = compose_masks(phantom_masks, 6, seed=3)
    b, _ = compose_masks(phantom_masks, 6, seed=3)
    c, _ = compose_masks(phantom_masks, 6, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_layouts_differ_from_every_labelled_tile(phantom_masks):
    masks, _ = compose_masks(phantom_masks, 8, seed=0)
    for m in masks:
        assert min(np.mean(m != t) for t in phantom_masks) > 0.01


def check_statistics(labelled, composed):
    src, new = layout_stats(labelled), layout_stats(composed)
    assert new["objects_per_tile_mean"] == pytest.approx(src["objects_per_tile_mean"], rel=0.25)
    assert new["object_area_median"] == pytest.approx(src["object_area_median"], rel=0.3)
    assert new["foreground_fraction"] == pytest.approx(src["foreground_fraction"], rel=0.35)


def test_statistics_follow_the_labelled_phantom(phantom_masks):
    check_statistics(phantom_masks, compose_masks(phantom_masks, 64, seed=0)[0])


def test_statistics_follow_two_labelled_epfl_slices(epfl_dir):
    images, masks = read_pair(EPFL / "training.tif", EPFL / "training_groundtruth.tif")
    labelled = labelled_tiles(images[3:5], masks[3:5])
    check_statistics(labelled, compose_masks(labelled, 64, seed=0)[0])


def test_masks_without_objects_are_refused():
    with pytest.raises(ValueError, match="no object"):
        compose_masks(np.zeros((2, 32, 32), np.uint8), 4, seed=0)


def test_a_size_floor_composes_from_the_large_objects_only(tmp_path, capsys):
    """sample's --min-object-area: from masks holding an interior 400 px square and two 60 px specks
    per tile, a floor of 100 px composes layouts of one large object each (400 px at scales 1/1.25 ..
    1.25 and with the elastic wobble: within half and twice, a speck at most 94 px), the floor kept in
    each record and the console line naming the source; the default floor (30 px) lets the specks in
    (3 objects a tile, a few dropped where a placement fails or a shrunken speck falls under the floor).
    Asking it of varied labelled masks is refused."""
    from generation_torch.sample import conditioning_masks, main

    masks = np.zeros((3, 256, 256), np.uint8)
    masks[:, 100:120, 100:120] = 1
    masks[:, 20:26, 20:30] = 1
    masks[:, 200:206, 30:40] = 1
    floored, records = conditioning_masks(masks, "composed", 8, 0, tmp_path, min_object_area=100)
    areas = [int(i.patch.sum()) for i in instances(floored)]
    assert len(areas) == 8 and all(200 <= a <= 800 for a in areas)
    assert all(r["min_object_area"] == 100 and len(r["objects"]) == 1 for r in records)
    # the console line names the masks' source (a pseudo-label store is not "labelled") and counts at
    # the floor: one object a tile in the source as in the layouts
    assert f"objects_per_tile_mean: 1 in {tmp_path.name} / 1 composed" in capsys.readouterr().out
    default, records = conditioning_masks(masks, "composed", 8, 0, tmp_path)
    assert sum(len(r["objects"]) for r in records) > 16 and "min_object_area" not in records[0]
    assert min(int(i.patch.sum()) for i in instances(default)) < 100
    from shared.errors import run_cli

    code = run_cli(main, ["--checkpoint", str(tmp_path / "absent.pt"), "--min-object-area", "100",
                          "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
    assert "--min-object-area picks the objects of composed layouts" in capsys.readouterr().err
