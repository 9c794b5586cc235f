"""Copy-paste pairs: pasted objects carry their own pixels, the background's pixels and mask stay where
nothing was pasted, pasted objects never touch the background's objects, a seed fixes the pairs, and
the command writes a synthetic store or refuses bad stores in one line."""

import numpy as np
import pytest
from scipy import ndimage

from generation_torch.copy_paste import PasteConfig, main, paste_pairs
from generation_torch.layouts import ComposeConfig, compose_masks
from shared.errors import run_cli
from shared.normalization import denormalize
from shared.store import TileStore
from shared.tiling import dihedral

OBJECT, LABELLED_BACKGROUND, BACKGROUND, BACKGROUND_OBJECT = 0.8, -0.6, -0.2, 0.4


def disc(center: tuple[int, int], radius: int, size: int = 256) -> np.ndarray:
    yy, xx = np.ogrid[:size, :size]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2


@pytest.fixture()
def objects():
    """One labelled tile holding two discs of bright pixels on dark ones."""
    mask = disc((80, 80), 18) | disc((170, 160), 24)
    image = np.where(mask, OBJECT, LABELLED_BACKGROUND).astype(np.float32)
    return mask[None].astype(np.uint8), image[None]


@pytest.fixture()
def backgrounds():
    """Three flat tiles; the second holds an object of its own (masked), off-centre so that its
    dihedral transforms differ."""
    masks = np.zeros((3, 256, 256), np.uint8)
    masks[1][disc((60, 190), 20)] = 1
    images = np.where(masks > 0, BACKGROUND_OBJECT, BACKGROUND).astype(np.float32)
    return masks, images


def test_pasted_objects_carry_their_own_pixels_and_the_rest_is_the_background(objects, backgrounds):
    images, masks, records = paste_pairs(objects, backgrounds, 12, seed=3)
    assert images.shape == masks.shape == (12, 256, 256) and masks.dtype == np.uint8
    for image, mask, record in zip(images, masks, records, strict=True):
        below = dihedral(backgrounds[0][record["background"]], record["background_dihedral"]) > 0
        pasted = (mask > 0) & ~below
        assert len(record["objects"]) == 2 == ndimage.label(pasted)[1]  # two objects per labelled tile
        # inside a pasted object: the object's own pixels (cubic resampling rings a little at its rim)
        core = ndimage.binary_erosion(pasted, iterations=2)
        assert abs(np.median(image[core]) - OBJECT) < 0.01 and image[core].min() > (OBJECT + BACKGROUND) / 2
        # beyond the ring and the feather: the background tile, untouched
        far = ~ndimage.binary_dilation(pasted, np.ones((3, 3)), iterations=PasteConfig().margin)
        m = PasteConfig().margin  # an object partly outside the tile may blend its ring in at the border
        far[:m], far[-m:], far[:, :m], far[:, -m:] = False, False, False, False
        expected = dihedral(backgrounds[1][record["background"]], record["background_dihedral"])
        np.testing.assert_array_equal(image[far], expected[far])
        # the ring of own pixels (the labelled tile's dark surround) is pasted with the object
        ring = ndimage.binary_dilation(pasted, iterations=1) & ~pasted
        assert image[ring].mean() < BACKGROUND


def test_pasted_pixels_keep_most_of_their_grain():
    """Each object is resampled three times (scale, rotation, deformation): at spline order 3 its pixels
    keep 0.79 of their high-frequency power (Laplacian std) on a grain like EM's, at order 1 0.42."""
    from generation_torch import layouts
    from generation_torch.copy_paste import cut_out

    rng = np.random.default_rng(0)
    grain = ndimage.gaussian_filter(rng.normal(0, 0.6, (256, 256)), 0.7).astype(np.float32)
    mask = disc((128, 128), 40)
    inst = layouts.instances(mask[None].astype(np.uint8))[0]
    draws, kept = np.random.default_rng(1), []
    for _ in range(10):
        cut = cut_out(inst, grain, layouts.draw_transform(draws, ComposeConfig()), PasteConfig())
        core = ndimage.binary_erosion(np.pad(cut.mask, cut.margin), iterations=4)
        kept.append(ndimage.laplace(cut.pixels)[core].std() / ndimage.laplace(grain)[mask].std())
    assert np.mean(kept) > 0.7


def test_background_objects_keep_their_mask_and_pixels_and_are_never_touched(objects, backgrounds):
    config = PasteConfig()
    images, masks, records = paste_pairs(objects, backgrounds, 24, seed=0, config=config)
    with_own = [i for i, r in enumerate(records) if r["background"] == 1]
    assert len(with_own) >= 4
    for i in with_own:
        below = dihedral(backgrounds[0][1], records[i]["background_dihedral"]) > 0
        assert (masks[i][below] == 1).all()
        pasted = (masks[i] > 0) & ~below
        near = ndimage.binary_dilation(below, iterations=config.compose.gap)
        assert not (pasted & near).any()
        # no pasted ring or feather reaches the background's object
        assert (images[i][below] == BACKGROUND_OBJECT).all()


