"""Segment volumes larger than memory: dask.array.map_overlap over a lazily read volume.

Each chunk (a few whole slices, or y/x blocks of them) arrives with a halo of one tile from its
neighbours and goes through the onnxruntime segmenter's own tiling and blending, on the whole slice's
window grid (`Segmenter.predict_box`), so the result equals the in-memory prediction, seams included.
The task writes its chunk to the OME-Zarr output and then its completion marker, and returns one
number: probabilities never travel between processes. A rerun skips chunks with a marker.

The same graph runs on dask's threads, on a LocalCluster of worker processes, or on a running
dask.distributed scheduler (then model, input and output must be on storage every worker sees).
One ONNX session per process, made by the first chunk that needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from dask.callbacks import Callback
from tqdm import tqdm

from exporters.runtime import InputError, Segmenter
from exporters.volume_io import PixelSize, Volume, VolumeOutput
from shared.console import on_terminal
from shared.digest import file_digest
from shared.errors import UserError

DEFAULT_CHUNK = (4, 2048, 2048)  # 4 slices; whole slices up to 2048 px, so most volumes need no y/x halo
_SEGMENTERS: dict[tuple, Segmenter] = {}
_SEGMENTERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Job:
    """Everything a chunk task needs, as plain values (cheap to send to any worker)."""
    model: str
    out: str
    shape: tuple[int, int, int]
    chunks: tuple[tuple[int, ...], ...]
    depth: tuple[int, int, int]
    tta: bool
    overlap: int
    device: str = "auto"
    threads: int | None = None


def worker_segmenter(model: str, device: str = "auto", threads: int | None = None) -> Segmenter:
    """This process's segmenter: one ONNX session per process, shared by its threads and chunks."""
    key = (model, device, threads, os.getpid())
    with _SEGMENTERS_LOCK:
        if key not in _SEGMENTERS:
            _SEGMENTERS[key] = Segmenter(model, device, threads)
        return _SEGMENTERS[key]


