"""shared: imports, normalization, splits."""


import numpy as np
import pytest

from shared.errors import UserError
from shared.normalization import denormalize, normalize, pixel_scale, to_unit
from shared.splits import guard_bands, z_block_split

from .conftest import assert_runs_without


def test_importing_shared_imports_no_framework():
    assert_runs_without("import shared, shared.tiles, shared.store, shared.phantom, shared.sources, "
                        "shared.tiling, shared.splits, shared.tiff_io, shared.sampling, shared.presets, "
                        "shared.diffusion")


def test_normalize_hand_values():
    u8 = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(normalize(u8), [-1.0, 51 / 255 * 2 - 1, 1.0], rtol=0, atol=1e-7)
    u16 = np.array([0, 65535], np.uint16)
    np.testing.assert_allclose(normalize(u16), [-1.0, 1.0])
    f32 = np.array([0.25], np.float32)
    np.testing.assert_allclose(normalize(f32), [-0.5])
    assert normalize(u8).dtype == np.float32
    assert pixel_scale(np.uint8) == 255.0
    with pytest.raises(ValueError, match="unsupported"):
        to_unit(np.zeros(2, np.int32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_denormalize_inverts_normalize(dtype):
    pixels = np.arange(0, np.iinfo(dtype).max + 1, 257 if dtype == np.uint16 else 1).astype(dtype)
    assert np.array_equal(denormalize(normalize(pixels), dtype), pixels)


def test_denormalize_clips_out_of_range():
    assert denormalize(np.array([-3.0, 3.0]), np.uint8).tolist() == [0, 255]


def _is_contiguous(zs):
    return zs == list(range(zs[0], zs[0] + len(zs))) if zs else True


@pytest.mark.parametrize("n,val,test", [(27, 0.2, 0.0), (27, 0.2, 0.2), (10, 0.1, 0.1), (165, 0.15, 0.15)])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_z_block_split_is_contiguous_disjoint_complete(n, val, test, seed):
    split = z_block_split(n, val, test, seed)
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(n))
    assert len(split["val"]) == max(1, round(n * val))
    assert len(split["test"]) == (max(1, round(n * test)) if test else 0)
    assert _is_contiguous(split["val"]) and _is_contiguous(split["test"])
    assert split == z_block_split(n, val, test, seed)  # seeded


def test_z_block_split_seed_moves_the_block():
    starts = {z_block_split(27, 0.2, 0.0, seed)["val"][0] for seed in range(20)}
    assert len(starts) > 3


def test_guard_bands_by_hand():
    split = {"train": [0, 1, 2, 3, 7, 8, 9], "val": [4, 5, 6], "test": []}
    # guard 1: slices 3 and 7 touch the block; guard 2: 2 and 8 too
    assert guard_bands(split, 1) == {"train": [0, 1, 2, 8, 9], "val": [4, 5, 6], "test": [], "guard": [3, 7]}
    assert guard_bands(split, 2)["guard"] == [2, 3, 7, 8]
    assert guard_bands(split, 0)["train"] == split["train"]
    # unevenly spaced slices: z 30 lies 10 from the block's z 40, z 0 and z 38 are within 2 and 12
    z = [0, 10, 20, 30, 40, 41, 42, 50, 60, 70]
    assert guard_bands(split, 2, z)["guard"] == []
    assert guard_bands(split, 10, z)["guard"] == [3, 7]
    with pytest.raises(UserError, match="leave no training slice"):
        guard_bands({"train": [0, 2], "val": [1], "test": []}, 1)


def test_z_block_split_refuses_empty_training():
    with pytest.raises(UserError, match="training slice"):
        z_block_split(2, 0.5, 0.5, 0)


def test_presets_flag_over_preset_over_default_without_touching_the_preset():
    from dataclasses import dataclass, field

    from shared.presets import apply_flags

    @dataclass(frozen=True)
    class Optim:
        lr: float = 0.1

    @dataclass(frozen=True)
    class Run:
        steps: int = 10
        warm: int = 1
        optim: Optim = field(default_factory=Optim)

    preset = Run(steps=20)
    table = {"steps": ("steps", "warm"), "warm": "warm", "lr": "optim.lr"}
    out = apply_flags(preset, table, {"steps": 5, "warm": None, "lr": 0.5, "other": 1})
    assert out == Run(steps=5, warm=5, optim=Optim(0.5)) and preset == Run(steps=20)
    assert apply_flags(preset, table, {"steps": 5, "warm": 2}).warm == 2  # later table entries win
    with pytest.raises(KeyError, match="no field 'lrr'"):
        apply_flags(preset, {"lr": "optim.lrr"}, {"lr": 1.0})


def test_changed_fields_name_every_differing_leaf_by_its_dotted_path():
    from shared.presets import changed_fields

    old = {"model": {"width": 16, "levels": [1, 2]}, "beta": 1e-5, "store": "a", "gone": 1}
    new = {"model": {"width": 8, "levels": [1, 2], "added": 0}, "beta": 1e-5, "store": "b"}
    assert changed_fields(old, new) == ["model.width", "model.added", "store"]
    assert changed_fields(old, old) == []
    assert changed_fields({"model": 3}, {"model": {"width": 8}}) == ["model"]  # a group where a value was
    # fields added later: absent from old settings, they had the value `absent` gives
    absent = {"model": {"added": 0}, "store": "b"}
    assert changed_fields(old, new, absent=absent) == ["model.width", "store"]  # old has a store: it differs
    assert changed_fields({"beta": 1e-5}, {"beta": 1e-5, "store": "b"}, absent=absent) == []
    assert changed_fields({"beta": 1e-5}, {"beta": 1e-5, "store": "c"}, absent=absent) == ["store"]


def test_sampler_settings_defaults_and_tile_noise_streams():
    from shared.sampling import GUIDANCE, SamplerSettings, TileNoise, tile_seeds

    s = SamplerSettings()
    assert s.guidance == GUIDANCE and s.steps_for(1000) == 50
    assert SamplerSettings(unconditional=True).scale == 0
    with pytest.raises(ValueError, match="steps must be in"):
        SamplerSettings(steps=20).steps_for(10)
    with pytest.raises(ValueError, match="sampler must be one of"):
        SamplerSettings("euler")
    assert tile_seeds(2, 3, 2) == [2_000_009, 2_000_010]
    whole = TileNoise(tile_seeds(1, 0, 4))
    parts = [TileNoise(tile_seeds(1, 0, 1)), TileNoise(tile_seeds(1, 1, 3))]
    for shape in ((2, 3), (5,)):  # successive draws stay per tile too
        np.testing.assert_array_equal(whole.draw(shape), np.concatenate([p.draw(shape) for p in parts]))


def test_unnormalize_inverts_normalize_to_unit_range():
    from shared.normalization import unnormalize

    pixels = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(unnormalize(normalize(pixels)), to_unit(pixels), atol=1e-7)
    assert unnormalize(np.array([-3.0, 3.0])).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("settings_kw", [{}, {"sampler": "dpmpp2m", "steps": 20, "guidance": 12.0},
                                         {"sampler": "ddpm", "eta": 1.0, "guidance_rescale": 0.7,
                                          "unconditional": True},
                                         {"sampler": "dpmpp2m", "steps": 20, "strength": 0.4}])
def test_sampler_flags_round_trip(settings_kw):
    import argparse

    from shared.sampling import SamplerSettings, add_sampler_flags, settings_from_args, settings_to_flags

    parser = argparse.ArgumentParser()
    add_sampler_flags(parser)
    settings = SamplerSettings(**settings_kw)
    assert settings_from_args(parser.parse_args(settings_to_flags(settings))) == settings
    # a record says how far a tile started from a real one only where it did
    assert settings.provenance().get("strength") == settings_kw.get("strength")


def test_strength_is_refused_outside_its_interval():
    import argparse

    from shared.sampling import SamplerSettings, add_sampler_flags

    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            SamplerSettings(strength=bad)
    parser = argparse.ArgumentParser()
    add_sampler_flags(parser)
    for bad in ("0", "1.2"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--strength", bad])