def test_a_seed_fixes_the_pairs(objects, backgrounds):
    a, b = paste_pairs(objects, backgrounds, 4, seed=5), paste_pairs(objects, backgrounds, 4, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[1], paste_pairs(objects, backgrounds, 4, seed=6)[1])


def test_masks_without_objects_are_refused(backgrounds):
    empty = (np.zeros((1, 256, 256), np.uint8), np.zeros((1, 256, 256), np.float32))
    with pytest.raises(ValueError, match="no object of at least 30 pixels"):
        paste_pairs(empty, backgrounds, 2, seed=0)


def test_composed_layouts_are_unchanged_by_the_transform_split():
    """compose_masks draws each object's transform in one piece now (layouts.draw_transform): the same
    random stream in the same order, so a seed's layouts are those it gave before, whose object counts,
    angles and scales these are."""
    masks = (disc((80, 80), 18) | disc((170, 160), 24))[None].astype(np.uint8)
    _, records = compose_masks(masks, 2, seed=0, config=ComposeConfig())
    rng = np.random.default_rng(0)
    first = records[0]["objects"][0]
    # the draws as the original code made them: count choice, instance, angle, scale, mirror
    rng.choice([2]), rng.integers(2)
    assert first["angle"] == round(float(rng.uniform(0, 360)), 1)
    assert first["scale"] == round(float(np.exp(rng.uniform(-1, 1) * np.log(1.25))), 3)
    assert first["mirror"] == bool(rng.integers(2))


def _store(path, images, masks, kind="real"):
    store = TileStore.create(path, 256, kind=kind)
    store.append(denormalize(images, np.uint8), masks, [{"split": "train"} for _ in images])
    return path


def test_the_command_writes_a_synthetic_store_with_provenance(tmp_path, objects, capsys):
    labelled = _store(tmp_path / "labelled", objects[1], objects[0])
    grain = np.random.default_rng(0).uniform(-1, 1, (4, 256, 256)).astype(np.float32)  # tiles told apart
    pool = _store(tmp_path / "pool", grain, np.zeros((4, 256, 256), np.uint8))
    out = tmp_path / "pasted"
    assert run_cli(main, ["--labelled", str(labelled), "--backgrounds", str(pool), "--n", "5", "--out",
                          str(out), "--no-progress", "--grid", str(tmp_path / "grid.png")]) == 0
    store = TileStore(out)
    assert store.manifest.kind == "synthetic" and len(store) == 5 and (tmp_path / "grid.png").exists()
    assert "layouts  objects_per_tile_mean: 2 in labelled / " in capsys.readouterr().out
    for i, record in enumerate(store.records):
        assert record["source"] == "copy_paste" and record["pasted"] and record["backgrounds"] == str(pool)
        # away from the pasted objects: the background its record names, in the backgrounds store
        background = TileStore(pool).raw_images([record["background"]])[0]
        turned = dihedral(background, record["background_dihedral"])
        objects_here = store.masks([i])[0] > 0
        far = ~ndimage.binary_dilation(objects_here, np.ones((3, 3)), iterations=PasteConfig().margin)
        far[:8], far[-8:], far[:, :8], far[:, -8:] = False, False, False, False
        np.testing.assert_array_equal(store.raw_images([i])[0][far], turned[far])
    # without --backgrounds: onto the labelled tiles themselves
    onto_labelled = tmp_path / "onto_labelled"
    assert run_cli(main, ["--labelled", str(labelled), "--n", "2", "--out", str(onto_labelled),
                          "--no-progress"]) == 0
    assert {r["backgrounds"] for r in TileStore(onto_labelled).records} == {str(labelled)}


def test_bad_stores_are_one_line_naming_the_file(tmp_path, objects, backgrounds, capsys):
    labelled = _store(tmp_path / "labelled", objects[1], objects[0])
    pool = _store(tmp_path / "pool", backgrounds[1], backgrounds[0])
    empty = _store(tmp_path / "empty", backgrounds[1][:1], np.zeros((1, 256, 256), np.uint8))
    cases = [(["--labelled", str(tmp_path / "nope")], f"{tmp_path / 'nope'}: not a tile store"),
             (["--labelled", str(empty)], f"{empty}: the labelled masks hold no object"),
             (["--out", str(pool)], f"{pool}: a real tile store; pasted pairs go to a synthetic store")]
    for flags, message in cases:
        args = {"--labelled": str(labelled), "--backgrounds": str(pool), "--out": str(tmp_path / "o"),
                **dict(zip(flags[::2], flags[1::2], strict=True))}
        assert run_cli(main, [x for kv in args.items() for x in kv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