def plan_chunks(shape: Sequence[int], chunk: Sequence[int], tile: int) -> tuple[tuple[int, ...], ...]:
    """dask chunks along z, y, x of `chunk` each; along y and x a trailing piece smaller than a tile joins
    the one before it, so every halo comes from the next chunk only (dask's map_overlap needs that)."""
    planned = []
    for axis, (n, c) in enumerate(zip(shape, chunk, strict=True)):
        sizes = [c] * (n // c) + ([n % c] if n % c else [])
        if axis > 0 and len(sizes) > 1 and sizes[-1] < tile:
            tail = sizes.pop()
            sizes[-1] += tail  # starts stay multiples of c: no two chunks share a zarr chunk
        planned.append(tuple(sizes))
    return tuple(planned)


def halo(chunks: tuple[tuple[int, ...], ...], tile: int) -> tuple[int, int, int]:
    """Slices are predicted one by one (no z halo); along y and x a window touching a chunk reaches up
    to one tile beyond it, and so do the reflected pixels past the slice's end."""
    return (0, *(tile if len(c) > 1 else 0 for c in chunks[1:]))


def segment_chunk(block: np.ndarray, job: Job, block_info: dict | None = None) -> np.ndarray:
    """map_overlap's function: predict the chunk inside `block` (chunk + halo), write it, mark it done."""
    index = tuple(block_info[0]["chunk-location"])
    output = VolumeOutput(job.out)
    if output.done(index):  # a resumed run: the graph leaves these out, this guards a race
        return np.zeros((1, 1, 1), np.int32)
    core = [(sum(c[:i]), sum(c[:i + 1])) for c, i in zip(job.chunks, index, strict=True)]
    # boundary="none": no halo at the volume's edges, so the block starts at the core there
    start = tuple(lo - (d if i > 0 else 0) for (lo, _), d, i in zip(core[1:], job.depth[1:], index[1:],
                                                                     strict=True))
    region = tuple(slice(lo, hi) for lo, hi in core)
    seg = worker_segmenter(job.model, job.device, job.threads)
    began = time.perf_counter()
    try:
        probs = np.stack([seg.predict_box(s, start, job.shape[1:], (core[1], core[2]), job.tta, job.overlap)
                          for s in block])
    except InputError as exc:
        raise UserError(f"chunk z {core[0][0]}:{core[0][1]}, y {core[1][0]}:{core[1][1]}, "
                        f"x {core[2][0]}:{core[2][1]}: {exc}") from None
    info = {"chunk": list(index), "slices": len(block), "seconds": round(time.perf_counter() - began, 3),
            "pid": os.getpid(), "session": f"{os.getpid()}-{id(seg.session)}"}
    output.write(index, region, probs, seg.threshold, info)
    return np.ones((1, 1, 1), np.int32)


def chunk_tasks(volume: Volume, job: Job) -> tuple[da.Array, list[tuple[int, ...]]]:
    """The lazy graph: one task per chunk (its status), and the chunk indices in order."""
    image = da.from_array(volume, chunks=job.chunks, asarray=True, meta=np.empty((0, 0, 0), volume.dtype))
    status = da.map_overlap(segment_chunk, image, depth=dict(enumerate(job.depth)), boundary="none",
                            trim=False, allow_rechunk=False, dtype=np.int32,
                            chunks=tuple((1,) * len(c) for c in job.chunks),
                            meta=np.empty((0, 0, 0), np.int32), job=job)
    return status, list(np.ndindex(*status.numblocks))


def segment_volume(volume: Volume, out: Path, model: str, *, chunk: Sequence[int] | None = None,
                   scheduler: str = "threads", workers: int = 1, threads: int | None = None,
                   device: str = "auto", tta: bool | None = None, overlap: int | None = None,
                   probability_dtype: str = "float16", levels: int = 1,
                   pixel_size: PixelSize | None = None) -> dict:
    """Segment `volume` into the OME-Zarr folder `out`; resumes a run that was stopped. Returns a summary."""
    local = scheduler in ("threads", "processes")
    threads = threads or (max(1, (os.cpu_count() or 1) // workers) if local else None)
    seg = worker_segmenter(str(model), device, threads)  # the model is checked before anything is written
    if min(volume.shape[1:]) < seg.tile:
        raise UserError(f"{volume.label}: slices of {volume.shape[2]}x{volume.shape[1]} are smaller than one "
                        f"{seg.tile}x{seg.tile} tile of the segmenter")
    nominal = tuple(min(n, c) for n, c in zip(volume.shape, chunk or DEFAULT_CHUNK, strict=True))
    if any(c < seg.tile and c < n for c, n in zip(nominal[1:], volume.shape[1:], strict=True)):
        raise UserError(f"--chunk {','.join(map(str, nominal))}: y and x chunks must be at least one tile "
                        f"({seg.tile}) or the whole slice")
    chunks = plan_chunks(volume.shape, nominal, seg.tile)
    tta, overlap = seg.settings(tta, overlap)
    job = Job(str(Path(model).resolve()), str(Path(out).resolve()), volume.shape, chunks,
              halo(chunks, seg.tile), tta, overlap, device, threads)
    record = {"model": Path(model).name, "model_sha256": file_digest(Path(model)), "source": volume.label,
              "shape": list(volume.shape), "chunks": list(nominal), "tta": tta, "overlap": overlap,
              "probability_dtype": probability_dtype, "threshold": seg.threshold}
    output = VolumeOutput(out)
    output.create_or_resume(volume.shape, nominal, probability_dtype, record)
    status, indices = chunk_tasks(volume, job)
    blocks = status.to_delayed().ravel()
    todo = [d for d, index in zip(blocks, indices, strict=True) if not output.done(index)]
    began = time.perf_counter()
    run_tasks(todo, status.name, scheduler, workers, len(indices))
    seconds = time.perf_counter() - began
    output.finish(levels, pixel_size or volume.pixel_size, record)
    return {"chunks": len(indices), "written": len(todo), "skipped": len(indices) - len(todo),
            "seconds": seconds, "job": asdict(job), "pixel_size": asdict(pixel_size or volume.pixel_size)}


class _ChunkProgress(Callback):
    """Counts finished chunk tasks of dask's local schedulers (they report in the calling process)."""

    def __init__(self, name: str, bar: tqdm):
        super().__init__()
        self.name, self.bar = name, bar

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if isinstance(key, tuple) and key[0] == self.name:
            self.bar.update(1)


def run_tasks(tasks: list, name: str, scheduler: str, workers: int, total: int) -> None:
    """Run the chunk tasks with a progress bar over chunks (those already done count as done)."""
    with tqdm(total=total, initial=total - len(tasks), desc="segment", unit="chunk",
              disable=not on_terminal()) as bar:
        if not tasks:
            return
        if scheduler == "threads":
            with _ChunkProgress(name, bar):
                dask.compute(*tasks, scheduler="threads", num_workers=workers)
            return
        from distributed import as_completed

        with dask_client(scheduler, workers) as client:
            futures = client.compute(tasks)
            try:
                for future in as_completed(futures):
                    future.result()  # re-raises a chunk's error (e.g. UserError) here
                    bar.update(1)
            except BaseException:
                client.cancel(futures)
                raise


@contextlib.contextmanager
def dask_client(scheduler: str, workers: int) -> Iterator:
    """'processes': a LocalCluster of `workers` single-threaded processes; otherwise the address of a
    running dask.distributed scheduler (its workers are the cluster's own)."""
    from distributed import Client, LocalCluster

    if scheduler == "processes":
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"cannot reach a dask scheduler at {scheduler} ({exc})") from None
    with client:
        yield client
