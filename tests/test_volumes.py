"""Volumes larger than memory (exporters.volumes): chunked dask prediction equals the in-memory one, seams
included; a LocalCluster of 2 processes; kill and resume; OME-Zarr readers; bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from .conftest import ROOT, assert_one_line_error, run_module

pytest.importorskip("dask")
pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

TILE, OVERLAP = 64, 16
PIXEL = (30.0, 4.0, 4.0)  # nm: anisotropic, so a swapped axis would show


def tiny_segmenter(path, seed: int = 0):
    """A segmenter ONNX file built with onnx.helper (no TensorFlow): two convolutions plus the tile's mean
    intensity, so every output pixel depends on which window it was predicted in (a wrong window grid,
    halo or border reflection changes the result)."""
    from onnx import TensorProto, helper, numpy_helper

    from exporters.onnx_io import finalize, save_atomic
    from shared import normalization

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
               for name, shape in (("w1", (4, 1, 3, 3)), ("w2", (1, 4, 3, 3)))]
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["nchw"], ["mean"], axes=[2, 3], keepdims=1),
             helper.make_node("Add", ["c2", "mean"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["p"]),
             helper.make_node("Transpose", ["p"], ["probability"], perm=[0, 2, 3, 1])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "height", "width", 1])
          for n in ("image", "probability")]
    proto = helper.make_model(helper.make_graph(nodes, "tiny", io[:1], io[1:], weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    finalize(proto, "segmenter", {"input_layout": "NHWC", "input_dtype": "float32", "tile_size": TILE,
                                  "size_divisor": 1, **normalization.metadata(), "threshold": 0.5,
                                  "output_meaning": "sigmoid foreground probability",
                                  "recommended_overlap": OVERLAP, "recommended_tta": False})
    return save_atomic(proto, path)


def smooth_volume(shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (shape[0], shape[1] // 8 + 1, shape[2] // 8 + 1)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :shape[1], :shape[2]]
    return np.clip(fine + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)


def write_input(path, data, chunks=(2, 64, 64)):
    from exporters.volume_io import PixelSize, create_image

    create_image(path, data.shape, str(data.dtype), chunks, PixelSize(PIXEL, "nanometer"))[:] = data
    return path


def in_memory(model, data, tta=False) -> np.ndarray:
    from exporters.runtime import Segmenter

    seg = Segmenter(model, device="cpu")
    return np.stack([seg.predict(s, tta=tta) for s in data])


def level0(out) -> tuple[np.ndarray, np.ndarray]:
    from exporters.volume_io import decode_probability

    return (decode_probability(zarr.open_array(str(out / "0"), mode="r")[:]),
            zarr.open_array(str(out / "labels" / "mask" / "0"), mode="r")[:])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    model = tiny_segmenter(root / "tiny.onnx")
    data = smooth_volume((6, 150, 200))
    return {"root": root, "model": model, "data": data, "input": write_input(root / "in.ome.zarr", data),
            "want": in_memory(model, data)}


def test_chunks_start_on_the_output_chunk_grid():
    from exporters.volumes import halo, plan_chunks

    chunks = plan_chunks((6, 150, 200), (2, 64, 96), TILE)  # y: 64 + 64 + 22 -> 64 + 86 (22 < a tile)
    assert chunks == ((2, 2, 2), (64, 86), (96, 104))
    assert halo(chunks, TILE) == (0, TILE, TILE) and halo(((3,), (150,), (200,)), TILE) == (0, 0, 0)


@pytest.mark.parametrize("tta", [False, True])
def test_chunked_prediction_equals_in_memory_seams_included(setup, tmp_path, tta):
    from exporters.volume_io import Volume
    from exporters.volumes import segment_volume

    data = setup["data"][:3] if tta else setup["data"]
    source = write_input(tmp_path / "in.ome.zarr", data) if tta else setup["input"]
    want = in_memory(setup["model"], data, tta) if tta else setup["want"]
    out = tmp_path / "out.ome.zarr"
    # y/x chunks (64, 96) cut the 150x200 slices into 2x2 blocks: every seam and the reflected borders count
    summary = segment_volume(Volume(source), out, str(setup["model"]), chunk=(2, 64, 96), device="cpu",
                             tta=tta, probability_dtype="float32", workers=2)
    got, mask = level0(out)
    assert summary["chunks"] == summary["written"] == (2 if tta else 3) * 2 * 2
    assert tuple(summary["job"]["depth"]) == (0, TILE, TILE)
    assert np.abs(got - want).max() <= 1e-5
    assert np.array_equal(mask, np.where(want >= 0.5, 255, 0).astype(np.uint8))


def test_local_cluster_of_two_processes_matches_single_process(setup, tmp_path):
    """--scheduler processes (a LocalCluster the command starts) and the address of a running cluster
    (here a LocalCluster of 2 worker processes started by the test) give the single-process output."""
    from distributed import LocalCluster

    from exporters.volume_io import VolumeOutput

    common = ["segment", "--model", setup["model"], "--images", setup["input"], "--chunk", "1,150,200",
              "--probability-dtype", "float32", "--device", "cpu"]
    single = run_module("exporters.infer", *common, "--out", tmp_path / "one.ome.zarr", timeout=120)
    assert single.returncode == 0, single.stderr
    one = level0(tmp_path / "one.ome.zarr")
    assert np.abs(one[0] - setup["want"]).max() <= 1e-5
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        for name, flags in [("processes", ["--scheduler", "processes", "--workers", "2"]),
                            ("address", ["--scheduler", cluster.scheduler_address])]:
            run = run_module("exporters.infer", *common, "--out", tmp_path / f"{name}.ome.zarr", *flags,
                             timeout=180)
            assert run.returncode == 0, run.stderr
            two = level0(tmp_path / f"{name}.ome.zarr")
            assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1]), name
            markers = VolumeOutput(tmp_path / f"{name}.ome.zarr").markers()
            pids = {m["pid"] for m in markers}
            assert len(markers) == 6 and 1 <= len(pids) <= 2  # ran in the cluster's worker processes
            assert len({m["session"] for m in markers}) == len(pids)  # one ONNX session per process
        worker_pids = {w.process.pid for w in cluster.workers.values()}  # the nannies' worker processes
        assert pids <= worker_pids  # the address run's chunks ran on the test's cluster


SLOW_RUN = """
import sys, time
from exporters import volumes
fast = volumes.segment_chunk
def slow(block, job, block_info=None):  # slow chunks, so the test can kill the run between them
    time.sleep(0.4)
    return fast(block, job, block_info)
volumes.segment_chunk = slow
from exporters.infer import main
from shared.errors import run_cli
sys.exit(run_cli(main, sys.argv[1:]))
"""


@pytest.mark.fault("volumes", "run killed (SIGKILL) after some chunks",
                   "output not marked complete; a rerun skips the chunks already written and finishes")
def test_killed_run_resumes_and_skips_written_chunks(setup, tmp_path):
    out = tmp_path / "out.ome.zarr"
    args = ["segment", "--model", str(setup["model"]), "--images", str(setup["input"]), "--out", str(out),
            "--chunk", "1,150,200", "--probability-dtype", "float32", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    progress, deadline = out / "emsynth_progress", time.monotonic() + 60
    while time.monotonic() < deadline and len(list(progress.glob("*.json")) if progress.is_dir() else []) < 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in progress.glob("*.json")}
    assert 2 <= len(first) < 6, first
    attrs = json.loads((out / ".zattrs").read_text())
    assert "multiscales" not in attrs and attrs["emsynth"]["complete"] is False  # not an image yet
    resumed = run_module("exporters.infer", *args, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{6 - len(first)} chunks written, {len(first)} already done" in resumed.stdout
    assert all(progress.joinpath(name).stat().st_mtime_ns == t for name, t in first.items())  # not redone
    got, _ = level0(out)
    assert np.abs(got - setup["want"]).max() <= 1e-5
    assert json.loads((out / ".zattrs").read_text())["emsynth"]["complete"] is True


def test_output_opens_in_an_ome_zarr_reader_with_the_input_pixel_size(setup, tmp_path):
    from ome_zarr_models import open_ome_zarr

    from exporters.volume_io import Volume
    from exporters.volumes import segment_volume

    out = tmp_path / "out.ome.zarr"
    segment_volume(Volume(setup["input"]), out, str(setup["model"]), device="cpu", levels=2)
    image = open_ome_zarr(zarr.open_group(str(out), mode="r"), version="0.4")  # validates the NGFF metadata
    scales = [d.coordinateTransformations[0].scale for d in image.attributes.multiscales[0].datasets]
    assert scales == [list(PIXEL), [PIXEL[0], PIXEL[1] * 2, PIXEL[2] * 2]]
    assert [a.unit for a in image.attributes.multiscales[0].axes] == ["nanometer"] * 3
    label = open_ome_zarr(zarr.open_group(str(out / "labels" / "mask"), mode="r"), version="0.4")
    assert type(label).__name__ == "ImageLabel"
    assert zarr.open_array(str(out / "0"), mode="r").dtype == np.float16  # the default
    assert zarr.open_array(str(out / "1"), mode="r").shape == (6, 75, 100)


def test_tiff_and_hdf5_inputs_are_read_lazily_with_their_pixel_size(setup, tmp_path):
    import h5py
    import tifffile

    from exporters.volume_io import Volume
    from exporters.volumes import segment_volume

    data = setup["data"]
    tifffile.imwrite(tmp_path / "in.tif", data, imagej=True, resolution=(1 / PIXEL[2], 1 / PIXEL[1]),
                     metadata={"spacing": PIXEL[0], "unit": "nm", "axes": "ZYX"})
    with h5py.File(tmp_path / "in.h5", "w") as f:
        raw = f.create_dataset("volumes/raw", data=data, chunks=(1, 150, 200))
        raw.attrs["element_size_um"] = [0.03, 0.004, 0.004]  # Fiji's convention
    for source, size in [(Volume(tmp_path / "in.tif"), (PIXEL, "nanometer")),
                         (Volume(tmp_path / "in.h5", "volumes/raw"), ((0.03, 0.004, 0.004), "micrometer"))]:
        assert (source.pixel_size.zyx, source.pixel_size.unit) == size and source.shape == data.shape
        out = tmp_path / f"{source.kind}.ome.zarr"
        segment_volume(source, out, str(setup["model"]), device="cpu", probability_dtype="float32",
                       chunk=(3, 150, 200))
        assert np.abs(level0(out)[0] - setup["want"]).max() <= 1e-5


@pytest.mark.fault("volumes", "missing HDF5 dataset, volume smaller than a tile, unreadable chunk",
                   "one line, exit 2, output not marked complete")
def test_bad_volumes_are_one_line_errors(setup, tmp_path):
    import h5py

    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("raw", data=setup["data"])
    small = write_input(tmp_path / "small.ome.zarr", setup["data"][:, :40, :40])
    broken = write_input(tmp_path / "broken.ome.zarr", setup["data"], chunks=(1, 150, 200))
    (broken / "0" / "3" / "0" / "0").write_bytes(b"not a compressed chunk")
    cases = [(["--images", tmp_path / "in.h5", "--dataset", "nope"], "no dataset 'nope'", False),
             (["--images", small], "smaller than one 64x64 tile", False),
             (["--images", broken], "unreadable chunk at z 3:4", True)]
    for k, (flags, needle, started) in enumerate(cases):
        out = tmp_path / f"out{k}.ome.zarr"
        proc = run_module("exporters.infer", "segment", "--model", setup["model"], *flags, "--out", out,
                          "--device", "cpu", "--chunk", "1,150,200", timeout=120)
        assert_one_line_error(proc, needle)
        assert out.exists() == started
        if started:  # chunks before the bad one may be there, but the image is not marked complete
            attrs = json.loads((out / ".zattrs").read_text())
            assert "multiscales" not in attrs and attrs["emsynth"]["complete"] is False
